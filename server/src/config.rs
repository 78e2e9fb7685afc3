//! Server configuration: one struct, loaded once from the environment.
//!
//! Every variable has a default that runs on a fresh machine; a bad value fails start-up
//! with an error naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use relay_mock_llm::MockSettings;

/// A configuration variable that is missing a required value or has a bad one.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

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

/// What `Debug` prints in place of a secret.
const REDACTED: &str = "<redacted>";

/// Who may use chat (`FEATURE_CHAT_ENABLED`, `FEATURE_CHAT_ROLLOUT_PERCENT`): the
/// proposal's rollout plan as settings. Everyone else gets `404` from the chat routes and
/// the WebSocket, as if chat did not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// `true` (everyone in the share), `false` (nobody) or `admins` (admins only).
    pub enabled: ChatEnabled,
    /// The share of users (0–100) who have chat, stable per user id; admins always do.
    pub percent: u8,
}

/// `FEATURE_CHAT_ENABLED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatEnabled {
    /// Chat is on (for the rollout share).
    Yes,
    /// Chat is off for everyone.
    No,
    /// Chat is on for admins only.
    Admins,
}

impl Rollout {
    /// Whether chat exists at all (else every chat route is `404`, token or not).
    pub fn any(&self) -> bool {
        self.enabled != ChatEnabled::No
    }

