//! Wire types of the relay-chat protocol, version 1.
//!
//! This crate is the typed form of `PROTOCOL.md`: the objects, the REST bodies, the SSE
//! events and the WebSocket frames. It holds types only (serde, no I/O, no async runtime),
//! so the server, the browser client and the load generator share one definition, and it
//! builds for `wasm32-unknown-unknown`.

mod error;
mod objects;
mod rest;
mod ws;

pub use error::{ErrorBody, ErrorCode, ErrorResponse};
pub use objects::{Message, MessageStatus, ModelInfo, Quota, Role, Session, Usage, User, UserRole, UserUsage};
pub use rest::{
    AuthResponse, CreateSessionRequest, DeletedResponse, EditMessageRequest, LoginRequest, MeResponse, MessagePage,
    RegisterRequest, SendMessageRequest, SendMessageResponse, SessionList, SessionWithMessages, SseEvent,
    UpdateSessionRequest, UsageReport,
};
pub use ws::{ClientFrame, FinishReason, Generating, MAX_CLIENT_MESSAGE_ID_BYTES, ServerFrame};

/// The protocol version announced in the WebSocket `ready` frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// Page size used when a list request names none.
pub const DEFAULT_PER_PAGE: u32 = 20;

/// Largest page size a list request may ask for; larger values are clamped.
pub const MAX_PER_PAGE: u32 = 100;

/// Clamps a requested page and page size to the ranges the protocol allows.
pub fn clamp_page(page: Option<u32>, per_page: Option<u32>) -> (u32, u32) {
    let page = page.unwrap_or(1).max(1);
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE);
    (page, per_page)
}

/// Number of pages needed to show `total` items `per_page` at a time (zero for no items).
pub fn total_pages(total: u64, per_page: u32) -> u32 {
    total.div_ceil(u64::from(per_page.max(1))) as u32
}
