//! REST request and response bodies, and the SSE events of a streamed send.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::{ErrorCode, FinishReason, Message, Quota, Role, Session, Usage, User, UserUsage};

/// Body of `POST /api/v1/auth/register`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The wanted login name: 3 to 32 of `[A-Za-z0-9_.-]`.
    #[cfg_attr(feature = "openapi", schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]+$"))]
    pub username: String,
    /// The password: 8 to 1,024 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 1024))]
    pub password: String,
}

/// Body of `POST /api/v1/auth/login`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    /// The login name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// Answer to register and login: a bearer token and the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthResponse {
    /// The JWT to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// Who the token is for.
    pub user: User,
}

/// Answer to `GET /api/v1/auth/me`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeResponse {
    /// The authenticated user.
    pub user: User,
    /// Their quota today.
    pub quota: Quota,
}

/// Body of `POST /api/v1/chat/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSessionRequest {
    /// The title, at most 255 characters, trimmed; "New chat" when absent or blank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub title: Option<String>,
    /// The session's own system prompt (at most [`MAX_SYSTEM_PROMPT_CHARS`] characters);
    /// absent or blank: the server's (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 4000))]
    pub system_prompt: Option<String>,
    /// The model to answer, one `GET /api/v1/models` lists; absent: the server's default,
    /// or the user's arm of a running model experiment (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Longest system prompt a session may have, in characters.
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 4000;

/// Body of `PATCH /api/v1/chat/sessions/:id`: at least one of its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateSessionRequest {
    /// The new title: at most 255 characters and not only whitespace (which is trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
        )
    )]
    pub title: Option<String>,
    /// The session's own system prompt (at most 4,000 characters); `null` or blank goes
    /// back to the server's (added).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "double_option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 4000))]
    pub system_prompt: Option<Option<String>>,
    /// The model that answers from now on, one `GET /api/v1/models` lists (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A field that may be absent (unchanged), `null` (cleared) or a value.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(value: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Answer to `GET /api/v1/chat/sessions`: one page of sessions, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionList {
    /// The sessions on this page.
    pub sessions: Vec<Session>,
    /// How many sessions the user has in all.
    pub total: u64,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size used.
    pub per_page: u32,
    /// How many pages there are.
    pub total_pages: u32,
}

/// Answer to `GET /api/v1/chat/sessions/:id`: the session and its messages, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionWithMessages {
    /// The session.
    pub session: Session,
    /// Its messages in chronological order.
    pub messages: Vec<Message>,
}

/// Answer to `DELETE /api/v1/chat/sessions/:id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeletedResponse {
    /// Always "Session deleted".
    pub message: String,
}

/// Body of `POST /api/v1/chat/sessions/:id/messages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendMessageRequest {
    /// The user's message: not only whitespace, at most `CHAT_MAX_MESSAGE_LENGTH`
    /// characters (the served document states the configured figure).
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 4000,
            pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
        )
    )]
    pub content: String,
}

/// Answer to a non-streaming send: both stored messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendMessageResponse {
    /// The stored user message.
    pub user_message: Message,
    /// The stored assistant reply.
    pub assistant_message: Message,
}

/// One `data:` event of a streamed send (`Accept: text/event-stream`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum SseEvent {
    /// The reply ended: `{"done": true, "message_id", "finish_reason", "usage"}`.
    Done {
        /// Always true.
        done: bool,
        /// The stored assistant message.
        message_id: Uuid,
        /// Why the reply ended.
        finish_reason: FinishReason,
        /// Token usage, when the provider reported it.
        #[serde(default)]
        usage: Option<Usage>,
    },
    /// A piece of the reply: `{"chunk": "...", "done": false}`.
    Chunk {
        /// The text to append.
        chunk: String,
        /// Always false.
        done: bool,
    },
    /// The request failed; the stream ends: `{"error": "...", "code": "..."}`.
    Error {
        /// What went wrong, for people.
        error: String,
        /// What went wrong, for programs.
        code: ErrorCode,
    },
}

/// Answer to `GET /api/v1/admin/usage?day=`: every user's use of the model that day, the
/// largest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    /// The day (UTC), `YYYY-MM-DD`.
    pub day: chrono::NaiveDate,
    /// One row per user who used chat that day.
    pub users: Vec<UserUsage>,
    /// One row per model that replied that day, with its arm of the model experiment, to
    /// compare them (added; absent when none replied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelUsage>,
}