    /// Whether a user has chat: admins whenever it is on; others when it is on for all and
    /// their id falls in the share (a UUID's random bits spread users evenly and stably).
    pub fn allows(&self, user_id: uuid::Uuid, admin: bool) -> bool {
        match self.enabled {
            ChatEnabled::No => false,
            ChatEnabled::Admins => admin,
            ChatEnabled::Yes => admin || (user_id.as_u128() % 100) < u128::from(self.percent),
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
fn parse_models(
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

/// How the server verifies and issues tokens.
#[derive(Clone)]
pub struct JwtConfig {
    /// HS256 secret for tokens this server issues (and host tokens signed with it).
    /// `None` in dev mode until the server generates one beside its data.
    pub secret: Option<Vec<u8>>,
    /// Public key (PEM) of a host application that signs tokens with RS256 or ES256.
    pub public_key_pem: Option<String>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Lifetime of tokens this server issues.
    pub ttl: Duration,
    /// Clock skew tolerated on `exp`.
    pub leeway: Duration,
}

impl std::fmt::Debug for JwtConfig {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| REDACTED))
            .field("public_key_pem", &self.public_key_pem.as_ref().map(|_| "<pem>"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// The whole server configuration. Its `Debug` output redacts every secret (the JWT
/// secret, the provider key, the database password, the metrics token).
#[derive(Clone)]
pub struct Config {
    /// `BIND_ADDR`: where the HTTP server listens.
    pub bind_addr: SocketAddr,
    /// `RELAY_ENV=production` turns dev conveniences off (generated secrets).
    pub production: bool,
    /// `RELAY_DATA_DIR`: directory for the embedded database and generated secrets.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: `surrealkv://path`, `mem://` or `ws://host:port`.
    pub database_url: String,
    /// `DATABASE_USER` / `DATABASE_PASS`: root credentials for a remote SurrealDB.
    pub database_credentials: Option<(String, String)>,
    /// `DATABASE_NS`: SurrealDB namespace.
    pub database_ns: String,
    /// `DATABASE_DB`: SurrealDB database.
    pub database_db: String,
    /// `DATABASE_TIMEOUT_MS`: how long a request waits for the database (a query, or the
    /// commit of a user message or a final reply) before it answers `unavailable`.
    pub database_timeout: Duration,
    /// JWT settings.
    pub jwt: JwtConfig,
    /// `CHAT_ADMIN_USERS`: usernames that are admins.
    pub admin_users: Vec<String>,
    /// The model provider or the mock.
    pub model_backend: ModelBackend,
    /// `SAMBANOVA_MODEL`: model name sent upstream (the default model unless
    /// `CHAT_MODELS` says otherwise).
    pub model: String,
    /// `CHAT_MODELS` (a JSON list) and `CHAT_DEFAULT_MODEL`: the models users may choose,
    /// the default first; without `CHAT_MODELS`, just `SAMBANOVA_MODEL`.
    pub models: Vec<ModelConfig>,
    /// `CHAT_MODEL_EXPERIMENT` (`<model>:<percent>`): that share of users (by id, stably)
    /// get the model for their new sessions instead of the default.
    pub model_experiment: Option<Experiment>,
    /// `CHAT_MAX_TOKENS`: reply token limit sent upstream.
    pub max_tokens: u32,
    /// `LLM_TIMEOUT_SECS`: the default of both timeouts below.
    pub llm_timeout: Duration,
    /// `LLM_FIRST_TOKEN_TIMEOUT_SECS`: from a send to its first token, across retries.
    pub llm_first_token_timeout: Duration,
    /// `LLM_IDLE_TIMEOUT_SECS`: between two chunks once text flows.
    pub llm_idle_timeout: Duration,
    /// `LLM_RETRY_ATTEMPTS`: attempts per reply before its first token (1 = no retry).
    pub llm_attempts: u32,
    /// `LLM_RETRY_BACKOFF_MS`: the first retry's backoff, doubled for each later one.
    pub llm_retry_backoff: Duration,
    /// `LLM_BREAKER_FAILURES`: consecutive provider failures that open the circuit breaker.
    pub llm_breaker_failures: u32,
    /// `LLM_BREAKER_COOLDOWN_SECS`: how long the open breaker refuses before one probe.
    pub llm_breaker_cooldown: Duration,
    /// `CHAT_SYSTEM_PROMPT`: the system message that starts every context.
    pub system_prompt: String,
    /// `CHAT_MAX_CONTEXT_MESSAGES`: how many recent messages are sent as context.
    pub max_context_messages: usize,
    /// `CHAT_CONTEXT_TOKENS`: the model's context window as replies use it: the prompt (the
    /// system prompt and the newest messages that fit, whole) gets this less
    /// `CHAT_MAX_TOKENS`, counted by a conservative estimate (`session::budget`).
    pub context_tokens: u32,
    /// `CHAT_MAX_MESSAGE_LENGTH`: longest user message, in characters.
    pub max_message_length: usize,
    /// `CHAT_DAILY_MESSAGE_QUOTA`: messages per user per UTC day (0 = unlimited).
    pub daily_message_quota: Option<u32>,
    /// `CHAT_RATE_LIMIT_PER_MINUTE`: sends per user per minute (0 = unlimited).
    pub rate_limit_per_minute: Option<u32>,
    /// `REDIS_URL`: where limits are shared between nodes; in process without it.
    pub redis_url: Option<String>,
    /// `NODE_ID`: this node's name in logs, metrics and the cluster (generated when unset).
    pub node_id: String,
    /// Whether this node joins a cluster (`CLUSTER`: `auto`, the default, joins when
    /// `REDIS_URL` is set and the database is a shared server, `ws://` or `wss://`).
    pub cluster: bool,
    /// `CLUSTER_LEASE_MS`: how long a session lease and a node heartbeat live unrenewed,
    /// so how soon a dead node's sessions fail over.
    pub cluster_lease: Duration,
    /// `CHAT_CANCEL_GRACE_MS`: how long a reply runs on with nobody watching.
    pub cancel_grace: Duration,
    /// `CHAT_MAX_QUEUED_SENDS`: sends a session may hold waiting; more answer `busy`.
    pub max_queued_sends: usize,
    /// `CHAT_SESSION_IDLE_SECS`: an unwatched, idle session actor stops after this.
    pub session_idle: Duration,
    /// `CHAT_CHECKPOINT_MS`: how often a reply in progress is saved.
    pub checkpoint_interval: Duration,
    /// `HTTP_MAX_BODY_BYTES`: largest REST request body.
    pub max_body_bytes: usize,
    /// `HTTP_HEADER_TIMEOUT_SECS`: from a request's first byte to the end of its header; a
    /// client slower than this (trickling a header to hold the socket) is disconnected.
    pub http_header_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT_SECS`: how long a connection may sit with no request in progress
    /// (WebSockets excepted: they have their own pings).
    pub http_idle_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS_PER_ADDRESS`: sockets one client address (an IPv6 client by its
    /// /64) may hold open; more are closed unanswered. `TRUSTED_PROXIES` are not capped.
    /// `None` (0): no cap.
    pub http_max_connections_per_address: Option<usize>,
    /// `WS_MAX_FRAME_BYTES`: largest WebSocket frame; larger closes with 1009.
    pub ws_max_frame_bytes: usize,
    /// `WS_OUTBOUND_QUEUE`: frames buffered per connection before it counts as too slow.
    /// The byte bound is what holds memory (each queued frame adds about 40 bytes of its
    /// own); this one leaves room for a connection that multiplexes many streaming
    /// sessions (64 frames each at the subscription cap).
    pub ws_outbound_queue: usize,
    /// `WS_OUTBOUND_QUEUE_BYTES`: bytes buffered per connection before it counts as too slow.
    pub ws_outbound_queue_bytes: usize,
    /// `WS_MAX_SUBSCRIPTIONS_PER_CONNECTION`: sessions one connection may watch at once.
    pub ws_max_subscriptions: usize,
    /// `WS_SUBSCRIBES_PER_MINUTE`: `subscribe` frames one connection may send per minute
    /// (a burst of that many, refilled evenly): each is answered with a snapshot of up to
    /// half the outbound queue, so they are bounded like sends.
    pub ws_subscribes_per_minute: u32,
    /// `WS_MAX_CONNECTIONS_PER_USER`: WebSocket connections one user may hold open.
    pub ws_max_connections_per_user: usize,
    /// `WS_MAX_PENDING_REQUESTS`: requests of one connection being handled at once; the
    /// connection's next frame is read when one finishes.
    pub ws_max_pending_requests: usize,
    /// `CHAT_MAX_SESSIONS_PER_USER`: live sessions one user may have.
    pub max_sessions_per_user: u64,
    /// `CHAT_MAX_REPLY_BYTES`: longest reply kept; a longer one is cut and ends `length`.
    pub max_reply_bytes: usize,
    /// `AUTH_HASH_CONCURRENCY`: password hashes computed at once (default: the core count).
    pub auth_hash_concurrency: usize,
    /// `AUTH_HASH_QUEUE`: password checks that may wait for a thread; more are refused.
    pub auth_hash_queue: usize,
    /// `AUTH_LOGIN_FAILURES_PER_USERNAME`: failed logins of one username per window.
    pub login_failures_per_username: u32,
    /// `AUTH_LOGIN_FAILURES_PER_ADDRESS`: failed logins from one client address per window.
    pub login_failures_per_address: u32,
    /// `AUTH_LOGIN_WINDOW_SECS`: the window failed logins are counted in.
    pub login_window: Duration,
    /// `AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR`: new accounts from one client address.
    pub registrations_per_address_per_hour: u32,
    /// `TRUSTED_PROXIES`: proxies (CIDRs) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `FEATURE_CHAT_ENABLED` and `FEATURE_CHAT_ROLLOUT_PERCENT`.
    pub rollout: Rollout,
    /// `CHAT_ARCHIVE_AFTER_DAYS`: deleted sessions older than this are archived.
    pub archive_after: Duration,
    /// `CHAT_PURGE_AFTER_DAYS`: deleted sessions older than this are purged for good.
    pub purge_after: Duration,
    /// `CHAT_RETENTION_INTERVAL_SECS`: how often the retention job runs (also at start).
    pub retention_interval: Duration,
    /// `CHAT_MAX_STORED_MESSAGES_PER_USER`: messages a user's live sessions may hold.
    pub max_stored_messages_per_user: Option<u64>,
    /// `WS_PING_INTERVAL_SECS`: how often the server pings an idle connection.
    pub ws_ping_interval: Duration,
    /// `WS_PING_TIMEOUT_SECS`: a connection silent this long is closed.
    pub ws_ping_timeout: Duration,
    /// `WS_AUTH_TIMEOUT_SECS`: time allowed for the first `auth` frame.
    pub ws_auth_timeout: Duration,
    /// `CORS_ALLOWED_ORIGINS`: browser origins (other than the server's own) allowed to call
    /// the REST API; empty allows none, `*` allows any.
    pub cors_allowed_origins: Vec<String>,
    /// `METRICS_TOKEN`: a static bearer token for Prometheus scrapers; `/metrics` also
    /// accepts an admin's JWT.
    pub metrics_token: Option<String>,
    /// `RELAY_CLIENT_DIR`: the built browser client served at `/` (`cargo xtask client`).
    pub client_dir: PathBuf,
    /// `PUBLIC_URL`: the address people reach this server at (`https://chat.example`),
    /// which share links start with; unset, a link starts with the address the request
    /// that made it came to.
    pub public_url: Option<String>,
    /// `CHAT_SHARE_MAX_VIEWERS`: live viewers one share link may have at once (across the
    /// cluster).
    pub share_max_viewers: usize,
    /// `CHAT_SHARE_STREAMS_PER_ADDRESS`: live share streams one client address may hold
    /// open at once on a node (IPv6 counted by /64).
    pub share_streams_per_address: usize,
    /// `CHAT_SEARCH_CONCURRENCY`: searches that run at once on a node (more wait up to 2 s,
    /// then are refused `503`), so searching cannot crowd out streaming.
    pub search_concurrency: usize,
    /// `CHAT_SEARCHES_PER_MINUTE`: searches one user may make per minute.
    pub searches_per_minute: u32,
    /// `CHAT_SHARE_READS_PER_MINUTE`: share reads (page loads and stream starts) one client
    /// address may make per minute.
    pub share_reads_per_minute: u32,
}

impl std::fmt::Debug for Config {
    /// Every field, secrets redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bind_addr", &self.bind_addr)
            .field("production", &self.production)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_credentials", &self.database_credentials.as_ref().map(|(user, _)| (user, REDACTED)))
            .field("database_ns", &self.database_ns)
            .field("database_db", &self.database_db)
            .field("database_timeout", &self.database_timeout)
            .field("jwt", &self.jwt)
            .field("admin_users", &self.admin_users)
            .field("model_backend", &self.model_backend)
            .field("model", &self.model)
            .field("models", &self.models)
            .field("model_experiment", &self.model_experiment)
            .field("max_tokens", &self.max_tokens)
            .field("llm_timeout", &self.llm_timeout)
            .field("llm_first_token_timeout", &self.llm_first_token_timeout)
            .field("llm_idle_timeout", &self.llm_idle_timeout)
            .field("llm_attempts", &self.llm_attempts)
            .field("llm_retry_backoff", &self.llm_retry_backoff)
            .field("llm_breaker_failures", &self.llm_breaker_failures)
            .field("llm_breaker_cooldown", &self.llm_breaker_cooldown)
            .field("system_prompt", &self.system_prompt)
            .field("max_context_messages", &self.max_context_messages)
            .field("context_tokens", &self.context_tokens)
            .field("max_message_length", &self.max_message_length)
            .field("daily_message_quota", &self.daily_message_quota)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("node_id", &self.node_id)
            .field("cluster", &self.cluster)
            .field("cluster_lease", &self.cluster_lease)
            .field("cancel_grace", &self.cancel_grace)
            .field("max_queued_sends", &self.max_queued_sends)
            .field("session_idle", &self.session_idle)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("http_header_timeout", &self.http_header_timeout)
            .field("http_idle_timeout", &self.http_idle_timeout)
            .field("http_max_connections_per_address", &self.http_max_connections_per_address)
            .field("ws_max_frame_bytes", &self.ws_max_frame_bytes)
            .field("ws_outbound_queue", &self.ws_outbound_queue)
            .field("ws_outbound_queue_bytes", &self.ws_outbound_queue_bytes)
            .field("ws_max_subscriptions", &self.ws_max_subscriptions)
            .field("ws_subscribes_per_minute", &self.ws_subscribes_per_minute)
            .field("ws_max_connections_per_user", &self.ws_max_connections_per_user)
            .field("ws_max_pending_requests", &self.ws_max_pending_requests)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .field("auth_hash_concurrency", &self.auth_hash_concurrency)
            .field("auth_hash_queue", &self.auth_hash_queue)
            .field("login_failures_per_username", &self.login_failures_per_username)
            .field("login_failures_per_address", &self.login_failures_per_address)
            .field("login_window", &self.login_window)
            .field("registrations_per_address_per_hour", &self.registrations_per_address_per_hour)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("rollout", &self.rollout)
            .field("archive_after", &self.archive_after)
            .field("purge_after", &self.purge_after)
            .field("retention_interval", &self.retention_interval)
            .field("max_stored_messages_per_user", &self.max_stored_messages_per_user)
            .field("ws_ping_interval", &self.ws_ping_interval)
            .field("ws_ping_timeout", &self.ws_ping_timeout)
            .field("ws_auth_timeout", &self.ws_auth_timeout)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| REDACTED))
            .field("client_dir", &self.client_dir)
            .field("public_url", &self.public_url)
            .field("share_max_viewers", &self.share_max_viewers)
            .field("share_streams_per_address", &self.share_streams_per_address)
            .field("share_reads_per_minute", &self.share_reads_per_minute)
            .field("search_concurrency", &self.search_concurrency)
            .field("searches_per_minute", &self.searches_per_minute)
            .finish()
    }
}

/// Splits `ws://user:pass@host:port/...` (or `wss://`) into the URL without its user
/// part and the (percent-decoded) user and password; other URLs are left whole.
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some(rest) = url.strip_prefix("ws://").or_else(|| url.strip_prefix("wss://")) else {
        return (url.to_string(), None);
    };
    let scheme = &url[..url.len() - rest.len()];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return (url.to_string(), None) };
    let (user, pass) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    (format!("{scheme}{}", &rest[at + 1..]), Some((percent_decode(user), percent_decode(pass))))
}

/// Decodes `%XX` escapes (as URLs write reserved characters in a user or password).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Config {
    /// How to reach the database (`DATABASE_*`).
    pub fn store_config(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            url: self.database_url.clone(),
            credentials: self.database_credentials.clone(),
            namespace: self.database_ns.clone(),
            database: self.database_db.clone(),
            timeout: self.database_timeout,
        }
    }

    /// Every secret the configuration holds, to scrub from text that may have picked one
    /// up (an error from a library that echoes what it was given).
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = Vec::new();
        if let Some((_, pass)) = &self.database_credentials {
            secrets.push(pass.clone());
        }
        let redis_rest = self.redis_url.as_deref().and_then(|u| u.split_once("://")).map(|(_, rest)| rest);
        if let Some((_, Some((_, pass)))) = redis_rest.map(|rest| split_credentials(&format!("ws://{rest}"))) {
            secrets.push(pass);
        }
        if let Some(secret) = &self.jwt.secret {
            secrets.push(String::from_utf8_lossy(secret).into_owned());
        }
        if let ModelBackend::Remote { api_key, .. } = &self.model_backend {
            secrets.push(api_key.clone());
        }
        secrets.extend(self.metrics_token.clone());
        // A very short "secret" would blank out ordinary words.
        secrets.retain(|s| s.len() >= 4);
        secrets
    }

    /// `text` with every secret of this configuration replaced by `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        self.secrets().iter().fold(text.to_string(), |text, secret| text.replace(secret.as_str(), REDACTED))
    }
}

