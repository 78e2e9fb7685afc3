//! The session registry: finds or starts a session's actor, forgets it when it stops or
//! dies, and refuses new work once shutdown begins.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{Actor, ActorId, ActorRef};
use relay_protocol::{ServerFrame, Session};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::actor::{self, Requester, SendRequest, SessionActor, SessionArgs, SessionMsg, Stale, StopListener};
use super::remote::{FromRemote, Origin, RemoteAnswer, RemoteCall, RemoteError, RemoteOp, RemoteResult};
use super::slots::Slots;
use super::{SendAccepted, SessionDeps, SessionError};
use crate::auth::AuthUser;
use crate::cluster::{Claim, ClusterError, ClusterHandler, Peer};
use crate::fanout::{Outbound, Receiver, ReceiverId, RemoteSink};
use crate::store::Fence;
use crate::store::SessionChange;

/// How often a call is retried when it reached an actor that was just stopping.
const RETRIES: usize = 3;
/// How long shutdown waits for one actor to store its running reply.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Finds or starts session actors, one per session.
pub struct SessionRegistry {
    actors: Slots<Uuid, ActorRef<SessionMsg>>,
    deps: Arc<SessionDeps>,
    /// Set when shutdown begins: no actor starts and no actor accepts a send after it.
    closing: Arc<AtomicBool>,
    started: AtomicU64,
    /// Actors that stopped and whose writes may still be queued, by session, with the
    /// session's owner (whose writer holds them): a new actor of the session waits for
    /// those writes before it claims the session (the claim raises the epoch, which would
    /// refuse them) and loads it.
    settling: Mutex<HashMap<Uuid, (Uuid, HashSet<ActorId>)>>,
    me: Weak<SessionRegistry>,
}

impl SessionRegistry {
    /// Creates an empty registry.
    pub fn new(deps: SessionDeps) -> Arc<SessionRegistry> {
        Arc::new_cyclic(|me| SessionRegistry {
            actors: Slots::default(),
            deps: Arc::new(deps),
            closing: Arc::new(AtomicBool::new(false)),
            started: AtomicU64::new(0),
            settling: Mutex::default(),
            me: me.clone(),
        })
    }

    /// How many actors have been started since the server started (for tests and metrics).
    pub fn actors_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// How many actors are live now.
    pub fn live_actors(&self) -> usize {
        self.actors.started()
    }

