//! Live share links: an owner makes a secret link to one session; anyone holding it reads
//! the conversation and follows it live, without an account, until the owner revokes it,
//! replaces it, deletes the session, or it expires.
//!
//! The token is 256 random bits; only its SHA-256 is stored, so the database alone opens
//! nothing. Viewers are receivers of the session like tabs (see [`viewers`]), but read-only:
//! no route a token opens can send, stop or see anything but that session's messages.

pub mod viewers;

use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore;
use relay_protocol::{
    MAX_SHARE_EXPIRES_IN_SECS, MAX_SHARED_MESSAGES, MIN_SHARE_EXPIRES_IN_SECS, ServerFrame, ShareCreated, ShareStatus,
    SharedSession,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{SessionRecord, ShareRecord};
pub use viewers::{ViewerPlace, ViewerRefused, Viewers, status_of};

/// A new token: 32 random bytes, URL-safe base64 without padding (43 characters).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored for a token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a string can be a token at all (43 URL-safe base64 characters): anything else
/// is not found without asking the database.
fn well_formed(token: &str) -> bool {
    token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// When a link made now for `expires_in_secs` stops working.
pub fn expiry(expires_in_secs: Option<u64>, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, AppError> {
    let Some(secs) = expires_in_secs else { return Ok(None) };
    if !(MIN_SHARE_EXPIRES_IN_SECS..=MAX_SHARE_EXPIRES_IN_SECS).contains(&secs) {
        return Err(AppError::BadRequest(format!(
            "expires_in_secs is {secs}; it must be {MIN_SHARE_EXPIRES_IN_SECS} to {MAX_SHARE_EXPIRES_IN_SECS} \
             (one minute to one year), or absent for a link that works until revoked"
        )));
    }
    Ok(Some(now + TimeDelta::seconds(secs as i64)))
}

/// The page a token opens: `<base>/s/<token>`.
pub fn url(base: &str, token: &str) -> String {
    format!("{}/s/{token}", base.trim_end_matches('/'))
}

/// Makes a new link for the caller's session, replacing (and so revoking) any earlier one.
pub async fn create(
    state: &AppState,
    user: &AuthUser,
    session_id: Uuid,
    expires_in_secs: Option<u64>,
    base: &str,
) -> Result<ShareCreated, AppError> {
    let now = Utc::now();
    let expires_at = expiry(expires_in_secs, now)?;
    let token = new_token();
    let share = ShareRecord { share_id: Uuid::new_v4(), session_id, user_id: user.id, created_at: now, expires_at };
    let stored = state.store.put_share(&share, &token_hash(&token)).await?.ok_or(AppError::NotFound)?;
    let status = status_of(&stored, 0);
    announce(state, user.id, session_id, Some(status.clone()));
    Ok(ShareCreated { url: url(base, &token), token, expires_at: stored.expires_at, share: status })
}

/// The caller's working link of a session, with how many watch it (`None`: none, or it
/// expired); `NotFound` when the session is not the caller's.
pub async fn status(state: &AppState, user: &AuthUser, session_id: Uuid) -> Result<Option<ShareStatus>, AppError> {
    state.store.get_owned_session(user.id, session_id).await?.ok_or(AppError::NotFound)?;
    let share = state.store.share_of(user.id, session_id).await?.filter(|s| s.live_at(Utc::now()));
    let Some(share) = share else { return Ok(None) };
    Ok(Some(status_of(&share, state.viewers.count(share.share_id).await)))
}

/// Revokes the caller's link of a session (if it has one): its viewers' streams end at
/// once. `NotFound` only when the session is not the caller's.
pub async fn revoke(state: &AppState, user: &AuthUser, session_id: Uuid) -> Result<(), AppError> {
    state.store.get_owned_session(user.id, session_id).await?.ok_or(AppError::NotFound)?;
    if state.store.delete_share(user.id, session_id).await? {
        announce(state, user.id, session_id, None);
    }
    Ok(())
}

/// Tells the owner's tabs what the session's link is now, as stored (after a count that may
/// have been published for a link that had just ended).
pub async fn restate(state: &AppState, owner: Uuid, session_id: Uuid) {
    let now = state.store.share_of(owner, session_id).await;
    let status = match now {
        Ok(Some(share)) if share.live_at(Utc::now()) => {
            Some(status_of(&share, state.viewers.count(share.share_id).await))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(%session_id, error = %e, "cannot read the share link to restate it");
            return;
        }
    };
    announce(state, owner, session_id, status);
}

/// Tells the owner's tabs (and every node's viewers of the session) what the link is now.
fn announce(state: &AppState, owner: Uuid, session_id: Uuid, share: Option<ShareStatus>) {
    state.hub.publish(owner, None, |_| ServerFrame::ShareUpdated { session_id, share: share.clone() });
}

/// The link a token opens and its session, while it works; `NotFound` for a token that
/// never was, was revoked or replaced, expired, or whose session was deleted (one answer
/// for all, so a token tells nothing about why).
pub async fn open(state: &AppState, token: &str) -> Result<(ShareRecord, SessionRecord), AppError> {
    if !well_formed(token) {
        return Err(AppError::NotFound);
    }
    match state.store.find_share(&token_hash(token)).await? {
        Some((share, session)) if share.live_at(Utc::now()) => Ok((share, session)),
        _ => Err(AppError::NotFound),
    }
}

/// What a viewer reads: the session and its recent messages (replaced ones left out).
pub async fn read(state: &AppState, token: &str) -> Result<SharedSession, AppError> {
    let (share, session) = open(state, token).await?;
    let mut messages = state.store.recent_messages(share.session_id, MAX_SHARED_MESSAGES).await?;
    messages.retain(|m| !m.superseded);
    // The session's own system prompt is its owner's instructions, not the conversation.
    let session = relay_protocol::Session { system_prompt: None, ..session.session };
    Ok(SharedSession { session, messages, expires_at: share.expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(well_formed(&a) && well_formed(&b), "{a}");
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
        // The SHA-256 of "abc", as every implementation gives it.
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}!", &a[..42])));
    }

    #[test]
    fn expiry_is_bounded() {
        let now = Utc::now();
        assert_eq!(expiry(None, now).unwrap(), None);
        assert_eq!(expiry(Some(60), now).unwrap(), Some(now + TimeDelta::seconds(60)));
        assert!(expiry(Some(59), now).is_err());
        assert!(expiry(Some(MAX_SHARE_EXPIRES_IN_SECS + 1), now).is_err());
    }
}
