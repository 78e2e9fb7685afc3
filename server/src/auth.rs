//! Authentication: argon2id password hashes, JWT issue and verification, and the
//! extractor that turns a bearer token into an [`AuthUser`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use relay_protocol::{User, UserRole};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::config::JwtConfig;
use crate::error::AppError;

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
    /// The password is too short.
    #[error("password must be at least 8 characters")]
    WeakPassword,
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

/// The claims of tokens this server issues, and what it reads from host tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    #[serde(default)]
    pub iat: u64,
    /// Issuer, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// `admin` lifts quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Display name; host tokens may use `preferred_username` or `name` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// OpenID-style display name of host tokens.
    #[serde(default, skip_serializing)]
    pub preferred_username: Option<String>,
    /// Another display name of host tokens.
    #[serde(default, skip_serializing)]
    pub name: Option<String>,
}

/// An authenticated caller, derived from a verified token alone (no database read).
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Issues and verifies tokens with the configured keys.
pub struct TokenKeys {
    encoding: EncodingKey,
    hs_decoding: DecodingKey,
    host_key: Option<(DecodingKey, Algorithm)>,
    config: JwtConfig,
    admin_users: Vec<String>,
}

impl TokenKeys {
    /// Builds the keys; `secret` is the HS256 secret in force (configured or generated).
    pub fn new(config: &JwtConfig, secret: &[u8], admin_users: Vec<String>) -> Result<TokenKeys, AuthError> {
        // Other crates in the build enable jsonwebtoken's aws-lc backend too, and with two
        // backends it picks none by itself; choose one explicitly (a second call is a no-op).
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let host_key = match &config.public_key_pem {
            None => None,
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()).map(|k| (k, Algorithm::ES256)))
                    .map_err(|e| AuthError::InvalidToken(format!("JWT_PUBLIC_KEY_PEM: {e}")))?,
            ),
        };
        Ok(TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            hs_decoding: DecodingKey::from_secret(secret),
            host_key,
            config: config.clone(),
            admin_users,
        })
    }

    /// Issues a token for a user.
    pub fn issue(&self, user: &User) -> Result<String, AuthError> {
        let now = now_secs();
        let claims = Claims {
            sub: user.id.to_string(),
            exp: now + self.config.ttl.as_secs(),
            iat: now,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            role: Some(match user.role {
                UserRole::Admin => "admin".into(),
                UserRole::User => "user".into(),
            }),
            username: Some(user.username.clone()),
            preferred_username: None,
            name: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }

    /// Verifies a token: algorithm pinned to the key, signature, `exp` (required), and the
    /// configured issuer and audience.
    pub fn verify(&self, token: &str) -> Result<AuthUser, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => (&self.hs_decoding, Algorithm::HS256),
            alg => match &self.host_key {
                Some((key, host_alg)) if *host_alg == alg => (key, alg),
                _ => return Err(AuthError::InvalidToken(format!("algorithm {alg:?} not accepted"))),
            },
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.config.leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let claims = data.claims;
        let id = Uuid::parse_str(&claims.sub).map_err(|_| AuthError::InvalidToken("sub is not a UUID".into()))?;
        let username =
            claims.username.or(claims.preferred_username).or(claims.name).unwrap_or_else(|| claims.sub.clone());
        let role = if claims.role.as_deref() == Some("admin") || self.admin_users.contains(&username) {
            UserRole::Admin
        } else {
            UserRole::User
        };
        Ok(AuthUser { id, username, role, expires_at: claims.exp })
    }
}

/// Checks the username rule: 3 to 32 of `[A-Za-z0-9_.-]`.
pub fn validate_username(username: &str) -> Result<(), AuthError> {
    let ok = (3..=32).contains(&username.len())
        && username.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok { Ok(()) } else { Err(AuthError::InvalidUsername) }
}

/// Checks the password rule: at least 8 characters.
pub fn validate_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() >= 8 { Ok(()) } else { Err(AuthError::WeakPassword) }
}

/// Hashes a password with argon2id on the blocking pool (it is deliberately slow).
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hashing(e.to_string()))?
}

/// Checks a password against a stored argon2 hash on the blocking pool.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A fixed hash to verify against when the user does not exist, so a login for an unknown
/// name costs as much time as a wrong password (no username probing by timing).
pub async fn burn_password_check(password: String) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = DUMMY
        .get_or_init(|| {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default().hash_password(b"not-a-real-password", &salt).map(|h| h.to_string()).unwrap_or_default()
        })
        .clone();
    let _ = verify_password(password, hash).await;
}

/// Reads the dev-mode JWT secret kept beside the data, creating it on first start so
/// restarts keep logins valid.
pub fn load_or_create_dev_secret(data_dir: &Path) -> Result<Vec<u8>, AuthError> {
    let path = data_dir.join("jwt_secret");
    let err = |source| AuthError::SecretFile { path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(err)?;
    let secret: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::thread_rng().r#gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    std::fs::write(&path, &secret).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret.into_bytes())
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

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token =
            bearer_token(parts.headers.get(axum::http::header::AUTHORIZATION)).ok_or(AuthError::MissingToken)?;
        let user = state.tokens.verify(token)?;
        tracing::Span::current().record("user_id", tracing::field::display(user.id));
        Ok(user)
    }
}
