//! `GET /api/v1/ws`: one authenticated WebSocket connection multiplexing any number of
//! sessions.
//!
//! A connection is a reader, a writer, and short tasks in between. The reader parses
//! client frames and never waits on a session: each request becomes a task, chained
//! behind the previous request for the same session (so one session's requests keep their
//! order) and independent of other sessions (so one slow session stalls nobody else, and
//! pings, token expiry and shutdown are always seen). At most `WS_MAX_PENDING_REQUESTS`
//! tasks run per connection; past that the reader waits for one to finish before reading
//! on. The writer drains the connection's bounded outbound queue into the socket, pings,
//! and closes: with 4429 when the queue overflowed (the session actors never wait for a
//! slow reader, they mark it and move on), 1001 on shutdown, 4401 when the token expires,
//! 1009 after an oversized frame. Every direct reply goes through the same queue as
//! session events, so a client sees them in the order they happened.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Shared};
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use relay_protocol::{ClientFrame, ErrorBody, ErrorCode, ModelInfo, PROTOCOL_VERSION, ServerFrame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::{AuthUser, bearer_token};
use crate::catalog;
use crate::error::AppError;
use crate::fanout::{Inbox, Outbound, QueueBounds, Receiver, ReceiverKind};
use crate::hub::Membership;
use crate::limits;
use crate::session::Requester;
use crate::state::AppState;

/// Close code: not authenticated in time, bad or expired token.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code: chat is not enabled for this user (`FEATURE_CHAT_*`), after an `auth` frame.
pub const CLOSE_CHAT_DISABLED: u16 = 4404;
/// Close code: the user already holds `WS_MAX_CONNECTIONS_PER_USER` connections.
pub const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4409;
/// Close code: the client reads too slowly.
pub const CLOSE_TOO_SLOW: u16 = 4429;
/// Close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: a text frame that is not UTF-8 (RFC 6455 requires failing the connection).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Initial read buffer of a connection. Frames are small (a few hundred bytes) and a
/// larger one grows the buffer as needed, so an idle connection holds 4 KiB here instead
/// of the 128 KiB default: the difference between 10,000 and 100,000 connections per GiB.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes gathered before a write goes to the socket (a batch is flushed at its end).
const WRITE_BUFFER: usize = 4 * 1024;
/// Most frames written before one flush ([`write_batch`]).
const WRITE_BATCH: usize = 64;
/// How long a closing connection waits for the peer's answer to its close frame once
/// that frame is written.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long a close frame may take to reach a client that is not reading.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
/// How long a closing connection waits for its requests in progress before leaving its
/// sessions.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// A connection authenticated before the upgrade (by its `Authorization` header), with
/// its place in the hub already taken.
struct PreAuthenticated {
    user: AuthUser,
    place: Membership,
}

/// Upgrades the request. A browser page from an origin the server does not allow is
/// refused (403). A token in the `Authorization` header is checked first (a bad one is a
/// plain 401, a user over the connection cap a 403); without one the client must send an
/// `auth` frame.
pub async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>, headers: HeaderMap) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !crate::http::origin::origin_allowed(&state.config.cors_allowed_origins, origin, host) {
        tracing::info!(origin, "websocket from a disallowed origin refused");
        return AppError::ForbiddenOrigin.into_response();
    }
    if !state.config.rollout.any() {
        return AppError::ChatDisabled.into_response();
    }
    let pre = match bearer_token(headers.get(header::AUTHORIZATION)) {
        Some(token) => {
            let user = match state.tokens.verify(token) {
                Ok(user) => user,
                Err(e) => return AppError::from(e).into_response(),
            };
            if !has_chat(&state, &user) {
                return AppError::ChatDisabled.into_response();
            }
            match reserve_place(&state, &user).await {
                Ok(place) => Some(PreAuthenticated { user, place }),
                Err(e) => return e.into_response(),
            }
        }
        None => None,
    };
    let max = state.config.ws_max_frame_bytes;
    let connections = state.connections.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| connections.track_future(run(socket, state, pre)))
}

/// Whether the rollout gives this user chat.
fn has_chat(state: &AppState, user: &AuthUser) -> bool {
    state.config.rollout.allows(user.id, user.role == relay_protocol::UserRole::Admin)
}

