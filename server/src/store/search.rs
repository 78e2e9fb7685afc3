//! Full-text search over a user's messages, through the `chat_message_text` index
//! (schema migration 8): BM25 ranks, highlights mark the matched words.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use relay_protocol::Role;
use serde::Deserialize;
use uuid::Uuid;

use super::{LIVE_SESSIONS_OF_USER, Store, StoreError};

/// Put before each matched word in [`SearchHit::marked`] (a private-use character, which
/// chat text does not hold; one that does only gains a stray mark).
pub const MARK_OPEN: char = '\u{E000}';
/// Put after each matched word in [`SearchHit::marked`].
pub const MARK_CLOSE: char = '\u{E001}';

/// One message that matches a search.
#[derive(Debug, Deserialize)]
pub struct SearchHit {
    /// The session it is in.
    pub session_id: Uuid,
    /// That session's title.
    #[serde(default)]
    pub session_title: String,
    /// The message.
    #[serde(rename = "id")]
    pub message_id: Uuid,
    /// Who wrote it.
    pub role: Role,
    /// The whole message, each matched word between [`MARK_OPEN`] and [`MARK_CLOSE`].
    pub marked: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// A page of [`SearchHit`]s, best first, and how many match in all.
#[derive(Debug, Deserialize)]
pub struct SearchPage {
    /// The page.
    pub hits: Vec<SearchHit>,
    /// How many messages match.
    pub total: u64,
}

/// The user's sessions are resolved first, so the index is asked only for their messages:
/// SurrealDB 3.3 intersects the full-text match with the session index as bitmaps
/// (`BitmapAnd` in `EXPLAIN`), and scores only what is left. Superseded messages and
/// deleted sessions never show.
static SEARCH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!("LET $sessions = SELECT VALUE record::id(id) FROM {LIVE_SESSIONS_OF_USER};{SEARCH_AFTER_SESSIONS}")
});
/// The search once `$sessions` holds the user's live sessions.
const SEARCH_AFTER_SESSIONS: &str = "
LET $hits = SELECT record::id(id) AS id, session_id, role, created_at, search::score(1) AS score,
        search::highlight($open, $close, 1) AS marked
    FROM chat_message WHERE content @1@ $q AND session_id INSIDE $sessions AND superseded != true
    ORDER BY score DESC, created_at DESC LIMIT $limit START $start;
LET $titles = SELECT record::id(id) AS id, title FROM array::distinct($hits.map(|$h| type::record('chat_session', $h.session_id)));
LET $total = (SELECT count() AS total FROM chat_message
    WHERE content @1@ $q AND session_id INSIDE $sessions AND superseded != true GROUP ALL)[0].total ?? 0;
RETURN {
    hits: $hits.map(|$h| $h.{ id, session_id, role, created_at, marked }
        + { session_title: ($titles.find(|$t| $t.id = $h.session_id).title ?? '') }),
    total: $total,
};";

impl Store {
    /// The messages of `user_id` that contain every word of `query` (as the index's
    /// analyzer splits and stems them), best first: `limit` of them from `start`.
    pub async fn search_messages(
        &self,
        user_id: Uuid,
        query: &str,
        start: u64,
        limit: u32,
    ) -> Result<SearchPage, StoreError> {
        let bind = serde_json::json!({
            "user_id": user_id, "q": query, "start": start, "limit": limit,
            "open": MARK_OPEN.to_string(), "close": MARK_CLOSE.to_string(),
        });
        let db = self.db.clone();
        let page: Option<serde_json::Value> = self
            .timed(self.on_engine(async move {
                let mut response = db.query(SEARCH_SQL.as_str(), Some(bind)).await?.check()?;
                Ok(response.take(response.num_statements() - 1)?)
            }))
            .await?;
        Ok(page.map(serde_json::from_value).transpose()?.unwrap_or(SearchPage { hits: Vec::new(), total: 0 }))
    }
}
