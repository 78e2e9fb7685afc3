//! Share links: the owner's requests and answers, and what a viewer without an account
//! reads (`GET /api/v1/shared/{token}` and its live SSE stream).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Message, Session};

/// Longest a share link may be made to last: one year.
pub const MAX_SHARE_EXPIRES_IN_SECS: u64 = 365 * 24 * 3600;

/// Shortest a share link may be made to last: one minute.
pub const MIN_SHARE_EXPIRES_IN_SECS: u64 = 60;

/// Body of `POST /api/v1/chat/sessions/{id}/share` (optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateShareRequest {
    /// How long the link works, in seconds (60 to 31,536,000); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole_seconds")]
    #[cfg_attr(feature = "openapi", schema(minimum = 60, maximum = 31_536_000))]
    pub expires_in_secs: Option<u64>,
}

/// A whole number of seconds, written as JSON allows an integer (`3600` or `3600.0`).
fn whole_seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Whole(u64),
        Float(f64),
    }
    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Number::Whole(n)) => Ok(Some(n)),
        Some(Number::Float(f)) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        Some(Number::Float(f)) => Err(serde::de::Error::custom(format!(
            "expires_in_secs must be a whole, positive number of seconds, got {f}"
        ))),
    }
}

/// Answer to `POST /api/v1/chat/sessions/{id}/share` (201): the only time the token is
/// shown (the server keeps its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareCreated {
    /// The secret that reads the session: 256 random bits, URL-safe base64.
    pub token: String,
    /// The page that shows the session live: `<server>/s/<token>`.
    pub url: String,
    /// When the link stops working; absent (`null`) when it works until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    /// The link as `GET .../share` and `share_updated` show it (added).
    pub share: ShareStatus,
}

/// A session's share link as its owner sees it (`GET /api/v1/chat/sessions/{id}/share`,
/// and the `share_updated` frame): never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareStatus {
    /// Identifies this link (a new link for the session gets a new id).
    pub id: Uuid,
    /// When the link was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working; absent (`null`) when it works until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    /// How many viewers watch it live now.
    pub viewers: u32,
}

/// Answer to `GET /api/v1/chat/sessions/{id}/share`: the session's working link, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionShare {
    /// The link; `null` when the session has none (never made, revoked, or expired).
    pub share: Option<ShareStatus>,
}

/// Answer to `GET /api/v1/shared/{token}`: the shared session as anyone with the link sees
/// it (no owner, no account fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharedSession {
    /// The session.
    pub session: Session,
    /// Its most recent messages (at most [`MAX_SHARED_MESSAGES`]), oldest first; replaced
    /// (superseded) ones are left out.
    pub messages: Vec<Message>,
    /// When the link stops working, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Most messages `GET /api/v1/shared/{token}` answers with.
pub const MAX_SHARED_MESSAGES: usize = 500;

/// Why a share stream ended, as its last event (`ended`) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ShareEnd {
    /// The owner revoked the link, replaced it with a new one, or deleted the session.
    Revoked,
    /// The link expired.
    Expired,
}

/// Data of the `ended` event of a share stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareEnded {
    /// Why.
    pub reason: ShareEnd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_any_whole_json_number() {
        let parse = |json: &str| serde_json::from_str::<CreateShareRequest>(json).map(|r| r.expires_in_secs);
        assert_eq!(parse("{}").unwrap(), None);
        assert_eq!(parse(r#"{"expires_in_secs": null}"#).unwrap(), None);
        assert_eq!(parse(r#"{"expires_in_secs": 3600}"#).unwrap(), Some(3600));
        assert_eq!(parse(r#"{"expires_in_secs": 3600.0}"#).unwrap(), Some(3600));
        assert!(parse(r#"{"expires_in_secs": 3600.5}"#).is_err());
        assert!(parse(r#"{"expires_in_secs": -1}"#).is_err());
        assert!(parse(r#"{"expires_in_secs": "3600"}"#).is_err());
    }
}
