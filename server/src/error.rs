//! The server's error type, and the one function that maps every error to a protocol
//! error code.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use relay_protocol::{ErrorBody, ErrorCode, ErrorResponse};

use crate::auth::AuthError;
use crate::llm::LlmError;
use crate::session::SessionError;
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
    /// A session operation failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The message content breaks the length rules.
    #[error("{0}")]
    InvalidContent(String),
    /// The body or frame is over the size limit.
    #[error("request body too large")]
    TooLarge,
    /// The thing asked for does not exist for this caller.
    #[error("not found")]
    NotFound,
}

impl AppError {
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
            AppError::Auth(AuthError::WrongCredentials) => (ErrorCode::Unauthorized, self.to_string(), None),
            AppError::Auth(AuthError::MissingToken | AuthError::InvalidToken(_)) => {
                // The reason stays in the log: telling a caller why a forged token failed helps only the forger.
                (ErrorCode::Unauthorized, "missing, invalid or expired token".into(), None)
            }
            AppError::Store(StoreError::Conflict) => (ErrorCode::Conflict, "already exists".into(), None),
            AppError::Store(_) => (ErrorCode::Internal, "internal error".into(), None),
            AppError::Llm(LlmError::Unavailable { retry_after_ms, .. }) => {
                (ErrorCode::UpstreamUnavailable, "the model provider is unavailable".into(), *retry_after_ms)
            }
            AppError::Llm(LlmError::Timeout) => {
                (ErrorCode::UpstreamTimeout, "the model provider timed out".into(), None)
            }
            AppError::Llm(LlmError::Upstream(_)) => {
                (ErrorCode::UpstreamError, "the model provider failed".into(), None)
            }
            AppError::Session(SessionError::NotFound) | AppError::NotFound => {
                (ErrorCode::NotFound, "session not found".into(), None)
            }
            AppError::Session(SessionError::Busy) => {
                (ErrorCode::Busy, "too many messages are waiting on this session".into(), Some(1000))
            }
            AppError::Session(SessionError::InvalidContent(m)) | AppError::InvalidContent(m) => {
                (ErrorCode::InvalidContent, m.clone(), None)
            }
            AppError::Session(SessionError::Store(_) | SessionError::Unavailable) => {
                (ErrorCode::Internal, "internal error".into(), None)
            }
            AppError::Session(SessionError::Generation(body)) => return body.clone(),
            AppError::BadRequest(m) => (ErrorCode::BadRequest, m.clone(), None),
            AppError::TooLarge => (ErrorCode::TooLarge, self.to_string(), None),
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

/// Builds the REST response for an error body, with `Retry-After` where it applies.
pub fn error_response(body: ErrorBody) -> Response {
    let status = StatusCode::from_u16(body.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = body.retry_after_ms;
    let mut response = (status, axum::Json(ErrorResponse { error: body })).into_response();
    if let Some(ms) = retry
        && let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    response
}
