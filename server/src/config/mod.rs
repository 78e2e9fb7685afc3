//! Server configuration: one struct, loaded once from the environment.
//!
//! Every variable has a default that runs on a fresh machine; a bad value fails start-up
//! with an error naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod load;
mod models;
mod rollout;
mod secrets;
#[cfg(test)]
mod tests;
mod values;

pub use load::DEFAULT_CONTEXT_TOKENS;
pub use models::{Experiment, ModelBackend, ModelConfig};
pub use rollout::{ChatEnabled, Rollout};
pub use secrets::{JwtConfig, redact_url};
use secrets::{REDACTED, split_credentials};

/// A configuration variable that is missing a required value or has a bad one.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
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
    /// `DATABASE_CACHE_BYTES` / `DATABASE_MEMTABLE_BYTES`: the embedded SurrealKV's block
    /// cache and memtable (a SurrealDB server sizes its own).
    pub database_embedded: crate::store::EmbeddedSizes,
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

impl Config {
    /// How to reach the database (`DATABASE_*`).
    pub fn store_config(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            url: self.database_url.clone(),
            credentials: self.database_credentials.clone(),
            namespace: self.database_ns.clone(),
            database: self.database_db.clone(),
            timeout: self.database_timeout,
            embedded: self.database_embedded,
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
