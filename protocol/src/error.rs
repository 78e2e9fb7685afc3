//! Error codes and the error body every failing request carries.

use serde::{Deserialize, Serialize};

/// A machine-readable error code from the table in PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Missing, malformed, forged or expired token; wrong password.
    Unauthorized,
    /// Malformed JSON, unknown frame type, missing or mistyped field.
    BadRequest,
    /// Empty message, or one longer than the configured maximum.
    InvalidContent,
    /// Body or frame over the size limit.
    TooLarge,
    /// Session that does not exist, is deleted, or belongs to someone else.
    NotFound,
    /// Username already taken.
    Conflict,
    /// Over the per-minute rate limit.
    RateLimited,
    /// Over the daily message quota.
    QuotaExceeded,
    /// Too many sends queued on one session.
    Busy,
    /// A per-user or per-connection cap is reached (sessions per user, subscriptions per
    /// connection); retrying does not help until something is freed.
    LimitExceeded,
    /// The method is not allowed on this path.
    MethodNotAllowed,
    /// The request comes from a browser origin the server does not allow.
    Forbidden,
    /// The user's sessions hold `CHAT_MAX_STORED_MESSAGES_PER_USER` messages; deleting
    /// sessions makes room.
    StorageFull,
    /// The server cannot take the request now (shutting down, or overloaded); retry later.
    Unavailable,
    /// Model provider down, circuit open, or its key rejected.
    UpstreamUnavailable,
    /// Model provider too slow.
    UpstreamTimeout,
    /// Model provider failed otherwise.
    UpstreamError,
    /// Anything else; logged with a request id.
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is answered with on REST.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::BadRequest | ErrorCode::InvalidContent => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded | ErrorCode::Busy => 429,
            ErrorCode::LimitExceeded => 403,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Forbidden | ErrorCode::StorageFull => 403,
            ErrorCode::Unavailable => 503,
            ErrorCode::UpstreamUnavailable => 503,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::UpstreamError => 502,
            ErrorCode::Internal => 500,
        }
    }

    /// The code as it is spelled on the wire, e.g. `"not_found"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidContent => "invalid_content",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Busy => "busy",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object: a code, a human-readable message, and an optional retry hint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// How long to wait before retrying, for rate limits and busy sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    /// Builds an error body without a retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_ms: None }
    }
}

/// The REST error response, `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    /// The error itself.
    pub error: ErrorBody,
}