/// A database URL without the password a `ws://user:pass@host` form may carry.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://{REDACTED}@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

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
        let shared_database = database_url.starts_with("ws://") || database_url.starts_with("wss://");
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

/// Parses a comma-separated list of origins such as `https://app.example.com` (or `*`).
/// The default `CHAT_CONTEXT_TOKENS`: well inside the windows providers serve
/// Llama-4-Maverick with (128 K tokens and more), and small enough that a long chat does
/// not send tens of thousands of tokens with every message; raise it for longer memory.
pub const DEFAULT_CONTEXT_TOKENS: u32 = 32_768;

/// The default `CHAT_MAX_TOKENS`.
const DEFAULT_MAX_TOKENS: u32 = 2048;

/// The least room `CHAT_CONTEXT_TOKENS` must leave for the prompt beside `CHAT_MAX_TOKENS`.
const MIN_PROMPT_TOKENS: u32 = 256;

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

fn parse<T: FromStr>(name: &'static str, value: Option<String>, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match value {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| ConfigError { var: name, reason: format!("{v:?}: {e}") }),
    }
}

fn positive<T: FromStr + PartialOrd + Default>(
    name: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let v = parse(name, value, default)?;
    if v <= T::default() {
        return Err(ConfigError { var: name, reason: "must be greater than zero".into() });
    }
    Ok(v)
}

