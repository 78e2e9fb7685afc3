//! Helpers that drive sessions over a WebSocket and read them back over REST: subscribe,
//! send, collect frames up to a reply's end, and check what they say.
#![allow(dead_code)]

use futures::StreamExt;
use relay_protocol::{ErrorCode, FinishReason, Generating, Message, ServerFrame, SessionWithMessages};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

use super::{TestServer, WAIT, Ws};

/// A mock directive for one reply of `tokens` word tokens at `tps` tokens a second.
pub fn directive(tokens: usize, tps: u32) -> String {
    format!("[[mock tokens={tokens} tps={tps} delay_ms=0]]")
}

/// Registers a user and creates one session; returns the token, the user id and the session id.
pub async fn user_with_session(server: &TestServer, name: &str) -> (String, Uuid, Uuid) {
    let (token, user_id) = server.register(name).await;
    let session = server.create_session(&token).await;
    (token, user_id, session.id)
}

/// Whether a frame is a session event (`message`, `generation_started`, `delta`, `done`)
/// of the given session.
pub fn is_event_of(frame: &ServerFrame, sid: Uuid) -> bool {
    match frame {
        ServerFrame::Message { session_id, .. }
        | ServerFrame::Superseded { session_id, .. }
        | ServerFrame::GenerationStarted { session_id, .. }
        | ServerFrame::Delta { session_id, .. }
        | ServerFrame::Done { session_id, .. } => *session_id == sid,
        _ => false,
    }
}

pub fn events_of(frames: &[ServerFrame], sid: Uuid) -> Vec<ServerFrame> {
    frames.iter().filter(|f| is_event_of(f, sid)).cloned().collect()
}

/// Subscribes to a session and returns its snapshot: `(seq, generating)`; checks the id echo.
pub async fn subscribe(ws: &mut Ws, sid: Uuid) -> (u64, Option<Generating>) {
    let request_id = format!("sub-{sid}");
    ws.send(json!({"type": "subscribe", "id": request_id, "session_id": sid})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. } | ServerFrame::Error { .. })).await;
    match frames.last().unwrap() {
        ServerFrame::Subscribed { id, session, seq, generating, .. } => {
            assert_eq!(id.as_deref(), Some(request_id.as_str()), "subscribed echoes the request id");
            assert_eq!(session.id, sid);
            (*seq, generating.clone())
        }
        other => panic!("subscribe failed: {other:?}"),
    }
}

pub async fn send(ws: &mut Ws, sid: Uuid, id: &str, content: &str) {
    ws.send(json!({"type": "send", "id": id, "session_id": sid, "content": content})).await;
}

/// Frames up to and including the `done` of `count` replies of session `sid`.
pub async fn until_dones(ws: &mut Ws, sid: Uuid, count: usize) -> Vec<ServerFrame> {
    let mut seen = 0;
    ws.recv_until(|f| {
        if matches!(f, ServerFrame::Done { session_id, .. } if *session_id == sid) {
            seen += 1;
        }
        seen == count
    })
    .await
}

/// Frames up to and including the `n`th delta of session `sid`.
pub async fn until_deltas(ws: &mut Ws, sid: Uuid, n: usize) -> Vec<ServerFrame> {
    let mut seen = 0;
    ws.recv_until(|f| {
        match f {
            ServerFrame::Delta { session_id, .. } if *session_id == sid => seen += 1,
            ServerFrame::Done { session_id, .. } if *session_id == sid => {
                panic!("the reply ended before {n} deltas arrived: {f:?}")
            }
            _ => {}
        }
        seen == n
    })
    .await
}

/// The id of the first reply started in a list of frames.
pub fn started_reply(frames: &[ServerFrame]) -> Uuid {
    frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::GenerationStarted { message_id, .. } => Some(*message_id),
            _ => None,
        })
        .expect("a generation_started frame")
}

/// The finish reason of a reply's `done` frame (panics if there is none).
pub fn done_of(frames: &[ServerFrame], reply: Uuid) -> FinishReason {
    frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Done { message_id, finish_reason, .. } if *message_id == reply => Some(*finish_reason),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no done for {reply} in {frames:?}"))
}

/// The session and its messages through REST.
pub async fn stored(server: &TestServer, token: &str, sid: Uuid) -> SessionWithMessages {
    let (status, body) = server.get(token, &format!("/api/v1/chat/sessions/{sid}")).await;
    assert_eq!(status, 200, "GET session: {body}");
    serde_json::from_value(body).expect("a session with messages")
}

/// The stored message with an id, via REST.
pub async fn stored_message(server: &TestServer, token: &str, sid: Uuid, id: Uuid) -> Option<Message> {
    stored(server, token, sid).await.messages.into_iter().find(|m| m.id == id)
}

/// The next text frame, raw and parsed (pings skipped); panics on close.
pub async fn recv_raw(ws: &mut Ws) -> (String, ServerFrame) {
    loop {
        let next = tokio::time::timeout(WAIT, ws.stream.next()).await.expect("a frame in time");
        match next {
            Some(Ok(WsMessage::Text(text))) => {
                let text = text.as_str().to_string();
                let frame = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad frame {text}: {e}"));
                return (text, frame);
            }
            Some(Ok(WsMessage::Close(frame))) => panic!("closed ({frame:?}) while a frame was expected"),
            Some(Ok(_)) => continue,
            other => panic!("connection broke while a frame was expected: {other:?}"),
        }
    }
}

/// Raw frames up to and including the first `done` of session `sid`.
pub async fn raw_until_done(ws: &mut Ws, sid: Uuid) -> Vec<(String, ServerFrame)> {
    let mut out = Vec::new();
    loop {
        let (text, frame) = recv_raw(ws).await;
        let done = matches!(&frame, ServerFrame::Done { session_id, .. } if *session_id == sid);
        out.push((text, frame));
        if done {
            return out;
        }
    }
}

/// An HS256 token signed with the test secret.
pub fn craft_token(user_id: Uuid, username: &str, exp: u64) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = json!({"sub": user_id.to_string(), "exp": exp, "iat": now, "username": username});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(super::SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn now_secs() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

pub fn assert_error(frame: &ServerFrame, code: ErrorCode, want_id: Option<&str>, want_session: Option<Uuid>) {
    match frame {
        ServerFrame::Error { id, session_id, error } => {
            assert_eq!(error.code, code, "{frame:?}");
            assert_eq!(id.as_deref(), want_id, "error echoes the request id: {frame:?}");
            assert_eq!(*session_id, want_session, "error names the session: {frame:?}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}
