//! One authenticated connection's requests: each client frame becomes a task, chained
//! behind the previous request for the same session, at most `WS_MAX_PENDING_REQUESTS` at
//! once, answered through the connection's outbound queue.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use relay_protocol::{ClientFrame, ErrorBody, ErrorCode, ServerFrame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::catalog;
use crate::error::AppError;
use crate::fanout::{Outbound, Receiver};
use crate::session::Requester;
use crate::state::AppState;

/// How long a closing connection waits for its requests in progress before leaving its
/// sessions.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// The last request task of each session, which the next request of that session waits for.
type Tail = Shared<BoxFuture<'static, ()>>;

/// One authenticated connection's view: who it is, which sessions it watches, and the
/// requests still being handled.
pub(super) struct Connection {
    state: AppState,
    pub(super) user: AuthUser,
    receiver: Receiver,
    /// Sessions this connection watches (or is about to: a subscribe counts from the
    /// moment it is read, and is taken back if it fails).
    subscribed: Arc<Mutex<HashSet<Uuid>>>,
    tails: HashMap<Uuid, Tail>,
    pub(super) pending: Arc<Semaphore>,
    /// `WS_SUBSCRIBES_PER_MINUTE`: each subscribe costs a snapshot of up to half the
    /// outbound queue, so a 60-byte frame cannot be turned into megabytes at will.
    subscribes: governor::DefaultDirectRateLimiter,
}

impl Connection {
    pub(super) fn new(state: AppState, user: AuthUser, receiver: Receiver) -> Connection {
        let pending = Arc::new(Semaphore::new(state.config.ws_max_pending_requests));
        let per_minute =
            std::num::NonZeroU32::new(state.config.ws_subscribes_per_minute).unwrap_or(std::num::NonZeroU32::MIN);
        let subscribes = governor::RateLimiter::direct(governor::Quota::per_minute(per_minute));
        Connection {
            state,
            user,
            receiver,
            subscribed: Arc::new(Mutex::new(HashSet::new())),
            tails: HashMap::new(),
            pending,
            subscribes,
        }
    }

    /// Takes one subscribe from the connection's allowance, or says when the next may come.
    fn take_subscribe(&self) -> Result<(), AppError> {
        use governor::clock::Clock;
        self.subscribes.check().map_err(|not_until| {
            self.state.metrics.limit_refused("subscribes_per_connection");
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let limit = self.state.config.ws_subscribes_per_minute;
            AppError::RateLimited(crate::limits::RateDecision {
                allowed: false,
                limit,
                remaining: 0,
                retry_after: wait,
                reset_after: Duration::from_secs(60),
            })
        })
    }

    /// Queues a direct reply behind everything queued before it.
    pub(super) fn reply(&self, frame: ServerFrame) {
        if let ServerFrame::Error { error, .. } = &frame {
            self.state.metrics.error(error.code);
        }
        self.receiver.deliver(&Outbound::new(frame));
    }

