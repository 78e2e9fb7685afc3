//! The models users may choose (`CHAT_MODELS`), each with its own client (its provider,
//! key, breaker and connection pool) and context budget; which one a new session gets
//! (the default, or a variant for the share of users a `CHAT_MODEL_EXPERIMENT` assigns);
//! and the list `GET /api/v1/models` shows.

use std::sync::Arc;

use relay_protocol::{ModelList, ModelOption};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{LlmClient, LlmError, LlmSettings};
use crate::config::Config;
use crate::metrics::Metrics;

/// One model on offer.
pub struct Model {
    /// The name sent to the provider (and stored on sessions and replies).
    pub name: String,
    /// What people see.
    pub label: String,
    /// Tokens its prompt may take (its context window less `CHAT_MAX_TOKENS`).
    pub context_tokens: u32,
    /// Its client.
    pub client: LlmClient,
}

/// Which arm of the model experiment a user is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// The default model.
    Control,
    /// The experiment's model.
    Variant,
}

impl Arm {
    /// As metrics and reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Control => "control",
            Arm::Variant => "variant",
        }
    }
}

/// The models on offer; the first is the default.
pub struct Models {
    models: Vec<Model>,
    /// The variant's index and the percent of users it gets.
    experiment: Option<(usize, u8)>,
}

impl Models {
    /// Builds a client per model. `mock_base`, when the built-in mock answers, takes every
    /// model (it answers any name).
    pub fn build(config: &Config, mock_base: Option<&str>, metrics: &Arc<Metrics>) -> Result<Models, LlmError> {
        let (default_base, default_key) = match &config.model_backend {
            crate::config::ModelBackend::Remote { api_key, api_base } => (api_base.clone(), Some(api_key.clone())),
            crate::config::ModelBackend::Mock(_) => (mock_base.unwrap_or_default().to_owned(), None),
        };
        let mut models = Vec::new();
        for m in &config.models {
            let (api_base, api_key) = match (mock_base, &m.base_url) {
                (Some(mock), _) => (mock.to_owned(), None),
                (None, None) => (default_base.clone(), m.api_key.clone().or_else(|| default_key.clone())),
                // Another provider never gets the default provider's key: only its own.
                (None, Some(base)) => (base.clone(), m.api_key.clone()),
            };
            let settings = LlmSettings {
                api_base,
                api_key,
                model: m.name.clone(),
                max_tokens: config.max_tokens,
                first_token_timeout: config.llm_first_token_timeout,
                idle_timeout: config.llm_idle_timeout,
                max_attempts: config.llm_attempts,
                retry_backoff: config.llm_retry_backoff,
                breaker_failures: config.llm_breaker_failures,
                breaker_cooldown: config.llm_breaker_cooldown,
                user_agent: format!("relay-chat/{} (node {})", env!("CARGO_PKG_VERSION"), config.node_id),
            };
            let window = m.context_tokens.unwrap_or(config.context_tokens);
            models.push(Model {
                name: m.name.clone(),
                label: m.label.clone().unwrap_or_else(|| m.name.clone()),
                context_tokens: window.saturating_sub(config.max_tokens).max(1),
                client: LlmClient::new(settings, metrics.clone())?,
            });
        }
        let experiment = config
            .model_experiment
            .as_ref()
            .and_then(|(name, percent)| models.iter().position(|m| &m.name == name).map(|i| (i, *percent)));
        Ok(Models { models, experiment })
    }

    /// The default model.
    pub fn default_model(&self) -> &Model {
        &self.models[0]
    }

    /// A model by name, if it is on offer.
    pub fn find(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model a session uses: its own if still on offer, else the default.
    pub fn for_session(&self, name: Option<&str>) -> &Model {
        name.and_then(|n| self.find(n)).unwrap_or_else(|| self.default_model())
    }

    /// The arm of the experiment a user is in (`None` without an experiment). Stable: the
    /// user's id decides, hashed with the variant's name so another experiment splits
    /// users afresh.
    pub fn arm(&self, user_id: Uuid) -> Option<Arm> {
        let (variant, percent) = self.experiment?;
        let digest = Sha256::new()
            .chain_update(self.models[variant].name.as_bytes())
            .chain_update(user_id.as_bytes())
            .finalize();
        let bucket = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 100;
        Some(if bucket < u64::from(percent) { Arm::Variant } else { Arm::Control })
    }

    /// The model a user's new session gets when they name none.
    pub fn for_new_session(&self, user_id: Uuid) -> &Model {
        match (self.arm(user_id), self.experiment) {
            (Some(Arm::Variant), Some((variant, _))) => &self.models[variant],
            _ => self.default_model(),
        }
    }

    /// The arm a user is in, as metrics label it (`none` without an experiment).
    pub fn arm_label(&self, user_id: Uuid) -> &'static str {
        self.arm(user_id).map_or("none", Arm::as_str)
    }

    /// The role a model plays in the experiment (`control` the default, `variant`, or
    /// `none`), as the usage report labels its rows.
    pub fn arm_of(&self, model: &str) -> &'static str {
        match self.experiment {
            Some((variant, _)) if self.models[variant].name == model => Arm::Variant.as_str(),
            Some(_) if self.models[0].name == model => Arm::Control.as_str(),
            _ => "none",
        }
    }

    /// The list `GET /api/v1/models` answers.
    pub fn list(&self) -> ModelList {
        ModelList {
            models: self.models.iter().map(|m| ModelOption { name: m.name.clone(), label: m.label.clone() }).collect(),
            default: self.default_model().name.clone(),
        }
    }
}
