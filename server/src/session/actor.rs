//! The session actor: the single owner of one chat session's live state.
//!
//! Everything that changes a session at run time is a message to its actor, handled one
//! at a time, so ordering questions have one answer: the order of the mailbox. The model
//! stream runs in a task of its own (so `stop` is handled while a reply streams) and feeds
//! its events back as messages; the actor numbers them (`seq`), encodes each once, and
//! hands the same bytes to every receiver.
//!
//! Policies decided here:
//! - A reply's place in the conversation is reserved when its message is sent: its
//!   `created_at` is just after that message's, so memory, snapshots, the model's context
//!   and the store all read "question, its answer, next question", even when sends queue.
//! - `stop` cancels the running reply only; sends queued behind it are still answered, in
//!   order (each was asked for explicitly).
//! - When nobody has watched for the grace period, the running reply is cancelled and the
//!   queued sends are dropped (their user messages stay stored, unanswered): nobody is
//!   there to read them, and nobody should pay for them.
//! - A reply in progress is checkpointed with status `generating`; the final save replaces
//!   it, and a server that crashed marks its leftovers `error` when it starts again.
//! - A panic while handling a message is caught here: the running reply is stored as
//!   `error`, watchers get `done` `error` and an `error` telling them to resubscribe, and
//!   the actor stops so the next use starts a fresh one.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use relay_protocol::{
    ErrorBody, ErrorCode, FinishReason, Generating, Message, MessageStatus, Role, ServerFrame, Session, Usage, UserRole,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::registry::SessionRegistry;
use super::{SendAccepted, SessionDeps, SessionError};
use crate::auth::AuthUser;
use crate::error::AppError;
use crate::fanout::{Delivery, Outbound, Receiver, ReceiverId, ReceiverKind};
use crate::limits::{self, Rate, RateDecision};
use crate::llm::{ContextMessage, LlmError, LlmEvent, UpstreamFinish};
use crate::store::SessionRecord;

/// How many recent messages the actor keeps in memory (context and snapshots).
pub(super) const HISTORY_CAP: usize = 200;
/// How many recent messages a `subscribed` snapshot carries at most.
const SNAPSHOT_MESSAGES: usize = 100;
/// What a message adds to a frame beyond its content: ids, times, JSON (a generous guess).
const MESSAGE_OVERHEAD_BYTES: usize = 256;
/// The title a session has until its first message names it.
pub const DEFAULT_TITLE: &str = "New chat";
/// Longest title derived from a first message, in characters.
const DERIVED_TITLE_CHARS: usize = 60;
/// The gap between a message's time and its reply's, and the least gap between two sends.
const REPLY_SLOT: TimeDelta = TimeDelta::microseconds(1);
/// Model text already waiting when a token is handled joins its delta, up to about this
/// many bytes: under load, fewer and larger frames for every watcher, never a delay.
const MERGED_DELTA_BYTES: usize = 16 * 1024;

/// A send as the registry hands it to the actor.
pub struct SendRequest {
    /// Who sends (must own the session).
    pub user: AuthUser,
    /// The id to store the message under, chosen before any retry.
    pub message_id: Uuid,
    /// The message text.
    pub content: String,
    /// The sending connection or request; subscribed if it is not yet.
    pub origin: Receiver,
    /// Echoed in `ack`.
    pub request_id: Option<String>,
}

impl SendRequest {
    /// A request for one attempt at a call (the registry may make more than one, so it
    /// keeps the originals and hands out copies; `message_id` stays the same across them).
    pub fn new(
        user: &AuthUser,
        message_id: Uuid,
        content: &str,
        origin: &Receiver,
        request_id: &Option<String>,
    ) -> SendRequest {
        SendRequest {
            user: user.clone(),
            message_id,
            content: content.to_owned(),
            origin: origin.clone(),
            request_id: request_id.clone(),
        }
    }
}

