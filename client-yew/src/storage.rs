//! What the tab keeps in `localStorage`: the login (token and user), a draft per session
//! the colour theme, and whether the demo-mode banner was dismissed.

use gloo_storage::{LocalStorage, Storage};
use relay_protocol::User;
use uuid::Uuid;

const AUTH: &str = "relay.auth";
const THEME: &str = "relay.theme";

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

const DRAFT_PREFIX: &str = "relay.draft.";

fn draft_key(session: Uuid) -> String {
    format!("{DRAFT_PREFIX}{session}")
}

/// Forgets every session's unsent text and every share link made here (at logout: the
/// next user of this browser must not find them).
pub fn clear_drafts() {
    clear_prefixed(&[DRAFT_PREFIX, SHARE_PREFIX]);
}

/// Forgets every key that starts with one of `prefixes`.
fn clear_prefixed(prefixes: &[&str]) {
    let storage = LocalStorage::raw();
    let keys: Vec<String> = (0..storage.length().unwrap_or(0)).filter_map(|i| storage.key(i).ok().flatten()).collect();
    for key in keys.into_iter().filter(|k| prefixes.iter().any(|p| k.starts_with(p))) {
        LocalStorage::delete(key);
    }
}

const SHARE_PREFIX: &str = "relay.share.";

/// Forgets every share link made here (also when a login expires: a link reads a chat).
pub fn clear_share_urls() {
    clear_prefixed(&[SHARE_PREFIX]);
}

/// The address of a share link made in this browser (the server shows a token only once).
pub fn share_url(share: Uuid) -> Option<String> {
    LocalStorage::get(format!("{SHARE_PREFIX}{share}")).ok()
}

/// Keeps the address of a share link made here.
pub fn save_share_url(share: Uuid, url: &str) {
    let _ = LocalStorage::set(format!("{SHARE_PREFIX}{share}"), url);
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

/// The name of the theme the user chose (empty when none was).
pub fn load_theme() -> String {
    LocalStorage::get(THEME).unwrap_or_default()
}

/// Keeps the name of the theme the user chose.
pub fn save_theme(name: &str) {
    let _ = LocalStorage::set(THEME, name);
}

const MOCK_BANNER: &str = "relay.mock_banner_dismissed";

/// Whether the user dismissed the demo-mode banner in this browser.
pub fn mock_banner_dismissed() -> bool {
    LocalStorage::get::<bool>(MOCK_BANNER).unwrap_or(false)
}

/// Remembers that the user dismissed the demo-mode banner.
pub fn dismiss_mock_banner() {
    let _ = LocalStorage::set(MOCK_BANNER, true);
}
