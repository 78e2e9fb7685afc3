//! Reading the configuration from its variables, with their defaults and bounds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_mock_llm::MockSettings;

use super::models::parse_models;
use super::secrets::split_credentials;
use super::values::{MAX_SECS, at_most, days, millis, parse, parse_bool, parse_duration, positive, secs};
use super::{ChatEnabled, Config, ConfigError, JwtConfig, ModelBackend, Rollout, redact_url};

/// The variables the built-in mock model reads (see [`MockSettings::from_lookup`]).
const MOCK_VARS: [&str; 9] = [
    "MOCK_FIRST_TOKEN_MS",
    "MOCK_TOKENS_PER_SEC",
    "MOCK_REPLY_TOKENS",
    "MOCK_TOKEN_BYTES",
    "MOCK_FAULT",
    "MOCK_CHOICES",
    "MOCK_API_KEY",
    "MOCK_STAMP",
    "MOCK_DEMO",
];

const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful AI assistant.";

/// The default `CHAT_CONTEXT_TOKENS`: well inside the windows providers serve
/// Llama-4-Maverick with (128 K tokens and more), and small enough that a long chat does
/// not send tens of thousands of tokens with every message; raise it for longer memory.
pub const DEFAULT_CONTEXT_TOKENS: u32 = 32_768;

/// The default `CHAT_MAX_TOKENS`.
const DEFAULT_MAX_TOKENS: u32 = 2048;

/// The least room `CHAT_CONTEXT_TOKENS` must leave for the prompt beside `CHAT_MAX_TOKENS`.
const MIN_PROMPT_TOKENS: u32 = 256;