/// A regenerate as the registry hands it to the actor.
pub struct ReplaceRequest {
    /// Who asks (must own the session).
    pub user: AuthUser,
    /// The asking connection or request; subscribed if it is not yet.
    pub origin: Receiver,
    /// Echoed in `ack`.
    pub request_id: Option<String>,
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
        request: ReplaceRequest,
        /// Answer.
        reply: oneshot::Sender<Result<SendAccepted, SessionError>>,
    },
    /// Replace the last user message (and its reply) with new text.
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
    /// Rename the session.
    Rename {
        /// Who asks (must own the session).
        user_id: Uuid,
        /// The new title (already checked).
        title: String,
        /// Answer: the session as renamed.
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
    /// The grace period armed as `epoch` ran out.
    GraceExpired {
        /// Which arming it was.
        epoch: u64,
    },
    /// The idle period armed as `epoch` ran out.
    IdleExpired {
        /// Which arming it was.
        epoch: u64,
    },
    /// This node no longer holds the session's lease (it could not renew it in time):
    /// store the running reply, tell every watcher to subscribe again, and stop.
    LeaseLost,
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

/// The actor (stateless; its state is [`SessionState`]).
pub struct SessionActor;

/// What an actor starts from.
pub struct SessionArgs {
    /// The session and its owner.
    pub record: SessionRecord,
    /// Its recent messages, oldest first.
    pub history: Vec<Message>,
    /// Shared dependencies.
    pub deps: Arc<SessionDeps>,
    /// The registry, told when the actor stops.
    pub registry: Weak<SessionRegistry>,
    /// Set when the server begins shutting down: sends are refused from then on.
    pub closing: Arc<AtomicBool>,
}

/// What letting a send through took from the user's limits.
struct Admission {
    /// The daily counter a unit was taken from, to give back if the send fails after all.
    quota_key: Option<String>,
    /// The send rate after this send.
    rate: Option<RateDecision>,
}

impl Admission {
    async fn give_back(&self, deps: &SessionDeps) {
        if let Some(key) = &self.quota_key {
            deps.limiter.give_back_quota(key).await;
        }
    }
}

/// A send waiting for its reply.
struct Queued {
    user: AuthUser,
    user_message: Message,
    reply_id: Uuid,
    /// The reply's place in the conversation (its `created_at`).
    reply_at: DateTime<Utc>,
    origin: Receiver,
    request_id: Option<String>,
    /// The model request, already under way when this send was next in line as it came.
    prepared: Option<Prepared>,
}

/// A model request started for a reply: its generation number and the task streaming it.
struct Prepared {
    generation: u64,
    task: JoinHandle<()>,
    started: Instant,
}

/// The reply being generated.
struct Running {
    generation: u64,
    user: AuthUser,
    reply_id: Uuid,
    created_at: DateTime<Utc>,
    content: String,
    usage: Option<Usage>,
    finish: Option<UpstreamFinish>,
    task: JoinHandle<()>,
    started: Instant,
    last_checkpoint: Instant,
    checkpointed_len: usize,
}

/// Why an actor stops taking sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The session was deleted: anything more is `not_found`.
    Deleted,
    /// The server is shutting down, or the actor failed: anything more is retried elsewhere.
    Stopping,
}

/// A session's live state, owned by its actor alone.
pub struct SessionState {
    session: Session,
    owner: Uuid,
    deps: Arc<SessionDeps>,
    registry: Weak<SessionRegistry>,
    closing: Arc<AtomicBool>,
    /// Stored messages, oldest first, in `created_at` order (the store's order).
    history: VecDeque<Message>,
    queue: VecDeque<Queued>,
    current: Option<Running>,
    seq: u64,
    receivers: Vec<Receiver>,
    /// Receivers on other nodes: the session's events are published once for all of them
    /// (their nodes fan them out), and they count as watchers for the cancel grace.
    remote_watchers: HashSet<(Arc<str>, ReceiverId)>,
    next_generation: u64,
    epoch: u64,
    grace_armed: Option<u64>,
    idle_armed: Option<u64>,
    ending: Option<Ending>,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        tracing::debug!(session_id = %args.record.session.id, "session actor started");
        args.deps.metrics.session_actors.inc();
        Ok(SessionState {
            session: args.record.session,
            owner: args.record.user_id,
            deps: args.deps,
            registry: args.registry,
            closing: args.closing,
            history: args.history.into(),
            queue: VecDeque::new(),
            current: None,
            seq: 0,
            receivers: Vec::new(),
            remote_watchers: HashSet::new(),
            next_generation: 0,
            epoch: 0,
            grace_armed: None,
            idle_armed: None,
            ending: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.deps.metrics.session_actors.dec();
        if let Some(running) = state.current.take() {
            // Only reached if the actor stops without its own shutdown path; never leave a
            // model stream running behind a dead actor.
            running.task.abort();
            state.deps.metrics.generations_active.dec();
        }
        Ok(())
    }

    async fn post_start(
        &self,
        myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.reconcile(&myself).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Errors are answered to whoever asked; an actor that returned one would stop. A
        // panic is caught so the watchers hear of it and the registry forgets this actor.
        if let Err(panic) = AssertUnwindSafe(state.handle(&myself, msg)).catch_unwind().await {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            state.fail(&myself, &why).await;
        }
        Ok(())
    }
}

impl SessionState {
    async fn handle(&mut self, myself: &ActorRef<SessionMsg>, msg: SessionMsg) {
        match msg {
            SessionMsg::Subscribe { user_id, receiver, request_id, reply } => {
                let _ = reply.send(self.subscribe(user_id, receiver, request_id));
            }
            SessionMsg::Unsubscribe { receiver, notify } => self.unsubscribe(receiver, notify),
            SessionMsg::Send { request, reply } => {
                let result = self.send(request, myself).await;
                let _ = reply.send(result);
                self.start_next(myself);
            }
            SessionMsg::Regenerate { request, reply } => {
                let result = self.regenerate(request).await;
                let _ = reply.send(result);
                self.start_next(myself);
            }
            SessionMsg::Edit { replaced, request, reply } => {
                let result = self.edit(replaced, request, myself).await;
                let _ = reply.send(result);
                self.start_next(myself);
            }
            SessionMsg::Stop { user_id, reply } => {
                let result = self.check_owner(user_id);
                if result.is_ok() {
                    self.cancel_running().await;
                }
                let _ = reply.send(result);
                self.start_next(myself);
            }
            SessionMsg::Rename { user_id, title, reply } => {
                let _ = reply.send(self.rename(user_id, &title).await);
            }
            SessionMsg::Delete { user_id, reply } => {
                let result = self.delete(user_id).await;
                let deleted = result.is_ok();
                let _ = reply.send(result);
                if deleted {
                    self.stop(myself);
                    return;
                }
            }
            SessionMsg::Shutdown { reply } => {
                self.end(Ending::Stopping, &AppError::SHUTTING_DOWN.to_body()).await;
                self.stop(myself);
                let _ = reply.send(());
                return;
            }
            SessionMsg::Generation { generation, event } => {
                if self.current.as_ref().is_some_and(|r| r.generation == generation) {
                    self.on_generation_event(event).await;
                    self.start_next(myself);
                }
            }
            SessionMsg::LeaseLost => {
                self.end(Ending::Stopping, &moved()).await;
                self.send_watchers_away(moved());
                self.stop(myself);
                return;
            }
            SessionMsg::RemoteUnsubscribe { instance, receiver } => {
                self.remote_watchers.remove(&(instance, receiver));
            }
            SessionMsg::RemoteWatchers { instance, receivers } => {
                self.remote_watchers.retain(|(i, _)| *i != instance);
                self.remote_watchers.extend(receivers.into_iter().map(|r| (instance.clone(), r)));
            }
            SessionMsg::InstanceGone { instance } => {
                self.remote_watchers.retain(|(i, _)| *i != instance);
            }
            SessionMsg::GraceExpired { epoch } => {
                if self.grace_armed == Some(epoch) && !self.watched() {
                    self.grace_armed = None;
                    self.abandon().await;
                }
            }
            SessionMsg::IdleExpired { epoch } => {
                if self.idle_armed == Some(epoch) && self.is_idle() {
                    tracing::debug!(session_id = %self.session.id, "session actor idle; stopping");
                    self.stop(myself);
                    return;
                }
            }
            #[cfg(feature = "fault-injection")]
            SessionMsg::Fault(Fault::Panic) => panic!("injected fault"),
            #[cfg(feature = "fault-injection")]
            SessionMsg::Fault(Fault::Stall(how_long)) => tokio::time::sleep(how_long).await,
        }
        self.reconcile(myself).await;
    }

