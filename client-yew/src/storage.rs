//! What the tab keeps in `localStorage`: the login (token and user) and a draft per session.

use gloo_storage::{LocalStorage, Storage};
use relay_protocol::User;
use uuid::Uuid;

const AUTH: &str = "relay.auth";

/// The saved login, if any.
pub fn load_auth() -> Option<(User, String)> {
    LocalStorage::get(AUTH).ok()
}

/// Saves the login.
pub fn save_auth(user: &User, token: &str) {
    let _ = LocalStorage::set(AUTH, (user, token));
}

/// Forgets the login.
pub fn clear_auth() {
    LocalStorage::delete(AUTH);
}

fn draft_key(session: Uuid) -> String {
    format!("relay.draft.{session}")
}

/// The unsent text of a session.
pub fn load_draft(session: Uuid) -> String {
    LocalStorage::get(draft_key(session)).unwrap_or_default()
}

/// Keeps the unsent text of a session (an empty one is forgotten).
pub fn save_draft(session: Uuid, text: &str) {
    if text.is_empty() {
        LocalStorage::delete(draft_key(session));
    } else {
        let _ = LocalStorage::set(draft_key(session), text);
    }
}