    /// The actor of a session, started on first use (see [`Slots`]). Each started actor is
    /// watched: however it ends (stopped, panicked, killed) it is forgotten, so the next
    /// use starts a fresh one. In a cluster the session's lease is claimed first; when
    /// another instance holds it, the answer is [`SessionError::Elsewhere`].
    async fn actor(&self, session_id: Uuid) -> Result<ActorRef<SessionMsg>, SessionError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        let Some(registry) = self.me.upgrade() else { return Err(SessionError::ShuttingDown) };
        // The start runs to its end in a task of its own (see `Slots`), even if the request
        // that asked for it goes away: a claimed lease is never left without its actor.
        self.actors
            .get_or_start(&session_id, || {
                let registry = registry.clone();
                async move { registry.claim_and_start(session_id).await }
            })
            .await
    }

    /// Claims the session's lease (in a cluster), then loads the session and starts its
    /// actor; a start that fails gives the lease back.
    async fn claim_and_start(self: Arc<Self>, session_id: Uuid) -> Result<ActorRef<SessionMsg>, SessionError> {
        let cluster = self.deps.cluster.clone();
        let lease = match &cluster {
            Some(cluster) => match cluster.claim(session_id).await {
                Ok(Claim::Mine(token)) => Some(token),
                Ok(Claim::Held(owner)) => return Err(SessionError::Elsewhere(owner)),
                Err(e) => {
                    tracing::warn!(%session_id, error = %e, "cannot claim the session's lease");
                    return Err(SessionError::Unavailable);
                }
            },
            None => None,
        };
        let started = self.start_actor(session_id, lease).await;
        if let (Err(_), Some(cluster), Some(token)) = (&started, &cluster, lease) {
            cluster.release(session_id, token).await;
        }
        started
    }

    /// Loads a session and starts its actor (the lease, in a cluster, is already held):
    /// the writes of the session's previous actor here are stored first (within the
    /// database timeout, else the start fails `unavailable`), then the session's epoch is
    /// raised, so whatever ran it before writes nothing more.
    async fn start_actor(&self, session_id: Uuid, lease: Option<u64>) -> Result<ActorRef<SessionMsg>, SessionError> {
        if let Some(owner) = self.settling_owner(session_id) {
            let writes = &self.deps.writes;
            if tokio::time::timeout(writes.deadline(), writes.flush_user(owner)).await.is_err() {
                tracing::warn!(%session_id, "the session's earlier writes are not stored yet; not starting it");
                return Err(SessionError::Unavailable);
            }
        }
        let claimed = self.deps.store.claim_session(session_id).await?.ok_or(SessionError::NotFound)?;
        if claimed.failed > 0 {
            tracing::warn!(%session_id, failed = claimed.failed, "a reply cut off by a stopped actor is stored as error");
        }
        let history = self.deps.store.recent_messages(session_id, actor::HISTORY_CAP).await?;
        let fence = Fence { session_id, epoch: claimed.epoch, owner: claimed.record.user_id };
        let args = SessionArgs {
            record: claimed.record,
            history,
            deps: self.deps.clone(),
            registry: self.me.clone(),
            closing: self.closing.clone(),
            fence,
            lease,
        };
        let (actor, ended) = Actor::spawn(None, SessionActor, args).await.map_err(|e| {
            tracing::error!(%session_id, error = %e, "session actor failed to start");
            SessionError::Unavailable
        })?;
        self.started.fetch_add(1, Ordering::Relaxed);
        let (registry, watched) = (self.me.clone(), actor.clone());
        tokio::spawn(async move {
            let _ = ended.await;
            let Some(registry) = registry.upgrade() else { return };
            registry.stopping(session_id, fence.owner, &watched);
            // At shutdown, every write is stored and every lease given up together.
            if registry.closing.load(Ordering::Acquire) {
                return;
            }
            // The lease goes once the session's writes are stored: a node that takes the
            // session over must find them, and would refuse them after its claim.
            registry.deps.writes.flush_user(fence.owner).await;
            registry.settled(session_id, watched.get_id());
            if let (Some(cluster), Some(token)) = (&registry.deps.cluster, lease) {
                if let Some(delay) = crate::faults::release_delay() {
                    tokio::time::sleep(delay).await;
                }
                cluster.release(session_id, token).await;
            }
        });
        Ok(actor)
    }

    /// The writes of a stopped actor of a session are stored.
    fn settled(&self, session_id: Uuid, actor: ActorId) {
        let mut settling = self.settling.lock().expect("settling lock");
        if let Some((_, actors)) = settling.get_mut(&session_id) {
            actors.remove(&actor);
            if actors.is_empty() {
                settling.remove(&session_id);
            }
        }
    }

    /// The owner of a session one of whose stopped actors may still have writes queued.
    fn settling_owner(&self, session_id: Uuid) -> Option<Uuid> {
        self.settling.lock().expect("settling lock").get(&session_id).map(|(owner, _)| *owner)
    }

    /// Forgets a session's actor (if it is still the registered one), so the next use
    /// starts a fresh one.
    pub(super) fn forget(&self, session_id: Uuid, actor: &ActorRef<SessionMsg>) {
        self.actors.forget_if(&session_id, |a| a.get_id() == actor.get_id());
    }

    /// Where a session runs: its actor here, or the instance that holds its lease.
    async fn locate(&self, session_id: Uuid) -> Result<Place, SessionError> {
        if let Some(actor) = self.actors.get(&session_id) {
            return Ok(Place::Here(actor));
        }
        match self.actor(session_id).await {
            Ok(actor) => Ok(Place::Here(actor)),
            Err(SessionError::Elsewhere(owner)) => Ok(Place::There(owner)),
            Err(e) => Err(e),
        }
    }

    /// Runs a session operation where the session lives (`make` builds the message for an
    /// actor here, `remote` the request for another node; each only when needed). Here: a
    /// message to its actor, retried on a fresh actor if the first one stopped before
    /// answering (safe: a send carries its message id from here, and storing a message
    /// twice under one id keeps one row). On another node: the request is forwarded to it,
    /// after `watcher` (the receiver the operation subscribes, if any) is set to get the
    /// session's events here; with `repeatable`, a request whose answer was lost is sent
    /// again (a send then carries an idempotency key, so the owner answers a repeat as the
    /// first). With `forward` false (a request another node forwarded) a session owned
    /// elsewhere answers [`SessionError::Elsewhere`] instead of forwarding again.
    async fn call<T: FromRemote>(
        &self,
        session_id: Uuid,
        make: impl Fn(oneshot::Sender<Result<T, SessionError>>) -> SessionMsg,
        remote: impl Fn() -> RemoteOp,
        watcher: Option<&Receiver>,
        (forward, repeatable): (bool, bool),
    ) -> Result<T, SessionError> {
        for _ in 0..RETRIES {
            let owner = match self.locate(session_id).await? {
                Place::Here(actor) => {
                    if let Some(receiver) = watcher {
                        self.leave_relay(session_id, receiver.id);
                    }
                    let (tx, rx) = oneshot::channel();
                    if actor.send_message(make(tx)).is_err() {
                        self.forget(session_id, &actor);
                        continue;
                    }
                    match rx.await {
                        Ok(result) => return result,
                        Err(_) => {
                            self.forget(session_id, &actor);
                            continue;
                        }
                    }
                }
                Place::There(owner) if !forward => return Err(SessionError::Elsewhere(owner)),
                Place::There(owner) => owner,
            };
            match self.forward(session_id, &owner, remote(), watcher).await {
                Forwarded::Answered(Err(RemoteError::NotOwner)) => continue,
                Forwarded::Answered(Ok(answer)) => return T::from_remote(answer),
                Forwarded::Answered(Err(e)) => return Err(e.into()),
                Forwarded::Lost if repeatable => continue,
                Forwarded::Lost => return Err(SessionError::Unavailable),
            }
        }
        Err(if self.closing.load(Ordering::Acquire) { SessionError::ShuttingDown } else { SessionError::Unavailable })
    }

    /// Forwards an operation to the instance that owns the session. `watcher` is set to
    /// get the session's events here first, and taken out again if the owner refuses.
    async fn forward(&self, session_id: Uuid, owner: &Arc<str>, op: RemoteOp, watcher: Option<&Receiver>) -> Forwarded {
        let Some(cluster) = self.deps.cluster.as_ref() else {
            return Forwarded::Answered(Err(RemoteError::Unavailable));
        };
        let fresh = match watcher {
            Some(receiver) => match cluster.attach(session_id, owner, receiver).await {
                Ok(fresh) => fresh,
                Err(e) => {
                    tracing::warn!(%session_id, error = %e, "cannot relay the session");
                    return Forwarded::Answered(Err(RemoteError::Unavailable));
                }
            },
            None => false,
        };
        let call = serde_json::to_value(RemoteCall { session_id, op }).expect("calls always encode");
        let result = match cluster.request(owner, call).await {
            Ok(body) => Forwarded::Answered(serde_json::from_value(body).unwrap_or(Err(RemoteError::Unavailable))),
            Err(e @ (ClusterError::Timeout | ClusterError::Lost)) => {
                tracing::warn!(%session_id, %owner, error = %e, "the answer to a forwarded request was lost");
                Forwarded::Lost
            }
            Err(e) => {
                tracing::warn!(%session_id, %owner, error = %e, "forwarded request failed");
                Forwarded::Answered(Err(RemoteError::Unavailable))
            }
        };
        if let (Forwarded::Answered(Err(_)), true, Some(receiver)) = (&result, fresh, watcher) {
            cluster.detach(session_id, receiver.id);
        }
        result
    }

    /// Adds a receiver to a session; a connection gets a `subscribed` snapshot first.
    pub async fn subscribe(
        &self,
        user: &AuthUser,
        session_id: Uuid,
        receiver: Receiver,
        request_id: Option<String>,
    ) -> Result<(), SessionError> {
        self.subscribe_from(user.id, session_id, receiver, request_id, true).await
    }

    /// Adds a share link's viewer to a session, on its owner's behalf: the viewer gets the
    /// `subscribed` snapshot, then every event, as a tab does (the caller checked the link).
    pub async fn watch_shared(&self, owner: Uuid, session_id: Uuid, receiver: Receiver) -> Result<(), SessionError> {
        self.subscribe_from(owner, session_id, receiver, None, true).await
    }

    async fn subscribe_from(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        receiver: Receiver,
        request_id: Option<String>,
        forward: bool,
    ) -> Result<(), SessionError> {
        let op = || RemoteOp::Subscribe { user_id, origin: origin_of(&receiver), request_id: request_id.clone() };
        let make = |reply| SessionMsg::Subscribe {
            user_id,
            receiver: receiver.clone(),
            request_id: request_id.clone(),
            reply,
        };
        self.call(session_id, make, op, Some(&receiver), (forward, true)).await
    }

    /// Removes a receiver from a session (a no-op if the session has no live actor).
    /// With `notify`, the actor answers `unsubscribed` (echoing the request id) to that
    /// receiver. Returns false when no live actor took the message, so the caller answers.
    /// A session relayed from another node stops reaching the receiver at once, and its
    /// owner is told (so its cancel grace counts without it).
    pub fn unsubscribe(
        &self,
        session_id: Uuid,
        receiver: ReceiverId,
        notify: Option<(Receiver, Option<String>)>,
    ) -> bool {
        if let Some(actor) = self.actors.get(&session_id) {
            return actor.send_message(SessionMsg::Unsubscribe { receiver, notify }).is_ok();
        }
        let Some(cluster) = &self.deps.cluster else { return false };
        let Some(owner) = cluster.detach(session_id, receiver) else { return false };
        self.unsubscribe_at(session_id, owner, receiver);
        if let Some((to, id)) = notify {
            to.deliver(&Outbound::new(ServerFrame::Unsubscribed { id, session_id }));
        }
        true
    }

    /// Takes a receiver out of the session's relay here, if it is in one (an earlier attempt
    /// forwarded to an owner that then went away): it watches the session's actor here
    /// now, and the relay's frames (numbered by the old owner, such as the `done` `error`
    /// that ends the old owner's reply) must not reach it after the actor's snapshot.
    fn leave_relay(&self, session_id: Uuid, receiver: ReceiverId) {
        if let Some(cluster) = &self.deps.cluster
            && let Some(owner) = cluster.detach(session_id, receiver)
        {
            self.unsubscribe_at(session_id, owner, receiver);
        }
    }

    /// Tells a session's owner that a receiver here no longer watches it (in the background).
    fn unsubscribe_at(&self, session_id: Uuid, owner: Arc<str>, receiver: ReceiverId) {
        let Some(registry) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let _ = registry.forward(session_id, &owner, RemoteOp::Unsubscribe { receiver }, None).await;
        });
    }

    /// Stores a user message and queues its reply; the requester's connection or request
    /// is subscribed if it is not yet.
    pub async fn send(
        &self,
        requester: Requester,
        session_id: Uuid,
        content: String,
    ) -> Result<SendAccepted, SessionError> {
        let message = NewMessage { id: Uuid::new_v4(), content, replaces: None };
        self.send_from(requester, session_id, message, true).await
    }

    /// Sends a message, or with `replaces` edits one (see [`SessionRegistry::edit`]).
    async fn send_from(
        &self,
        requester: Requester,
        session_id: Uuid,
        message: NewMessage,
        forward: bool,
    ) -> Result<SendAccepted, SessionError> {
        let NewMessage { id: message_id, content, replaces } = message;
        // What the owner node gets when the session runs elsewhere: always keyed, so a
        // request whose answer was lost can be sent again.
        let op = || {
            let Requester { user, origin, request_id, key } = requester.clone();
            let (origin, content) = (origin_of(&origin), content.clone());
            let key = Some(key.unwrap_or_else(|| forwarding_key(message_id)));
            match replaces {
                None => RemoteOp::Send { user, message_id, content, origin, request_id, key },
                Some(replaced) => RemoteOp::Edit { user, replaced, message_id, content, origin, request_id, key },
            }
        };
        let make = |reply| {
            let request = SendRequest { requester: requester.clone(), message_id, content: content.clone() };
            match replaces {
                None => SessionMsg::Send { request, reply },
                Some(replaced) => SessionMsg::Edit { replaced, request, reply },
            }
        };
        self.call(session_id, make, op, Some(&requester.origin), (forward, true)).await
    }

    /// Replaces the session's last reply with a new one (or answers its last message).
    pub async fn regenerate(&self, requester: Requester, session_id: Uuid) -> Result<SendAccepted, SessionError> {
        self.regenerate_from(requester, session_id, true).await
    }

    async fn regenerate_from(
        &self,
        requester: Requester,
        session_id: Uuid,
        forward: bool,
    ) -> Result<SendAccepted, SessionError> {
        let fallback_key = forwarding_key(Uuid::new_v4());
        let op = || {
            let Requester { user, origin, request_id, key } = requester.clone();
            let key = Some(key.unwrap_or_else(|| fallback_key.clone()));
            RemoteOp::Regenerate { user, origin: origin_of(&origin), request_id, key }
        };
        let make = |reply| SessionMsg::Regenerate { request: requester.clone(), reply };
        self.call(session_id, make, op, Some(&requester.origin), (forward, true)).await
    }

    /// Replaces a live user message of the session, and every live message after it, with
    /// `content`, and answers it.
    pub async fn edit(
        &self,
        requester: Requester,
        session_id: Uuid,
        replaced: Uuid,
        content: String,
    ) -> Result<SendAccepted, SessionError> {
        let message = NewMessage { id: Uuid::new_v4(), content, replaces: Some(replaced) };
        self.send_from(requester, session_id, message, true).await
    }

    /// Cancels the running reply of a session, if any.
    pub async fn stop(&self, user: &AuthUser, session_id: Uuid) -> Result<(), SessionError> {
        self.stop_from(user.id, session_id, true).await
    }

    async fn stop_from(&self, user_id: Uuid, session_id: Uuid, forward: bool) -> Result<(), SessionError> {
        let op = || RemoteOp::Stop { user_id };
        self.call(session_id, |reply| SessionMsg::Stop { user_id, reply }, op, None, (forward, true)).await
    }

    /// Changes a session (title, system prompt, model) through its actor, so its snapshots
    /// and its next reply use the change at once.
    pub async fn update(
        &self,
        user: &AuthUser,
        session_id: Uuid,
        change: SessionChange,
    ) -> Result<Session, SessionError> {
        self.update_from(user.id, session_id, change, true).await
    }

    async fn update_from(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        change: SessionChange,
        forward: bool,
    ) -> Result<Session, SessionError> {
        // A title alone travels as a rename, which nodes of earlier versions understand too.
        let op = || match &change {
            SessionChange { title: Some(title), system_prompt: None, model: None } => {
                RemoteOp::Rename { user_id, title: title.clone() }
            }
            change => RemoteOp::Update { user_id, change: change.clone() },
        };
        let make = |reply| SessionMsg::Update { user_id, change: change.clone(), reply };
        self.call(session_id, make, op, None, (forward, true)).await
    }

    /// Deletes a session through its actor: the soft delete is one step in its mailbox, so
    /// every send handled before it is stored and every send after it is `not_found`. The
    /// running reply is cancelled, queued sends are answered `not_found`, and the actor stops.
    pub async fn delete(&self, user: &AuthUser, session_id: Uuid) -> Result<(), SessionError> {
        self.delete_from(user.id, session_id, true).await
    }

    async fn delete_from(&self, user_id: Uuid, session_id: Uuid, forward: bool) -> Result<(), SessionError> {
        let op = || RemoteOp::Delete { user_id };
        // Not sent again when its answer is lost: a repeat would answer `not_found`.
        self.call(session_id, |reply| SessionMsg::Delete { user_id, reply }, op, None, (forward, false)).await
    }

    /// Answers a request another node forwarded: the session must run here (or start
    /// here, if nobody holds its lease); receivers it names live on that node.
    async fn answer(&self, peer: Peer, call: RemoteCall) -> RemoteResult {
        let session_id = call.session_id;
        let sink: Arc<dyn RemoteSink> = Arc::new(peer.clone());
        let receiver = |origin: Origin| Receiver::remote(origin.id, origin.kind, sink.clone());
        let result = match call.op {
            RemoteOp::Subscribe { user_id, origin, request_id } => self
                .subscribe_from(user_id, session_id, receiver(origin), request_id, false)
                .await
                .map(FromRemote::into_remote),
            RemoteOp::Unsubscribe { receiver } => {
                if let Some(actor) = self.actors.get(&session_id) {
                    let _ = actor
                        .send_message(SessionMsg::RemoteUnsubscribe { instance: peer.instance().clone(), receiver });
                }
                Ok(RemoteAnswer::Done)
            }
            RemoteOp::Send { user, message_id, content, origin, request_id, key } => {
                let requester = Requester { user, origin: receiver(origin), request_id, key };
                let message = NewMessage { id: message_id, content, replaces: None };
                self.send_from(requester, session_id, message, false).await.map(FromRemote::into_remote)
            }
            RemoteOp::Regenerate { user, origin, request_id, key } => {
                let requester = Requester { user, origin: receiver(origin), request_id, key };
                self.regenerate_from(requester, session_id, false).await.map(FromRemote::into_remote)
            }
            RemoteOp::Edit { user, replaced, message_id, content, origin, request_id, key } => {
                let requester = Requester { user, origin: receiver(origin), request_id, key };
                let message = NewMessage { id: message_id, content, replaces: Some(replaced) };
                self.send_from(requester, session_id, message, false).await.map(FromRemote::into_remote)
            }
            RemoteOp::Stop { user_id } => self.stop_from(user_id, session_id, false).await.map(FromRemote::into_remote),
            RemoteOp::Rename { user_id, title } => {
                let change = SessionChange { title: Some(title), ..SessionChange::default() };
                self.update_from(user_id, session_id, change, false).await.map(FromRemote::into_remote)
            }
            RemoteOp::Update { user_id, change } => {
                self.update_from(user_id, session_id, change, false).await.map(FromRemote::into_remote)
            }
            RemoteOp::Delete { user_id } => {
                self.delete_from(user_id, session_id, false).await.map(FromRemote::into_remote)
            }
        };
        result.map_err(RemoteError::from)
    }

    /// Tells the actor of a session that a batch found its writes stale (another actor
    /// took the session over): it stops without writing or emitting more.
    pub fn fenced(&self, fence: Fence) {
        if let Some(actor) = self.actors.get(&fence.session_id) {
            let _ = actor.send_message(SessionMsg::Lost(Stale::Epoch(fence.epoch)));
        }
    }

    /// Sets the gauges of what the registry holds (read by `/metrics`).
    pub fn observe(&self) {
        self.deps.metrics.session_slots.set(self.actors.len() as i64);
    }

    /// Shuts the sessions down in order: first no new work is accepted (no actor starts,
    /// no actor takes a send), then every running reply is stored as it stands (its
    /// watchers get `done` `cancelled`, queued sends `unavailable`) and every actor stops.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        let waits = self.actors.values().into_iter().map(|actor| async move {
            let (tx, rx) = oneshot::channel();
            if actor.send_message(SessionMsg::Shutdown { reply: tx }).is_ok() {
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, rx).await;
            }
        });
        futures::future::join_all(waits).await;
    }

    /// Makes a session's actor misbehave, for tests of supervision and of connections that
    /// must not wait on one slow session. Starts the actor if needed.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_fault(&self, session_id: Uuid, fault: super::Fault) -> Result<(), SessionError> {
        let actor = self.actor(session_id).await?;
        actor.send_message(SessionMsg::Fault(fault)).map_err(|_| SessionError::Unavailable)
    }
}