impl Config {
    /// Loads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    /// Loads the configuration from a map of variables (for tests and embedding).
    pub fn from_map(vars: &HashMap<&str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    /// Loads the configuration from any variable lookup; empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let production = match var("RELAY_ENV").as_deref() {
            None | Some("development") | Some("dev") => false,
            Some("production") | Some("prod") => true,
            Some(other) => {
                return Err(ConfigError {
                    var: "RELAY_ENV",
                    reason: format!("expected development or production, got {other:?}"),
                });
            }
        };
        let data_dir = PathBuf::from(var("RELAY_DATA_DIR").unwrap_or_else(|| "./data".into()));
        let database_url =
            var("DATABASE_URL").unwrap_or_else(|| format!("surrealkv://{}", data_dir.join("relay.db").display()));
        if !["surrealkv://", "mem://", "memory", "ws://", "wss://"].iter().any(|p| database_url.starts_with(p)) {
            return Err(ConfigError {
                var: "DATABASE_URL",
                reason: format!(
                    "unsupported scheme in {:?} (surrealkv://, mem://, ws://, wss://)",
                    redact_url(&database_url)
                ),
            });
        }
        // Credentials written into the URL move out of it at once, so the URL the server
        // keeps (and names in its log and errors) never carries a password.
        let (database_url, url_credentials) = split_credentials(&database_url);
        let database_credentials = match (var("DATABASE_USER"), var("DATABASE_PASS")) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => url_credentials,
            (Some(_), None) => {
                return Err(ConfigError {
                    var: "DATABASE_PASS",
                    reason: "set DATABASE_USER without DATABASE_PASS".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    var: "DATABASE_USER",
                    reason: "set DATABASE_PASS without DATABASE_USER".into(),
                });
            }
        };

        let secret = var("JWT_SECRET").map(String::into_bytes);
        let public_key_pem = var("JWT_PUBLIC_KEY_PEM");
        if let Some(s) = &secret {
            if production && s.len() < 32 {
                return Err(ConfigError {
                    var: "JWT_SECRET",
                    reason: "must be at least 32 bytes when RELAY_ENV=production".into(),
                });
            }
        } else if production {
            return Err(ConfigError {
                var: "JWT_SECRET",
                reason: "required (at least 32 bytes) when RELAY_ENV=production".into(),
            });
        }
        if let Some(pem) = &public_key_pem
            && !pem.contains("-----BEGIN")
        {
            return Err(ConfigError { var: "JWT_PUBLIC_KEY_PEM", reason: "not a PEM public key".into() });
        }
        let jwt = JwtConfig {
            secret,
            public_key_pem,
            issuer: var("JWT_ISSUER"),
            audience: var("JWT_AUDIENCE"),
            ttl: parse_duration("JWT_TTL", var("JWT_TTL"), Duration::from_secs(24 * 3600))?,
            leeway: Duration::from_secs(30),
        };

        let max_tokens: u32 = positive("CHAT_MAX_TOKENS", var("CHAT_MAX_TOKENS"), DEFAULT_MAX_TOKENS)?;
        let (models, model_experiment) = parse_models(
            &var("SAMBANOVA_MODEL").unwrap_or_else(|| "Llama-4-Maverick-17B-128E-Instruct".into()),
            var("CHAT_MODELS"),
            var("CHAT_DEFAULT_MODEL"),
            var("CHAT_MODEL_EXPERIMENT"),
        )?;
        let mut models = models;
        for m in &mut models {
            if let Some(env) = &m.api_key_env {
                m.api_key = Some(var(env).ok_or_else(|| ConfigError {
                    var: "CHAT_MODELS",
                    reason: format!("model {:?} takes its key from {env}, which is not set", m.name),
                })?);
            }
            m.base_url = m.base_url.take().map(|u| u.trim().trim_end_matches('/').to_owned());
            if m.base_url.as_deref().is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
                return Err(ConfigError {
                    var: "CHAT_MODELS",
                    reason: format!("model {:?} has a base_url that is not http(s)://…", m.name),
                });
            }
        }
        let model_backend = match (var("SAMBANOVA_API_KEY"), parse_bool("LLM_MOCK", var("LLM_MOCK"))?) {
            (Some(api_key), false) => ModelBackend::Remote {
                api_key,
                api_base: var("SAMBANOVA_API_BASE")
                    .unwrap_or_else(|| "https://api.sambanova.ai/v1".into())
                    .trim_end_matches('/')
                    .to_string(),
            },
            // The built-in mock answers with its markdown demo (unless `MOCK_DEMO=0`), so a
            // new user sees what the client renders.
            _ => ModelBackend::Mock(MockSettings::from_lookup(var, true).map_err(|reason| ConfigError {
                var: MOCK_VARS.iter().find(|v| reason.starts_with(*v)).copied().unwrap_or("MOCK_*"),
                reason,
            })?),
        };

        let daily_quota: u32 = parse("CHAT_DAILY_MESSAGE_QUOTA", var("CHAT_DAILY_MESSAGE_QUOTA"), 100)?;
        let shared_database = crate::store::is_server(&database_url);
        let cluster = match var("CLUSTER").as_deref().map(str::trim) {
            None | Some("auto") => var("REDIS_URL").is_some() && shared_database,
            Some("on" | "1" | "true") => {
                if var("REDIS_URL").is_none() {
                    return Err(ConfigError { var: "CLUSTER", reason: "a cluster needs REDIS_URL".into() });
                }
                if !shared_database {
                    return Err(ConfigError {
                        var: "CLUSTER",
                        reason: "a cluster needs a shared database server (DATABASE_URL=ws://… or wss://…)".into(),
                    });
                }
                true
            }
            Some("off" | "0" | "false") => false,
            Some(other) => {
                return Err(ConfigError { var: "CLUSTER", reason: format!("expected auto, on or off, got {other:?}") });
            }
        };
        let node_id = match var("NODE_ID") {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                id
            }
            Some(id) => {
                return Err(ConfigError {
                    var: "NODE_ID",
                    reason: format!("{id:?} is not 1 to 64 letters, digits, '-', '_' or '.'"),
                });
            }
            None => {
                let host = var("HOSTNAME").filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
                let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
                match host {
                    Some(host) if !host.is_empty() => format!("{}-{suffix}", &host[..host.len().min(40)]),
                    _ => format!("node-{suffix}"),
                }
            }
        };
        let cluster_lease = millis("CLUSTER_LEASE_MS", var("CLUSTER_LEASE_MS"), 5000)?;
        if cluster_lease < Duration::from_millis(400) {
            return Err(ConfigError { var: "CLUSTER_LEASE_MS", reason: "must be at least 400".into() });
        }
        let llm_timeout = secs("LLM_TIMEOUT_SECS", var("LLM_TIMEOUT_SECS"), 30)?;
        let config = Config {
            bind_addr: parse("BIND_ADDR", var("BIND_ADDR"), SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            production,
            data_dir,
            database_url,
            database_credentials,
            database_ns: var("DATABASE_NS").unwrap_or_else(|| "relay".into()),
            database_db: var("DATABASE_DB").unwrap_or_else(|| "chat".into()),
            database_timeout: Duration::from_millis(at_most(
                "DATABASE_TIMEOUT_MS",
                positive("DATABASE_TIMEOUT_MS", var("DATABASE_TIMEOUT_MS"), 5000)?,
                MAX_SECS * 1000,
                "milliseconds",
            )?),
            database_embedded: crate::store::EmbeddedSizes {
                cache_bytes: positive(
                    "DATABASE_CACHE_BYTES",
                    var("DATABASE_CACHE_BYTES"),
                    crate::store::EmbeddedSizes::DEFAULT.cache_bytes,
                )?,
                memtable_bytes: positive(
                    "DATABASE_MEMTABLE_BYTES",
                    var("DATABASE_MEMTABLE_BYTES"),
                    crate::store::EmbeddedSizes::DEFAULT.memtable_bytes,
                )?,
            },
            jwt,
            admin_users: var("CHAT_ADMIN_USERS")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            model_backend,
            model: models[0].name.clone(),
            models,
            model_experiment,
            max_tokens,
            llm_timeout,
            llm_first_token_timeout: secs(
                "LLM_FIRST_TOKEN_TIMEOUT_SECS",
                var("LLM_FIRST_TOKEN_TIMEOUT_SECS"),
                llm_timeout.as_secs(),
            )?,
            llm_idle_timeout: secs("LLM_IDLE_TIMEOUT_SECS", var("LLM_IDLE_TIMEOUT_SECS"), llm_timeout.as_secs())?,
            llm_attempts: positive("LLM_RETRY_ATTEMPTS", var("LLM_RETRY_ATTEMPTS"), 3)?,
            llm_retry_backoff: millis("LLM_RETRY_BACKOFF_MS", var("LLM_RETRY_BACKOFF_MS"), 200)?,
            llm_breaker_failures: positive("LLM_BREAKER_FAILURES", var("LLM_BREAKER_FAILURES"), 5)?,
            llm_breaker_cooldown: secs("LLM_BREAKER_COOLDOWN_SECS", var("LLM_BREAKER_COOLDOWN_SECS"), 30)?,
            system_prompt: var("CHAT_SYSTEM_PROMPT").unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.into()),
            max_context_messages: positive("CHAT_MAX_CONTEXT_MESSAGES", var("CHAT_MAX_CONTEXT_MESSAGES"), 20)?,
            // Unset, it leaves the prompt the room the default leaves beside the default
            // CHAT_MAX_TOKENS, however large CHAT_MAX_TOKENS is.
            context_tokens: positive(
                "CHAT_CONTEXT_TOKENS",
                var("CHAT_CONTEXT_TOKENS"),
                DEFAULT_CONTEXT_TOKENS.max(max_tokens.saturating_add(DEFAULT_CONTEXT_TOKENS - DEFAULT_MAX_TOKENS)),
            )?,
            max_message_length: positive("CHAT_MAX_MESSAGE_LENGTH", var("CHAT_MAX_MESSAGE_LENGTH"), 4000)?,
            daily_message_quota: (daily_quota > 0).then_some(daily_quota),
            rate_limit_per_minute: Some(parse("CHAT_RATE_LIMIT_PER_MINUTE", var("CHAT_RATE_LIMIT_PER_MINUTE"), 20u32)?)
                .filter(|n| *n > 0),
            redis_url: match var("REDIS_URL") {
                Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => Some(url),
                Some(url) => {
                    return Err(ConfigError {
                        var: "REDIS_URL",
                        reason: format!("{:?} is not a redis:// URL", redact_url(&url)),
                    });
                }
                None => None,
            },
            node_id,
            cluster,
            cluster_lease,
            cancel_grace: millis("CHAT_CANCEL_GRACE_MS", var("CHAT_CANCEL_GRACE_MS"), 3000)?,
            max_queued_sends: positive("CHAT_MAX_QUEUED_SENDS", var("CHAT_MAX_QUEUED_SENDS"), 4)?,
            session_idle: secs("CHAT_SESSION_IDLE_SECS", var("CHAT_SESSION_IDLE_SECS"), 60)?,
            checkpoint_interval: match millis("CHAT_CHECKPOINT_MS", var("CHAT_CHECKPOINT_MS"), 1000)? {
                Duration::ZERO => {
                    return Err(ConfigError { var: "CHAT_CHECKPOINT_MS", reason: "must be greater than zero".into() });
                }
                every => every,
            },
            max_body_bytes: positive("HTTP_MAX_BODY_BYTES", var("HTTP_MAX_BODY_BYTES"), 64 * 1024)?,
            http_header_timeout: secs("HTTP_HEADER_TIMEOUT_SECS", var("HTTP_HEADER_TIMEOUT_SECS"), 10)?,
            http_idle_timeout: secs("HTTP_IDLE_TIMEOUT_SECS", var("HTTP_IDLE_TIMEOUT_SECS"), 60)?,
            http_max_connections_per_address: Some(parse(
                "HTTP_MAX_CONNECTIONS_PER_ADDRESS",
                var("HTTP_MAX_CONNECTIONS_PER_ADDRESS"),
                256usize,
            )?)
            .filter(|n| *n > 0),
            ws_max_frame_bytes: positive("WS_MAX_FRAME_BYTES", var("WS_MAX_FRAME_BYTES"), 64 * 1024)?,
            ws_outbound_queue: positive("WS_OUTBOUND_QUEUE", var("WS_OUTBOUND_QUEUE"), 16_384)?,
            ws_outbound_queue_bytes: positive(
                "WS_OUTBOUND_QUEUE_BYTES",
                var("WS_OUTBOUND_QUEUE_BYTES"),
                4 * 1024 * 1024,
            )?,
            ws_max_subscriptions: positive(
                "WS_MAX_SUBSCRIPTIONS_PER_CONNECTION",
                var("WS_MAX_SUBSCRIPTIONS_PER_CONNECTION"),
                256,
            )?,
            ws_subscribes_per_minute: positive("WS_SUBSCRIBES_PER_MINUTE", var("WS_SUBSCRIBES_PER_MINUTE"), 20)?,
            ws_max_connections_per_user: positive(
                "WS_MAX_CONNECTIONS_PER_USER",
                var("WS_MAX_CONNECTIONS_PER_USER"),
                32,
            )?,
            ws_max_pending_requests: positive("WS_MAX_PENDING_REQUESTS", var("WS_MAX_PENDING_REQUESTS"), 64)?,
            max_sessions_per_user: positive("CHAT_MAX_SESSIONS_PER_USER", var("CHAT_MAX_SESSIONS_PER_USER"), 10_000)?,
            max_reply_bytes: positive("CHAT_MAX_REPLY_BYTES", var("CHAT_MAX_REPLY_BYTES"), 1024 * 1024)?,
            auth_hash_concurrency: positive(
                "AUTH_HASH_CONCURRENCY",
                var("AUTH_HASH_CONCURRENCY"),
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )?,
            auth_hash_queue: parse("AUTH_HASH_QUEUE", var("AUTH_HASH_QUEUE"), 64)?,
            login_failures_per_username: positive(
                "AUTH_LOGIN_FAILURES_PER_USERNAME",
                var("AUTH_LOGIN_FAILURES_PER_USERNAME"),
                10,
            )?,
            login_failures_per_address: positive(
                "AUTH_LOGIN_FAILURES_PER_ADDRESS",
                var("AUTH_LOGIN_FAILURES_PER_ADDRESS"),
                50,
            )?,
            login_window: secs("AUTH_LOGIN_WINDOW_SECS", var("AUTH_LOGIN_WINDOW_SECS"), 900)?,
            registrations_per_address_per_hour: positive(
                "AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR",
                var("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR"),
                10,
            )?,
            trusted_proxies: parse_networks("TRUSTED_PROXIES", var("TRUSTED_PROXIES"))?,
            archive_after: days("CHAT_ARCHIVE_AFTER_DAYS", var("CHAT_ARCHIVE_AFTER_DAYS"), 90)?,
            purge_after: days("CHAT_PURGE_AFTER_DAYS", var("CHAT_PURGE_AFTER_DAYS"), 365)?,
            retention_interval: secs("CHAT_RETENTION_INTERVAL_SECS", var("CHAT_RETENTION_INTERVAL_SECS"), 86_400)?,
            max_stored_messages_per_user: Some(parse(
                "CHAT_MAX_STORED_MESSAGES_PER_USER",
                var("CHAT_MAX_STORED_MESSAGES_PER_USER"),
                0u64,
            )?)
            .filter(|n| *n > 0),
            rollout: Rollout {
                enabled: match var("FEATURE_CHAT_ENABLED").as_deref().map(str::trim) {
                    None | Some("true" | "1" | "yes" | "on") => ChatEnabled::Yes,
                    Some("false" | "0" | "no" | "off") => ChatEnabled::No,
                    Some("admins") => ChatEnabled::Admins,
                    Some(other) => {
                        return Err(ConfigError {
                            var: "FEATURE_CHAT_ENABLED",
                            reason: format!("expected true, false or admins, got {other:?}"),
                        });
                    }
                },
                percent: match parse("FEATURE_CHAT_ROLLOUT_PERCENT", var("FEATURE_CHAT_ROLLOUT_PERCENT"), 100u8)? {
                    p if p <= 100 => p,
                    _ => {
                        return Err(ConfigError {
                            var: "FEATURE_CHAT_ROLLOUT_PERCENT",
                            reason: "must be between 0 and 100".into(),
                        });
                    }
                },
            },
            ws_ping_interval: secs("WS_PING_INTERVAL_SECS", var("WS_PING_INTERVAL_SECS"), 20)?,
            ws_ping_timeout: secs("WS_PING_TIMEOUT_SECS", var("WS_PING_TIMEOUT_SECS"), 60)?,
            ws_auth_timeout: secs("WS_AUTH_TIMEOUT_SECS", var("WS_AUTH_TIMEOUT_SECS"), 10)?,
            cors_allowed_origins: parse_origins(var("CORS_ALLOWED_ORIGINS"))?,
            metrics_token: var("METRICS_TOKEN"),
            client_dir: var("RELAY_CLIENT_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-yew/dist")),
            public_url: parse_public_url(var("PUBLIC_URL"))?,
            share_max_viewers: positive("CHAT_SHARE_MAX_VIEWERS", var("CHAT_SHARE_MAX_VIEWERS"), 100)?,
            share_streams_per_address: positive(
                "CHAT_SHARE_STREAMS_PER_ADDRESS",
                var("CHAT_SHARE_STREAMS_PER_ADDRESS"),
                20,
            )?,
            share_reads_per_minute: positive("CHAT_SHARE_READS_PER_MINUTE", var("CHAT_SHARE_READS_PER_MINUTE"), 120)?,
            search_concurrency: positive(
                "CHAT_SEARCH_CONCURRENCY",
                var("CHAT_SEARCH_CONCURRENCY"),
                std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            )?,
            searches_per_minute: positive("CHAT_SEARCHES_PER_MINUTE", var("CHAT_SEARCHES_PER_MINUTE"), 60)?,
        };
        // The prompt needs room beside the reply: the system prompt and a message at least.
        if config.context_tokens < config.max_tokens.saturating_add(MIN_PROMPT_TOKENS) {
            return Err(ConfigError {
                var: "CHAT_CONTEXT_TOKENS",
                reason: format!(
                    "{} leaves no room for a prompt beside CHAT_MAX_TOKENS ({}): it must be at least {} more",
                    config.context_tokens, config.max_tokens, MIN_PROMPT_TOKENS
                ),
            });
        }
        for m in &config.models {
            if let Some(window) = m.context_tokens
                && window < config.max_tokens.saturating_add(MIN_PROMPT_TOKENS)
            {
                return Err(ConfigError {
                    var: "CHAT_MODELS",
                    reason: format!(
                        "model {:?} has context_tokens {window}, no room for a prompt beside CHAT_MAX_TOKENS ({})",
                        m.name, config.max_tokens
                    ),
                });
            }
        }
        if config.ws_outbound_queue_bytes < 2 * config.max_reply_bytes {
            return Err(ConfigError {
                var: "WS_OUTBOUND_QUEUE_BYTES",
                reason: format!(
                    "{} is less than twice CHAT_MAX_REPLY_BYTES ({}): a whole reply travels as one frame",
                    config.ws_outbound_queue_bytes, config.max_reply_bytes
                ),
            });
        }
        // Only the embedded on-disk engine has a memtable this server sizes.
        if config.database_url.starts_with("surrealkv://") {
            let memtable = config.database_embedded.memtable_bytes;
            let largest = crate::store::largest_message(config.max_reply_bytes, config.max_message_length);
            let needed = crate::store::memtable_needed(largest);
            if memtable < needed {
                return Err(ConfigError {
                    var: "DATABASE_MEMTABLE_BYTES",
                    reason: format!(
                        "{memtable} is less than {needed} (128 × the largest of 1 MiB, CHAT_MAX_REPLY_BYTES and \
                         4 × CHAT_MAX_MESSAGE_LENGTH): \
                         the largest write must fit the memtable"
                    ),
                });
            }
            // SurrealKV's arena is indexed by u32 and quietly caps a larger one.
            if memtable > u64::from(u32::MAX) {
                return Err(ConfigError {
                    var: "DATABASE_MEMTABLE_BYTES",
                    reason: format!("{memtable} is more than SurrealKV's largest memtable, {} bytes", u32::MAX),
                });
            }
        }
        Ok(config)
    }
}

