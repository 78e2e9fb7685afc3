//! `GET /api/v1/ws`: one authenticated WebSocket connection multiplexing any number of
//! sessions.
//!
//! A connection is two tasks. The reader parses client frames and turns them into calls
//! on the session registry and the catalog; it never waits on a reply being generated.
//! The writer drains the connection's bounded outbound queue into the socket, pings, and
//! closes: with 4429 when the queue overflowed (the session actors never wait for a slow
//! reader, they mark it and move on), 1001 on shutdown, 4401 when the token expires, 1009
//! after an oversized frame. Every direct reply goes through the same queue as session
//! events, so a client sees them in the order they happened.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use relay_protocol::{ClientFrame, ErrorBody, ErrorCode, PROTOCOL_VERSION, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{AuthUser, bearer_token};
use crate::catalog;
use crate::error::AppError;
use crate::fanout::{Outbound, Receiver, ReceiverKind};
use crate::limits;

/// Close code: not authenticated in time, bad or expired token.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code: the client reads too slowly.
pub const CLOSE_TOO_SLOW: u16 = 4429;
/// Close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// How long a close frame may take to reach a client that is not reading.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);

/// Upgrades the request. A token in the `Authorization` header is checked first (a bad
/// one is a plain 401); without one the client must send an `auth` frame.
pub async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>, headers: HeaderMap) -> Response {
    let header_user = match bearer_token(headers.get(axum::http::header::AUTHORIZATION)) {
        Some(token) => match state.tokens.verify(token) {
            Ok(user) => Some(user),
            Err(e) => return AppError::from(e).into_response(),
        },
        None => None,
    };
    let max = state.config.ws_max_frame_bytes;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| run(socket, state, header_user))
}

/// What the reader asks the writer to do as the connection ends.
type CloseRequest = Option<(u16, &'static str)>;

async fn run(socket: WebSocket, state: AppState, header_user: Option<AuthUser>) {
    let (mut sink, mut stream) = socket.split();
    let user = match header_user {
        Some(user) => user,
        None => match authenticate(&mut stream, &state).await {
            Ok(user) => user,
            Err(reason) => {
                let _ = tokio::time::timeout(CLOSE_FLUSH, close(&mut sink, CLOSE_UNAUTHORIZED, reason)).await;
                return;
            }
        },
    };
    let (receiver, rx, overflowed) = Receiver::channel(ReceiverKind::Connection, state.config.ws_outbound_queue);
    let span = tracing::info_span!("ws", conn = receiver.id, user_id = %user.id);
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
                rx,
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
                limits::quota_from(0, state.config.daily_message_quota, user.role)
            }
        };
        receiver.deliver(&Outbound::new(ServerFrame::Ready { user: user.to_user(), quota, protocol: PROTOCOL_VERSION }));
        state.hub.join(user.id, receiver.clone());

        let mut conn = Connection { state: state.clone(), user, receiver, subscribed: HashSet::new() };
        let expiry = tokio::time::sleep(conn.user.time_left());
        tokio::pin!(expiry);
        let close_request: CloseRequest = loop {
            tokio::select! {
                _ = &mut expiry => break Some((CLOSE_UNAUTHORIZED, "token expired")),
                _ = overflowed.cancelled() => break None,
                _ = writer_gone.cancelled() => break None,
                // The reader decides every close code but 4429 (which the writer sees first,
                // as it is the one stuck on the slow peer).
                _ = state.shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
                frame = stream.next() => {
                    last_seen.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match frame {
                        None | Some(Ok(WsMessage::Close(_))) => break None,
                        Some(Err(e)) => break is_too_big(e).then_some((CLOSE_TOO_BIG, "frame too large")),
                        Some(Ok(WsMessage::Text(text))) => conn.handle_text(&text).await,
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
        conn.leave();
        let _ = close_tx.send(close_request);
        let _ = writer.await;
        state.metrics.ws_connections.dec();
        tracing::debug!("connection closed");
    }
    .instrument(span)
    .await
}

/// Waits for the first frame, which must be a valid `auth` frame, within the timeout.
async fn authenticate(stream: &mut SplitStream<WebSocket>, state: &AppState) -> Result<AuthUser, &'static str> {
    let deadline = tokio::time::sleep(state.config.ws_auth_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Err("authentication timed out"),
            frame = stream.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    return match serde_json::from_str::<ClientFrame>(&text) {
                        Ok(ClientFrame::Auth { token }) => state.tokens.verify(&token).map_err(|e| {
                            tracing::debug!(error = %e, "websocket auth refused");
                            "invalid or expired token"
                        }),
                        _ => Err("the first frame must be {\"type\":\"auth\",\"token\":...}"),
                    };
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                _ => return Err("not authenticated"),
            },
        }
    }
}

/// Whether a read error is a frame over the size limit.
fn is_too_big(error: axum::Error) -> bool {
    // `tungstenite` must be the version axum uses (see Cargo.toml), or this never matches.
    matches!(error.into_inner().downcast_ref::<tungstenite::Error>(), Some(tungstenite::Error::Capacity(_)))
}