/// Takes one of the user's connection places, on this node and (in a cluster) across all.
async fn reserve_place(state: &AppState, user: &AuthUser) -> Result<Membership, AppError> {
    let max = state.config.ws_max_connections_per_user;
    let refused = || {
        state.metrics.limit_refused("connections_per_user");
        AppError::LimitExceeded(format!("you have {max} connections open, the most allowed; close one first"))
    };
    let mut place = state.hub.reserve(user.id, max).ok_or_else(refused)?;
    if !place.count_in_cluster(max).await {
        return Err(refused());
    }
    Ok(place)
}

/// What the reader asks the writer to do as the connection ends.
type CloseRequest = Option<(u16, &'static str)>;

async fn run(socket: WebSocket, state: AppState, pre: Option<PreAuthenticated>) {
    let (mut sink, mut stream) = socket.split();
    let (user, mut place) = match pre {
        Some(PreAuthenticated { user, place }) => (user, place),
        None => {
            let authenticated = match authenticate(&mut stream, &state).await {
                Ok(user) if !has_chat(&state, &user) => Err((CLOSE_CHAT_DISABLED, "chat is not available")),
                Ok(user) => reserve_place(&state, &user)
                    .await
                    .map(|place| (user, place))
                    .map_err(|_| (CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this user")),
                Err(refusal) => Err(refusal),
            };
            match authenticated {
                Ok(authenticated) => authenticated,
                Err((code, reason)) => {
                    state.metrics.ws_closed(code);
                    let _ = tokio::time::timeout(CLOSE_FLUSH, close(&mut sink, code, reason)).await;
                    return;
                }
            }
        }
    };
    let bounds = QueueBounds { frames: state.config.ws_outbound_queue, bytes: state.config.ws_outbound_queue_bytes };
    let (receiver, inbox, overflowed) = Receiver::channel(ReceiverKind::Connection, bounds);
    let span = tracing::info_span!("ws", node_id = %state.config.node_id, conn = receiver.id, user_id = %user.id);
    async move {
        tracing::debug!("connection authenticated");
        state.metrics.ws_connections.inc();
        let last_seen = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let (close_tx, close_rx) = oneshot::channel::<CloseRequest>();
        // Cancelled when the writer ends for its own reasons (a peer that stopped answering
        // pings, a broken socket), so the reader stops waiting on a dead peer too.
        let writer_gone = CancellationToken::new();
        let writer = tokio::spawn(
            write_loop(WriterArgs {
                sink,
                inbox,
                overflowed: overflowed.clone(),
                metrics: state.metrics.clone(),
                close_rx,
                last_seen: last_seen.clone(),
                epoch,
                ping_interval: state.config.ws_ping_interval,
                ping_timeout: state.config.ws_ping_timeout,
                _gone: writer_gone.clone().drop_guard(),
            })
            .in_current_span(),
        );

        let quota = match limits::quota(&state.store, state.config.daily_message_quota, &user).await {
            Ok(quota) => quota,
            Err(e) => {
                tracing::error!(error = %e, "cannot read quota");
                limits::quota_from(Default::default(), state.config.daily_message_quota, user.role)
            }
        };
        let model = ModelInfo { name: state.config.model.clone(), mock: state.mock_model };
        receiver.deliver(&Outbound::new(ServerFrame::Ready {
            user: user.to_user(),
            quota,
            protocol: PROTOCOL_VERSION,
            model: Some(model),
        }));
        place.join(receiver.clone());

        let mut conn = Connection::new(state.clone(), user, receiver);
        let expiry = tokio::time::sleep(conn.user.time_left());
        tokio::pin!(expiry);
        // A permit is taken before each read, so a frame that needs a task always has one.
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let close_request: CloseRequest = loop {
            tokio::select! {
                _ = &mut expiry => break Some((CLOSE_UNAUTHORIZED, "token expired")),
                _ = overflowed.cancelled() => break None,
                _ = writer_gone.cancelled() => break None,
                // The reader decides every close code but 4429 (which the writer sees first,
                // as it is the one stuck on the slow peer).
                _ = state.shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
                taken = conn.pending.clone().acquire_owned(), if permit.is_none() => {
                    permit = taken.ok();
                }
                frame = stream.next(), if permit.is_some() => {
                    last_seen.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match frame {
                        None | Some(Ok(WsMessage::Close(_))) => break None,
                        Some(Err(e)) => break read_error_close(&e),
                        Some(Ok(WsMessage::Text(text))) => conn.handle_text(&text, &mut permit),
                        Some(Ok(WsMessage::Binary(_))) => conn.reply(ServerFrame::error(
                            None,
                            None,
                            ErrorBody::new(ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames"),
                        )),
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    }
                }
            }
        };
        drop(place);
        let read_failed = matches!(close_request, Some((CLOSE_TOO_BIG | CLOSE_INVALID_DATA, _)));
        let _ = close_tx.send(close_request);
        conn.leave().await;
        // Keep reading (and dropping) what the peer still sends while the close goes out and
        // until it answers it: a socket dropped with unread bytes is reset, and a reset can
        // destroy the close frame before the peer reads it.
        let lingering = async {
            tokio::pin!(writer);
            let (mut writer_done, mut unreadable) = (false, read_failed);
            let linger = tokio::time::sleep(CLOSE_FLUSH + CLOSE_LINGER);
            tokio::pin!(linger);
            loop {
                tokio::select! {
                    _ = &mut writer, if !writer_done => {
                        writer_done = true;
                        if unreadable && !read_failed {
                            break;
                        }
                        linger.as_mut().reset(tokio::time::Instant::now() + CLOSE_LINGER);
                    }
                    _ = &mut linger => break,
                    frame = stream.next(), if !unreadable => match frame {
                        // The peer answered the close or went: nothing is left unread, and
                        // only the writer's close frame is awaited.
                        None | Some(Ok(WsMessage::Close(_))) if writer_done => break,
                        None | Some(Ok(WsMessage::Close(_))) => unreadable = true,
                        // A stream that failed (an oversized frame) reads no further; its
                        // close frame still gets the linger to reach the peer.
                        Some(Err(_)) => unreadable = true,
                        Some(Ok(_)) => {}
                    },
                }
            }
            if !writer_done {
                writer.abort();
            }
        };
        lingering.await;
        state.metrics.ws_connections.dec();
        tracing::debug!("connection closed");
    }
    .instrument(span)
    .await
}

/// Waits for the first frame, which must be a valid `auth` frame, within the timeout;
/// refusals carry their close code.
async fn authenticate(stream: &mut SplitStream<WebSocket>, state: &AppState) -> Result<AuthUser, (u16, &'static str)> {
    let deadline = tokio::time::sleep(state.config.ws_auth_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Err((CLOSE_UNAUTHORIZED, "authentication timed out")),
            frame = stream.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    return match serde_json::from_str::<ClientFrame>(&text) {
                        Ok(ClientFrame::Auth { token }) => state.tokens.verify(&token).map_err(|e| {
                            tracing::debug!(error = %e, "websocket auth refused");
                            (CLOSE_UNAUTHORIZED, "invalid or expired token")
                        }),
                        _ => Err((CLOSE_UNAUTHORIZED, "the first frame must be {\"type\":\"auth\",\"token\":...}")),
                    };
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Err(e)) => return Err(read_error_close(&e).unwrap_or((CLOSE_UNAUTHORIZED, "not authenticated"))),
                _ => return Err((CLOSE_UNAUTHORIZED, "not authenticated")),
            },
        }
    }
}

/// The close a read error calls for: 1009 for a frame over the size limit, 1007 for a text
/// frame that is not UTF-8; none for a connection that simply broke.
fn read_error_close(error: &axum::Error) -> CloseRequest {
    // `tungstenite` must be the version axum uses (see Cargo.toml), or this never matches.
    match std::error::Error::source(error).and_then(|inner| inner.downcast_ref::<tungstenite::Error>()) {
        Some(tungstenite::Error::Capacity(_)) => Some((CLOSE_TOO_BIG, "frame too large")),
        Some(tungstenite::Error::Utf8(_)) => Some((CLOSE_INVALID_DATA, "text frame is not UTF-8")),
        _ => None,
    }
}

/// The last request task of each session, which the next request of that session waits for.
type Tail = Shared<BoxFuture<'static, ()>>;

/// One authenticated connection's view: who it is, which sessions it watches, and the
/// requests still being handled.
struct Connection {
    state: AppState,
    user: AuthUser,
    receiver: Receiver,
    /// Sessions this connection watches (or is about to: a subscribe counts from the
    /// moment it is read, and is taken back if it fails).
    subscribed: Arc<Mutex<HashSet<Uuid>>>,
    tails: HashMap<Uuid, Tail>,
    pending: Arc<Semaphore>,
    /// `WS_SUBSCRIBES_PER_MINUTE`: each subscribe costs a snapshot of up to half the
    /// outbound queue, so a 60-byte frame cannot be turned into megabytes at will.
    subscribes: governor::DefaultDirectRateLimiter,
}

impl Connection {
    fn new(state: AppState, user: AuthUser, receiver: Receiver) -> Connection {
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
    fn reply(&self, frame: ServerFrame) {
        if let ServerFrame::Error { error, .. } = &frame {
            self.state.metrics.error(error.code);
        }
        self.receiver.deliver(&Outbound::new(frame));
    }

    /// Parses a frame and starts handling it; answers at once what needs no session.
    fn handle_text(&mut self, text: &Utf8Bytes, permit: &mut Option<OwnedSemaphorePermit>) {
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
    async fn leave(&mut self) {
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

fn reply_error(
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

struct WriterArgs {
    sink: SplitSink<WebSocket, WsMessage>,
    inbox: Inbox,
    overflowed: CancellationToken,
    close_rx: oneshot::Receiver<CloseRequest>,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
    ping_interval: Duration,
    ping_timeout: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    _gone: tokio_util::sync::DropGuard,
}

/// Drains the outbound queue into the socket until the connection ends, then closes it
/// with the right code.
async fn write_loop(mut args: WriterArgs) {
    let mut ping = tokio::time::interval(args.ping_interval);
    ping.reset();
    let (code, reason, drain) = loop {
        tokio::select! {
            biased;
            _ = args.overflowed.cancelled() => break (CLOSE_TOO_SLOW, "client reads too slowly", false),
            request = &mut args.close_rx => match request {
                Ok(Some((code, reason))) => break (code, reason, true),
                _ => return,
            },
            out = args.inbox.recv() => {
                let Some(out) = out else { return };
                tokio::select! {
                    biased;
                    _ = args.overflowed.cancelled() => break (CLOSE_TOO_SLOW, "client reads too slowly", false),
                    sent = write_batch(&mut args.sink, &mut args.inbox, out) => if sent.is_err() { return },
                    // A peer that takes no bytes for this long is gone (or as good as gone):
                    // without this, a writer stuck here would never run its ping check.
                    _ = tokio::time::sleep(args.ping_timeout) => {
                        tracing::debug!("a frame could not be written within the ping timeout");
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                let silent_ms = (args.epoch.elapsed().as_millis() as u64).saturating_sub(args.last_seen.load(Ordering::Relaxed));
                if Duration::from_millis(silent_ms) > args.ping_timeout {
                    tracing::debug!("no pong within the timeout");
                    return;
                }
                // A peer that stopped reading can block the send; that counts as silence too.
                let ping = tokio::time::timeout(args.ping_timeout, args.sink.send(WsMessage::Ping(Default::default())));
                if !matches!(ping.await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    };
    if code == CLOSE_TOO_SLOW {
        tracing::warn!("closing a connection that reads too slowly");
        args.metrics.ws_slow_closed.inc();
    }
    args.metrics.ws_closed(code);
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        if drain {
            // Frames already queued (such as `done` on shutdown) go out before the close.
            while let Some(out) = args.inbox.try_recv() {
                if args.sink.send(WsMessage::Text(out.text)).await.is_err() {
                    return;
                }
            }
        }
        let _ = close(&mut args.sink, code, reason).await;
    })
    .await;
}

/// Writes `first` and the frames queued behind it (up to [`WRITE_BATCH`]), then flushes
/// once: a busy connection gets many frames per system call, an idle one its frame at once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    inbox: &mut Inbox,
    first: Outbound,
) -> Result<(), axum::Error> {
    sink.feed(WsMessage::Text(first.text)).await?;
    for _ in 1..WRITE_BATCH {
        let Some(out) = inbox.try_recv() else { break };
        sink.feed(WsMessage::Text(out.text)).await?;
    }
    sink.flush().await
}

async fn close(sink: &mut SplitSink<WebSocket, WsMessage>, code: u16, reason: &'static str) -> Result<(), axum::Error> {
    sink.send(WsMessage::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await
}