    fn check_owner(&self, user_id: Uuid) -> Result<(), SessionError> {
        if user_id != self.owner || self.ending == Some(Ending::Deleted) {
            return Err(SessionError::NotFound);
        }
        Ok(())
    }

    // ---- watchers ------------------------------------------------------------------------

    fn subscribe(&mut self, user_id: Uuid, receiver: Receiver, request_id: Option<String>) -> Result<(), SessionError> {
        self.check_owner(user_id)?;
        if let Some(instance) = receiver.remote_instance() {
            if receiver.kind == ReceiverKind::Connection {
                receiver.deliver(&Outbound::new(self.snapshot(request_id)));
            }
            self.remote_watchers.insert((instance.clone(), receiver.id));
            return Ok(());
        }
        self.receivers.retain(|r| r.id != receiver.id);
        if receiver.kind == ReceiverKind::Connection {
            let snapshot = Outbound::new(self.snapshot(request_id));
            if receiver.deliver(&snapshot) != Delivery::Queued {
                return Ok(());
            }
        }
        self.receivers.push(receiver);
        Ok(())
    }

    /// The `subscribed` frame: the most recent messages (at most [`SNAPSHOT_MESSAGES`], and
    /// only as many as fit in `max_snapshot_bytes`, so a snapshot always fits a reading
    /// client's queue; older ones are a REST call away), and the reply in progress.
    fn snapshot(&self, request_id: Option<String>) -> ServerFrame {
        let generating =
            self.current.as_ref().map(|r| Generating { message_id: r.reply_id, content: r.content.clone() });
        let mut budget =
            self.deps.settings.max_snapshot_bytes.saturating_sub(generating.as_ref().map_or(0, |g| g.content.len()));
        let mut keep = 0;
        for message in self.history.iter().rev().take(SNAPSHOT_MESSAGES) {
            let size = message.content.len() + MESSAGE_OVERHEAD_BYTES;
            if size > budget {
                break;
            }
            budget -= size;
            keep += 1;
        }
        ServerFrame::Subscribed {
            id: request_id,
            session: self.session.clone(),
            messages: self.history.iter().skip(self.history.len() - keep).cloned().collect(),
            seq: self.seq,
            generating,
        }
    }

    fn unsubscribe(&mut self, receiver: ReceiverId, notify: Option<(Receiver, Option<String>)>) {
        self.receivers.retain(|r| r.id != receiver);
        // Answered here, behind every event already queued, even if the receiver had been
        // dropped for another reason meanwhile.
        if let Some((receiver, id)) = notify {
            receiver.deliver(&Outbound::new(ServerFrame::Unsubscribed { id, session_id: self.session.id }));
        }
    }

    /// Numbers a session event, encodes it once, and queues it for every receiver (and
    /// publishes it once for the nodes that relay it to theirs).
    fn emit(&mut self, make: impl FnOnce(u64) -> ServerFrame) {
        self.seq += 1;
        let out = Outbound::new(make(self.seq));
        let session_id = self.session.id;
        if !self.remote_watchers.is_empty()
            && let Some(cluster) = &self.deps.cluster
        {
            cluster.publish_event(session_id, &out);
        }
        self.receivers.retain(|r| match r.deliver(&out) {
            Delivery::Queued => true,
            Delivery::Gone => false,
            Delivery::Overflowed => {
                tracing::warn!(%session_id, receiver = r.id, "receiver too slow; dropping it");
                false
            }
        });
    }

    // ---- sending: each step of a send on its own -----------------------------------------

