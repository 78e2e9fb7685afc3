//! Chat sessions at run time: one actor per live session, found through a registry.
//!
//! The actor ([`actor`]) is the only owner of a session's live state: its context window,
//! its queue of sends, the running generation and its cancellation, the event counter
//! `seq`, and the receivers watching it. Every operation on a session (subscribe, send,
//! stop, rename, delete) is a message to it, so their order has one answer: the order of
//! its mailbox. WebSocket connections, SSE streams and REST requests all reach it through
//! the [`SessionRegistry`], which starts an actor on first use (never two for one session,
//! see [`slots`]), forgets it when it stops or dies, and refuses new work during shutdown.

mod actor;
pub mod budget;
mod registry;
mod remote;
mod slots;
mod text;

use std::sync::Arc;
use std::time::Duration;

use relay_protocol::{ErrorBody, Message};
use uuid::Uuid;

use crate::error::AppError;
use crate::hub::UserHub;
use crate::llm::models::Models;
use crate::store::{Store, StoreError};

#[cfg(feature = "fault-injection")]
pub use actor::Fault;
pub use actor::Requester;
pub use registry::{SessionRegistry, SubscriptionGuard};
pub use text::{DEFAULT_TITLE, derive_title, estimate_tokens, validate_content};

/// Checks a request's idempotency key (`client_message_id`, `Idempotency-Key`): at most
/// 64 bytes and not empty.
pub fn check_key(key: Option<String>) -> Result<Option<String>, SessionError> {
    match key {
        Some(key) if key.is_empty() => {
            Err(SessionError::Invalid("the idempotency key (client_message_id, Idempotency-Key) is empty".into()))
        }
        Some(key) if key.len() > relay_protocol::MAX_CLIENT_MESSAGE_ID_BYTES => Err(SessionError::Invalid(format!(
            "the idempotency key (client_message_id, Idempotency-Key) is {} bytes; the limit is {}",
            key.len(),
            relay_protocol::MAX_CLIENT_MESSAGE_ID_BYTES
        ))),
        key => Ok(key),
    }
}

/// Errors of session operations.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session does not exist, is deleted, or is not the caller's.
    #[error("session not found")]
    NotFound,
    /// Too many sends are queued on the session.
    #[error("too many sends queued")]
    Busy,
    /// The message is empty or too long.
    #[error("{0}")]
    InvalidContent(String),
    /// The request cannot apply to the session as it stands.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Over `CHAT_RATE_LIMIT_PER_MINUTE`.
    #[error("too many messages; slow down")]
    RateLimited(crate::limits::RateDecision),
    /// The user's sessions hold `CHAT_MAX_STORED_MESSAGES_PER_USER` messages.
    #[error("storage full")]
    StorageFull(u64),
    /// Over `CHAT_DAILY_MESSAGE_QUOTA` today.
    #[error("daily message quota used up")]
    QuotaExceeded(crate::limits::RateDecision),
    /// The server is shutting down and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The session's actor kept stopping under the call (retries exhausted).
    #[error("session unavailable")]
    Unavailable,
    /// Another node instance of the cluster runs the session (it holds the lease).
    #[error("the session runs on {0}")]
    Elsewhere(Arc<str>),
    /// The request's idempotency key was used, within 24 hours, for a message of another
    /// session.
    #[error("this client_message_id was used for a message of another session")]
    KeyReused,
    /// The request ended with an error the session already shaped for clients (a failed
    /// reply, or a queued send dropped because the session was deleted).
    #[error("{}", .0.message)]
    Reported(ErrorBody),
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> AppError {
        match e {
            SessionError::NotFound => AppError::NotFound,
            SessionError::Busy => AppError::Busy,
            SessionError::InvalidContent(m) => AppError::InvalidContent(m),
            SessionError::Invalid(m) => AppError::BadRequest(m),
            SessionError::Store(e) => AppError::Store(e),
            SessionError::ShuttingDown => AppError::SHUTTING_DOWN,
            SessionError::Unavailable | SessionError::Elsewhere(_) => {
                AppError::Unavailable { reason: "the session is restarting; retry", retry_after_ms: 100 }
            }
            SessionError::Reported(body) => AppError::Reported(body),
            SessionError::RateLimited(decision) => AppError::RateLimited(decision),
            SessionError::QuotaExceeded(decision) => AppError::QuotaExceeded(decision),
            SessionError::StorageFull(limit) => AppError::StorageFull { limit },
            SessionError::KeyReused => AppError::KeyReused,
        }
    }
}

/// Settings the session actors share.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// The system prompt that starts every context.
    pub system_prompt: String,
    /// How many recent messages are sent as context.
    pub max_context_messages: usize,
    /// Longest user message, in characters.
    pub max_message_length: usize,
    /// Longest reply kept, in bytes; a longer one is cut there and ends with `length`.
    pub max_reply_bytes: usize,
    /// Largest `subscribed` snapshot, in bytes (older messages are left to REST).
    pub max_snapshot_bytes: usize,
    /// Sends a session may hold waiting.
    pub max_queued_sends: usize,
    /// How long a reply runs on with nobody watching.
    pub cancel_grace: Duration,
    /// An unwatched, idle actor stops after this.
    pub idle_timeout: Duration,
    /// How often a reply in progress is saved.
    pub checkpoint_interval: Duration,
    /// Daily message limit (`None`: unlimited); admins have none.
    pub daily_quota: Option<u32>,
    /// Sends per user per minute (`None`: unlimited); admins have none.
    pub rate_per_minute: Option<u32>,
    /// Messages a user's live sessions may hold (`None`: unlimited); admins have none.
    pub max_stored_messages: Option<u64>,
}

/// What the actors need from the rest of the server.
pub struct SessionDeps {
    /// The database.
    pub store: Store,
    /// The batched writer in front of it (messages, checkpoints, counters).
    pub writes: crate::store::WriteBehind,
    /// The models on offer, each with its client.
    pub models: Arc<Models>,
    /// The per-user hub, for session and quota updates.
    pub hub: Arc<UserHub>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Rate limits and quotas.
    pub limiter: Arc<crate::limits::Limiter>,
    /// Per-user locks of this node (the storage cap's check and write).
    pub user_locks: Arc<crate::limits::UserLocks>,
    /// Shared settings.
    pub settings: SessionSettings,
    /// The cluster this node belongs to (`None`: a single node owns every session).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The answer to an accepted send.
#[derive(Clone, Debug)]
pub struct SendAccepted {
    /// The stored user message.
    pub user_message: Message,
    /// The id the reply will be stored under.
    pub reply_id: Uuid,
    /// The send rate after this send (`None` for admins or without a rate limit).
    pub rate: Option<crate::limits::RateDecision>,
    /// Set when the request repeated an earlier one (same idempotency key): where that
    /// request's reply stands. Nothing new was stored or started.
    pub replay: Option<Replay>,
}

/// Where the reply of a repeated request stands.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Replay {
    /// Being generated (or waiting its turn); `text` is what it holds so far.
    Running {
        /// The reply's text so far.
        text: String,
        /// The session's `seq` when `text` was taken: later deltas have a higher one (a
        /// receiver on another node may get earlier ones too, already in `text`).
        seq: u64,
    },
    /// Stored, with whatever outcome it had.
    Finished(Message),
    /// Never generated (its send was dropped before its turn).
    Missing,
}
