//! What a session actor is asked: its messages, and the requests they carry.

use std::sync::Arc;

use relay_protocol::Session;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::fanout::{Receiver, ReceiverId};
use crate::llm::{LlmError, LlmEvent};
use crate::session::{SendAccepted, SessionError};

/// Who asks for a reply, where to answer them, and the request's idempotency key.
#[derive(Clone)]
pub struct Requester {
    /// Who asks (must own the session).
    pub user: AuthUser,
    /// The asking connection or request; subscribed if it is not yet.
    pub origin: Receiver,
    /// Echoed in `ack`.
    pub request_id: Option<String>,
    /// The client's idempotency key (`client_message_id`, `Idempotency-Key`): a repeat of
    /// it within 24 hours is answered as the first request was, and does nothing more.
    pub key: Option<String>,
}

/// A send as the registry hands it to the actor.
pub struct SendRequest {
    /// Who sends, and where to answer.
    pub requester: Requester,
    /// The id to store the message under, chosen before any retry.
    pub message_id: Uuid,
    /// The message text.
    pub content: String,
}

/// Which actor of a session lost it.
#[derive(Clone, Copy, Debug)]
pub enum Stale {
    /// The one that runs under this cluster lease token.
    Lease(u64),
    /// The one that holds this epoch.
    Epoch(u64),
}

/// Messages a session actor handles.
pub enum SessionMsg {
    /// Add a receiver; a connection gets a `subscribed` snapshot.
    Subscribe {
        /// Who asks (must own the session).
        user_id: Uuid,
        /// The receiver to add.
        receiver: Receiver,
        /// Echoed in `subscribed`.
        request_id: Option<String>,
        /// Answer.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// Remove a receiver.
    Unsubscribe {
        /// The receiver to remove.
        receiver: ReceiverId,
        /// When set, this receiver gets an `unsubscribed` frame echoing the request id.
        notify: Option<(Receiver, Option<String>)>,
    },
    /// Store a user message and queue its reply.
    Send {
        /// The send.
        request: SendRequest,
        /// Answer.
        reply: oneshot::Sender<Result<SendAccepted, SessionError>>,
    },
    /// Replace the last reply with a new one.
    Regenerate {
        /// Who asks, and where to answer.
        request: Requester,
        /// Answer.
        reply: oneshot::Sender<Result<SendAccepted, SessionError>>,
    },
    /// Replace a live user message (and every live message after it) with new text.
    Edit {
        /// The message replaced.
        replaced: Uuid,
        /// The new message, as a send.
        request: SendRequest,
        /// Answer.
        reply: oneshot::Sender<Result<SendAccepted, SessionError>>,
    },
    /// Cancel the running reply.
    Stop {
        /// Who asks (must own the session).
        user_id: Uuid,
        /// Answer.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// Change the session's title, system prompt or model.
    Update {
        /// Who asks (must own the session).
        user_id: Uuid,
        /// The change (already checked).
        change: crate::store::SessionChange,
        /// Answer: the session as changed.
        reply: oneshot::Sender<Result<Session, SessionError>>,
    },
    /// Soft-delete the session, cancel everything and stop.
    Delete {
        /// Who asks (must own the session).
        user_id: Uuid,
        /// Answered once the session is marked deleted and its reply stored.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// The server is shutting down: store the running reply as it stands and stop.
    Shutdown {
        /// Answered once the running reply is stored.
        reply: oneshot::Sender<()>,
    },
    /// An event of generation `generation` (ignored if that generation is over).
    Generation {
        /// Which generation it belongs to.
        generation: u64,
        /// The event.
        event: GenerationEvent,
    },
    /// The grace period armed as `arming` ran out.
    GraceExpired {
        /// Which arming it was.
        arming: u64,
    },
    /// The idle period armed as `arming` ran out.
    IdleExpired {
        /// Which arming it was.
        arming: u64,
    },
    /// The actor this names no longer holds the session (its lease could not be renewed
    /// in time, or its writes were refused as stale): it writes and emits nothing more,
    /// tells every watcher to subscribe again, and stops. Ignored by any other actor (one
    /// that took the session over on this node).
    Lost(Stale),
    /// A receiver on another node stopped watching.
    RemoteUnsubscribe {
        /// The node instance it lives in.
        instance: Arc<str>,
        /// Its id there.
        receiver: ReceiverId,
    },
    /// The receivers of a node instance that watch this session now, and no others.
    RemoteWatchers {
        /// The node instance.
        instance: Arc<str>,
        /// Its receivers that watch.
        receivers: Vec<ReceiverId>,
    },
    /// Time to forget remote watchers that no node confirms any more.
    CheckWatchers,
    /// A node instance left the cluster: its receivers watch no more.
    InstanceGone {
        /// The instance.
        instance: Arc<str>,
    },
    /// Misbehave on purpose (tests of supervision and of slow sessions).
    #[cfg(feature = "fault-injection")]
    Fault(Fault),
}

/// A fault a test can inject into a session actor.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Panic while handling the fault message.
    Panic,
    /// Block the actor for this long, as a stuck database call would.
    Stall(std::time::Duration),
}

/// What the generation task reports.
pub enum GenerationEvent {
    /// A decoded model event.
    Llm(LlmEvent),
    /// The model stream ended, whole or broken.
    Ended(Result<(), LlmError>),
}
