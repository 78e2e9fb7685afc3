//! Authentication: who a caller is, from a token ([`token`]), and the passwords of this
//! server's own accounts ([`password`]).
//!
//! This module knows nothing of HTTP handlers or the shared state: the extractor that turns
//! an `Authorization` header into an [`AuthUser`] lives with the HTTP layer.

pub mod password;
pub mod token;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_protocol::{User, UserRole};
use uuid::Uuid;

pub use password::{PasswordHashing, validate_password, validate_username};
pub use token::{Claims, TokenKeys, load_or_create_dev_secret};

/// Errors of authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (or `auth` frame) was given.
    #[error("missing bearer token")]
    MissingToken,
    /// The token is malformed, forged, expired or for someone else.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// Username or password did not match.
    #[error("invalid username or password")]
    WrongCredentials,
    /// The username breaks the naming rule.
    #[error("username must be 3 to 32 characters of A-Z, a-z, 0-9, '_', '.', '-'")]
    InvalidUsername,
    /// The username cannot be registered: it is taken, or reserved for an admin account
    /// (`CHAT_ADMIN_USERS`); which of the two is not said.
    #[error("this username is not available")]
    UsernameUnavailable,
    /// The password is too short or too long.
    #[error("password must be 8 to {} characters", password::MAX_PASSWORD_CHARS)]
    WeakPassword,
    /// Too many password checks are running or waiting; the caller should retry.
    #[error("too many password checks at once")]
    Overloaded,
    /// Hashing failed (should not happen).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The dev-mode secret file could not be read or written.
    #[error("cannot keep the generated JWT secret at {path}: {source}")]
    SecretFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// An authenticated caller, derived from a verified token alone (no database read).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthUser {
    /// The user id (`sub`).
    pub id: Uuid,
    /// The display name.
    pub username: String,
    /// Admin or not.
    pub role: UserRole,
    /// When the token expires, seconds since the epoch.
    pub expires_at: u64,
}

impl AuthUser {
    /// The user as the API shows it.
    pub fn to_user(&self) -> User {
        User { id: self.id, username: self.username.clone(), role: self.role }
    }

    /// Time left before the token expires.
    pub fn time_left(&self) -> Duration {
        Duration::from_secs(self.expires_at.saturating_sub(now_secs()))
    }
}

/// Takes the token out of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&axum::http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
