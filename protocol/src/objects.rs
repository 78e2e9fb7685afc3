//! The objects that REST bodies and WebSocket frames are made of.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user's role: admins have no quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    /// An ordinary user.
    #[default]
    User,
    /// An administrator, exempt from quotas.
    Admin,
}

/// A user as the API shows it (never with credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// The user id, also the `sub` claim of their tokens.
    pub id: Uuid,
    /// The login name.
    pub username: String,
    /// Whether the user is an admin.
    pub role: UserRole,
}

/// A chat session (a conversation) as listed and returned by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// The session id.
    pub id: Uuid,
    /// The title shown in session lists.
    pub title: String,
    /// When the session was created.
    pub created_at: DateTime<Utc>,
    /// When the session or its messages last changed.
    pub updated_at: DateTime<Utc>,
    /// The session's own system prompt, used instead of the server's (`CHAT_SYSTEM_PROMPT`);
    /// absent when it has none (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The model that answers in this session (a name `GET /api/v1/models` lists); absent
    /// for a session made before models could be chosen, which the default model answers
    /// (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Session {
    /// A new session as first stored.
    pub fn new(id: Uuid, title: String, at: DateTime<Utc>) -> Session {
        Session { id, title, created_at: at, updated_at: at, system_prompt: None, model: None }
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person chatting.
    User,
    /// The model.
    Assistant,
    /// Instructions to the model.
    System,
}

/// Whether a stored message is whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// The message is whole.
    #[default]
    Complete,
    /// The reply was stopped early; the content is what had arrived.
    Cancelled,
    /// The reply failed; the content is what had arrived.
    Error,
    /// The reply is still being generated; the content is its last checkpoint.
    Generating,
}

/// A stored chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    /// The message id.
    pub id: Uuid,
    /// The session it belongs to.
    pub session_id: Uuid,
    /// Who wrote it.
    pub role: Role,
    /// Its text (markdown for assistant replies).
    pub content: String,
    /// Tokens it counted for, when known.
    pub token_count: Option<u32>,
    /// Whether it is whole.
    pub status: MessageStatus,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Replaced by a regenerated reply or an edited message: kept, shown as history, left
    /// out of the model's context. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
    /// The model that wrote it (a reply; absent for a user message, or a reply stored
    /// before models were named) (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// When superseded, the message that took its place: a regenerate's new reply, an
    /// edit's new message. Every live message one edit replaced names the same new message, so
    /// one earlier version of a conversation can be told from the next. Absent when live,
    /// or when replaced before this was recorded (added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<Uuid>,
}

/// Which model answers, as `ready` tells a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelInfo {
    /// The model's name as sent to the provider.
    pub name: String,
    /// True when replies come from the server's built-in mock model (no provider key).
    pub mock: bool,
}

/// A model users may choose, as `GET /api/v1/models` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelOption {
    /// The name (what a session's `model` holds).
    pub name: String,
    /// What people see.
    pub label: String,
}

/// Answer to `GET /api/v1/models`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelList {
    /// The models on offer, the default first.
    pub models: Vec<ModelOption>,
    /// The default model's name.
    pub default: String,
}

/// Token usage of one model reply, as the provider reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Tokens in the prompt (the context sent).
    pub prompt_tokens: u32,
    /// Tokens in the reply.
    pub completion_tokens: u32,
    /// Both together.
    pub total_tokens: u32,
}

/// A user's daily message quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quota {
    /// Messages sent today (UTC).
    pub messages_today: u32,
    /// The daily limit; `None` means unlimited.
    pub limit: Option<u32>,
    /// Messages left today; `None` means unlimited.
    pub remaining: Option<u32>,
    /// When the count starts again (next midnight UTC).
    pub resets_at: DateTime<Utc>,
    /// Tokens sent to the model for the user's replies today (their contexts).
    #[serde(default)]
    pub prompt_tokens_today: u64,
    /// Tokens the model wrote in the user's replies today.
    #[serde(default)]
    pub completion_tokens_today: u64,
}

/// One user's use of the model on one day, as the usage ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserUsage {
    /// The user.
    pub user_id: Uuid,
    /// Messages sent.
    pub messages: u32,
    /// Tokens sent to the model (contexts).
    pub prompt_tokens: u64,
    /// Tokens the model wrote.
    pub completion_tokens: u64,
}
