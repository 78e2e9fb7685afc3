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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::SplitStream;
use relay_protocol::{ClientFrame, ErrorBody, ErrorCode, ModelInfo, PROTOCOL_VERSION, ServerFrame};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{AuthUser, bearer_token};
use crate::error::AppError;
use crate::fanout::{Outbound, QueueBounds, Receiver, ReceiverKind};
use crate::hub::Membership;
use crate::limits;
use crate::state::AppState;

mod connection;
mod writer;

use connection::Connection;
use writer::{WriterArgs, close, write_loop};

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
/// How long a closing connection waits for the peer's answer to its close frame once
/// that frame is written.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long a close frame may take to reach a client that is not reading.
pub(super) const CLOSE_FLUSH: Duration = Duration::from_secs(10);

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
pub(super) type CloseRequest = Option<(u16, &'static str)>;

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