/// Parses a comma-separated list of networks (`10.0.0.0/8`) or addresses (`127.0.0.1`).
fn parse_networks(name: &'static str, value: Option<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<ipnet::IpNet>().or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).map_err(|_| {
                ConfigError { var: name, reason: format!("{n:?} is not an address or a CIDR like 10.0.0.0/8") }
            })
        })
        .collect()
}

/// `PUBLIC_URL`: `http(s)://host[:port][/path]`, kept without its trailing slash.
fn parse_public_url(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(url) = value.map(|v| v.trim().trim_end_matches('/').to_owned()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let host = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    if host.is_none_or(|h| h.is_empty() || h.starts_with('/') || h.contains(['?', '#', ' '])) {
        return Err(ConfigError {
            var: "PUBLIC_URL",
            reason: format!("expected http(s)://host[:port][/path], got {url:?}"),
        });
    }
    Ok(Some(url))
}

/// Parses a comma-separated list of origins such as `https://app.example.com` (or `*`).
fn parse_origins(value: Option<String>) -> Result<Vec<String>, ConfigError> {
    let origins: Vec<String> = value
        .unwrap_or_default()
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect();
    for origin in &origins {
        let valid = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && axum::http::HeaderValue::from_str(origin).is_ok());
        if !valid {
            return Err(ConfigError {
                var: "CORS_ALLOWED_ORIGINS",
                reason: format!("{origin:?} is not an origin like https://app.example.com (or *)"),
            });
        }
    }
    Ok(origins)
}