/// The longest time a setting in seconds or milliseconds may name (ten years): a longer one
/// would overflow the clock arithmetic done with it (a timer's deadline, a token's expiry)
/// and panic whatever uses it, long after start-up.
const MAX_SECS: u64 = 10 * 365 * 86_400;

/// The longest retention age (`CHAT_ARCHIVE_AFTER_DAYS`, `CHAT_PURGE_AFTER_DAYS`): about 273
/// years, "never" in practice, while the cutoff date (now minus the age) still exists.
const MAX_DAYS: u64 = 100_000;

/// Refuses `value` (in `unit`) over `max`.
fn at_most(name: &'static str, value: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
    if value > max {
        return Err(ConfigError { var: name, reason: format!("{value} {unit} is more than the most allowed, {max}") });
    }
    Ok(value)
}

/// A number of seconds, greater than zero and at most [`MAX_SECS`].
fn secs(name: &'static str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(at_most(name, positive(name, value, default)?, MAX_SECS, "seconds")?))
}

/// A number of milliseconds (0 allowed), at most [`MAX_SECS`] seconds.
fn millis(name: &'static str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(at_most(name, parse(name, value, default)?, MAX_SECS * 1000, "milliseconds")?))
}

/// A number of days (0 allowed: at once), at most [`MAX_DAYS`].
fn days(name: &'static str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    let days = at_most(name, parse(name, value, default)?, MAX_DAYS, "days")?;
    Ok(Duration::from_secs(days * 86_400))
}

