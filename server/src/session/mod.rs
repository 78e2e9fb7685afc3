//! Chat sessions at run time: one actor per live session, found through a registry.
//!
//! The actor ([`actor::SessionActor`]) is the only owner of a session's live state: its
//! context window, its queue of sends, the running generation and its cancellation, the
//! event counter `seq`, and the receivers watching it. WebSocket connections, SSE streams
//! and REST requests all reach it through [`SessionRegistry`], which starts an actor on
//! first use (never two for one session) and forgets it when it stops.

mod actor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use relay_protocol::{ErrorBody, Message, Session};
use tokio::sync::{OnceCell, oneshot};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::fanout::{Receiver, ReceiverId};
use crate::hub::UserHub;
use crate::llm::LlmClient;
use crate::store::{Store, StoreError};

pub use actor::{DEFAULT_TITLE, SessionMsg, derive_title, estimate_tokens, validate_content};
use actor::{SessionActor, SessionArgs};

/// Errors of session operations.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session does not exist, is deleted, or is not the caller's.
    #[error("session not found")]
    NotFound,
    /// Too many sends are queued on the session.
    #[error("too many sends queued")]
    Busy,
    /// The message is empty or too long.
    #[error("{0}")]
    InvalidContent(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The session actor stopped before answering (the server is shutting down).
    #[error("session unavailable")]
    Unavailable,
    /// The reply failed upstream; carries the error shown to clients.
    #[error("{}", .0.message)]
    Generation(ErrorBody),
}

/// Settings the session actors share.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// The system prompt that starts every context.
    pub system_prompt: String,
    /// How many recent messages are sent as context.
    pub max_context_messages: usize,
    /// Longest user message, in characters.
    pub max_message_length: usize,
    /// Sends a session may hold waiting.
    pub max_queued_sends: usize,
    /// How long a reply runs on with nobody watching.
    pub cancel_grace: Duration,
    /// An unwatched, idle actor stops after this.
    pub idle_timeout: Duration,
    /// How often a reply in progress is saved.
    pub checkpoint_interval: Duration,
    /// Daily message limit for quota reports.
    pub daily_quota: Option<u32>,
}

/// What the actors need from the rest of the server.
pub struct SessionDeps {
    /// The database.
    pub store: Store,
    /// The model client.
    pub llm: LlmClient,
    /// The per-user hub, for session and quota updates.
    pub hub: Arc<UserHub>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Shared settings.
    pub settings: SessionSettings,
}

/// The answer to an accepted send.
#[derive(Clone, Debug)]
pub struct SendAccepted {
    /// The stored user message.
    pub user_message: Message,
    /// The id the reply will be stored under.
    pub reply_id: Uuid,
}

/// Finds or starts session actors, one per session.
pub struct SessionRegistry {
    actors: DashMap<Uuid, Arc<OnceCell<ActorRef<SessionMsg>>>>,
    deps: Arc<SessionDeps>,
    started: AtomicU64,
    registry: std::sync::Weak<SessionRegistry>,
}

/// How often a call is retried when it reached an actor that was just stopping.
const RETRIES: usize = 3;

impl SessionRegistry {
    /// Creates an empty registry.
    pub fn new(deps: SessionDeps) -> Arc<SessionRegistry> {
        Arc::new_cyclic(|weak| SessionRegistry {
            actors: DashMap::new(),
            deps: Arc::new(deps),
            started: AtomicU64::new(0),
            registry: weak.clone(),
        })
    }

    /// How many actors have been started since the server started (for tests and metrics).
    pub fn actors_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// How many actors are live now.
    pub fn live_actors(&self) -> usize {
        self.actors.iter().filter(|e| e.value().initialized()).count()
    }

    /// The live actor of a session, if any (never starts one).
    fn live(&self, session_id: Uuid) -> Option<ActorRef<SessionMsg>> {
        self.actors.get(&session_id).and_then(|cell| cell.get().cloned())
    }

    /// The actor of a session, started on first use. Concurrent first uses share one
    /// start: the map entry is a once-cell, inserted under the map's lock and filled
    /// outside it.
    async fn actor(&self, session_id: Uuid) -> Result<ActorRef<SessionMsg>, SessionError> {
        let cell = self.actors.entry(session_id).or_insert_with(|| Arc::new(OnceCell::new())).clone();
        let result = cell
            .get_or_try_init(|| async {
                let record = self.deps.store.get_session(session_id).await?.ok_or(SessionError::NotFound)?;
                let history = self.deps.store.recent_messages(session_id, actor::HISTORY_CAP).await?;
                let args = SessionArgs { record, history, deps: self.deps.clone(), registry: self.registry.clone() };
                let (actor, _) = Actor::spawn(None, SessionActor, args).await.map_err(|e| {
                    tracing::error!(%session_id, error = %e, "session actor failed to start");
                    SessionError::Unavailable
                })?;
                self.started.fetch_add(1, Ordering::Relaxed);
                Ok::<_, SessionError>(actor)
            })
            .await
            .cloned();
        if result.is_err() {
            self.actors.remove_if(&session_id, |_, c| Arc::ptr_eq(c, &cell));
        }
        result
    }

    /// Called by an actor as it stops, so the next use starts a fresh one.
    fn forget(&self, session_id: Uuid, actor: &ActorRef<SessionMsg>) {
        self.actors.remove_if(&session_id, |_, cell| cell.get().is_some_and(|a| a.get_id() == actor.get_id()));
    }

    /// Sends a request to a session's actor and waits for the answer, retrying once on a
    /// fresh actor if the first one was stopping.
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
        Err(SessionError::Unavailable)
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
        match self.live(session_id) {
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
        self.call(session_id, |reply| SessionMsg::Send {
            user: user.clone(),
            content: content.clone(),
            origin: origin.clone(),
            request_id: request_id.clone(),
            reply,
        })
        .await
    }

    /// Cancels the running reply of a session, if any.
    pub async fn stop(&self, user: &AuthUser, session_id: Uuid) -> Result<(), SessionError> {
        let user_id = user.id;
        self.call(session_id, |reply| SessionMsg::Stop { user_id, reply }).await
    }

    /// Tells a live actor its session was renamed, so snapshots show the new title.
    pub fn renamed(&self, session: &Session) {
        if let Some(actor) = self.live(session.id) {
            let _ = actor.send_message(SessionMsg::Renamed(session.clone()));
        }
    }

    /// Tells a live actor its session was deleted: it cancels its reply and stops.
    pub async fn deleted(&self, session_id: Uuid) {
        if let Some(actor) = self.live(session_id) {
            let (tx, rx) = oneshot::channel();
            if actor.send_message(SessionMsg::Deleted { reply: tx }).is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// Stores every running reply as it stands and stops every actor (server shutdown).
    pub async fn shutdown(&self) {
        let actors: Vec<_> = self.actors.iter().filter_map(|e| e.value().get().cloned()).collect();
        let waits = actors.into_iter().map(|actor| async move {
            let (tx, rx) = oneshot::channel();
            if actor.send_message(SessionMsg::Shutdown { reply: tx }).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            }
        });
        futures::future::join_all(waits).await;
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
