//! The model provider and the models users may choose (`CHAT_MODELS`,
//! `CHAT_MODEL_EXPERIMENT`).

use relay_mock_llm::MockSettings;

use super::secrets::REDACTED;
use super::{ConfigError, redact_url};

/// Where the model replies come from.
#[derive(Clone)]
pub enum ModelBackend {
    /// A real OpenAI-compatible provider (SambaNova by default).
    Remote {
        /// The provider's API key.
        api_key: String,
        /// Base URL, e.g. `https://api.sambanova.ai/v1`.
        api_base: String,
    },
    /// The built-in mock model, started on a loopback port at start-up.
    Mock(MockSettings),
}

impl std::fmt::Debug for ModelBackend {
    /// Never prints the API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelBackend::Remote { api_base, .. } => {
                f.debug_struct("Remote").field("api_key", &REDACTED).field("api_base", api_base).finish()
            }
            ModelBackend::Mock(settings) => f.debug_tuple("Mock").field(settings).finish(),
        }
    }
}

/// One model users may choose, as `CHAT_MODELS` lists it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name sent to the provider.
    pub name: String,
    /// What people see; the name when absent.
    #[serde(default)]
    pub label: Option<String>,
    /// Its provider's base URL (`https://…/v1`); absent: `SAMBANOVA_API_BASE`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding its provider's key; absent: `SAMBANOVA_API_KEY`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Its context window (`CHAT_CONTEXT_TOKENS` when absent).
    #[serde(default)]
    pub context_tokens: Option<u32>,
    /// The key read from `api_key_env` when the configuration was loaded (never printed).
    #[serde(skip)]
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelConfig")
            .field("name", &self.name)
            .field("label", &self.label)
            .field("base_url", &self.base_url.as_deref().map(redact_url))
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .field("context_tokens", &self.context_tokens)
            .finish()
    }
}

/// A model experiment: the variant's name and the percent of users it gets.
pub type Experiment = (String, u8);

/// `CHAT_MODELS`, `CHAT_DEFAULT_MODEL` and `CHAT_MODEL_EXPERIMENT`: the models, the default
/// first, and the experiment's variant and share.
pub(super) fn parse_models(
    default_name: &str,
    list: Option<String>,
    default: Option<String>,
    experiment: Option<String>,
) -> Result<(Vec<ModelConfig>, Option<Experiment>), ConfigError> {
    let err = |var: &'static str, reason: String| ConfigError { var, reason };
    let mut models: Vec<ModelConfig> = match list.filter(|l| !l.trim().is_empty()) {
        None => vec![ModelConfig {
            name: default_name.to_owned(),
            label: None,
            base_url: None,
            api_key_env: None,
            context_tokens: None,
            api_key: None,
        }],
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            err("CHAT_MODELS", format!("expected a JSON list of {{\"name\", \"label\"?, \"base_url\"?, \"api_key_env\"?, \"context_tokens\"?}}: {e}"))
        })?,
    };
    if models.is_empty() {
        return Err(err("CHAT_MODELS", "lists no model".into()));
    }
    for (i, m) in models.iter().enumerate() {
        if m.name.trim().is_empty() || m.name.len() > 200 {
            return Err(err("CHAT_MODELS", format!("model {} has an empty or over-long name", i + 1)));
        }
        if models[..i].iter().any(|o| o.name == m.name) {
            return Err(err("CHAT_MODELS", format!("{:?} is listed twice", m.name)));
        }
    }
    if let Some(default) = default.filter(|d| !d.trim().is_empty()) {
        let at = models
            .iter()
            .position(|m| m.name == default)
            .ok_or_else(|| err("CHAT_DEFAULT_MODEL", format!("{default:?} is not in CHAT_MODELS")))?;
        let chosen = models.remove(at);
        models.insert(0, chosen);
    }
    let experiment = match experiment.filter(|e| !e.trim().is_empty()) {
        None => None,
        Some(spec) => {
            let (name, percent) = spec.rsplit_once(':').ok_or_else(|| {
                err("CHAT_MODEL_EXPERIMENT", format!("expected <model>:<percent of users>, got {spec:?}"))
            })?;
            let percent: u8 = percent
                .trim()
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| err("CHAT_MODEL_EXPERIMENT", format!("{percent:?} is not a percent (0 to 100)")))?;
            if !models.iter().any(|m| m.name == name) {
                return Err(err("CHAT_MODEL_EXPERIMENT", format!("{name:?} is not in CHAT_MODELS")));
            }
            if models[0].name == name {
                return Err(err("CHAT_MODEL_EXPERIMENT", format!("{name:?} is the default model: compare another")));
            }
            Some((name.to_owned(), percent))
        }
    };
    Ok((models, experiment))
}