/// One model's replies on one day (`GET /api/v1/admin/usage`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelUsage {
    /// The model.
    pub model: String,
    /// Its arm of the model experiment: `control` (the default model), `variant`, or
    /// `none` (no experiment, or another model).
    pub arm: String,
    /// Replies stored.
    pub replies: u64,
    /// Of those, complete (`stop` or `length`).
    pub complete: u64,
    /// Stopped early.
    pub cancelled: u64,
    /// Failed.
    pub failed: u64,
    /// Tokens the model wrote.
    pub completion_tokens: u64,
    /// Thumbs up given to its replies that day.
    pub thumbs_up: u64,
    /// Thumbs down.
    pub thumbs_down: u64,
}

/// Body of `POST /api/v1/chat/sessions/:id/messages/:message_id/feedback`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// 1 (thumbs up) or -1 (thumbs down); a new rating replaces the user's earlier one.
    #[cfg_attr(feature = "openapi", schema(minimum = -1, maximum = 1))]
    pub rating: i8,
}

/// Answer to a feedback request: the rating as stored, with the reply's model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Feedback {
    /// The reply.
    pub message_id: Uuid,
    /// 1 or -1.
    pub rating: i8,
    /// The model that wrote the reply.
    pub model: String,
}

/// Body of `POST /api/v1/chat/sessions/:id/messages/:message_id/edit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EditMessageRequest {
    /// The new text of the message edited, checked like a send's.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 4000,
            pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
        )
    )]
    pub content: String,
}

/// Answer to `GET /api/v1/chat/sessions/:id/messages?before=&limit=`: a page of a session's
/// messages, oldest first, ending just before `before` (or at the newest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagePage {
    /// The messages, oldest first.
    pub messages: Vec<Message>,
    /// Whether older messages exist before the first one here.
    pub has_more: bool,
}

/// The longest search text `GET /api/v1/chat/search` accepts, in characters.
pub const MAX_SEARCH_QUERY_CHARS: usize = 200;

/// Answer to `GET /api/v1/chat/search?q=&page=&per_page=`: the caller's messages that
/// contain every word of `q`, best match first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchResults {
    /// The matches on this page.
    pub results: Vec<SearchResult>,
    /// How many messages match in all (results beyond the deepest page included).
    pub total: u64,
    /// This page's number, from 1.
    pub page: u32,
    /// The page size used.
    pub per_page: u32,
}

/// One message that matches a search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchResult {
    /// The session the message is in.
    pub session_id: Uuid,
    /// That session's title.
    pub session_title: String,
    /// The message.
    pub message_id: Uuid,
    /// Who wrote it.
    pub role: Role,
    /// About 200 characters of the message around its first match, as HTML: every
    /// character of the message escaped, each matched word wrapped in `<mark>`…`</mark>`,
    /// `…` where text was left out.
    pub snippet: String,
    /// When the message was written.
    pub created_at: DateTime<Utc>,
}

/// `GET /api/v1/chat/sessions/:id/export?format=json`: one session, whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionExport {
    /// The session.
    pub session: Session,
    /// The model the server answers with.
    pub model: String,
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// Every message, oldest first; the replaced ones too, with `superseded` true.
    pub messages: Vec<Message>,
}

/// `GET /api/v1/me/export`: everything the server holds of the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserExport {
    /// The account (never its password hash).
    pub user: User,
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// Every session, deleted ones not yet purged included, oldest first.
    pub sessions: Vec<ExportedSession>,
    /// Usage by UTC day, oldest first.
    pub usage: Vec<DayUsageExport>,
    /// The user's saved prompts (added; absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<crate::Prompt>,
}

/// One session in a [`UserExport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedSession {
    /// The session.
    pub session: Session,
    /// When it was deleted, if it was (its messages are kept until it is purged).
    pub deleted_at: Option<DateTime<Utc>>,
    /// Its messages, oldest first, replaced ones included (`superseded`).
    pub messages: Vec<Message>,
}

/// A day of a user's usage in a [`UserExport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DayUsageExport {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Messages sent.
    pub messages: u32,
    /// Tokens sent to the model.
    pub prompt_tokens: u64,
    /// Tokens the model wrote.
    pub completion_tokens: u64,
}
