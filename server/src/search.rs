//! Search within conversations (`GET /api/v1/chat/search`): checks the request, asks the
//! store's full-text index for the caller's matching messages, and cuts each into a short
//! snippet with its matches marked.

use relay_protocol::{MAX_SEARCH_QUERY_CHARS, SearchResult, SearchResults};
use uuid::Uuid;

use crate::error::AppError;
use crate::state::AppState;
use crate::store::search::{MARK_CLOSE, MARK_OPEN};

/// Results on a page when the request does not say.
pub const DEFAULT_PER_PAGE: u32 = 20;
/// The largest page.
pub const MAX_PER_PAGE: u32 = 50;
/// The highest page number accepted.
pub const MAX_PAGE: u32 = 1_000;
/// How deep pages go: a result past this many is never returned (a deeper page is empty;
/// the total still counts it). Every page costs the same (every match is scored for
/// each), so this bounds what a client pages through, not the database's work.
pub const MAX_RESULTS_REACHABLE: u64 = 1_000;

/// About how many characters of a message a snippet shows.
const SNIPPET_CHARS: usize = 200;
/// How many of them come before the first match, at most.
const CONTEXT_BEFORE: usize = 60;

/// How long a search waits for a turn among those running before it is refused.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Lets a search run: within the user's per-minute allowance (`CHAT_SEARCHES_PER_MINUTE`),
/// and as one of at most `CHAT_SEARCH_CONCURRENCY` on this node, so searches cannot take
/// the database (and the cores) away from the streams.
async fn take_turn(state: &AppState, user_id: Uuid) -> Result<tokio::sync::SemaphorePermit<'_>, AppError> {
    let rate =
        crate::limits::Rate { limit: state.config.searches_per_minute, period: std::time::Duration::from_secs(60) };
    let decision = state.limiter.rate(&format!("search:{user_id}"), rate).await;
    if !decision.allowed {
        state.metrics.limit_refused("searches_per_minute");
        return Err(AppError::TooManyAttempts { retry_after_ms: decision.retry_after.as_millis() as u64 });
    }
    match tokio::time::timeout(TURN_WAIT, state.searches.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            state.metrics.limit_refused("search_concurrency");
            Err(AppError::Unavailable { reason: "too many searches are running; retry", retry_after_ms: 500 })
        }
    }
}

/// One page of the user's messages matching `q`, best first.
pub async fn search(
    state: &AppState,
    user_id: Uuid,
    q: Option<&str>,
    page: Option<u32>,
    per_page: Option<u32>,
) -> Result<SearchResults, AppError> {
    let (q, page, per_page) = check(q, page, per_page).map_err(AppError::BadRequest)?;
    let _turn = take_turn(state, user_id).await?;
    if let Some(delay) = crate::faults::search_delay() {
        tokio::time::sleep(delay).await;
    }
    let start = u64::from(page - 1) * u64::from(per_page);
    let found = if start < MAX_RESULTS_REACHABLE {
        let limit = per_page.min((MAX_RESULTS_REACHABLE - start) as u32);
        state.store.search_messages(user_id, q, start, limit).await?
    } else {
        // Past the reachable results: none, but the total still.
        state.store.search_messages(user_id, q, 0, 0).await?
    };
    let results = found
        .hits
        .into_iter()
        .map(|hit| SearchResult {
            session_id: hit.session_id,
            session_title: hit.session_title,
            message_id: hit.message_id,
            role: hit.role,
            snippet: snippet(&hit.marked),
            created_at: hit.created_at,
        })
        .collect();
    Ok(SearchResults { results, total: found.total, page, per_page })
}

/// The search text (trimmed), the page and the page size, or why they are refused.
fn check(q: Option<&str>, page: Option<u32>, per_page: Option<u32>) -> Result<(&str, u32, u32), String> {
    let q = q.map(str::trim).unwrap_or_default();
    if q.is_empty() {
        return Err("q is required: the words to search for".into());
    }
    if q.chars().count() > MAX_SEARCH_QUERY_CHARS {
        return Err(format!("q must be at most {MAX_SEARCH_QUERY_CHARS} characters"));
    }
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(format!("per_page must be 1 to {MAX_PER_PAGE}"));
    }
    let page = page.unwrap_or(1);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(format!("page must be 1 to {MAX_PAGE}"));
    }
    Ok((q, page, per_page))
}