    /// Parses a frame and starts handling it; answers at once what needs no session.
    pub(super) fn handle_text(&mut self, text: &Utf8Bytes, permit: &mut Option<OwnedSemaphorePermit>) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                // Echo the id of a frame we could not understand, if it has one.
                let id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
                let error = ErrorBody::new(ErrorCode::BadRequest, format!("unparsable or unknown frame: {e}"));
                self.reply(ServerFrame::error(id, None, error));
                return;
            }
        };
        let state = self.state.clone();
        let user = self.user.clone();
        let receiver = self.receiver.clone();
        let subscribed = self.subscribed.clone();
        match frame {
            ClientFrame::Auth { .. } => self.reply(ServerFrame::error(
                None,
                None,
                ErrorBody::new(ErrorCode::BadRequest, "already authenticated"),
            )),
            ClientFrame::Ping { id } => self.reply(ServerFrame::Pong { id }),
            ClientFrame::Subscribe { id, session_id } => {
                if let Err(e) = self.take_subscribe() {
                    reply_error(&self.state.metrics, &self.receiver, id, Some(session_id), e);
                    return;
                }
                let Some(fresh) = self.watch(session_id, &id) else { return };
                self.spawn(Some(session_id), permit, async move {
                    let result = state.sessions.subscribe(&user, session_id, receiver.clone(), id.clone()).await;
                    if let Err(e) = result {
                        forget_if(&subscribed, session_id, fresh);
                        reply_error(&state.metrics, &receiver, id, Some(session_id), e.into());
                    }
                });
            }
            ClientFrame::Send { id, session_id, content, client_message_id } => {
                let Some(key) = self.checked_key(client_message_id, &id, session_id) else { return };
                let Some(fresh) = self.watch(session_id, &id) else { return };
                self.spawn(Some(session_id), permit, async move {
                    let requester = Requester { user, origin: receiver.clone(), request_id: id.clone(), key };
                    if let Err(e) = state.sessions.send(requester, session_id, content).await {
                        forget_if(&subscribed, session_id, fresh);
                        reply_error(&state.metrics, &receiver, id, Some(session_id), e.into());
                    }
                });
            }
            ClientFrame::Regenerate { id, session_id, client_message_id } => {
                let Some(key) = self.checked_key(client_message_id, &id, session_id) else { return };
                let Some(fresh) = self.watch(session_id, &id) else { return };
                self.spawn(Some(session_id), permit, async move {
                    let requester = Requester { user, origin: receiver.clone(), request_id: id.clone(), key };
                    if let Err(e) = state.sessions.regenerate(requester, session_id).await {
                        forget_if(&subscribed, session_id, fresh);
                        reply_error(&state.metrics, &receiver, id, Some(session_id), e.into());
                    }
                });
            }
            ClientFrame::Edit { id, session_id, message_id, content, client_message_id } => {
                let Some(key) = self.checked_key(client_message_id, &id, session_id) else { return };
                let Some(fresh) = self.watch(session_id, &id) else { return };
                self.spawn(Some(session_id), permit, async move {
                    let requester = Requester { user, origin: receiver.clone(), request_id: id.clone(), key };
                    if let Err(e) = state.sessions.edit(requester, session_id, message_id, content).await {
                        forget_if(&subscribed, session_id, fresh);
                        reply_error(&state.metrics, &receiver, id, Some(session_id), e.into());
                    }
                });
            }
            ClientFrame::Unsubscribe { id, session_id } => {
                let was_subscribed = lock(&subscribed).remove(&session_id);
                self.spawn(Some(session_id), permit, async move {
                    // The actor answers when it is live, so the answer follows the session's
                    // queued events; otherwise (never subscribed, or the session is gone) answer here.
                    let notify = Some((receiver.clone(), id.clone()));
                    if !(was_subscribed && state.sessions.unsubscribe(session_id, receiver.id, notify)) {
                        receiver.deliver(&Outbound::new(ServerFrame::Unsubscribed { id, session_id }));
                    }
                });
            }
            ClientFrame::Stop { id, session_id } => self.spawn(Some(session_id), permit, async move {
                if let Err(e) = state.sessions.stop(&user, session_id).await {
                    reply_error(&state.metrics, &receiver, id, Some(session_id), e.into());
                }
            }),
            ClientFrame::CreateSession { id, title } => self.spawn(None, permit, async move {
                let origin = Some((receiver.id, id.clone()));
                let request = relay_protocol::CreateSessionRequest { title, ..Default::default() };
                if let Err(e) = catalog::create(&state, &user, request, origin).await {
                    reply_error(&state.metrics, &receiver, id, None, e);
                }
            }),
            ClientFrame::RenameSession { id, session_id, title } => self.spawn(Some(session_id), permit, async move {
                let origin = Some((receiver.id, id.clone()));
                if let Err(e) = catalog::rename(&state, &user, session_id, &title, origin).await {
                    reply_error(&state.metrics, &receiver, id, Some(session_id), e);
                }
            }),
            ClientFrame::DeleteSession { id, session_id } => self.spawn(Some(session_id), permit, async move {
                let origin = Some((receiver.id, id.clone()));
                match catalog::delete(&state, &user, session_id, origin).await {
                    Ok(()) => {
                        lock(&subscribed).remove(&session_id);
                    }
                    Err(e) => reply_error(&state.metrics, &receiver, id, Some(session_id), e),
                }
            }),
            ClientFrame::ListSessions { id, page, per_page } => self.spawn(None, permit, async move {
                match catalog::list(&state, user.id, page, per_page).await {
                    Ok(list) => {
                        receiver.deliver(&Outbound::new(ServerFrame::Sessions {
                            id,
                            sessions: list.sessions,
                            total: list.total,
                            page: list.page,
                            per_page: list.per_page,
                            total_pages: list.total_pages,
                        }));
                    }
                    Err(e) => reply_error(&state.metrics, &receiver, id, None, e),
                }
            }),
        }
    }

    /// A request's idempotency key, if it is one (at most 64 bytes, not empty): `Some(key)`
    /// when usable; `None` after answering `bad_request`.
    fn checked_key(&self, key: Option<String>, id: &Option<String>, session_id: Uuid) -> Option<Option<String>> {
        match crate::session::check_key(key) {
            Ok(key) => Some(key),
            Err(e) => {
                reply_error(&self.state.metrics, &self.receiver, id.clone(), Some(session_id), e.into());
                None
            }
        }
    }

    /// Counts a session among those this connection watches, within the
    /// `WS_MAX_SUBSCRIPTIONS_PER_CONNECTION` cap. `Some(fresh)` when allowed (`fresh`: it
    /// was not watched before); `None` after answering `limit_exceeded`.
    fn watch(&self, session_id: Uuid, id: &Option<String>) -> Option<bool> {
        let max = self.state.config.ws_max_subscriptions;
        let mut subscribed = lock(&self.subscribed);
        if subscribed.contains(&session_id) {
            return Some(false);
        }
        if subscribed.len() >= max {
            drop(subscribed);
            self.state.metrics.limit_refused("subscriptions_per_connection");
            let message = format!("this connection watches {max} sessions, the most allowed; unsubscribe from one");
            reply_error(
                &self.state.metrics,
                &self.receiver,
                id.clone(),
                Some(session_id),
                AppError::LimitExceeded(message),
            );
            return None;
        }
        subscribed.insert(session_id);
        Some(true)
    }

    /// Runs a request as a task holding the reader's permit; with a session, behind that
    /// session's previous request.
    fn spawn(
        &mut self,
        session: Option<Uuid>,
        permit: &mut Option<OwnedSemaphorePermit>,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let permit = permit.take();
        let previous = session.and_then(|s| self.tails.remove(&s));
        let task = async move {
            if let Some(previous) = previous {
                previous.await;
            }
            work.await;
            drop(permit);
        }
        .in_current_span()
        .boxed()
        .shared();
        self.tails.retain(|_, tail| tail.peek().is_none());
        if let Some(session) = session {
            self.tails.insert(session, task.clone());
        }
        tokio::spawn(task);
    }

    /// Leaves every session: each session whose last watcher this was starts its grace
    /// period. Requests still in progress finish first (for a while), so a subscribe that
    /// lands after the connection ended is left too. (The hub place is given back when its
    /// membership is dropped.)
    pub(super) async fn leave(&mut self) {
        let pending = futures::future::join_all(self.tails.drain().map(|(_, tail)| tail));
        let _ = tokio::time::timeout(LEAVE_WAIT, pending).await;
        for session_id in lock(&self.subscribed).drain() {
            self.state.sessions.unsubscribe(session_id, self.receiver.id, None);
        }
    }
}

fn lock(set: &Mutex<HashSet<Uuid>>) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes a session back out of the watched set after a failed subscribe or send that had
/// put it there.
fn forget_if(subscribed: &Mutex<HashSet<Uuid>>, session_id: Uuid, fresh: bool) {
    if fresh {
        lock(subscribed).remove(&session_id);
    }
}

pub(super) fn reply_error(
    metrics: &crate::metrics::Metrics,
    receiver: &Receiver,
    id: Option<String>,
    session_id: Option<Uuid>,
    error: AppError,
) {
    if error.is_internal() {
        tracing::error!(error = %error, "request failed");
    }
    let body = error.to_body();
    metrics.error(body.code);
    receiver.deliver(&Outbound::new(ServerFrame::error(id, session_id, body)));
}
