//! Full-text search over a user's messages, through the `chat_message_text` index
//! (schema migration 8): BM25 ranks, the index's analyzer finds the words to mark.

use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use relay_protocol::Role;
use serde::Deserialize;
use uuid::Uuid;

use super::{LIVE_SESSIONS_OF_USER, Store, StoreError};

mod marks;

/// Put before each matched word in [`SearchHit::marked`] (a private-use character, which
/// chat text does not hold; one that does only gains a stray mark).
pub const MARK_OPEN: char = '\u{E000}';
/// Put after each matched word in [`SearchHit::marked`].
pub const MARK_CLOSE: char = '\u{E001}';

/// One message that matches a search.
#[derive(Debug)]
pub struct SearchHit {
    /// The session it is in.
    pub session_id: Uuid,
    /// That session's title.
    pub session_title: String,
    /// The message.
    pub message_id: Uuid,
    /// Who wrote it.
    pub role: Role,
    /// The whole message, each matched word between [`MARK_OPEN`] and [`MARK_CLOSE`].
    pub marked: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// A page of [`SearchHit`]s, best first, and how many match in all.
#[derive(Debug)]
pub struct SearchPage {
    /// The page.
    pub hits: Vec<SearchHit>,
    /// How many messages match.
    pub total: u64,
}

/// A hit as the query answers it: the text as stored, marked afterwards.
#[derive(Deserialize)]
struct StoredHit {
    session_id: Uuid,
    #[serde(default)]
    session_title: String,
    id: Uuid,
    role: Role,
    content: String,
    created_at: DateTime<Utc>,
}

/// What [`SEARCH_SQL`] answers.
#[derive(Deserialize)]
struct StoredPage {
    hits: Vec<StoredHit>,
    total: u64,
    /// The query's words as the index's analyzer reads them.
    terms: Vec<String>,
}

impl StoredPage {
    /// The page with each hit's matched words marked.
    fn marked(self) -> SearchPage {
        let terms: HashSet<String> = self.terms.into_iter().collect();
        let hits = self
            .hits
            .into_iter()
            .map(|hit| SearchHit {
                session_id: hit.session_id,
                session_title: hit.session_title,
                message_id: hit.id,
                role: hit.role,
                marked: marks::mark(&hit.content, &terms, MARK_OPEN, MARK_CLOSE),
                created_at: hit.created_at,
            })
            .collect();
        SearchPage { hits, total: self.total }
    }
}

/// The user's sessions are resolved first, so the index is asked only for their messages:
/// SurrealDB 3.3 intersects the full-text match with the session index as bitmaps
/// (`BitmapAnd` in `EXPLAIN`), and scores only what is left. Superseded messages and
/// deleted sessions never show.
///
/// Every match is scored once, in one pass that also gives the total: each matching row
/// costs the database reads of the index (0.1 to 0.2 ms here), so a second pass to count
/// and `search::highlight` on every scored row cost more than the scoring. That pass keeps
/// no text (a user's matches may be many long replies); the page's text is read after it,
/// and its words are marked by [`marks::mark`] from the query's terms. The index still
/// keeps its `HIGHLIGHTS` offsets: `marks_agree_with_the_database` checks the marks
/// against them.
static SEARCH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!("LET $sessions = SELECT VALUE record::id(id) FROM {LIVE_SESSIONS_OF_USER};{SEARCH_AFTER_SESSIONS}")
});
/// The search once `$sessions` holds the user's live sessions.
const SEARCH_AFTER_SESSIONS: &str = "
LET $all = SELECT record::id(id) AS id, session_id, role, created_at, search::score(1) AS score
    FROM chat_message WHERE content @1@ $q AND session_id INSIDE $sessions AND superseded != true
    ORDER BY score DESC, created_at DESC;
