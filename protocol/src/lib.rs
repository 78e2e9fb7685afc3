//! Wire types of the relay-chat protocol, version 1.
//!
//! This crate is the typed form of `PROTOCOL.md`: the objects, the REST bodies, the SSE
//! events and the WebSocket frames. It holds types only (serde, no I/O, no async runtime),
//! so the server, the browser client and the load generator share one definition, and it
//! builds for `wasm32-unknown-unknown`.

mod error;
mod objects;
mod prompts;
mod rest;
mod share;
mod ws;

pub use error::{ErrorBody, ErrorCode, ErrorResponse};
pub use objects::{
    Message, MessageStatus, ModelInfo, ModelList, ModelOption, Quota, Role, Session, Usage, User, UserRole, UserUsage,
};
pub use prompts::{
    CreatePromptRequest, MAX_PROMPT_CONTENT_CHARS, MAX_PROMPT_TITLE_CHARS, MAX_PROMPTS_PER_USER, Prompt, PromptList,
    UpdatePromptRequest,
};
pub use rest::{
    AuthResponse, CreateSessionRequest, DayUsageExport, DeletedResponse, EditMessageRequest, ExportedSession, Feedback,
    FeedbackRequest, LoginRequest, MAX_SEARCH_QUERY_CHARS, MAX_SYSTEM_PROMPT_CHARS, MeResponse, MessagePage,
    ModelUsage, RegisterRequest, SearchResult, SearchResults, SendMessageRequest, SendMessageResponse, SessionExport,
    SessionList, SessionWithMessages, SseEvent, UpdateSessionRequest, UsageReport, UserExport,
};
pub use share::{
    CreateShareRequest, MAX_SHARE_EXPIRES_IN_SECS, MAX_SHARED_MESSAGES, MIN_SHARE_EXPIRES_IN_SECS, SessionShare,
    ShareCreated, ShareEnd, ShareEnded, ShareStatus, SharedSession,
};
pub use ws::{ClientFrame, FinishReason, Generating, MAX_CLIENT_MESSAGE_ID_BYTES, ServerFrame};

/// The protocol version announced in the WebSocket `ready` frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// Page size used when a list request names none.
pub const DEFAULT_PER_PAGE: u32 = 20;

/// Largest page size a list request may ask for; a larger one is refused (`bad_request`).
pub const MAX_PER_PAGE: u32 = 100;

/// Largest page number a list request may ask for (far past any user's last page).
pub const MAX_PAGE: u32 = 1_000_000;

/// A requested page (1 to [`MAX_PAGE`]) and page size (1 to [`MAX_PER_PAGE`]), with the defaults
/// filled in; a value out of range is refused with what is wrong (`bad_request`), as the
/// OpenAPI document's bounds say, rather than quietly changed.
pub fn check_page(page: Option<u32>, per_page: Option<u32>) -> Result<(u32, u32), String> {
    let page = page.unwrap_or(1);
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(format!("page must be 1 to {MAX_PAGE}"));
    }
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(format!("per_page must be 1 to {MAX_PER_PAGE}"));
    }
    Ok((page, per_page))
}

/// A JSON Schema `pattern` (the OpenAPI document's) that a title or a message matches when
/// it holds something other than whitespace: every character `str::trim` removes (the
/// Unicode `White_Space` set), spelled out code point by code point, because regex engines
/// disagree about what `\s` means.
pub const NOT_BLANK_PATTERN: &str =
    "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// Number of pages needed to show `total` items `per_page` at a time (zero for no items).
pub fn total_pages(total: u64, per_page: u32) -> u32 {
    total.div_ceil(u64::from(per_page.max(1))) as u32
}