    async fn send(
        &mut self,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&request.user)?;
        validate_content(&request.content, self.deps.settings.max_message_length)?;
        if self.queue.len() >= self.deps.settings.max_queued_sends {
            return Err(SessionError::Busy);
        }
        let admission = self.admit(&request.user).await?;
        self.accept(admission, request, myself).await
    }

    /// Replaces the last reply with a new one (its user message is answered again), or
    /// answers the last user message if it has no reply; only while nothing is generating
    /// or waiting.
    async fn regenerate(&mut self, request: ReplaceRequest) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&request.user)?;
        self.check_settled()?;
        let mut live = self.history.iter().rev().filter(|m| !m.superseded);
        let (answering, replaced) = match live.next() {
            None => return Err(SessionError::Invalid("there is no message to answer again".into())),
            Some(last) if last.role == Role::User => (last.clone(), Vec::new()),
            Some(last) => match live.find(|m| m.role == Role::User) {
                Some(user) => (user.clone(), vec![last.id]),
                None => return Err(SessionError::Invalid("there is no message to answer again".into())),
            },
        };
        let admission = self.admit(&request.user).await?;
        self.supersede(&replaced).await?;
        self.watch(&request.origin)?;
        self.ack(&request.origin, request.request_id.clone(), &answering);
        // The new reply comes after everything, the replaced reply included.
        let reply_at = self.history.back().map_or(answering.created_at, |m| m.created_at) + REPLY_SLOT;
        let reply_id = Uuid::new_v4();
        self.queue.push_back(Queued {
            user: request.user,
            user_message: answering.clone(),
            reply_id,
            reply_at,
            origin: request.origin,
            request_id: request.request_id,
            prepared: None,
        });
        Ok(SendAccepted { user_message: answering, reply_id, rate: admission.rate })
    }

    /// Replaces the last user message (and its reply) with new text, and answers it; only
    /// while nothing is generating or waiting.
    async fn edit(
        &mut self,
        replaced_id: Uuid,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&request.user)?;
        validate_content(&request.content, self.deps.settings.max_message_length)?;
        self.check_settled()?;
        let live: Vec<&Message> = self.history.iter().filter(|m| !m.superseded).collect();
        let Some(at) = live.iter().rposition(|m| m.role == Role::User) else {
            return Err(SessionError::NotFound);
        };
        if live[at].id != replaced_id {
            return Err(if live.iter().any(|m| m.id == replaced_id) {
                SessionError::Invalid("only the last message of a session can be edited".into())
            } else {
                SessionError::NotFound
            });
        }
        let replaced: Vec<Uuid> = live[at..].iter().map(|m| m.id).collect();
        let admission = self.admit(&request.user).await?;
        if let Err(e) = self.supersede(&replaced).await {
            admission.give_back(&self.deps).await;
            return Err(e);
        }
        self.accept(admission, request, myself).await
    }

    /// Refuses new work from someone other than the owner, or once the actor is ending.
    fn check_can_take(&self, user: &AuthUser) -> Result<(), SessionError> {
        self.check_owner(user.id)?;
        if self.ending.is_some() || self.closing.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        Ok(())
    }

    /// Regenerating or editing needs a settled conversation: nothing generating or waiting.
    fn check_settled(&self) -> Result<(), SessionError> {
        if self.current.is_some() || !self.queue.is_empty() { Err(SessionError::Busy) } else { Ok(()) }
    }

    /// Marks messages superseded, in the store, in memory and for every watcher.
    async fn supersede(&mut self, ids: &[Uuid]) -> Result<(), SessionError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.deps.store.mark_superseded(ids).await?;
        for message in self.history.iter_mut().filter(|m| ids.contains(&m.id)) {
            message.superseded = true;
        }
        let (session_id, message_ids) = (self.session.id, ids.to_vec());
        self.emit(|seq| ServerFrame::Superseded { session_id, seq, message_ids });
        Ok(())
    }

    /// Takes an admitted user message in: stores it, tells everyone, queues its reply.
    /// When the reply is next in line, the model is asked while the message is being
    /// stored, so the database's latency is not added to the time to first token; the
    /// `ack` still waits for the message to be stored, and a failed write cancels the
    /// request.
    async fn accept(
        &mut self,
        admission: Admission,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        self.deps.metrics.session_depth.observe(self.history.len() as f64);
        let message = self.user_message(request.message_id, request.content);
        let runs_next = self.current.is_none() && self.queue.is_empty();
        let prepared = runs_next.then(|| self.spawn_generation(&message, myself));
        let stored = self.deps.writes.save(&message).await.map_err(SessionError::from);
        // Subscribed before the message is published, so the sender's snapshot ends just
        // before it and the `message` event that follows is the snapshot's `seq + 1`.
        if let Err(e) = stored.and_then(|()| self.watch(&request.origin)) {
            if let Some(prepared) = prepared {
                prepared.task.abort();
            }
            admission.give_back(&self.deps).await;
            return Err(e);
        }
        self.deps.metrics.user_messages.inc();
        self.touch(message.created_at).await;
        self.name_after_first_message(&message).await;
        self.count_usage(&request.user).await;
        self.ack(&request.origin, request.request_id.clone(), &message);
        self.publish_message(message.clone());
        let reply_id = Uuid::new_v4();
        self.queue.push_back(Queued {
            user: request.user,
            user_message: message.clone(),
            reply_id,
            reply_at: message.created_at + REPLY_SLOT,
            origin: request.origin,
            request_id: request.request_id,
            prepared,
        });
        Ok(SendAccepted { user_message: message, reply_id, rate: admission.rate })
    }

    /// Tells the sending connection its message was taken.
    fn ack(&self, origin: &Receiver, request_id: Option<String>, message: &Message) {
        if origin.kind == ReceiverKind::Connection {
            origin.deliver(&Outbound::new(ServerFrame::Ack { id: request_id, message: message.clone() }));
        }
    }

    /// Lets a send through the user's storage cap, daily quota and send rate (admins have
    /// none of them), or refuses it before anything is stored or billed. The quota is taken first and given
    /// back if the rate refuses, so a refused send costs nothing.
    async fn admit(&self, user: &AuthUser) -> Result<Admission, SessionError> {
        let mut admission = Admission { quota_key: None, rate: None };
        if user.role == UserRole::Admin {
            return Ok(admission);
        }
        let (settings, limiter) = (&self.deps.settings, &self.deps.limiter);
        if let Some(max) = settings.max_stored_messages
            && self.deps.store.stored_messages(user.id).await? >= max
        {
            self.deps.metrics.limit_refused("stored_messages");
            return Err(SessionError::StorageFull(max));
        }
        if let Some(limit) = settings.daily_quota {
            let day = Utc::now().date_naive();
            let key = limits::quota_key(user.id, day);
            let (taken, used) = limiter.take_quota(&key, limit, self.deps.store.messages_on(user.id, day)).await?;
            if !taken {
                self.deps.metrics.limit_refused("daily_quota");
                let wait = limits::until_midnight();
                return Err(SessionError::QuotaExceeded(RateDecision {
                    allowed: false,
                    limit,
                    remaining: limit.saturating_sub(used),
                    retry_after: wait,
                    reset_after: wait,
                }));
            }
            admission.quota_key = Some(key);
        }
        if let Some(per_minute) = settings.rate_per_minute {
            let rate = Rate { limit: per_minute, period: Duration::from_secs(60) };
            let decision = limiter.rate(&limits::send_rate_key(user.id), rate).await;
            if !decision.allowed {
                admission.give_back(&self.deps).await;
                self.deps.metrics.limit_refused("send_rate");
                return Err(SessionError::RateLimited(decision));
            }
            admission.rate = Some(decision);
        }
        Ok(admission)
    }

    /// A new user message, timed strictly after every message before it (and after the
    /// reply slot of the one before).
    fn user_message(&self, id: Uuid, content: String) -> Message {
        let now = Utc::now();
        let earliest = self.history.back().map(|m| m.created_at + REPLY_SLOT + REPLY_SLOT);
        Message {
            id,
            session_id: self.session.id,
            role: Role::User,
            token_count: Some(estimate_tokens(&content)),
            content,
            status: MessageStatus::Complete,
            created_at: earliest.map_or(now, |e| e.max(now)),
            superseded: false,
        }
    }

    /// Counts a new message in the session and moves its `updated_at` forward (written
    /// behind: nobody waits for it).
    async fn touch(&mut self, at: DateTime<Utc>) {
        self.deps.writes.touch_session_later(self.session.id, at, 1).await;
        self.session.updated_at = self.session.updated_at.max(at);
    }

    /// Names a "New chat" after its first message and tells the user's tabs. The store
    /// renames only while the title is still the default, so a rename that raced this one
    /// (from another node, say) is never overwritten; that write runs behind the send.
    async fn name_after_first_message(&mut self, message: &Message) {
        let first = !self.history.iter().any(|m| m.role == Role::User);
        if !first || self.session.title != DEFAULT_TITLE {
            return;
        }
        let title = derive_title(&message.content);
        self.session.title = title.clone();
        let session = self.session.clone();
        self.deps.hub.publish(self.owner, None, |id| ServerFrame::SessionUpdated { id, session: session.clone() });
        self.deps.writes.retitle_later(session.id, DEFAULT_TITLE, &title).await;
    }

    /// Counts the message against the user's day; once that is written, the user's tabs
    /// get the new quota.
    async fn count_usage(&self, user: &AuthUser) {
        let (hub, daily_quota, role, user_id) =
            (self.deps.hub.clone(), self.deps.settings.daily_quota, user.role, user.id);
        let then = Box::new(move |used| {
            let quota = limits::quota_from(used, daily_quota, role);
            hub.publish(user_id, None, |_| ServerFrame::Quota { quota: quota.clone() });
        });
        self.deps.writes.count_message_later(user.id, Utc::now().date_naive(), then).await;
    }

    /// Subscribes the sender if it is not watching yet (`send` subscribes its connection).
    fn watch(&mut self, origin: &Receiver) -> Result<(), SessionError> {
        let watching = match origin.remote_instance() {
            Some(instance) => self.remote_watchers.contains(&(instance.clone(), origin.id)),
            None => self.receivers.iter().any(|r| r.id == origin.id),
        };
        if watching {
            return Ok(());
        }
        self.subscribe(self.owner, origin.clone(), None)
    }

    /// Keeps a stored message in memory and tells every watcher.
    fn publish_message(&mut self, message: Message) {
        self.remember(message.clone());
        let session_id = self.session.id;
        self.emit(|seq| ServerFrame::Message { session_id, seq, message });
    }

    /// Keeps a stored message in memory, in `created_at` order; a newer version of a
    /// message replaces the old one.
    fn remember(&mut self, message: Message) {
        if let Some(existing) = self.history.iter_mut().rev().find(|m| m.id == message.id) {
            *existing = message;
            return;
        }
        let at = self.history.iter().rposition(|m| m.created_at <= message.created_at).map_or(0, |i| i + 1);
        self.history.insert(at, message);
        while self.history.len() > HISTORY_CAP {
            self.history.pop_front();
        }
    }

    // ---- renaming and deleting ------------------------------------------------------------

    async fn rename(&mut self, user_id: Uuid, title: &str) -> Result<Session, SessionError> {
        self.check_owner(user_id)?;
        let session =
            self.deps.store.rename_session(self.owner, self.session.id, title).await?.ok_or(SessionError::NotFound)?;
        self.session = session.clone();
        Ok(session)
    }

    async fn delete(&mut self, user_id: Uuid) -> Result<(), SessionError> {
        self.check_owner(user_id)?;
        if !self.deps.store.soft_delete_session(self.owner, self.session.id).await? {
            return Err(SessionError::NotFound);
        }
        let gone = AppError::NotFound.to_body();
        self.end(Ending::Deleted, &gone).await;
        Ok(())
    }

    /// Takes no more sends: answers every queued send with `error`, then stores the
    /// running reply as it stands (its watchers get `done` `cancelled`).
    async fn end(&mut self, ending: Ending, error: &ErrorBody) {
        self.ending = Some(ending);
        self.drop_queue(error);
        self.cancel_running().await;
    }

    /// Drops every queued send, telling each sender why: a REST or SSE request waiting for
    /// that reply ends with this error instead of waiting for nothing.
    fn drop_queue(&mut self, error: &ErrorBody) {
        let session_id = self.session.id;
        for queued in self.queue.drain(..) {
            queued.origin.deliver(&Outbound::new(ServerFrame::Error {
                id: queued.request_id,
                session_id: Some(session_id),
                error: error.clone(),
            }));
        }
    }

    // ---- generating ------------------------------------------------------------------------

    /// Starts the next queued reply if none is running.
    fn start_next(&mut self, myself: &ActorRef<SessionMsg>) {
        if self.current.is_some() || self.ending.is_some() {
            return;
        }
        let Some(next) = self.queue.pop_front() else { return };
        let Prepared { generation, task, started } = match next.prepared {
            Some(prepared) => prepared,
            None => self.spawn_generation(&next.user_message, myself),
        };
        let (session_id, reply_id) = (self.session.id, next.reply_id);
        self.deps.metrics.generations_active.inc();
        self.current = Some(Running {
            generation,
            user: next.user,
            reply_id,
            created_at: next.reply_at,
            content: String::new(),
            usage: None,
            finish: None,
            task,
            started,
            last_checkpoint: Instant::now(),
            checkpointed_len: 0,
        });
        self.emit(|seq| ServerFrame::GenerationStarted { session_id, seq, message_id: reply_id });
    }

    /// Asks the model to answer `answering`: a task streams the reply's events to this
    /// actor, tagged with a new generation number (events of any other are ignored).
    fn spawn_generation(&mut self, answering: &Message, myself: &ActorRef<SessionMsg>) -> Prepared {
        let context = self.context_for(answering);
        self.next_generation += 1;
        let generation = self.next_generation;
        let llm = self.deps.llm.clone();
        let actor = myself.clone();
        let session_id = self.session.id;
        let task = tokio::spawn(async move {
            let result = async {
                let mut stream = llm.stream(&context).await?;
                while let Some(event) = stream.next().await {
                    let mut event = event?;
                    if let LlmEvent::Delta(text) = &mut event {
                        stream.append_ready_text(text, MERGED_DELTA_BYTES);
                    }
                    let event = GenerationEvent::Llm(event);
                    if actor.send_message(SessionMsg::Generation { generation, event }).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = &result {
                tracing::warn!(%session_id, error = %e, "reply failed");
            }
            let _ = actor.send_message(SessionMsg::Generation { generation, event: GenerationEvent::Ended(result) });
        });
        Prepared { generation, task, started: Instant::now() }
    }

    /// The model's context for a reply: the system prompt, then recent messages oldest
    /// first (without replies that failed and without other sends still waiting), ending
    /// with the message being answered.
    fn context_for(&self, answering: &Message) -> Vec<ContextMessage> {
        let settings = &self.deps.settings;
        let waiting: HashSet<Uuid> = self.queue.iter().map(|q| q.user_message.id).collect();
        let earlier: Vec<&Message> = self
            .history
            .iter()
            .filter(|m| {
                m.id != answering.id
                    && !waiting.contains(&m.id)
                    && m.role != Role::System
                    && !m.superseded
                    && counts_as_context(m)
            })
            .collect();
        let keep = settings.max_context_messages.saturating_sub(1);
        let mut context = Vec::with_capacity(keep + 2);
        context.push(ContextMessage { role: Role::System, content: settings.system_prompt.clone() });
        context.extend(earlier[earlier.len().saturating_sub(keep)..].iter().map(|m| ContextMessage::from(*m)));
        context.push(ContextMessage::from(answering));
        context
    }

    async fn on_generation_event(&mut self, event: GenerationEvent) {
        match event {
            GenerationEvent::Llm(LlmEvent::Delta(text)) => self.on_delta(text).await,
            GenerationEvent::Llm(LlmEvent::Finish(finish)) => {
                if let Some(running) = self.current.as_mut() {
                    running.finish = Some(finish);
                }
            }
            GenerationEvent::Llm(LlmEvent::Usage(usage)) => {
                if let Some(running) = self.current.as_mut() {
                    running.usage = Some(usage);
                }
            }
            GenerationEvent::Ended(Ok(())) => {
                let reason = match self.current.as_ref().and_then(|r| r.finish) {
                    Some(UpstreamFinish::Length) => FinishReason::Length,
                    _ => FinishReason::Stop,
                };
                self.finish_running(reason, None).await;
            }
            GenerationEvent::Ended(Err(e)) => {
                let body = AppError::Llm(e).to_body();
                self.finish_running(FinishReason::Error, Some(body)).await;
            }
        }
    }

    /// Appends model text; a reply that reaches `max_reply_bytes` is cut there and ends
    /// with `length`, whatever the provider would have sent.
    async fn on_delta(&mut self, mut text: String) {
        let max = self.deps.settings.max_reply_bytes;
        let Some(running) = self.current.as_mut() else { return };
        // Deltas are never empty, so empty content means this is the first text.
        if running.content.is_empty() {
            self.deps.metrics.time_to_first_token.observe(running.started.elapsed().as_secs_f64());
        }
        let room = max.saturating_sub(running.content.len());
        let full = text.len() >= room;
        if full {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        running.content.push_str(&text);
        let (session_id, message_id) = (self.session.id, running.reply_id);
        if !text.is_empty() {
            self.emit(|seq| ServerFrame::Delta { session_id, seq, message_id, text });
        }
        if full {
            tracing::warn!(%session_id, max, "reply reached the size limit; cutting it");
            self.finish_running(FinishReason::Length, None).await;
        } else {
            self.checkpoint_if_due().await;
        }
    }

    /// Saves the reply in progress if the last save is older than the checkpoint interval.
    async fn checkpoint_if_due(&mut self) {
        let interval = self.deps.settings.checkpoint_interval;
        let Some(running) = self.current.as_mut() else { return };
        if running.last_checkpoint.elapsed() < interval || running.content.len() == running.checkpointed_len {
            return;
        }
        running.last_checkpoint = Instant::now();
        running.checkpointed_len = running.content.len();
        let message = Message {
            id: running.reply_id,
            session_id: self.session.id,
            role: Role::Assistant,
            content: running.content.clone(),
            token_count: None,
            status: MessageStatus::Generating,
            created_at: running.created_at,
            superseded: false,
        };
        self.deps.writes.save_later(message).await;
    }

    /// Cancels the running reply: the upstream request is dropped at once (the task is
    /// aborted, which drops the HTTP response), then the partial reply is stored.
    async fn cancel_running(&mut self) {
        if self.current.is_some() {
            self.finish_running(FinishReason::Cancelled, None).await;
        }
    }

    /// Nobody watched for the grace period: cancel the reply and drop the waiting sends.
    async fn abandon(&mut self) {
        if self.current.is_some() || !self.queue.is_empty() {
            tracing::info!(session_id = %self.session.id, dropped = self.queue.len(), "nobody watching; cancelling the reply");
            self.deps.metrics.generations_abandoned.inc();
        }
        self.drop_queue(&ErrorBody::new(ErrorCode::Unavailable, "nobody was watching the session"));
        self.cancel_running().await;
    }

    /// Stores the running reply with its outcome and tells every receiver.
    async fn finish_running(&mut self, reason: FinishReason, error: Option<ErrorBody>) {
        let Some(running) = self.current.take() else { return };
        running.task.abort();
        let status = match reason {
            FinishReason::Stop | FinishReason::Length => MessageStatus::Complete,
            FinishReason::Cancelled => MessageStatus::Cancelled,
            FinishReason::Error => MessageStatus::Error,
        };
        let token_count = running
            .usage
            .map(|u| u.completion_tokens)
            .or_else(|| (!running.content.is_empty()).then(|| estimate_tokens(&running.content)));
        let message = Message {
            id: running.reply_id,
            session_id: self.session.id,
            role: Role::Assistant,
            content: running.content,
            token_count,
            status,
            created_at: running.created_at,
            superseded: false,
        };
        let metrics = &self.deps.metrics;
        metrics.generation_ended(reason);
        metrics.reply_duration.observe(running.started.elapsed().as_secs_f64());
        if let Some(error) = &error {
            metrics.error(error.code);
        }
        if let Some(usage) = running.usage {
            metrics.tokens.with_label_values(&["prompt"]).inc_by(u64::from(usage.prompt_tokens));
            metrics.tokens.with_label_values(&["completion"]).inc_by(u64::from(usage.completion_tokens));
        }
        let now = Utc::now();
        let writes = &self.deps.writes;
        // Queued before the reply's save on the session's writer, so the session's message
        // count and the tokens are committed by the time `done` goes out.
        if let Some(usage) = running.usage {
            let (session_id, user_id, day) = (self.session.id, running.user.id, now.date_naive());
            writes.add_tokens_later(session_id, user_id, day, usage.prompt_tokens, usage.completion_tokens).await;
        }
        self.touch(now).await;
        if let Err(e) = self.deps.writes.save(&message).await {
            tracing::error!(session_id = %self.session.id, error = %e, "could not store the reply");
        }
        tracing::info!(
            session_id = %self.session.id, user_id = %running.user.id, message_id = %message.id,
            finish_reason = ?reason, tokens = ?message.token_count, "reply ended"
        );
        let (session_id, message_id) = (self.session.id, message.id);
        self.publish_message(message);
        let usage = running.usage;
        self.emit(|seq| ServerFrame::Done { session_id, seq, message_id, finish_reason: reason, usage, error });
    }

    // ---- timers, failure and stopping ------------------------------------------------------

    fn is_idle(&self) -> bool {
        !self.watched() && self.current.is_none() && self.queue.is_empty()
    }

    /// Whether anyone watches, here or on another node.
    fn watched(&self) -> bool {
        !self.receivers.is_empty() || !self.remote_watchers.is_empty()
    }

    /// Brings the timers in line with the state after every message: nobody watching a
    /// running reply arms the grace period (or cancels at once when it is zero); nothing
    /// going on arms the idle stop; anyone watching disarms both.
    async fn reconcile(&mut self, myself: &ActorRef<SessionMsg>) {
        self.receivers.retain(|r| !r.is_closed());
        if self.watched() {
            self.grace_armed = None;
            self.idle_armed = None;
            return;
        }
        let deps = self.deps.clone();
        let settings = &deps.settings;
        if self.current.is_some() || !self.queue.is_empty() {
            self.idle_armed = None;
            if settings.cancel_grace.is_zero() {
                self.abandon().await;
            } else if self.grace_armed.is_none() {
                self.epoch += 1;
                let epoch = self.epoch;
                self.grace_armed = Some(epoch);
                myself.send_after(settings.cancel_grace, move || SessionMsg::GraceExpired { epoch });
                return;
            } else {
                return;
            }
        }
        if self.is_idle() && self.idle_armed.is_none() {
            self.epoch += 1;
            let epoch = self.epoch;
            self.idle_armed = Some(epoch);
            myself.send_after(settings.idle_timeout, move || SessionMsg::IdleExpired { epoch });
        }
    }

    /// The actor panicked: whatever state the panic left, store the running reply as
    /// `error`, tell every watcher, and stop so the next use starts a fresh actor.
    async fn fail(&mut self, myself: &ActorRef<SessionMsg>, why: &str) {
        tracing::error!(session_id = %self.session.id, panic = why, "session actor failed; restarting it on next use");
        let error = ErrorBody::new(ErrorCode::Internal, "the session failed; subscribe again to continue");
        self.ending = Some(Ending::Stopping);
        self.drop_queue(&error);
        if self.current.is_some() {
            self.finish_running(FinishReason::Error, Some(error.clone())).await;
        }
        self.send_watchers_away(error);
        self.stop(myself);
    }

    /// Tells every watcher here that this actor's live state is gone (`error` without a
    /// request id): they subscribe again, to wherever the session runs next.
    fn send_watchers_away(&mut self, error: ErrorBody) {
        let out = Outbound::new(ServerFrame::Error { id: None, session_id: Some(self.session.id), error });
        for receiver in self.receivers.drain(..) {
            receiver.deliver(&out);
        }
    }

    fn stop(&mut self, myself: &ActorRef<SessionMsg>) {
        let ending = *self.ending.get_or_insert(Ending::Stopping);
        // Watchers on other nodes keep their connections: tell them to subscribe again
        // (to wherever the session runs next).
        if ending == Ending::Stopping
            && !self.remote_watchers.is_empty()
            && let Some(cluster) = &self.deps.cluster
        {
            let out = Outbound::new(ServerFrame::Error { id: None, session_id: Some(self.session.id), error: moved() });
            cluster.publish_event(self.session.id, &out);
        }
        if let Some(registry) = self.registry.upgrade() {
            registry.forget(self.session.id, myself);
        }
        myself.stop(None);
    }
}

/// What watchers hear when this node stops running a session that goes on elsewhere.
fn moved() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "the session moved; subscribe again to continue")
}