fn parse_bool(name: &'static str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::trim) {
        None => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError { var: name, reason: format!("expected 1/0/true/false, got {other:?}") }),
    }
}

/// Parses `90`, `90s`, `15m`, `24h` or `7d`.
fn parse_duration(name: &'static str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let v = v.trim();
    let (digits, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = digits.parse().map_err(|_| ConfigError {
        var: name,
        reason: format!("{v:?} is not a duration like 3600, 90s, 15m, 24h, 7d"),
    })?;
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(ConfigError { var: name, reason: format!("unknown unit in {v:?} (s, m, h, d)") }),
    };
    let secs = n.saturating_mul(unit_secs);
    if secs == 0 {
        return Err(ConfigError { var: name, reason: "must be greater than zero".into() });
    }
    Ok(Duration::from_secs(at_most(name, secs, MAX_SECS, "seconds")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_the_experiment() {
        let c = load(&[]).unwrap();
        assert_eq!(
            c.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["Llama-4-Maverick-17B-128E-Instruct"]
        );
        assert_eq!((c.context_tokens, c.max_tokens), (32_768, 2048));
        let c = load(&[("CHAT_MAX_TOKENS", "100000")]).unwrap();
        assert_eq!(c.context_tokens, 100_000 + 30_720, "unset, it grows with CHAT_MAX_TOKENS");
        assert_eq!(load(&[("CHAT_CONTEXT_TOKENS", "2200")]).unwrap_err().var, "CHAT_CONTEXT_TOKENS");
        let tight = r#"[{"name": "a", "context_tokens": 2100}]"#;
        assert_eq!(load(&[("CHAT_MODELS", tight)]).unwrap_err().var, "CHAT_MODELS");
        let list = r#"[{"name": "a", "label": "A"}, {"name": "b", "context_tokens": 9000}]"#;
        let c = load(&[("CHAT_MODELS", list), ("CHAT_DEFAULT_MODEL", "b"), ("CHAT_MODEL_EXPERIMENT", "a:25")]).unwrap();
        assert_eq!((c.model.as_str(), c.models[1].name.as_str()), ("b", "a"), "the default first");
        assert_eq!(c.model_experiment, Some(("a".into(), 25)));
        for (pairs, var) in [
            (vec![("CHAT_MODELS", "[]")], "CHAT_MODELS"),
            (vec![("CHAT_MODELS", "nope")], "CHAT_MODELS"),
            (vec![("CHAT_MODELS", r#"[{"name": "a"}, {"name": "a"}]"#)], "CHAT_MODELS"),
            (vec![("CHAT_MODELS", r#"[{"name": "a", "api_key_env": "NOT_SET_X"}]"#)], "CHAT_MODELS"),
            (vec![("CHAT_DEFAULT_MODEL", "zzz")], "CHAT_DEFAULT_MODEL"),
            (vec![("CHAT_MODEL_EXPERIMENT", "zzz:10")], "CHAT_MODEL_EXPERIMENT"),
            (vec![("CHAT_MODELS", list), ("CHAT_MODEL_EXPERIMENT", "b:101")], "CHAT_MODEL_EXPERIMENT"),
            (vec![("CHAT_MODELS", list), ("CHAT_MODEL_EXPERIMENT", "a:10")], "CHAT_MODEL_EXPERIMENT"),
        ] {
            assert_eq!(load(&pairs).unwrap_err().var, var, "{pairs:?}");
        }
    }

    fn load(pairs: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<&str, String> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Config::from_map(&map)
    }

    #[test]
    fn defaults_run_anywhere() {
        let c = load(&[]).unwrap();
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8080");
        assert!(c.database_url.starts_with("surrealkv://"));
        assert!(matches!(c.model_backend, ModelBackend::Mock(_)));
        assert_eq!(c.max_message_length, 4000);
        assert_eq!(c.max_context_messages, 20);
        assert_eq!(c.cancel_grace, Duration::from_millis(3000));
        assert_eq!(c.jwt.ttl, Duration::from_secs(86400));
        assert_eq!((c.http_header_timeout, c.http_idle_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
        assert_eq!(c.http_max_connections_per_address, Some(256));
        assert_eq!(load(&[("HTTP_MAX_CONNECTIONS_PER_ADDRESS", "0")]).unwrap().http_max_connections_per_address, None);
        assert_eq!(
            load(&[("HTTP_MAX_CONNECTIONS_PER_ADDRESS", "many")]).map(|_| ()).unwrap_err().var,
            "HTTP_MAX_CONNECTIONS_PER_ADDRESS"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(load(&[("BIND_ADDR", "nowhere")]).unwrap_err().var, "BIND_ADDR");
        assert_eq!(load(&[("CHAT_MAX_TOKENS", "0")]).unwrap_err().var, "CHAT_MAX_TOKENS");
        assert_eq!(load(&[("JWT_TTL", "3x")]).unwrap_err().var, "JWT_TTL");
        assert_eq!(load(&[("DATABASE_URL", "postgres://x")]).unwrap_err().var, "DATABASE_URL");
        assert_eq!(load(&[("MOCK_FAULT", "explode")]).unwrap_err().var, "MOCK_FAULT");
        assert_eq!(load(&[("CORS_ALLOWED_ORIGINS", "example.com")]).unwrap_err().var, "CORS_ALLOWED_ORIGINS");
        assert_eq!(load(&[("TRUSTED_PROXIES", "10.0.0.0/8, nonsense")]).unwrap_err().var, "TRUSTED_PROXIES");
        assert_eq!(load(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).unwrap().trusted_proxies.len(), 2);
        assert_eq!(load(&[("REDIS_URL", "localhost:6379")]).unwrap_err().var, "REDIS_URL");
        assert_eq!(load(&[("FEATURE_CHAT_ENABLED", "maybe")]).unwrap_err().var, "FEATURE_CHAT_ENABLED");
        assert_eq!(load(&[("FEATURE_CHAT_ROLLOUT_PERCENT", "101")]).unwrap_err().var, "FEATURE_CHAT_ROLLOUT_PERCENT");
        for url in
            ["chat.example", "ftp://chat.example", "https://", "https:///x", "https://chat.example/?x=1", "https://a b"]
        {
            assert_eq!(load(&[("PUBLIC_URL", url)]).unwrap_err().var, "PUBLIC_URL", "{url}");
        }
        assert_eq!(
            load(&[("PUBLIC_URL", " https://chat.example/relay/ ")]).unwrap().public_url.as_deref(),
            Some("https://chat.example/relay")
        );
        assert_eq!(load(&[("PUBLIC_URL", "")]).unwrap().public_url, None, "empty is unset");
        assert_eq!(
            load(&[("CORS_ALLOWED_ORIGINS", "https://a.example, http://b.example/")]).unwrap().cors_allowed_origins,
            ["https://a.example", "http://b.example"]
        );
    }

    /// Values that would overflow a date or a timer later (and panic the task using them)
    /// are refused at start, naming the variable.
    #[test]
    fn out_of_range_durations_are_refused_at_start() {
        for var in ["CHAT_ARCHIVE_AFTER_DAYS", "CHAT_PURGE_AFTER_DAYS"] {
            for huge in ["1000000000000", "18446744073709551615", "213503982334601"] {
                assert_eq!(load(&[(var, huge)]).map(|_| ()).unwrap_err().var, var, "{var}={huge}");
            }
            assert!(load(&[(var, "36500")]).is_ok(), "a century is fine");
        }
        for var in [
            "CHAT_RETENTION_INTERVAL_SECS",
            "WS_PING_INTERVAL_SECS",
            "WS_PING_TIMEOUT_SECS",
            "WS_AUTH_TIMEOUT_SECS",
            "LLM_TIMEOUT_SECS",
            "LLM_BREAKER_COOLDOWN_SECS",
            "AUTH_LOGIN_WINDOW_SECS",
            "CHAT_SESSION_IDLE_SECS",
        ] {
            assert_eq!(load(&[(var, "18446744073709551615")]).map(|_| ()).unwrap_err().var, var, "{var}");
        }
        assert_eq!(load(&[("JWT_TTL", "99999999999999999d")]).map(|_| ()).unwrap_err().var, "JWT_TTL");
        for var in ["HTTP_HEADER_TIMEOUT_SECS", "HTTP_IDLE_TIMEOUT_SECS"] {
            assert_eq!(load(&[(var, "0")]).map(|_| ()).unwrap_err().var, var);
            assert_eq!(load(&[(var, "18446744073709551615")]).map(|_| ()).unwrap_err().var, var);
        }
        assert_eq!(load(&[("JWT_TTL", "500000000000000000")]).map(|_| ()).unwrap_err().var, "JWT_TTL");
    }

    #[test]
    fn a_shared_database_and_redis_make_a_cluster() {
        let (redis, ws) = (("REDIS_URL", "redis://127.0.0.1:6379"), ("DATABASE_URL", "ws://127.0.0.1:8000"));
        assert!(load(&[redis, ws]).unwrap().cluster, "auto: both shared");
        assert!(!load(&[redis]).unwrap().cluster, "an embedded database is one node's");
        assert!(!load(&[ws]).unwrap().cluster, "no Redis, no cluster");
        assert!(!load(&[redis, ws, ("CLUSTER", "off")]).unwrap().cluster);
        assert_eq!(load(&[ws, ("CLUSTER", "on")]).unwrap_err().var, "CLUSTER");
        assert_eq!(load(&[redis, ("CLUSTER", "on")]).unwrap_err().var, "CLUSTER");
        assert_eq!(load(&[("CLUSTER", "sometimes")]).unwrap_err().var, "CLUSTER");
        assert_eq!(load(&[("CLUSTER_LEASE_MS", "100")]).unwrap_err().var, "CLUSTER_LEASE_MS");
        assert_eq!(load(&[("NODE_ID", "a b")]).unwrap_err().var, "NODE_ID");
        assert_eq!(load(&[("NODE_ID", "node-7.eu_west")]).unwrap().node_id, "node-7.eu_west");
        let (one, two) = (load(&[]).unwrap().node_id, load(&[]).unwrap().node_id);
        assert_ne!(one, two, "a generated NODE_ID is unique per start");
        assert_eq!(load(&[]).unwrap().cluster_lease, Duration::from_secs(5));
        assert_eq!(load(&[]).unwrap().database_timeout, Duration::from_secs(5));
        assert_eq!(load(&[("DATABASE_TIMEOUT_MS", "0")]).unwrap_err().var, "DATABASE_TIMEOUT_MS");
        assert_eq!(load(&[]).unwrap().ws_subscribes_per_minute, 20);
        assert_eq!(load(&[("WS_SUBSCRIBES_PER_MINUTE", "0")]).unwrap_err().var, "WS_SUBSCRIBES_PER_MINUTE");
    }

    #[test]
    fn production_demands_a_strong_secret() {
        assert_eq!(load(&[("RELAY_ENV", "production")]).unwrap_err().var, "JWT_SECRET");
        assert_eq!(load(&[("RELAY_ENV", "production"), ("JWT_SECRET", "short")]).unwrap_err().var, "JWT_SECRET");
        let strong = "x".repeat(32);
        assert!(load(&[("RELAY_ENV", "production"), ("JWT_SECRET", &strong)]).is_ok());
        assert!(load(&[("JWT_SECRET", "short")]).is_ok(), "dev mode accepts a weak secret");
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let c = load(&[
            ("JWT_SECRET", "jwt-secret-0123456789-0123456789-xyz"),
            ("SAMBANOVA_API_KEY", "provider-key-abc"),
            ("DATABASE_URL", "ws://root:url-pass@db:8000"),
            ("DATABASE_USER", "root"),
            ("DATABASE_PASS", "db-pass-def"),
            ("METRICS_TOKEN", "metrics-token-ghi"),
            ("REDIS_URL", "redis://:redis-pass-jkl@cache:6379"),
        ])
        .unwrap();
        let shown = format!("{c:?} {c:#?}");
        for secret in [
            "jwt-secret-0123456789",
            "provider-key-abc",
            "url-pass",
            "db-pass-def",
            "metrics-token-ghi",
            "redis-pass-jkl",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked into {shown}");
        }
        assert!(shown.contains("ws_max_connections_per_user"));
    }

    /// A user and password written into `DATABASE_URL` move out of it: the URL the server
    /// keeps, logs and shows in errors has none, and they sign in as `DATABASE_USER` /
    /// `DATABASE_PASS` would (which win when set).
    #[test]
    fn database_credentials_leave_the_url() {
        let c = load(&[("DATABASE_URL", "ws://root:p%40ss%3Aword@db.internal:8000/rpc")]).unwrap();
        assert_eq!(c.database_url, "ws://db.internal:8000/rpc");
        assert_eq!(c.database_credentials, Some(("root".to_string(), "p@ss:word".to_string())));
        assert!(c.redact("connecting with p@ss:word failed").contains("<redacted>"));
        let c = load(&[
            ("DATABASE_URL", "wss://u:url-pass@db:8000"),
            ("DATABASE_USER", "root"),
            ("DATABASE_PASS", "env-pass"),
        ])
        .unwrap();
        assert_eq!(c.database_url, "wss://db:8000");
        assert_eq!(c.database_credentials, Some(("root".to_string(), "env-pass".to_string())));
        let c = load(&[("DATABASE_URL", "ws://db:8000")]).unwrap();
        assert_eq!((c.database_url.as_str(), c.database_credentials), ("ws://db:8000", None::<(String, String)>));
        let bad = load(&[("DATABASE_URL", "postgres://u:secret-pw@db")]).map(|_| ()).unwrap_err();
        assert!(bad.var == "DATABASE_URL" && !bad.to_string().contains("secret-pw"), "{bad}");
    }

    #[test]
    fn the_rollout_share_is_stable_and_admins_always_have_chat() {
        let half = Rollout { enabled: ChatEnabled::Yes, percent: 50 };
        let ids: Vec<uuid::Uuid> = (0..1000u128).map(|i| uuid::Uuid::from_u128(i * 7919)).collect();
        let allowed = ids.iter().filter(|id| half.allows(**id, false)).count();
        assert!((400..=600).contains(&allowed), "{allowed}");
        assert!(ids.iter().all(|id| half.allows(*id, false) == half.allows(*id, false)));
        assert!(ids.iter().all(|id| half.allows(*id, true)));
        let none = Rollout { enabled: ChatEnabled::Yes, percent: 0 };
        assert!(!none.allows(ids[1], false) && none.allows(ids[1], true));
        let admins = Rollout { enabled: ChatEnabled::Admins, percent: 100 };
        assert!(!admins.allows(ids[1], false) && admins.allows(ids[1], true));
        let off = Rollout { enabled: ChatEnabled::No, percent: 100 };
        assert!(!off.allows(ids[1], true) && !off.any());
    }

    #[test]
    fn api_key_selects_the_real_provider_unless_mock_is_forced() {
        let c = load(&[("SAMBANOVA_API_KEY", "k")]).unwrap();
        assert!(
            matches!(c.model_backend, ModelBackend::Remote { ref api_base, .. } if api_base == "https://api.sambanova.ai/v1")
        );
        let c = load(&[("SAMBANOVA_API_KEY", "k"), ("LLM_MOCK", "1")]).unwrap();
        assert!(matches!(c.model_backend, ModelBackend::Mock(_)));
    }

    #[test]
    fn the_built_in_mock_shows_its_demo_unless_told_not_to() {
        let mock = |pairs: &[(&'static str, &str)]| match load(pairs).unwrap().model_backend {
            ModelBackend::Mock(settings) => settings,
            other => panic!("not the mock: {other:?}"),
        };
        let demo = mock(&[]);
        assert!(demo.demo);
        assert_eq!(demo.reply_tokens, relay_mock_llm::demo_tokens().len(), "the whole demo by default");
        assert_eq!(mock(&[("MOCK_REPLY_TOKENS", "30")]).reply_tokens, 30);
        let words = mock(&[("MOCK_DEMO", "0")]);
        assert_eq!((words.demo, words.reply_tokens), (false, 40));
        assert_eq!(load(&[("MOCK_DEMO", "maybe")]).unwrap_err().var, "MOCK_DEMO");
        assert_eq!(load(&[("MOCK_STAMP", "maybe")]).unwrap_err().var, "MOCK_STAMP");
    }
}
