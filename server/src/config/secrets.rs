//! Secrets in the configuration: the JWT settings, and database URLs shown without
//! their passwords.

use std::time::Duration;

/// What `Debug` prints in place of a secret.
pub(super) const REDACTED: &str = "<redacted>";

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

/// Splits `ws://user:pass@host:port/...` (or `wss://`) into the URL without its user
/// part and the (percent-decoded) user and password; other URLs are left whole.
pub(super) fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
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

/// A database URL without the password a `ws://user:pass@host` form may carry.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://{REDACTED}@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}
