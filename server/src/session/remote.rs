//! Session requests between cluster nodes: what a node that does not own a session sends
//! to the node that does, and what comes back. The cluster carries them as JSON; the
//! registry makes and answers them.

use relay_protocol::{ErrorBody, ErrorCode, Message, Session};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Replay, SendAccepted, SessionError};
use crate::auth::AuthUser;
use crate::fanout::{ReceiverId, ReceiverKind};
use crate::limits::RateDecision;

/// A receiver on the asking node.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Origin {
    /// Its id there.
    pub id: ReceiverId,
    /// Connection or request.
    pub kind: ReceiverKind,
}

/// A session operation forwarded to the session's owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RemoteOp {
    /// Watch the session.
    Subscribe { user_id: Uuid, origin: Origin, request_id: Option<String> },
    /// Stop watching it.
    Unsubscribe { receiver: ReceiverId },
    /// Store a message and queue its reply.
    Send {
        user: AuthUser,
        message_id: Uuid,
        content: String,
        origin: Origin,
        request_id: Option<String>,
        key: Option<String>,
    },
    /// Answer the last message again.
    Regenerate { user: AuthUser, origin: Origin, request_id: Option<String>, key: Option<String> },
    /// Replace the last message.
    Edit {
        user: AuthUser,
        replaced: Uuid,
        message_id: Uuid,
        content: String,
        origin: Origin,
        request_id: Option<String>,
        key: Option<String>,
    },
    /// Cancel the running reply.
    Stop { user_id: Uuid },
    /// Rename the session (as nodes of earlier versions ask).
    Rename { user_id: Uuid, title: String },
    /// Change the session's title, system prompt or model.
    Update { user_id: Uuid, change: crate::store::SessionChange },
    /// Delete the session.
    Delete { user_id: Uuid },
}

/// A forwarded request: the session and the operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteCall {
    /// The session.
    pub session_id: Uuid,
    /// The operation.
    pub op: RemoteOp,
}

/// What a forwarded request answers on success.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum RemoteAnswer {
    /// Done, nothing to say.
    Done,
    /// A send was taken (or, with `replay`, repeated an earlier one).
    Accepted { user_message: Message, reply_id: Uuid, rate: Option<RateDecision>, replay: Option<Replay> },
    /// The session as changed.
    Renamed { session: Session },
}

/// What a forwarded request answers on failure: [`SessionError`] as it travels.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum RemoteError {
    /// The asked node does not own the session (any more): ask the lease again.
    NotOwner,
    NotFound,
    Busy,
    InvalidContent {
        message: String,
    },
    Invalid {
        message: String,
    },
    RateLimited {
        decision: RateDecision,
    },
    StorageFull {
        limit: u64,
    },
    QuotaExceeded {
        decision: RateDecision,
    },
    ShuttingDown,
    Unavailable,
    KeyReused,
    Reported {
        body: ErrorBody,
    },
}

impl From<SessionError> for RemoteError {
    fn from(e: SessionError) -> RemoteError {
        match e {
            SessionError::NotFound => RemoteError::NotFound,
            SessionError::Busy => RemoteError::Busy,
            SessionError::InvalidContent(message) => RemoteError::InvalidContent { message },
            SessionError::Invalid(message) => RemoteError::Invalid { message },
            SessionError::RateLimited(decision) => RemoteError::RateLimited { decision },
            SessionError::StorageFull(limit) => RemoteError::StorageFull { limit },
            SessionError::QuotaExceeded(decision) => RemoteError::QuotaExceeded { decision },
            SessionError::ShuttingDown => RemoteError::ShuttingDown,
            SessionError::Unavailable => RemoteError::Unavailable,
            SessionError::Elsewhere(_) => RemoteError::NotOwner,
            SessionError::KeyReused => RemoteError::KeyReused,
            SessionError::Reported(body) => RemoteError::Reported { body },
            // This node lost the session while answering: the asker looks for its owner again.
            SessionError::Store(crate::store::StoreError::Fenced) => RemoteError::NotOwner,
            SessionError::Store(e) => {
                let body = crate::error::AppError::Store(e).to_body();
                if body.code == ErrorCode::Internal {
                    tracing::error!(message = %body.message, "database error answering a forwarded request");
                }
                RemoteError::Reported { body }
            }
        }
    }
}

impl From<RemoteError> for SessionError {
    fn from(e: RemoteError) -> SessionError {
        match e {
            RemoteError::NotOwner | RemoteError::Unavailable => SessionError::Unavailable,
            RemoteError::NotFound => SessionError::NotFound,
            RemoteError::Busy => SessionError::Busy,
            RemoteError::InvalidContent { message } => SessionError::InvalidContent(message),
            RemoteError::Invalid { message } => SessionError::Invalid(message),
            RemoteError::RateLimited { decision } => SessionError::RateLimited(decision),
            RemoteError::StorageFull { limit } => SessionError::StorageFull(limit),
            RemoteError::QuotaExceeded { decision } => SessionError::QuotaExceeded(decision),
            RemoteError::ShuttingDown => SessionError::ShuttingDown,
            RemoteError::KeyReused => SessionError::KeyReused,
            RemoteError::Reported { body } => SessionError::Reported(body),
        }
    }
}

/// The result of a forwarded request, as it travels.
pub type RemoteResult = Result<RemoteAnswer, RemoteError>;

/// Turns a forwarded request's answer into what the local call returns.
pub trait FromRemote: Sized {
    /// The value, or `Unavailable` for an answer of the wrong shape.
    fn from_remote(answer: RemoteAnswer) -> Result<Self, SessionError>;
    /// The value as it travels back.
    fn into_remote(self) -> RemoteAnswer;
}

impl FromRemote for () {
    fn from_remote(_: RemoteAnswer) -> Result<(), SessionError> {
        Ok(())
    }
    fn into_remote(self) -> RemoteAnswer {
        RemoteAnswer::Done
    }
}

impl FromRemote for SendAccepted {
    fn from_remote(answer: RemoteAnswer) -> Result<SendAccepted, SessionError> {
        match answer {
            RemoteAnswer::Accepted { user_message, reply_id, rate, replay } => {
                Ok(SendAccepted { user_message, reply_id, rate, replay })
            }
            _ => Err(SessionError::Unavailable),
        }
    }
    fn into_remote(self) -> RemoteAnswer {
        RemoteAnswer::Accepted {
            user_message: self.user_message,
            reply_id: self.reply_id,
            rate: self.rate,
            replay: self.replay,
        }
    }
}

impl FromRemote for Session {
    fn from_remote(answer: RemoteAnswer) -> Result<Session, SessionError> {
        match answer {
            RemoteAnswer::Renamed { session } => Ok(session),
            _ => Err(SessionError::Unavailable),
        }
    }
    fn into_remote(self) -> RemoteAnswer {
        RemoteAnswer::Renamed { session: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_trip() {
        let body = ErrorBody::new(ErrorCode::Busy, "x");
        let wire = serde_json::to_value(RemoteError::from(SessionError::Reported(body.clone()))).unwrap();
        let back: RemoteError = serde_json::from_value(wire).unwrap();
        assert!(matches!(SessionError::from(back), SessionError::Reported(b) if b == body));
        let call = RemoteCall { session_id: Uuid::nil(), op: RemoteOp::Stop { user_id: Uuid::nil() } };
        let text = serde_json::to_string(&call).unwrap();
        assert!(text.contains("\"op\":\"stop\""), "{text}");
    }
}
