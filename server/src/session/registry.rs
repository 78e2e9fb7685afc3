//! The session registry: finds or starts a session's actor, forgets it when it stops or
//! dies, and refuses new work once shutdown begins.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use relay_protocol::Session;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::actor::{self, ReplaceRequest, SendRequest, SessionActor, SessionArgs, SessionMsg};
use super::slots::Slots;
use super::{SendAccepted, SessionDeps, SessionError};
use crate::auth::AuthUser;
use crate::fanout::{Receiver, ReceiverId};

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
    /// use starts a fresh one.
    async fn actor(&self, session_id: Uuid) -> Result<ActorRef<SessionMsg>, SessionError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        self.actors
            .get_or_start(&session_id, || async {
                let record = self.deps.store.get_session(session_id).await?.ok_or(SessionError::NotFound)?;
                let history = self.deps.store.recent_messages(session_id, actor::HISTORY_CAP).await?;
                let args = SessionArgs {
                    record,
                    history,
                    deps: self.deps.clone(),
                    registry: self.me.clone(),
                    closing: self.closing.clone(),
                };
                let (actor, ended) = Actor::spawn(None, SessionActor, args).await.map_err(|e| {
                    tracing::error!(%session_id, error = %e, "session actor failed to start");
                    SessionError::Unavailable
                })?;
                self.started.fetch_add(1, Ordering::Relaxed);
                let (registry, watched) = (self.me.clone(), actor.clone());
                tokio::spawn(async move {
                    let _ = ended.await;
                    if let Some(registry) = registry.upgrade() {
                        registry.forget(session_id, &watched);
                    }
                });
                Ok(actor)
            })
            .await
    }

    /// Forgets a session's actor (if it is still the registered one), so the next use
    /// starts a fresh one.
    pub(super) fn forget(&self, session_id: Uuid, actor: &ActorRef<SessionMsg>) {
        self.actors.forget_if(&session_id, |a| a.get_id() == actor.get_id());
    }

    /// Sends a request to a session's actor and waits for the answer, retrying on a fresh
    /// actor if the first one stopped before answering. Retrying is safe: a send carries
    /// its message id from here, and storing a message twice under one id keeps one row.
    async fn call<T>(
        &self,
        session_id: Uuid,
        make: impl Fn(oneshot::Sender<Result<T, SessionError>>) -> SessionMsg,
    ) -> Result<T, SessionError> {
        for _ in 0..RETRIES {
            let actor = self.actor(session_id).await?;
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
        Err(if self.closing.load(Ordering::Acquire) { SessionError::ShuttingDown } else { SessionError::Unavailable })
    }

    /// Adds a receiver to a session; a connection gets a `subscribed` snapshot first.
    pub async fn subscribe(
        &self,
        user: &AuthUser,
        session_id: Uuid,
        receiver: Receiver,
        request_id: Option<String>,
    ) -> Result<(), SessionError> {
        let user_id = user.id;
        self.call(session_id, |reply| SessionMsg::Subscribe {
            user_id,
            receiver: receiver.clone(),
            request_id: request_id.clone(),
            reply,
        })
        .await
    }

    /// Removes a receiver from a session (a no-op if the session has no live actor).
    /// With `notify`, the actor answers `unsubscribed` (echoing the request id) to that
    /// receiver. Returns false when no live actor took the message, so the caller answers.
    pub fn unsubscribe(
        &self,
        session_id: Uuid,
        receiver: ReceiverId,
        notify: Option<(Receiver, Option<String>)>,
    ) -> bool {
        match self.actors.get(&session_id) {
            Some(actor) => actor.send_message(SessionMsg::Unsubscribe { receiver, notify }).is_ok(),
            None => false,
        }
    }

    /// Stores a user message and queues its reply; `origin` is subscribed if it is not yet.
    pub async fn send(
        &self,
        user: &AuthUser,
        session_id: Uuid,
        content: String,
        origin: Receiver,
        request_id: Option<String>,
    ) -> Result<SendAccepted, SessionError> {
        let message_id = Uuid::new_v4();
        self.call(session_id, |reply| SessionMsg::Send {
            request: SendRequest::new(user, message_id, &content, &origin, &request_id),
            reply,
        })
        .await
    }

    /// Replaces the session's last reply with a new one (or answers its last message).
    pub async fn regenerate(
        &self,
        user: &AuthUser,
        session_id: Uuid,
        origin: Receiver,
        request_id: Option<String>,
    ) -> Result<SendAccepted, SessionError> {
        self.call(session_id, |reply| SessionMsg::Regenerate {
            request: ReplaceRequest { user: user.clone(), origin: origin.clone(), request_id: request_id.clone() },
            reply,
        })
        .await
    }

    /// Replaces the session's last user message (and its reply) with `content`, and answers it.
    pub async fn edit(
        &self,
        user: &AuthUser,
        session_id: Uuid,
        replaced: Uuid,
        content: String,
        origin: Receiver,
        request_id: Option<String>,
    ) -> Result<SendAccepted, SessionError> {
        let message_id = Uuid::new_v4();
        self.call(session_id, |reply| SessionMsg::Edit {
            replaced,
            request: SendRequest::new(user, message_id, &content, &origin, &request_id),
            reply,
        })
        .await
    }

    /// Cancels the running reply of a session, if any.
    pub async fn stop(&self, user: &AuthUser, session_id: Uuid) -> Result<(), SessionError> {
        let user_id = user.id;
        self.call(session_id, |reply| SessionMsg::Stop { user_id, reply }).await
    }

    /// Renames a session through its actor, so its snapshots show the new title at once.
    pub async fn rename(&self, user: &AuthUser, session_id: Uuid, title: &str) -> Result<Session, SessionError> {
        let user_id = user.id;
        self.call(session_id, |reply| SessionMsg::Rename { user_id, title: title.to_string(), reply }).await
    }

    /// Deletes a session through its actor: the soft delete is one step in its mailbox, so
    /// every send handled before it is stored and every send after it is `not_found`. The
    /// running reply is cancelled, queued sends are answered `not_found`, and the actor stops.
    pub async fn delete(&self, user: &AuthUser, session_id: Uuid) -> Result<(), SessionError> {
        let user_id = user.id;
        self.call(session_id, |reply| SessionMsg::Delete { user_id, reply }).await
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