LET $page = array::slice($all, $start, $start + $limit);
LET $titles = SELECT record::id(id) AS id, title FROM array::distinct($page.map(|$h| type::record('chat_session', $h.session_id)));
RETURN {
    hits: $page.map(|$h| $h.{ id, session_id, role, created_at }
        + { content: type::record('chat_message', $h.id).content,
            session_title: ($titles.find(|$t| $t.id = $h.session_id).title ?? '') }),
    total: array::len($all),
    terms: search::analyze('chat_text', $q),
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
        let bind = serde_json::json!({ "user_id": user_id, "q": query, "start": start, "limit": limit });
        let db = self.db.clone();
        // The marking runs on the database's threads too: a page of long replies is real
        // work, kept off the threads that stream replies.
        self.timed(self.on_engine(async move {
            let mut response = db.query(SEARCH_SQL.as_str(), Some(bind)).await?.check()?;
            let page: Option<serde_json::Value> = response.take(response.num_statements() - 1)?;
            let Some(page) = page.map(serde_json::from_value::<StoredPage>).transpose()? else {
                return Ok(SearchPage { hits: Vec::new(), total: 0 });
            };
            Ok(page.marked())
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use relay_protocol::{Message, MessageStatus, Session};

    use super::*;
    use crate::store::write_behind::tests::store;

    /// The words a search marks are the words SurrealDB's own `search::highlight` marks,
    /// for text that tests each rule of the analyzer: case, accents, stems, digits and
    /// punctuation next to letters, characters it ignores, several lines.
    #[tokio::test]
    async fn marks_agree_with_the_database() {
        let store = store().await;
        let user = Uuid::new_v4();
        let session = Session::new(Uuid::new_v4(), "marks".into(), Utc::now());
        let texts = [
            "Running the RUST runner: rust2024 runs, v2rust; «Rust» and “rusty”.",
            "Café café CAFÉ cafés — naïve naive Straße strasse",
            "fn main() { println!(\"run\"); } // 42 runs -> 42\n\tsecond line: Run!",
            "日本語 rust 🦀 rust🦀rust ünïcödé runner's run's",
            "x² ½ 2² 2 İstanbul istanbul ﬁne fine a\u{200B}b cafe\u{0301} Ⅻ xii -> !!! ->",
        ];
        let messages: Vec<Message> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| Message {
                id: Uuid::new_v4(),
                session_id: session.id,
                role: Role::User,
                content: text.to_string(),
                token_count: Some(1),
                status: MessageStatus::Complete,
                created_at: Utc::now() + chrono::Duration::seconds(i as i64),
                superseded: false,
                model: None,
                replaced_by: None,
            })
            .collect();
        store.import(&[(user, session)], &messages).await.unwrap();
        let queries = [
            "rust",
            "run",
            "cafe",
            "naive strasse",
            "42",
            "println",
            "ünïcödé",
            "runner",
            "2",
            "istanbul",
            "fine",
            "xii",
            "->",
            "日本語",
            "b",
        ];
        let mut compared = 0;
        for query in queries {
            let sql = "SELECT content, search::highlight('\u{E000}', '\u{E001}', 1) AS marked FROM chat_message \
                 WHERE content @1@ $q; RETURN search::analyze('chat_text', $q);";
            let mut response =
                store.db.query(sql, Some(serde_json::json!({ "q": query }))).await.unwrap().check().unwrap();
            let rows: Vec<serde_json::Value> = response.take(0).unwrap();
            let terms: Vec<String> = response.take(1).unwrap();
            let terms: HashSet<String> = terms.into_iter().collect();
            assert!(!rows.is_empty(), "{query:?} finds something");
            for row in rows {
                let content = row["content"].as_str().unwrap();
                let theirs = row["marked"].as_str().unwrap();
                assert_eq!(marks::mark(content, &terms, MARK_OPEN, MARK_CLOSE), theirs, "{query:?}");
                compared += 1;
            }
        }
        assert!(compared > queries.len(), "only {compared} rows compared");
    }
}