/// A short piece of a message around its first match, as HTML: the text escaped, the
/// marked words in `<mark>`, whitespace runs as one space, `…` where text is left out. It
/// starts at a word up to [`CONTEXT_BEFORE`] characters before the match and ends at a word
/// after about [`SNIPPET_CHARS`] characters (a mark is never cut open).
pub fn snippet(marked: &str) -> String {
    let chars: Vec<char> = marked.chars().collect();
    let first = chars.iter().position(|&c| c == MARK_OPEN).unwrap_or(0);
    let mut start = first.saturating_sub(CONTEXT_BEFORE);
    if start > 0
        && !chars[start - 1].is_whitespace()
        && let Some(space) = chars[start..first].iter().position(|c| c.is_whitespace())
    {
        start += space + 1;
    }
    while start < first && chars[start].is_whitespace() {
        start += 1;
    }
    let mut out = String::with_capacity(SNIPPET_CHARS * 2);
    if start > 0 {
        out.push('…');
    }
    let (mut shown, mut open, mut space) = (0, false, false);
    let mut end = start;
    while end < chars.len() {
        let c = chars[end];
        // Stop at a word's end once long enough; a word that never ends is cut a little later.
        if !open && ((shown >= SNIPPET_CHARS && c.is_whitespace()) || shown >= SNIPPET_CHARS + 40) {
            break;
        }
        match c {
            MARK_OPEN if !open => {
                out.push_str("<mark>");
                open = true;
            }
            MARK_CLOSE if open => {
                out.push_str("</mark>");
                open = false;
            }
            MARK_OPEN | MARK_CLOSE => {}
            c if c.is_whitespace() => {
                if !space {
                    out.push(' ');
                    shown += 1;
                }
                space = true;
            }
            c => {
                escape_char(&mut out, c);
                shown += 1;
                space = false;
            }
        }
        end += 1;
    }
    if open {
        out.push_str("</mark>");
    }
    if chars[end..].iter().any(|&c| !c.is_whitespace() && c != MARK_OPEN && c != MARK_CLOSE) {
        out.truncate(out.trim_end().len());
        out.push('…');
    }
    out
}

/// Writes `c` as HTML text (also safe inside an attribute value).
fn escape_char(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(text: &str) -> String {
        text.replace('[', &MARK_OPEN.to_string()).replace(']', &MARK_CLOSE.to_string())
    }

    #[test]
    fn a_short_message_is_whole_escaped_and_marked() {
        assert_eq!(
            snippet(&marked("Is <b>[Paris]</b> in\n\nFrance & \"[paris]\"?")),
            "Is &lt;b&gt;<mark>Paris</mark>&lt;/b&gt; in France &amp; &quot;<mark>paris</mark>&quot;?"
        );
    }

    #[test]
    fn a_long_message_is_cut_around_its_first_match_at_words() {
        let before = "alpha ".repeat(40);
        let after = "omega ".repeat(100);
        let cut = snippet(&marked(&format!("{before}the [needle] is here {after}")));
        assert!(cut.starts_with("…alpha "), "{cut}");
        assert!(cut.contains("the <mark>needle</mark> is here omega"), "{cut}");
        assert!(cut.ends_with("omega…"), "{cut}");
        let shown = cut.replace("<mark>", "").replace("</mark>", "");
        let n = shown.chars().count();
        assert!((SNIPPET_CHARS..=SNIPPET_CHARS + 10).contains(&n), "{n} characters: {cut}");
        // It starts at most CONTEXT_BEFORE characters before the match.
        let lead = shown.find("the needle").unwrap();
        assert!(lead <= CONTEXT_BEFORE + "…".len(), "{cut}");
    }

    #[test]
    fn a_mark_is_never_cut_open_and_stray_marks_are_dropped() {
        let long_word = "x".repeat(400);
        let cut = snippet(&marked(&format!("[{long_word}] tail")));
        assert!(cut.starts_with("<mark>xxx") && cut.contains("</mark>"), "{cut}");
        assert_eq!(snippet(&marked("a ] b [c [d] e")), "a b <mark>c d</mark> e");
        assert_eq!(snippet("no marks at all"), "no marks at all");
        assert_eq!(snippet(""), "");
    }

    #[test]
    fn requests_out_of_range_are_refused_with_the_rule() {
        assert_eq!(check(Some("  cats "), None, None), Ok(("cats", 1, DEFAULT_PER_PAGE)));
        assert!(check(None, None, None).unwrap_err().contains("q is required"));
        assert!(check(Some("   "), None, None).unwrap_err().contains("q is required"));
        let long = "a".repeat(MAX_SEARCH_QUERY_CHARS + 1);
        assert!(check(Some(&long), None, None).unwrap_err().contains("at most 200"));
        assert!(check(Some(&long[1..]), None, None).is_ok());
        assert!(check(Some("x"), None, Some(51)).unwrap_err().contains("per_page must be 1 to 50"));
        assert!(check(Some("x"), Some(0), None).unwrap_err().contains("page must be 1 to 1000"));
        assert_eq!(check(Some("x"), Some(1000), Some(50)), Ok(("x", 1000, 50)));
        assert!(check(Some("x"), Some(1001), Some(1)).is_err());
    }
}
