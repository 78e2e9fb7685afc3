//! WebSocket frames, client to server and server to client.
//!
//! Every frame is one JSON text message tagged by `"type"`. Requests may carry an `id`,
//! which the direct reply (or an error it caused) echoes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorBody, Message, ModelInfo, Quota, Session, Usage, User};

/// A frame the client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticates a connection opened without an `Authorization` header.
    Auth {
        /// The JWT.
        token: String,
    },
    /// Starts watching a session: a snapshot, then live events.
    Subscribe {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session to watch.
        session_id: Uuid,
    },
    /// Stops watching a session.
    Unsubscribe {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session to stop watching.
        session_id: Uuid,
    },
    /// Sends a user message; the reply streams to every subscriber.
    Send {
        /// Echoed in the `ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session to send to.
        session_id: Uuid,
        /// The message text.
        content: String,
        /// The client's idempotency key (any string up to 64 bytes): a repeat with the same
        /// key from the same user within 24 hours is answered as the first was and does
        /// nothing more.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
    },
    /// Cancels the reply being generated.
    Stop {
        /// Echoed in an error reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session whose reply to stop.
        session_id: Uuid,
    },
    /// Creates a session.
    CreateSession {
        /// Echoed in `session_created`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The title; "New chat" when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    /// Renames a session.
    RenameSession {
        /// Echoed in `session_updated`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session to rename.
        session_id: Uuid,
        /// The new title.
        title: String,
    },
    /// Deletes (soft) a session.
    DeleteSession {
        /// Echoed in `session_deleted`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session to delete.
        session_id: Uuid,
    },
    /// Lists sessions, newest first.
    ListSessions {
        /// Echoed in `sessions`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Page number from 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page: Option<u32>,
        /// Page size, clamped to 1..=100.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        per_page: Option<u32>,
    },
    /// Replaces the session's last reply with a new one (or answers its last message if it
    /// has none).
    Regenerate {
        /// Echoed in the `ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session.
        session_id: Uuid,
        /// The client's idempotency key (any string up to 64 bytes): a repeat with the same
        /// key from the same user within 24 hours is answered as the first was and does
        /// nothing more.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
    },
    /// Replaces a live user message of the session, and every live message after it, with
    /// new text, and answers it.
    Edit {
        /// Echoed in the `ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session.
        session_id: Uuid,
        /// The user message replaced: any live (not superseded) one of the session.
        message_id: Uuid,
        /// Its new text.
        content: String,
        /// The client's idempotency key (any string up to 64 bytes): a repeat with the same
        /// key from the same user within 24 hours is answered as the first was and does
        /// nothing more.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_message_id: Option<String>,
    },
    /// Application-level keepalive.
    Ping {
        /// Echoed in `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

/// The longest idempotency key (`client_message_id`, `Idempotency-Key`), in bytes.
pub const MAX_CLIENT_MESSAGE_ID_BYTES: usize = 64;

impl ClientFrame {
    /// The request id the reply must echo, if any.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientFrame::Auth { .. } => None,
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::Stop { id, .. }
            | ClientFrame::CreateSession { id, .. }
            | ClientFrame::RenameSession { id, .. }
            | ClientFrame::DeleteSession { id, .. }
            | ClientFrame::ListSessions { id, .. }
            | ClientFrame::Regenerate { id, .. }
            | ClientFrame::Edit { id, .. }
            | ClientFrame::Ping { id } => id.as_deref(),
        }
    }
}

/// Why a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished.
    Stop,
    /// The reply hit the token limit.
    Length,
    /// Someone pressed stop, or nobody was watching any more.
    Cancelled,
    /// The model provider failed.
    Error,
}

/// A reply still being generated, as a `subscribed` snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generating {
    /// The id the reply will be stored under.
    pub message_id: Uuid,
    /// The text generated so far.
    pub content: String,
}

