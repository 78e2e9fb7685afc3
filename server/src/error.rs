//! The server's error type, and the one function that maps every error to a protocol
//! error code.
//!
//! Each layer has its own error type ([`AuthError`], [`StoreError`], [`LlmError`], the
//! session layer's `SessionError`); they all become an [`AppError`], and
//! [`AppError::to_body`] is the only place that decides which code and message a client
//! sees. This module sits below the session layer (which converts its own errors into
//! `AppError`), so no circle of imports forms.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use relay_protocol::{ErrorBody, ErrorCode, ErrorResponse};

use crate::auth::AuthError;
use crate::llm::LlmError;
use crate::store::StoreError;

/// Any error a request can end in, grouped by the layer it came from.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model provider failed.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// An error already shaped for clients (a failed reply's `done` error, or a queued send
    /// dropped because its session was deleted or the server is stopping).
    #[error("{}", .0.message)]
    Reported(ErrorBody),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The message content breaks the length rules.
    #[error("{0}")]
    InvalidContent(String),
    /// The body or frame is over the size limit.
    #[error("request body too large")]
    TooLarge,
    /// The session does not exist, is deleted, or is not the caller's.
    #[error("session not found")]
    NotFound,
    /// No endpoint answers this path.
    #[error("no such endpoint")]
    NoRoute,
    /// Chat is not enabled for this caller (`FEATURE_CHAT_ENABLED`, rollout share).
    #[error("chat is not available")]
    ChatDisabled,
    /// The endpoint exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A browser page from an origin the server does not allow.
    #[error("origin not allowed")]
    ForbiddenOrigin,
    /// Too many sends are queued on the session.
    #[error("too many sends queued")]
    Busy,
    /// Over the per-minute send rate.
    #[error("too many messages; slow down")]
    RateLimited(crate::limits::RateDecision),
    /// Over the daily message quota.
    #[error("daily message quota used up")]
    QuotaExceeded(crate::limits::RateDecision),
    /// The user's sessions hold as many messages as they may.
    #[error("storage full")]
    StorageFull {
        /// `CHAT_MAX_STORED_MESSAGES_PER_USER`.
        limit: u64,
    },
    /// Too many failed logins or registrations from one name or address.
    #[error("too many attempts")]
    TooManyAttempts {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// An idempotency key reused for another session's message.
    #[error("this client_message_id was used for a message of another session")]
    KeyReused,
    /// The request conflicts with the state of what it names (e.g. rating a reply still
    /// being written).
    #[error("{0}")]
    Conflict(String),
    /// A cap on what one user or connection may hold is reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// The server cannot take the request now.
    #[error("{reason}")]
    Unavailable {
        /// Why, for people.
        reason: &'static str,
        /// When to try again.
        retry_after_ms: u64,
    },
    /// A bug or an impossible state; logged, shown as `internal`.
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// The server is shutting down: new work is refused.
    pub const SHUTTING_DOWN: AppError =
        AppError::Unavailable { reason: "the server is shutting down; retry shortly", retry_after_ms: 1000 };

    /// The protocol error this error is shown as: the single mapping from the server's
    /// errors to error codes, used by REST, SSE and WebSocket alike.
    pub fn to_body(&self) -> ErrorBody {
        let (code, message, retry_after_ms) = match self {
            AppError::Auth(AuthError::InvalidUsername | AuthError::WeakPassword) => {
                (ErrorCode::BadRequest, self.to_string(), None)
            }
            AppError::Auth(AuthError::Hashing(_) | AuthError::SecretFile { .. }) => {
                (ErrorCode::Internal, "internal error".into(), None)
            }
            AppError::Auth(AuthError::Overloaded) => {
                (ErrorCode::Unavailable, "too many logins at once; retry shortly".into(), Some(1000))
            }
            AppError::Auth(AuthError::WrongCredentials) => (ErrorCode::Unauthorized, self.to_string(), None),
            AppError::Auth(AuthError::UsernameUnavailable) => (ErrorCode::Conflict, self.to_string(), None),
            AppError::Auth(AuthError::MissingToken | AuthError::InvalidToken(_)) => {
                // The reason stays in the log: telling a caller why a forged token failed helps only the forger.
                (ErrorCode::Unauthorized, "missing, invalid or expired token".into(), None)
            }
            AppError::Store(StoreError::Conflict) => (ErrorCode::Conflict, "already exists".into(), None),
            AppError::Store(StoreError::Timeout) => {
                (ErrorCode::Unavailable, "the database is not answering; retry shortly".into(), Some(1000))
            }
            AppError::Store(StoreError::Fenced) => {
                (ErrorCode::Unavailable, "the session moved to another server; retry".into(), Some(100))
            }
            // A database that cannot be reached, and writers that stopped (the server is
            // shutting down), are passing conditions: the client retries.
            AppError::Store(StoreError::Database(e)) if e.is_connection() => {
                (ErrorCode::Unavailable, "the database is not answering; retry shortly".into(), Some(1000))
            }
            AppError::Store(StoreError::Batch(_)) => {
                (ErrorCode::Unavailable, "the server is not taking writes now; retry shortly".into(), Some(1000))
            }
            AppError::Store(StoreError::TooLarge) => {
                (ErrorCode::Internal, "the message is too large for the database to store".into(), None)
            }
            AppError::Store(_) => (ErrorCode::Internal, "internal error".into(), None),
            AppError::KeyReused => (ErrorCode::Conflict, self.to_string(), None),
            AppError::Conflict(m) => (ErrorCode::Conflict, m.clone(), None),
            AppError::Llm(LlmError::Unavailable { retry_after_ms, .. }) => {
                (ErrorCode::UpstreamUnavailable, "the model provider is unavailable".into(), *retry_after_ms)
            }
            AppError::Llm(LlmError::KeyRejected(_)) => {
                (ErrorCode::UpstreamUnavailable, "the model provider is unavailable".into(), None)
            }
            AppError::Llm(LlmError::RateLimited { retry_after_ms }) => (
                ErrorCode::RateLimited,
                "the model provider is busy; try again shortly".into(),
                Some(retry_after_ms.unwrap_or(1000)),
            ),
            AppError::Llm(LlmError::ModelNotFound(model)) => {
                (ErrorCode::UpstreamError, format!("the model provider does not offer the model {model:?}"), None)
            }
            AppError::Llm(LlmError::Timeout) => {
                (ErrorCode::UpstreamTimeout, "the model provider timed out".into(), None)
            }
            AppError::Llm(LlmError::Upstream(_)) => {
                (ErrorCode::UpstreamError, "the model provider failed".into(), None)
            }
            AppError::Reported(body) => return body.clone(),
            AppError::NotFound => (ErrorCode::NotFound, "session not found".into(), None),
            AppError::NoRoute => (ErrorCode::NotFound, "no such endpoint".into(), None),
            AppError::ChatDisabled => (ErrorCode::NotFound, "chat is not available".into(), None),
            AppError::MethodNotAllowed => {
                (ErrorCode::MethodNotAllowed, "this method is not allowed on this endpoint".into(), None)
            }
            AppError::ForbiddenOrigin => {
                (ErrorCode::Forbidden, "this origin may not open a connection here (CORS_ALLOWED_ORIGINS)".into(), None)
            }
            AppError::Busy => (ErrorCode::Busy, "too many messages are waiting on this session".into(), Some(1000)),
            AppError::RateLimited(decision) => (
                ErrorCode::RateLimited,
                format!("at most {} messages a minute; try again shortly", decision.limit),
                Some(retry_ms(decision.retry_after)),
            ),
            AppError::QuotaExceeded(decision) => (
                ErrorCode::QuotaExceeded,
                format!("the daily quota of {} messages is used up; it starts again at midnight UTC", decision.limit),
                Some(retry_ms(decision.retry_after)),
            ),
            AppError::StorageFull { limit } => (
                ErrorCode::StorageFull,
                format!("your sessions hold {limit} messages, the most allowed; delete sessions to make room"),
                None,
            ),
            AppError::TooManyAttempts { retry_after_ms } => {
                (ErrorCode::RateLimited, "too many attempts; try again later".into(), Some(*retry_after_ms))
            }
            AppError::LimitExceeded(m) => (ErrorCode::LimitExceeded, m.clone(), None),
            AppError::InvalidContent(m) => (ErrorCode::InvalidContent, m.clone(), None),
            AppError::BadRequest(m) => (ErrorCode::BadRequest, m.clone(), None),
            AppError::TooLarge => (ErrorCode::TooLarge, self.to_string(), None),
            AppError::Unavailable { reason, retry_after_ms } => {
                (ErrorCode::Unavailable, (*reason).to_string(), Some(*retry_after_ms))
            }
            AppError::Internal(_) => (ErrorCode::Internal, "internal error".into(), None),
        };
        ErrorBody { code, message, retry_after_ms }
    }

    /// Whether this error is the server's fault (logged at error level).
    pub fn is_internal(&self) -> bool {
        self.to_body().code == ErrorCode::Internal
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = self.to_body();
        if body.code == ErrorCode::Internal {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, code = %body.code, "request refused");
        }
        error_response(body)
    }
}

/// A wait in whole milliseconds, at least 1 (a zero wait would invite a hot loop).
fn retry_ms(wait: std::time::Duration) -> u64 {
    (wait.as_millis() as u64).max(1)
}

/// Builds the REST response for an error body, with `Retry-After` where it applies.
pub fn error_response(body: ErrorBody) -> Response {
    let status = StatusCode::from_u16(body.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = body.retry_after_ms;
    let code = body.code;
    let mut response = (status, axum::Json(ErrorResponse { error: body })).into_response();
    // Read back by the metrics layer, which counts errors by code.
    response.extensions_mut().insert(code);
    if let Some(ms) = retry
        && let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    response
}
