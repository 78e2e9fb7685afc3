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
//! - A request whose write is not confirmed in time leaves the actor unsure of what is
//!   stored: it takes no new requests, finishes its replies, and stops; the next use
//!   starts a fresh actor that loads the session as stored (see `store_durably`).
//! - A panic while handling a message is caught here: the running reply is stored as
//!   `error`, watchers get `done` `error` and an `error` telling them to resubscribe, and
//!   the actor stops so the next use starts a fresh one.

mod admission;
mod generation;
mod history;
mod lifecycle;
mod messages;
mod repeats;
mod sending;
mod watchers;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use relay_protocol::{Message, Session};
use uuid::Uuid;

use super::{SessionDeps, SessionError};
use crate::error::AppError;
use crate::fanout::Receiver;
use crate::store::{Fence, SessionRecord};

use super::budget;
use super::text::{estimate_tokens, validate_content};
use generation::{Queued, Running};
pub use messages::*;
use repeats::SentKeys;
use watchers::{RemoteWatchers, moved, reloading};

/// How many recent messages the actor keeps in memory (context and snapshots).
pub(super) const HISTORY_CAP: usize = 200;
/// How many recent messages a `subscribed` snapshot carries at most.
const SNAPSHOT_MESSAGES: usize = 100;
/// What a message adds to a frame beyond its content: ids, times, JSON (a generous guess).
const MESSAGE_OVERHEAD_BYTES: usize = 256;
/// The gap between a message's time and its reply's, and the least gap between two sends.
const REPLY_SLOT: chrono::TimeDelta = chrono::TimeDelta::microseconds(1);

/// The actor (stateless; its state is [`SessionState`]).
pub struct SessionActor;

/// Told when an actor stops, so that the next use of its session starts a fresh one. The
/// registry, which starts actors, is one: the actor knows it only as this.
pub trait StopListener: Send + Sync {
    /// The actor of `session_id` (owned by `owner`) stops; its writes may still be queued.
    fn stopping(&self, session_id: Uuid, owner: Uuid, actor: &ActorRef<SessionMsg>);
}

/// What an actor starts from.
pub struct SessionArgs {
    /// The session and its owner.
    pub record: SessionRecord,
    /// Its recent messages, oldest first.
    pub history: Vec<Message>,
    /// Shared dependencies.
    pub deps: Arc<SessionDeps>,
    /// Who is told when the actor stops (the registry).
    pub registry: Weak<dyn StopListener>,
    /// Set when the server begins shutting down: sends are refused from then on.
    pub closing: Arc<AtomicBool>,
    /// The session's epoch this actor claimed: every write it makes carries it.
    pub fence: Fence,
    /// In a cluster, the token of the session's lease this node holds for the actor.
    pub lease: Option<u64>,
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
    registry: Weak<dyn StopListener>,
    closing: Arc<AtomicBool>,
    /// Stored messages, oldest first, in `created_at` order (the store's order).
    history: VecDeque<Message>,
    /// Whether `history` holds every message of the session (none older is left out).
    history_complete: bool,
    queue: VecDeque<Queued>,
    current: Option<Running>,
    seq: u64,
    receivers: Vec<Receiver>,
    /// Receivers on other nodes: the session's events are published once for all of them
    /// (their nodes fan them out), and they count as watchers for the cancel grace.
    remote_watchers: RemoteWatchers,
    next_generation: u64,
    /// Counts timer armings, so a timer armed before the last change is ignored.
    arming: u64,
    grace_armed: Option<u64>,
    idle_armed: Option<u64>,
    ending: Option<Ending>,
    /// The session's epoch this actor holds (the fencing token its writes carry).
    fence: Fence,
    /// The cluster lease token this actor runs under (`None` alone).
    lease: Option<u64>,
    /// Set once the actor finds it no longer holds the session: it emits and writes
    /// nothing more, and stops after the message at hand.
    lost: bool,
    /// Recent idempotency keys of requests this actor took.
    keys: SentKeys,
    /// Set when a request's write was not confirmed in time (it may land later): what this
    /// actor holds may differ from what is stored, so it takes no new requests and stops
    /// once its replies are done, for a fresh actor to load the session again.
    out_of_sync: bool,
    /// Whether a look at the remote watchers is due (see `reconcile`).
    check_armed: bool,
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
            history_complete: args.history.len() < HISTORY_CAP,
            history: args.history.into(),
            queue: VecDeque::new(),
            current: None,
            seq: 0,
            receivers: Vec::new(),
            remote_watchers: RemoteWatchers::default(),
            next_generation: 0,
            arming: 0,
            grace_armed: None,
            idle_armed: None,
            ending: None,
            fence: args.fence,
            lease: args.lease,
            lost: false,
            keys: SentKeys::default(),
            out_of_sync: false,
            check_armed: false,
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
        // An actor that no longer holds its session takes nothing more: the message is
        // dropped unanswered, so whoever sent it retries where the session runs now.
        if !self.holds_session() {
            self.lose(myself);
            return;
        }
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
            SessionMsg::Update { user_id, change, reply } => {
                let _ = reply.send(self.update(user_id, &change).await);
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
            SessionMsg::Lost(stale) => {
                let mine = match stale {
                    Stale::Lease(token) => self.lease == Some(token),
                    Stale::Epoch(epoch) => self.fence.epoch == epoch,
                };
                if mine {
                    self.lose(myself);
                    return;
                }
            }
            SessionMsg::RemoteUnsubscribe { instance, receiver } => self.remote_watchers.remove(&instance, receiver),
            SessionMsg::RemoteWatchers { instance, receivers } => self.remote_watchers.confirm(instance, receivers),
            SessionMsg::InstanceGone { instance } => self.remote_watchers.forget_instance(&instance),
            SessionMsg::CheckWatchers => self.check_armed = false,
            SessionMsg::GraceExpired { arming } => {
                if self.grace_armed == Some(arming) && !self.watched() {
                    self.grace_armed = None;
                    self.abandon().await;
                }
            }
            SessionMsg::IdleExpired { arming } => {
                if self.idle_armed == Some(arming) && self.is_idle() {
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
        if self.lost {
            self.lose(myself);
            return;
        }
        if self.out_of_sync && self.current.is_none() && self.queue.is_empty() {
            self.reload(myself);
            return;
        }
        self.reconcile(myself).await;
    }

    pub(super) fn check_owner(&self, user_id: Uuid) -> Result<(), SessionError> {
        if user_id != self.owner || self.ending == Some(Ending::Deleted) {
            return Err(SessionError::NotFound);
        }
        Ok(())
    }
}