/// Checks a user message: not blank, and at most `max_chars` characters.
pub fn validate_content(content: &str, max_chars: usize) -> Result<(), SessionError> {
    if content.trim().is_empty() {
        return Err(SessionError::InvalidContent("message content is empty".into()));
    }
    let chars = content.chars().count();
    if chars > max_chars {
        return Err(SessionError::InvalidContent(format!("message is {chars} characters; the limit is {max_chars}")));
    }
    Ok(())
}

/// Whether a stored message belongs in a model's context: failed and empty replies do not.
fn counts_as_context(message: &Message) -> bool {
    message.status != MessageStatus::Error && !message.content.is_empty()
}

/// A session title from a first message: its first non-blank line, trimmed to 60 characters.
pub fn derive_title(content: &str) -> String {
    let line = content.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or(DEFAULT_TITLE);
    let mut title: String = line.chars().take(DERIVED_TITLE_CHARS).collect();
    if line.chars().count() > DERIVED_TITLE_CHARS {
        title = title.trim_end().to_string();
    }
    title
}

/// A rough token count (about four characters a token) where the provider gave none.
pub fn estimate_tokens(text: &str) -> u32 {
    (text.chars().count().div_ceil(4)).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(derive_title("\n  What is Rust?  \nmore"), "What is Rust?");
        assert_eq!(derive_title(&"x".repeat(100)).chars().count(), 60);
    }

    #[test]
    fn content_rules() {
        assert!(validate_content("   ", 10).is_err());
        assert!(validate_content("é".repeat(10).as_str(), 10).is_ok());
        assert!(validate_content("é".repeat(11).as_str(), 10).is_err());
    }
}
