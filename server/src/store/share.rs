//! Share links in the database: at most one per session, keyed by the session's id, found
//! by the hash of its token (the token itself is never stored).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::{SessionRecord, Store, StoreError};

/// A session's share link as stored.
#[derive(Clone, Debug, Deserialize)]
pub struct ShareRecord {
    /// Random per link: a replaced link's viewers can tell theirs is gone.
    pub share_id: Uuid,
    /// The shared session.
    pub session_id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// When the link was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working (`None`: when revoked).
    pub expires_at: Option<DateTime<Utc>>,
}

impl ShareRecord {
    /// Whether the link still works at `now`.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

const SHARE_FIELDS: &str = "share_id, session_id, user_id, created_at, expires_at";

impl Store {
    /// Makes `share` the session's link (replacing any earlier one), storing the token's
    /// hash; `None` when the session is not the owner's or is deleted.
    pub async fn put_share(&self, share: &ShareRecord, token_hash: &str) -> Result<Option<ShareRecord>, StoreError> {
        let rows: Vec<ShareRecord> = self
            .rows(
                &format!(
                    // A session deleted between the two statements leaves a share nobody can
                    // read: `find_share` checks the session too.
                    "LET $owned = SELECT VALUE record::id(id) FROM type::record('chat_session', $session_id) \
                         WHERE user_id = $user_id AND deleted_at = NONE;
                     IF array::len($owned) = 1 {{
                         UPSERT type::record('chat_share', $session_id) CONTENT {{ share_id: $share_id, \
                             session_id: $session_id, user_id: $user_id, token_hash: $token_hash, \
                             created_at: <datetime>$created_at, expires_at: IF $expires_at = NULL {{ NONE }} ELSE {{ <datetime>$expires_at }} }} \
                             RETURN {SHARE_FIELDS}
                     }} ELSE {{ [] }};"
                ),
                serde_json::json!({
                    "share_id": share.share_id,
                    "session_id": share.session_id,
                    "user_id": share.user_id,
                    "token_hash": token_hash,
                    "created_at": share.created_at,
                    "expires_at": share.expires_at,
                }),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The owner's link of a session, expired or not (`None`: none, or not theirs).
    pub async fn share_of(&self, user_id: Uuid, session_id: Uuid) -> Result<Option<ShareRecord>, StoreError> {
        let rows: Vec<ShareRecord> = self
            .rows(
                &format!("SELECT {SHARE_FIELDS} FROM type::record('chat_share', $session_id) WHERE user_id = $user_id"),
                serde_json::json!({"session_id": session_id, "user_id": user_id}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Revokes the session's link; false when it had none (or is not the owner's).
    pub async fn delete_share(&self, user_id: Uuid, session_id: Uuid) -> Result<bool, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .rows(
                "DELETE type::record('chat_share', $session_id) WHERE user_id = $user_id RETURN BEFORE",
                serde_json::json!({"session_id": session_id, "user_id": user_id}),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// The link a token's hash names, with its session, while the session is not deleted
    /// (expiry is the caller's to check: it also ends streams at that time).
    pub async fn find_share(&self, token_hash: &str) -> Result<Option<(ShareRecord, SessionRecord)>, StoreError> {
        let shares: Vec<ShareRecord> = self
            .rows(
                &format!("SELECT {SHARE_FIELDS} FROM chat_share WHERE token_hash = $token_hash LIMIT 1"),
                serde_json::json!({"token_hash": token_hash}),
            )
            .await?;
        let Some(share) = shares.into_iter().next() else { return Ok(None) };
        let Some(session) = self.get_session(share.session_id).await? else { return Ok(None) };
        Ok(Some((share, session)))
    }
}