/// Where a session runs.
enum Place {
    /// Here: its actor.
    Here(ActorRef<SessionMsg>),
    /// On another node instance, which holds its lease.
    There(Arc<str>),
}

/// A user message to store: its id (chosen once, before any retry or forwarding), its text,
/// and the message it replaces when it is an edit.
struct NewMessage {
    id: Uuid,
    content: String,
    replaces: Option<Uuid>,
}

/// What became of a forwarded request.
// One lives per request, briefly, on the stack: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Forwarded {
    /// The owner answered.
    Answered(RemoteResult),
    /// The answer was lost (or never came): the owner may or may not have done it.
    Lost,
}

/// The idempotency key a forwarded send carries when its client gave none, so that it can
/// be sent again when its answer is lost (a client that chose such a key itself could
/// only collide with its own sends).
fn forwarding_key(id: Uuid) -> String {
    format!("~{id}")
}

/// A receiver as a forwarded request names it.
fn origin_of(receiver: &Receiver) -> Origin {
    Origin { id: receiver.id, kind: receiver.kind }
}

impl ClusterHandler for SessionRegistry {
    fn request(&self, from: Peer, body: serde_json::Value) -> BoxFuture<'static, serde_json::Value> {
        let registry = self.me.upgrade();
        Box::pin(async move {
            let result: RemoteResult = match (registry, serde_json::from_value::<RemoteCall>(body)) {
                (Some(registry), Ok(call)) => registry.answer(from, call).await,
                (None, _) => Err(RemoteError::ShuttingDown),
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "undecodable forwarded request");
                    Err(RemoteError::Unavailable)
                }
            };
            serde_json::to_value(result).expect("results always encode")
        })
    }

    fn instance_gone(&self, instance: &str) {
        let instance: Arc<str> = instance.into();
        for actor in self.actors.values() {
            let _ = actor.send_message(SessionMsg::InstanceGone { instance: instance.clone() });
        }
    }

    fn lease_lost(&self, session_id: Uuid, token: u64) {
        if let Some(actor) = self.actors.get(&session_id) {
            let _ = actor.send_message(SessionMsg::Lost(Stale::Lease(token)));
        }
    }

    fn user_event(&self, user_id: Uuid, out: Outbound) {
        self.deps.hub.deliver(user_id, &out);
    }

    fn receiver_closed(&self, session_id: Uuid, owner: Arc<str>, receiver: ReceiverId) {
        self.unsubscribe_at(session_id, owner, receiver);
    }

    fn watching(&self, instance: Arc<str>, session_id: Uuid, receivers: Vec<ReceiverId>) {
        if let Some(actor) = self.actors.get(&session_id) {
            let _ = actor.send_message(SessionMsg::RemoteWatchers { instance, receivers });
        }
    }
}

/// Removes a REST or SSE receiver from its session when the request ends, however it ends
/// (a client that goes away drops the response, and with it this guard).
pub struct SubscriptionGuard {
    /// The registry to tell.
    pub registry: Arc<SessionRegistry>,
    /// The session.
    pub session_id: Uuid,
    /// The receiver to remove.
    pub receiver: ReceiverId,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.registry.unsubscribe(self.session_id, self.receiver, None);
    }
}

impl StopListener for SessionRegistry {
    /// An actor of a session stops (or has stopped): its writes may still be queued, and
    /// the next use of the session starts a fresh actor.
    fn stopping(&self, session_id: Uuid, owner: Uuid, actor: &ActorRef<SessionMsg>) {
        let mut settling = self.settling.lock().expect("settling lock");
        settling.entry(session_id).or_insert_with(|| (owner, HashSet::new())).1.insert(actor.get_id());
        drop(settling);
        self.forget(session_id, actor);
    }
}
