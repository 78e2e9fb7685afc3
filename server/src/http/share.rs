//! Share links over HTTP: the owner's `POST/GET/DELETE /chat/sessions/{id}/share`, and
//! what a token opens without an account: `GET /shared/{token}` and its live SSE stream
//! `GET /shared/{token}/events`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use relay_protocol::{CreateShareRequest, ServerFrame, SessionShare, ShareCreated, ShareEnd, ShareEnded};
use tokio_util::sync::CancellationToken;

use super::{ChatUser, ClientAddr, OptionalJson, SessionId};
use crate::error::AppError;
use crate::fanout::{Inbox, QueueBounds, Receiver, ReceiverKind};
use crate::limits::Rate;
use crate::session::SubscriptionGuard;
use crate::share::{self, ViewerPlace};
use crate::state::AppState;
use crate::store::{ShareRecord, Store};

#[utoipa::path(post, path = "/api/v1/chat/sessions/{id}/share", tag = "share", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session")),
    request_body(content = Option<relay_protocol::CreateShareRequest>, description = "Optional: how long the link works"),
    responses((status = 201, description = "A new link; an earlier link of the session stops working (its viewers' streams end). The token is shown only here", body = relay_protocol::ShareCreated),
        (status = 400, description = "bad_request: expires_in_secs out of 60 to 31,536,000, or an unknown field", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session of the caller's", body = relay_protocol::ErrorResponse)))]
/// `POST /chat/sessions/{id}/share`.
pub async fn create(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(session_id): SessionId,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<CreateShareRequest>,
) -> Result<(StatusCode, Json<ShareCreated>), AppError> {
    let base = match &state.config.public_url {
        Some(url) => url.clone(),
        None => base_of_request(&headers),
    };
    let expires_in = body.expires_in_secs;
    Ok((StatusCode::CREATED, Json(share::create(&state, &user, session_id, expires_in, &base).await?)))
}

/// `http://host` the request came to (`https` behind a proxy that says so).
fn base_of_request(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = match headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

#[utoipa::path(get, path = "/api/v1/chat/sessions/{id}/share", tag = "share", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session")),
    responses((status = 200, description = "The session's working link (never its token) and how many watch it live; `share` is null when it has none", body = relay_protocol::SessionShare),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session of the caller's", body = relay_protocol::ErrorResponse)))]
/// `GET /chat/sessions/{id}/share`.
pub async fn status(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(session_id): SessionId,
) -> Result<Json<SessionShare>, AppError> {
    Ok(Json(SessionShare { share: share::status(&state, &user, session_id).await? }))
}

#[utoipa::path(delete, path = "/api/v1/chat/sessions/{id}/share", tag = "share", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session")),
    responses((status = 204, description = "Revoked: the link opens nothing from now on, and its viewers' streams end at once (also when the session had no link)"),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session of the caller's", body = relay_protocol::ErrorResponse)))]
/// `DELETE /chat/sessions/{id}/share`.
pub async fn revoke(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(session_id): SessionId,
) -> Result<StatusCode, AppError> {
    share::revoke(&state, &user, session_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Headers of everything a token opens: not indexed, not cached, no referrer sent onward
/// (the token is in the page's address).
fn private_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert("x-robots-tag", HeaderValue::from_static("noindex, nofollow"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Counts a read against the client address's per-minute allowance.
async fn take_read(state: &AppState, addr: ClientAddr) -> Result<(), AppError> {
    let rate = Rate { limit: state.config.share_reads_per_minute, period: Duration::from_secs(60) };
    let decision = state.limiter.rate(&format!("share:read:{}", addr.limit_key()), rate).await;
    if decision.allowed {
        Ok(())
    } else {
        Err(AppError::TooManyAttempts { retry_after_ms: decision.retry_after.as_millis() as u64 })
    }
}

#[utoipa::path(get, path = "/api/v1/shared/{token}", tag = "share",
    params(("token" = String, Path, description = "The link's token")),
    responses((status = 200, description = "The shared session and its recent messages (no account fields)", body = relay_protocol::SharedSession),
        (status = 404, description = "not_found: no working link has this token (never made, revoked, replaced, expired, or its session deleted)", body = relay_protocol::ErrorResponse),
        (status = 429, description = "rate_limited: over CHAT_SHARE_READS_PER_MINUTE from this address", body = relay_protocol::ErrorResponse)))]
/// `GET /shared/{token}`: no login.
pub async fn read(State(state): State<AppState>, addr: ClientAddr, Path(token): Path<String>) -> Response {
    let mut response = async {
        take_read(&state, addr).await?;
        Ok::<_, AppError>(Json(share::read(&state, &token).await?))
    }
    .await
    .into_response();
    private_headers(&mut response);
    response
}

#[utoipa::path(get, path = "/api/v1/shared/{token}/events", tag = "share",
    params(("token" = String, Path, description = "The link's token")),
    responses((status = 200, description = "An SSE stream of the session, read-only: `snapshot` (the WebSocket `subscribed` frame), then `message`, `superseded`, `generation_started`, `delta` and `done` (the WebSocket frames, with `seq`; the SSE `id` is the `seq`), and `ended` (`ShareEnded`) when the link is revoked or expires. A stream that closes without `ended` is reopened by the browser (the session moved or restarted)", content_type = "text/event-stream"),
        (status = 403, description = "limit_exceeded: the link has CHAT_SHARE_MAX_VIEWERS viewers, or this address holds CHAT_SHARE_STREAMS_PER_ADDRESS streams", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no working link has this token", body = relay_protocol::ErrorResponse),
        (status = 429, description = "rate_limited: over CHAT_SHARE_READS_PER_MINUTE from this address", body = relay_protocol::ErrorResponse)))]
/// `GET /shared/{token}/events`: no login.
pub async fn events(State(state): State<AppState>, addr: ClientAddr, Path(token): Path<String>) -> Response {
    let mut response = match follow(&state, addr, &token).await {
        Ok(stream) => Sse::new(stream).keep_alive(KeepAlive::default()).into_response(),
        Err(e) => e.into_response(),
    };
    private_headers(&mut response);
    response
}

async fn follow(
    state: &AppState,
    addr: ClientAddr,
    token: &str,
) -> Result<impl Stream<Item = Result<Event, Infallible>> + Send + 'static, AppError> {
    take_read(state, addr).await?;
    let (share, _) = share::open(state, token).await?;
    let config = &state.config;
    let place = state
        .viewers
        .join(&share, addr.limit_key(), config.share_max_viewers, config.share_streams_per_address)
        .await
        .map_err(|e| AppError::LimitExceeded(e.to_string()))?;
    let bounds = QueueBounds { frames: config.ws_outbound_queue, bytes: config.ws_outbound_queue_bytes };
    let (receiver, inbox, overflowed) = Receiver::channel(ReceiverKind::Connection, bounds);
    let guard =
        SubscriptionGuard { registry: state.sessions.clone(), session_id: share.session_id, receiver: receiver.id };
    state.sessions.watch_shared(share.user_id, share.session_id, receiver).await?;
    // The link may have ended while this viewer was being let in (before its stream could
    // hear of it): asked once more now that it would hear.
    let viewer = Viewer {
        inbox,
        overflowed,
        place,
        _guard: guard,
        store: state.store.clone(),
        share: share.clone(),
        recheck: tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK),
        shutdown: state.shutdown.clone(),
        finished: false,
    };
    if !viewer.still_shared().await {
        viewer.place.ended.cancel();
        // The count this viewer's arrival published may name the link that just ended.
        share::restate(state, share.user_id, share.session_id).await;
    }
    Ok(futures::stream::unfold(viewer, |mut viewer| async move {
        let event = viewer.next().await?;
        Some((Ok(event), viewer))
    }))
}

/// How often an open stream asks the database whether its link still works (a revocation
/// reaches streams at once as a user event; this catches one that a lost message between
/// nodes did not bring).
const RECHECK: Duration = Duration::from_secs(30);

/// One viewer's stream: the session's public events until the link ends.
struct Viewer {
    inbox: Inbox,
    overflowed: CancellationToken,
    place: ViewerPlace,
    _guard: SubscriptionGuard,
    store: Store,
    /// The link followed.
    share: ShareRecord,
    recheck: tokio::time::Interval,
    /// Cancelled when the server stops (the browser reopens the stream on another node).
    shutdown: CancellationToken,
    finished: bool,
}

impl Viewer {
    /// The next SSE event; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let until_expiry = self.share.expires_at.map(|at| (at - chrono::Utc::now()).to_std().unwrap_or_default());
        let expiry = async move {
            match until_expiry {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            let out = tokio::select! {
                biased;
                _ = self.place.ended.cancelled() => return Some(self.end(ShareEnd::Revoked)),
                _ = self.overflowed.cancelled() => return None,
                _ = self.shutdown.cancelled() => return None,
                out = self.inbox.recv() => out?,
                _ = &mut expiry => return Some(self.end(ShareEnd::Expired)),
                _ = self.recheck.tick() => {
                    if self.still_shared().await {
                        continue;
                    }
                    return Some(self.end(ShareEnd::Revoked));
                }
            };
            let name = match &*out.frame {
                ServerFrame::Subscribed { .. } => "snapshot",
                ServerFrame::Message { .. } => "message",
                ServerFrame::Superseded { .. } => "superseded",
                ServerFrame::GenerationStarted { .. } => "generation_started",
                ServerFrame::Delta { .. } => "delta",
                ServerFrame::Done { .. } => "done",
                // The session moved or restarted: the browser reopens the stream and gets a
                // fresh snapshot from wherever it runs now.
                ServerFrame::Error { .. } => return None,
                _ => continue,
            };
            let mut event = match &*out.frame {
                ServerFrame::Subscribed { .. } => Event::default().event(name).data(public_snapshot(&out.frame)),
                _ => Event::default().event(name).data(out.text.as_str()),
            };
            if let Some(seq) = out.frame.seq() {
                event = event.id(seq.to_string());
            }
            return Some(event);
        }
    }

    /// Whether the link followed is still the session's working link.
    async fn still_shared(&self) -> bool {
        match self.store.share_of(self.share.user_id, self.share.session_id).await {
            Ok(Some(now)) => now.share_id == self.share.share_id && now.live_at(chrono::Utc::now()),
            Ok(None) => false,
            // A database that does not answer ends nothing: the next check asks again.
            Err(_) => true,
        }
    }

    fn end(&mut self, reason: ShareEnd) -> Event {
        self.finished = true;
        let ended = serde_json::to_string(&ShareEnded { reason }).expect("always encodes");
        Event::default().event("ended").data(ended)
    }
}

/// The snapshot as a viewer gets it: the messages an edit or a regenerate replaced are
/// left out (a tab shows them as history; what was edited away is not for viewers), and
/// so is the session's own system prompt (its owner's instructions).
fn public_snapshot(frame: &ServerFrame) -> String {
    let mut frame = frame.clone();
    if let ServerFrame::Subscribed { messages, session, .. } = &mut frame {
        messages.retain(|m| !m.superseded);
        session.system_prompt = None;
    }
    serde_json::to_string(&frame).expect("server frames always encode")
}