/// One authenticated connection's view: who it is and which sessions it watches.
struct Connection {
    state: AppState,
    user: AuthUser,
    receiver: Receiver,
    subscribed: HashSet<Uuid>,
}

impl Connection {
    /// Queues a direct reply behind everything queued before it.
    fn reply(&self, frame: ServerFrame) {
        self.receiver.deliver(&Outbound::new(frame));
    }

    fn reply_error(&self, id: Option<String>, session_id: Option<Uuid>, error: impl Into<AppError>) {
        let error: AppError = error.into();
        if error.is_internal() {
            tracing::error!(error = %error, "request failed");
        }
        self.reply(ServerFrame::error(id, session_id, error.to_body()));
    }

    async fn handle_text(&mut self, text: &Utf8Bytes) {
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
        let user_id = self.user.id;
        let origin = |id: &Option<String>| Some((self.receiver.id, id.clone()));
        match frame {
            ClientFrame::Auth { .. } => self.reply(ServerFrame::error(
                None,
                None,
                ErrorBody::new(ErrorCode::BadRequest, "already authenticated"),
            )),
            ClientFrame::Ping { id } => self.reply(ServerFrame::Pong { id }),
            ClientFrame::Subscribe { id, session_id } => {
                match state.sessions.subscribe(&self.user, session_id, self.receiver.clone(), id.clone()).await {
                    Ok(()) => {
                        self.subscribed.insert(session_id);
                    }
                    Err(e) => self.reply_error(id, Some(session_id), e),
                }
            }
            ClientFrame::Unsubscribe { id, session_id } => {
                // The actor answers when it is live, so the answer follows the session's
                // queued events; otherwise (never subscribed, or the session is gone) answer here.
                let notify = Some((self.receiver.clone(), id.clone()));
                if !(self.subscribed.remove(&session_id)
                    && state.sessions.unsubscribe(session_id, self.receiver.id, notify))
                {
                    self.reply(ServerFrame::Unsubscribed { id, session_id });
                }
            }
            ClientFrame::Send { id, session_id, content } => {
                match state.sessions.send(&self.user, session_id, content, self.receiver.clone(), id.clone()).await {
                    Ok(_) => {
                        self.subscribed.insert(session_id);
                    }
                    Err(e) => self.reply_error(id, Some(session_id), e),
                }
            }
            ClientFrame::Stop { id, session_id } => {
                if let Err(e) = state.sessions.stop(&self.user, session_id).await {
                    self.reply_error(id, Some(session_id), e);
                }
            }
            ClientFrame::CreateSession { id, title } => {
                if let Err(e) = catalog::create(&state, user_id, title.as_deref(), origin(&id)).await {
                    self.reply_error(id, None, e);
                }
            }
            ClientFrame::RenameSession { id, session_id, title } => {
                if let Err(e) = catalog::rename(&state, user_id, session_id, &title, origin(&id)).await {
                    self.reply_error(id, Some(session_id), e);
                }
            }
            ClientFrame::DeleteSession { id, session_id } => {
                match catalog::delete(&state, user_id, session_id, origin(&id)).await {
                    Ok(()) => {
                        self.subscribed.remove(&session_id);
                    }
                    Err(e) => self.reply_error(id, Some(session_id), e),
                }
            }
            ClientFrame::ListSessions { id, page, per_page } => {
                match catalog::list(&state, user_id, page, per_page).await {
                    Ok(list) => self.reply(ServerFrame::Sessions {
                        id,
                        sessions: list.sessions,
                        total: list.total,
                        page: list.page,
                        per_page: list.per_page,
                        total_pages: list.total_pages,
                    }),
                    Err(e) => self.reply_error(id, None, e),
                }
            }
        }
    }

    /// Leaves every session and the hub: each session whose last watcher this was starts
    /// its grace period.
    fn leave(&mut self) {
        for session_id in self.subscribed.drain() {
            self.state.sessions.unsubscribe(session_id, self.receiver.id, None);
        }
        self.state.hub.leave(self.user.id, self.receiver.id);
    }
}

struct WriterArgs {
    sink: SplitSink<WebSocket, WsMessage>,
    rx: mpsc::Receiver<Outbound>,
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
            out = args.rx.recv() => {
                let Some(out) = out else { return };
                tokio::select! {
                    biased;
                    _ = args.overflowed.cancelled() => break (CLOSE_TOO_SLOW, "client reads too slowly", false),
                    sent = args.sink.send(WsMessage::Text(out.text)) => if sent.is_err() { return },
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
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        if drain {
            // Frames already queued (such as `done` on shutdown) go out before the close.
            while let Ok(out) = args.rx.try_recv() {
                if args.sink.send(WsMessage::Text(out.text)).await.is_err() {
                    return;
                }
            }
        }
        let _ = close(&mut args.sink, code, reason).await;
    })
    .await;
}

async fn close(sink: &mut SplitSink<WebSocket, WsMessage>, code: u16, reason: &'static str) -> Result<(), axum::Error> {
    sink.send(WsMessage::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await
}