/// A frame the server sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The connection is authenticated.
    Ready {
        /// Who is connected.
        user: User,
        /// Their quota today.
        quota: Quota,
        /// The protocol version, [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// Which model answers (added; absent from older servers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<ModelInfo>,
    },
    /// The snapshot that starts a subscription.
    Subscribed {
        /// The `subscribe` (or `send`) request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session.
        session: Session,
        /// Its recent messages, oldest first.
        messages: Vec<Message>,
        /// The session's event counter; the next event carries `seq + 1`.
        seq: u64,
        /// The reply in progress, if any.
        generating: Option<Generating>,
        /// Whether the session has messages before `messages` (read them over REST);
        /// absent when it has none (added).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        has_older: bool,
    },
    /// The subscription ended.
    Unsubscribed {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session no longer watched.
        session_id: Uuid,
    },
    /// The user message of a `send` is stored.
    Ack {
        /// The `send` request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The stored user message.
        message: Message,
    },
    /// A message was stored in the session (user or assistant).
    Message {
        /// The session.
        session_id: Uuid,
        /// The session event number.
        seq: u64,
        /// The stored message.
        message: Message,
    },
    /// Messages were replaced (by `regenerate` or `edit`): they stay in the history, marked
    /// `superseded`.
    Superseded {
        /// The session.
        session_id: Uuid,
        /// The session event number.
        seq: u64,
        /// The messages now superseded.
        message_ids: Vec<Uuid>,
        /// The message that takes their place (their `replaced_by`): the new reply or the
        /// edit's new message (added; absent from older servers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<Uuid>,
    },
    /// A reply started.
    GenerationStarted {
        /// The session.
        session_id: Uuid,
        /// The session event number.
        seq: u64,
        /// The id the reply will be stored under.
        message_id: Uuid,
    },
    /// A piece of the reply.
    Delta {
        /// The session.
        session_id: Uuid,
        /// The session event number.
        seq: u64,
        /// The reply.
        message_id: Uuid,
        /// The text to append.
        text: String,
    },
    /// A reply ended.
    Done {
        /// The session.
        session_id: Uuid,
        /// The session event number.
        seq: u64,
        /// The reply.
        message_id: Uuid,
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token usage, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// What failed, when `finish_reason` is `error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    /// A session of the user was created (sent to all their connections).
    SessionCreated {
        /// The `create_session` request's id, on the connection that asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The new session.
        session: Session,
    },
    /// A session of the user changed (sent to all their connections).
    SessionUpdated {
        /// The `rename_session` request's id, on the connection that asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session as it is now.
        session: Session,
    },
    /// A session of the user was deleted (sent to all their connections).
    SessionDeleted {
        /// The `delete_session` request's id, on the connection that asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The deleted session.
        session_id: Uuid,
    },
    /// A session's share link was made, revoked, or its number of live viewers changed
    /// (sent to all the owner's connections; added).
    ShareUpdated {
        /// The session.
        session_id: Uuid,
        /// The link now; absent (`null`) when the session has none.
        share: Option<crate::ShareStatus>,
    },
    /// One page of the user's sessions.
    Sessions {
        /// The `list_sessions` request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The sessions on this page, newest first.
        sessions: Vec<Session>,
        /// How many sessions the user has in all.
        total: u64,
        /// This page's number.
        page: u32,
        /// The page size used.
        per_page: u32,
        /// How many pages there are.
        total_pages: u32,
    },
    /// The user's quota changed.
    Quota {
        /// The quota now.
        quota: Quota,
    },
    /// A request failed, or something went wrong on a session.
    Error {
        /// The request's id, if the error answers one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The session concerned, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<Uuid>,
        /// What went wrong.
        error: ErrorBody,
    },
    /// Answer to `ping`.
    Pong {
        /// The `ping` request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

impl ServerFrame {
    /// Builds an `error` frame answering request `id`.
    pub fn error(id: Option<String>, session_id: Option<Uuid>, error: ErrorBody) -> Self {
        ServerFrame::Error { id, session_id, error }
    }

    /// The session event number, for the frames that carry one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ServerFrame::Message { seq, .. }
            | ServerFrame::Superseded { seq, .. }
            | ServerFrame::GenerationStarted { seq, .. }
            | ServerFrame::Delta { seq, .. }
            | ServerFrame::Done { seq, .. }
            | ServerFrame::Subscribed { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}
