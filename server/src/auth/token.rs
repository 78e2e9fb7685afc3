//! JWTs: tokens this server issues for its own accounts, and tokens of a host application
//! (signed with the shared HS256 secret, or RS256/ES256 with `JWT_PUBLIC_KEY_PEM`).
//!
//! Who is an admin is decided here, on every check, never baked into a token:
//! - this server's own accounts (their tokens carry the `relay_account` claim) are admins
//!   exactly while their username is listed in `CHAT_ADMIN_USERS`, so removing a name
//!   revokes it at the next request;
//! - host tokens are admins only through their `role: "admin"` claim; their display name
//!   grants nothing, as a host may let users pick any name.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use relay_protocol::{User, UserRole};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AuthError, AuthUser, now_secs};
use crate::config::JwtConfig;

/// The `aud` claim: one audience or several (RFC 7519 allows both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences; ours must be among them.
    Many(Vec<String>),
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
    pub aud: Option<Audience>,
    /// `admin` makes a host token's user an admin (ignored on this server's own tokens).
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
    /// Set on tokens this server issues for its own accounts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay_account: bool,
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
    /// Builds the keys; `secret` is the HS256 secret in force (configured or generated),
    /// `admin_users` the names of this server's accounts that are admins.
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

    /// The role of one of this server's own accounts, decided by `CHAT_ADMIN_USERS` now.
    pub fn account_role(&self, username: &str) -> UserRole {
        if self.admin_users.iter().any(|a| a == username) { UserRole::Admin } else { UserRole::User }
    }

    /// Issues a token for one of this server's own accounts.
    pub fn issue(&self, user: &User) -> Result<String, AuthError> {
        let now = now_secs();
        let claims = Claims {
            sub: user.id.to_string(),
            exp: now + self.config.ttl.as_secs(),
            iat: now,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone().map(Audience::One),
            // Informational for clients that read it; verification decides the role afresh.
            role: Some(match user.role {
                UserRole::Admin => "admin".into(),
                UserRole::User => "user".into(),
            }),
            username: Some(user.username.clone()),
            preferred_username: None,
            name: None,
            relay_account: true,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }

    /// Verifies a token: algorithm pinned to the key, signature, `exp` (required), `nbf`
    /// (when present), and the configured issuer and audience (required when configured;
    /// `aud` may be an array).
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
        // `Validation::new` leaves `nbf` unchecked; a token that says it is not valid yet
        // (beyond the leeway) must not be.
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?
            .claims;
        let id = Uuid::parse_str(&claims.sub).map_err(|_| AuthError::InvalidToken("sub is not a UUID".into()))?;
        let (username, role) = if claims.relay_account && alg == Algorithm::HS256 {
            let username = claims.username.unwrap_or_else(|| claims.sub.clone());
            let role = self.account_role(&username);
            (username, role)
        } else {
            let role = if claims.role.as_deref() == Some("admin") { UserRole::Admin } else { UserRole::User };
            let username =
                claims.username.or(claims.preferred_username).or(claims.name).unwrap_or_else(|| claims.sub.clone());
            (username, role)
        };
        Ok(AuthUser { id, username, role, expires_at: claims.exp })
    }
}

/// Reads the dev-mode JWT secret kept beside the data, creating it on first start so
/// restarts keep logins valid. The file is created owner-only (0600) in one step and never
/// through a symlink, so the secret is never readable by others, not even for a moment.
pub fn load_or_create_dev_secret(data_dir: &Path) -> Result<Vec<u8>, AuthError> {
    let path = data_dir.join("jwt_secret");
    let err = |source| AuthError::SecretFile { path: path.display().to_string(), source };
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        // Too short to be one of ours: replace it (removing a symlink, never its target).
        Ok(_) => std::fs::remove_file(&path).map_err(err)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(err)?;
    let secret: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::thread_rng().r#gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut options = std::fs::OpenOptions::new();
    // `create_new` refuses an existing path, a dangling symlink included.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(err)?;
    std::io::Write::write_all(&mut file, secret.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_secret_is_created_owner_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let secret = load_or_create_dev_secret(dir.path()).unwrap();
        assert_eq!(secret.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("jwt_secret")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_dev_secret(dir.path()).unwrap(), secret, "kept across restarts");
    }

    /// A symlink planted where the secret goes is never followed: the secret is not
    /// written into whatever file it points at.
    #[cfg(unix)]
    #[test]
    fn the_dev_secret_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("somewhere-readable");
        std::os::unix::fs::symlink(&target, dir.path().join("jwt_secret")).unwrap();
        assert!(load_or_create_dev_secret(dir.path()).is_err());
        assert!(!target.exists(), "nothing was written through the link");
    }
}
