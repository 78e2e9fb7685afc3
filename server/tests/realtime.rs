//! Issue "Realtime": the WebSocket protocol, session actors, fan-out, cancellation and
//! back-pressure, driven over real WebSocket and HTTP connections against the real server
//! (in-process, ephemeral port, in-memory SurrealDB, its own mock model).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::flow::*;
use common::{Read, TestServer, WAIT, assert_contiguous, reply_text};
use futures::StreamExt;
use relay_mock_llm as mock;
use relay_protocol::{ErrorCode, FinishReason, MessageStatus, Role, ServerFrame, SseEvent};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

// ---- 1. fan-out -------------------------------------------------------------------------

/// Two connections on one session see the same events, byte for byte, with the same seq;
/// only the sender gets the `ack`.
#[tokio::test]
async fn two_tabs_see_identical_events() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "twotabs").await;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    let (seq_a, _) = subscribe(&mut a, sid).await;
    let (seq_b, _) = subscribe(&mut b, sid).await;
    assert_eq!(seq_a, seq_b);

    send(&mut a, sid, "s1", &format!("hello {}", directive(40, 1000))).await;
    let (raw_a, raw_b) = tokio::join!(raw_until_done(&mut a, sid), raw_until_done(&mut b, sid));

    let ev_a: Vec<&String> = raw_a.iter().filter(|(_, f)| is_event_of(f, sid)).map(|(t, _)| t).collect();
    let ev_b: Vec<&String> = raw_b.iter().filter(|(_, f)| is_event_of(f, sid)).map(|(t, _)| t).collect();
    assert_eq!(ev_a, ev_b, "both tabs see the same session events, byte for byte");

    let frames_a: Vec<ServerFrame> = raw_a.into_iter().map(|(_, f)| f).collect();
    let frames_b: Vec<ServerFrame> = raw_b.into_iter().map(|(_, f)| f).collect();
    // user message, generation_started, the deltas (40 tokens; several may share one),
    // assistant message, done
    let kinds: Vec<&str> = events_of(&frames_a, sid)
        .iter()
        .map(|f| match f {
            ServerFrame::Message { .. } => "message",
            ServerFrame::GenerationStarted { .. } => "started",
            ServerFrame::Delta { .. } => "delta",
            ServerFrame::Done { .. } => "done",
            _ => "other",
        })
        .collect();
    let deltas = kinds.iter().filter(|k| **k == "delta").count();
    assert!((1..=40).contains(&deltas), "{frames_a:?}");
    let mut expected = vec!["message", "started"];
    expected.extend(std::iter::repeat_n("delta", deltas));
    expected.extend(["message", "done"]);
    assert_eq!(kinds, expected, "{frames_a:?}");
    assert_contiguous(&frames_a, sid, seq_a);

    let acks_a: Vec<_> = frames_a.iter().filter(|f| matches!(f, ServerFrame::Ack { .. })).collect();
    assert_eq!(acks_a.len(), 1);
    assert!(
        matches!(acks_a[0], ServerFrame::Ack { id: Some(id), message } if id == "s1" && message.role == Role::User)
    );
    assert!(!frames_b.iter().any(|f| matches!(f, ServerFrame::Ack { .. })), "only the sender gets the ack");

    let reply = started_reply(&frames_a);
    assert_eq!(reply_text(&frames_a, reply), mock::reply_text(40, None));
    assert_eq!(reply_text(&frames_b, reply), mock::reply_text(40, None));
    assert_eq!(done_of(&frames_b, reply), FinishReason::Stop);
}

// ---- 2. joining mid-reply -----------------------------------------------------------------

/// A third tab joining mid-reply gets the partial text in its snapshot, then the rest live
/// with seq continuing from the snapshot, and ends with the same text as the others.
#[tokio::test]
async fn late_joiner_gets_partial_then_rest() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "latejoin").await;
    let n = 150;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    let (seq0, _) = subscribe(&mut b, sid).await;
    send(&mut a, sid, "s1", &directive(n, 100)).await;
    let mut frames_a = until_deltas(&mut a, sid, 10).await;

    let mut c = server.ws(&token).await;
    let (snap_seq, generating) = subscribe(&mut c, sid).await;
    let generating = generating.expect("the snapshot shows the reply in progress");
    assert!(!generating.content.is_empty(), "the snapshot carries the partial reply");
    assert_eq!(generating.message_id, started_reply(&frames_a));

    frames_a.extend(until_dones(&mut a, sid, 1).await);
    let frames_b = until_dones(&mut b, sid, 1).await;
    let frames_c = until_dones(&mut c, sid, 1).await;
    let reply = generating.message_id;
    let full = mock::reply_text(n, None);

    assert_eq!(reply_text(&frames_a, reply), full);
    assert_eq!(reply_text(&frames_b, reply), full);
    assert!(full.starts_with(&generating.content), "the partial is a prefix of the reply");
    assert!(generating.content.len() < full.len());
    assert_eq!(format!("{}{}", generating.content, reply_text(&frames_c, reply)), full);

    assert_contiguous(&frames_b, sid, seq0);
    assert_contiguous(&frames_c, sid, snap_seq);
    // What C saw live is exactly what the others saw after the snapshot.
    let tail_b: Vec<ServerFrame> =
        events_of(&frames_b, sid).into_iter().filter(|f| f.seq().unwrap() > snap_seq).collect();
    assert_eq!(events_of(&frames_c, sid), tail_b);
    assert_eq!(done_of(&frames_c, reply), FinishReason::Stop);
}

// ---- 3. one generation at a time ------------------------------------------------------------

/// Two quick sends get two replies, in send order, never interleaved.
#[tokio::test]
async fn quick_sends_are_answered_in_order() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "ordered").await;
    let mut ws = server.ws(&token).await;
    let (seq0, _) = subscribe(&mut ws, sid).await;
    send(&mut ws, sid, "first", &format!("one {}", directive(30, 500))).await;
    send(&mut ws, sid, "second", &format!("two {}", directive(45, 500))).await;
    let frames = until_dones(&mut ws, sid, 2).await;
    assert_contiguous(&frames, sid, seq0);

    let acks: Vec<(String, Uuid)> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Ack { id, message } => Some((id.clone().unwrap(), message.id)),
            _ => None,
        })
        .collect();
    assert_eq!(acks.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["first", "second"]);

    // Walk the events: between a generation_started and its done, only its own deltas.
    let mut running: Option<Uuid> = None;
    let mut order = Vec::new();
    for f in events_of(&frames, sid) {
        match f {
            ServerFrame::GenerationStarted { message_id, .. } => {
                assert!(running.is_none(), "a reply started while another was running");
                running = Some(message_id);
                order.push(message_id);
            }
            ServerFrame::Delta { message_id, .. } => {
                assert_eq!(Some(message_id), running, "a delta outside its reply");
            }
            ServerFrame::Done { message_id, finish_reason, .. } => {
                assert_eq!(Some(message_id), running);
                assert_eq!(finish_reason, FinishReason::Stop);
                running = None;
            }
            _ => {}
        }
    }
    assert_eq!(order.len(), 2);
    assert_eq!(reply_text(&frames, order[0]), mock::reply_text(30, None));
    assert_eq!(reply_text(&frames, order[1]), mock::reply_text(45, None));

    // The store agrees: user 1, reply 1, user 2, reply 2.
    let messages = stored(&server, &token, sid).await.messages;
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [acks[0].1, order[0], acks[1].1, order[1]]);
}

// ---- 4. stop ---------------------------------------------------------------------------------

/// `stop` ends the reply with `cancelled`, closes the upstream stream, and stores the
/// partial reply exactly as the client saw it.
#[tokio::test]
async fn stop_cancels_and_stores_partial() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "stopper").await;
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "s1", &directive(1000, 100)).await;
    let mut frames = until_deltas(&mut ws, sid, 5).await;
    ws.send(json!({"type": "stop", "id": "x", "session_id": sid})).await;
    frames.extend(until_dones(&mut ws, sid, 1).await);

    let reply = started_reply(&frames);
    assert_eq!(done_of(&frames, reply), FinishReason::Cancelled);
    assert!(server.mock.wait_for_closed_early(1, Duration::from_secs(5)).await, "upstream stream closed");
    assert!(!frames.iter().any(|f| matches!(f, ServerFrame::Error { .. })), "{frames:?}");

    let seen = reply_text(&frames, reply);
    assert!(!seen.is_empty() && seen.len() < mock::reply_text(1000, None).len());
    let message = stored_message(&server, &token, sid, reply).await.expect("the partial reply is stored");
    assert_eq!(message.status, MessageStatus::Cancelled);
    assert_eq!(message.content, seen, "stored content is what the client saw");
    assert_eq!(message.role, Role::Assistant);
    assert_eq!(server.mock.stats().streams_completed, 0);
}

// ---- 5. last watcher leaves, no grace ----------------------------------------------------------

/// With no grace period, the only watcher leaving closes the upstream stream at once and
/// stores the partial reply.
#[tokio::test]
async fn last_watcher_leaving_cancels_at_once_without_grace() {
    let server = TestServer::with(&[("CHAT_CANCEL_GRACE_MS", "0")]).await;
    let (token, _, sid) = user_with_session(&server, "nograce").await;
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "s1", &directive(1000, 100)).await;
    let frames = until_deltas(&mut ws, sid, 5).await;
    let reply = started_reply(&frames);

    let closed_at = Instant::now();
    ws.close().await;
    assert!(
        server.mock.wait_for_closed_early(1, Duration::from_secs(1)).await,
        "upstream stream closed within 1 s (took {:?})",
        closed_at.elapsed()
    );
    common::eventually("the partial reply stored as cancelled", || async {
        stored_message(&server, &token, sid, reply)
            .await
            .is_some_and(|m| m.status == MessageStatus::Cancelled && !m.content.is_empty())
    })
    .await;
    let message = stored_message(&server, &token, sid, reply).await.unwrap();
    assert!(mock::reply_text(1000, None).starts_with(&message.content));
    assert!(message.content.len() < mock::reply_text(1000, None).len());
}

// ---- 6. grace period ------------------------------------------------------------------------------

/// With the default grace, a tab that reconnects within a second gets the partial reply
/// and the rest live; the reply is not cancelled.
#[tokio::test]
async fn reconnect_within_grace_resumes_the_reply() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "reloader").await;
    let n = 300;
    let mut a = server.ws(&token).await;
    send(&mut a, sid, "s1", &directive(n, 100)).await;
    let frames = until_deltas(&mut a, sid, 5).await;
    let reply = started_reply(&frames);
    a.close().await;

    tokio::time::sleep(Duration::from_millis(300)).await; // a page reload
    let mut b = server.ws(&token).await;
    let (snap_seq, generating) = subscribe(&mut b, sid).await;
    let generating = generating.expect("the reply is still running after the reload");
    assert_eq!(generating.message_id, reply);
    assert!(!generating.content.is_empty());

    let rest = until_dones(&mut b, sid, 1).await;
    assert_eq!(done_of(&rest, reply), FinishReason::Stop);
    assert_contiguous(&rest, sid, snap_seq);
    assert_eq!(format!("{}{}", generating.content, reply_text(&rest, reply)), mock::reply_text(n, None));
    assert_eq!(server.mock.stats().streams_closed_early, 0);
    let message = stored_message(&server, &token, sid, reply).await.unwrap();
    assert_eq!(message.status, MessageStatus::Complete);
    assert_eq!(message.content, mock::reply_text(n, None));
}

/// With the default grace (3 s), a tab that leaves for good cancels the reply after the
/// grace period: not within 2 s, but within grace + 1 s.
#[tokio::test]
async fn leaving_for_good_cancels_after_grace() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "leaver").await;
    let mut a = server.ws(&token).await;
    send(&mut a, sid, "s1", &directive(2000, 100)).await;
    let frames = until_deltas(&mut a, sid, 5).await;
    let reply = started_reply(&frames);

    let closed_at = Instant::now();
    a.close().await;
    assert!(
        !server.mock.wait_for_closed_early(1, Duration::from_secs(2)).await,
        "the reply must run on during the grace period"
    );
    let deadline = Duration::from_secs(4).saturating_sub(closed_at.elapsed());
    assert!(
        server.mock.wait_for_closed_early(1, deadline).await,
        "upstream stream closed within grace + 1 s (elapsed {:?})",
        closed_at.elapsed()
    );
    common::eventually("the partial reply stored as cancelled", || async {
        stored_message(&server, &token, sid, reply)
            .await
            .is_some_and(|m| m.status == MessageStatus::Cancelled && !m.content.is_empty())
    })
    .await;
}

// ---- 7. one of two watchers leaves ---------------------------------------------------------------

/// Closing one of two subscribers lets the reply finish for the other, even with no grace.
#[tokio::test]
async fn one_of_two_watchers_leaving_does_not_cancel() {
    let server = TestServer::with(&[("CHAT_CANCEL_GRACE_MS", "0")]).await;
    let (token, _, sid) = user_with_session(&server, "twowatch").await;
    let n = 100;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    let (seq0, _) = subscribe(&mut b, sid).await;
    send(&mut a, sid, "s1", &directive(n, 200)).await;
    let mut frames = until_deltas(&mut b, sid, 5).await;
    a.close().await;
    frames.extend(until_dones(&mut b, sid, 1).await);

    let reply = started_reply(&frames);
    assert_eq!(done_of(&frames, reply), FinishReason::Stop);
    assert_eq!(reply_text(&frames, reply), mock::reply_text(n, None));
    assert_contiguous(&frames, sid, seq0);
    assert_eq!(server.mock.stats().streams_closed_early, 0);
    assert_eq!(server.mock.stats().streams_completed, 1);
}

// ---- 8. SSE and WebSocket agree ---------------------------------------------------------------------

/// The SSE stream of a REST send carries the same text as a WebSocket watcher of the session saw.
#[tokio::test]
async fn sse_matches_websocket() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "sseuser").await;
    let mut ws = server.ws(&token).await;
    let (seq0, _) = subscribe(&mut ws, sid).await;
    let n = 60;

    let post = async {
        let response = server
            .http
            .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .json(&json!({"content": format!("via sse {}", directive(n, 500))}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        response.text().await.unwrap()
    };
    let (body, frames) = tokio::join!(post, until_dones(&mut ws, sid, 1));

    let events: Vec<SseEvent> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim_start()).unwrap_or_else(|e| panic!("bad SSE data {data}: {e}")))
        .collect();
    let (last, chunks) = events.split_last().expect("SSE events");
    let reply = started_reply(&frames);
    match last {
        SseEvent::Done { done, message_id, finish_reason, .. } => {
            assert!(*done);
            assert_eq!(*message_id, reply);
            assert_eq!(*finish_reason, FinishReason::Stop);
        }
        other => panic!("SSE must end with done, got {other:?}"),
    }
    let sse_chunks: Vec<String> = chunks
        .iter()
        .map(|e| match e {
            SseEvent::Chunk { chunk, done } => {
                assert!(!done);
                chunk.clone()
            }
            other => panic!("unexpected SSE event {other:?}"),
        })
        .collect();
    let ws_deltas: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Delta { message_id, text, .. } if *message_id == reply => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(sse_chunks, ws_deltas, "SSE chunks are the WebSocket deltas");
    assert_eq!(sse_chunks.concat(), mock::reply_text(n, None));
    assert_contiguous(&frames, sid, seq0);
    // The REST send's user message reached the WebSocket watcher too.
    assert!(frames.iter().any(|f| matches!(f, ServerFrame::Message { message, .. }
        if message.role == Role::User && message.content.starts_with("via sse"))));
}

// ---- 9. back-pressure ---------------------------------------------------------------------------------

/// A client that never reads is closed with 4429; a reading client on the same session gets
/// every delta.
#[tokio::test]
async fn slow_reader_is_closed_while_fast_reader_gets_everything() {
    // 128 frames: room enough for the fast reader on a loaded machine (with 16 it was once
    // closed too, under coverage beside 29 other tests), while the slow one, which reads
    // nothing of the 5,000 frames, overflows all the same.
    let server = TestServer::with(&[
        ("WS_OUTBOUND_QUEUE", "128"),
        ("CHAT_MAX_TOKENS", "100000"),
        ("CHAT_MAX_REPLY_BYTES", "10000000"),
        ("WS_OUTBOUND_QUEUE_BYTES", "20000000"),
    ])
    .await;
    let (token, _, sid) = user_with_session(&server, "slowfast").await;
    let mut slow = server.ws_small_buffer(&token).await;
    let (slow_seq, _) = subscribe(&mut slow, sid).await; // the last frame it ever reads
    let mut fast = server.ws(&token).await;
    let (seq0, _) = subscribe(&mut fast, sid).await;
    assert_eq!(slow_seq, seq0);

    let n = 5000;
    send(&mut fast, sid, "flood", &format!("[[mock tokens={n} bytes=1000 tps=2500 delay_ms=0]]")).await;
    let frames = until_dones(&mut fast, sid, 1).await;
    let reply = started_reply(&frames);
    assert_eq!(done_of(&frames, reply), FinishReason::Stop);
    assert_contiguous(&frames, sid, seq0);
    assert!(reply_text(&frames, reply) == mock::reply_text(n, Some(1000)), "the fast reader got the exact text");

    let code = tokio::time::timeout(Duration::from_secs(20), slow.expect_close()).await.expect("slow reader closed");
    assert_eq!(code, Some(4429));
}

/// However the model's tokens are grouped into deltas (text that is already there when a
/// token is handled joins its delta), the text is never changed: a burst of 300 tokens
/// arrives as at most 300 deltas whose text is the reply, the same text that is stored and
/// that a late tab's snapshot shows.
#[tokio::test]
async fn delta_text_is_the_reply_however_tokens_are_grouped() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "merged").await;
    let mut ws = server.ws(&token).await;
    let (seq0, _) = subscribe(&mut ws, sid).await;
    send(&mut ws, sid, "burst", "burst [[mock tokens=300 instant]]").await;
    let frames = until_dones(&mut ws, sid, 1).await;
    let reply = started_reply(&frames);
    assert_contiguous(&frames, sid, seq0);
    let deltas = frames.iter().filter(|f| matches!(f, ServerFrame::Delta { .. })).count();
    assert!((1..=300).contains(&deltas), "{deltas} deltas for 300 tokens sent at once");
    assert_eq!(reply_text(&frames, reply), mock::reply_text(300, None));
    let stored = stored_message(&server, &token, sid, reply).await.expect("the reply is stored");
    assert_eq!(stored.content, mock::reply_text(300, None));
    let mut late = server.ws(&token).await;
    late.send(json!({"type": "subscribe", "id": "late", "session_id": sid})).await;
    let snapshot = late.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
    let Some(ServerFrame::Subscribed { messages, .. }) = snapshot.last() else { panic!("{snapshot:?}") };
    assert_eq!(messages.iter().find(|m| m.id == reply).map(|m| m.content.as_str()), Some(stored.content.as_str()));
}

// ---- 10. many sessions on one connection ---------------------------------------------------------------

/// One connection streams 50 sessions at once; each reply is whole and each session's seq
/// is contiguous.
#[tokio::test]
async fn one_connection_streams_fifty_sessions() {
    // 50 sends by one user: keep any daily quota or per-minute rate limit out of the way,
    // and the slow-reader close too (this test reads every frame, but on a loaded machine
    // may fall more than the default 1,024 frames behind 50 streams; 4429 is tested apart).
    let server = TestServer::with(&[
        ("CHAT_DAILY_MESSAGE_QUOTA", "0"),
        ("CHAT_RATE_LIMIT_PER_MINUTE", "10000"),
        ("WS_OUTBOUND_QUEUE", "65536"),
    ])
    .await;
    let (token, _) = server.register("fifty").await;
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(server.create_session(&token).await.id);
    }
    let tokens_for = |i: usize| 20 + i;
    let mut ws = server.ws(&token).await;
    for (i, sid) in sessions.iter().enumerate() {
        send(&mut ws, *sid, &format!("s{i}"), &directive(tokens_for(i), 500)).await;
    }
    let mut done = HashSet::new();
    let frames = ws
        .recv_until(|f| {
            if let ServerFrame::Done { session_id, .. } = f {
                assert!(done.insert(*session_id), "two dones for one session");
            }
            done.len() == sessions.len()
        })
        .await;

    let snapshots: HashMap<Uuid, u64> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Subscribed { session, seq, .. } => Some((session.id, *seq)),
            _ => None,
        })
        .collect();
    for (i, sid) in sessions.iter().enumerate() {
        let events = events_of(&frames, *sid);
        let snap = *snapshots.get(sid).expect("the send subscribed the connection");
        assert_contiguous(&events, *sid, snap);
        let reply = started_reply(&events);
        assert_eq!(done_of(&events, reply), FinishReason::Stop);
        assert_eq!(reply_text(&events, reply), mock::reply_text(tokens_for(i), None), "session {i}");
    }
}

// ---- 11. one actor per session ---------------------------------------------------------------------------

/// Twenty connections subscribing to one idle session at once start exactly one actor.
#[tokio::test]
async fn concurrent_first_use_starts_one_actor() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "crowd").await;
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(server.ws(&token).await);
    }
    let before = server.state().sessions.actors_started();
    futures::future::join_all(
        conns.iter_mut().map(|ws| ws.send(json!({"type": "subscribe", "id": "go", "session_id": sid}))),
    )
    .await;
    let snapshots = futures::future::join_all(conns.iter_mut().map(|ws| async move {
        let frames = ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. } | ServerFrame::Error { .. })).await;
        frames.last().cloned().unwrap()
    }))
    .await;
    for snapshot in &snapshots {
        assert!(
            matches!(snapshot, ServerFrame::Subscribed { id: Some(id), session, seq: 0, .. } if id == "go" && session.id == sid),
            "{snapshot:?}"
        );
    }
    assert_eq!(server.state().sessions.actors_started(), before + 1, "exactly one actor started");
    assert_eq!(server.state().sessions.live_actors(), 1);
}

// ---- 12. bad input ----------------------------------------------------------------------------------------

/// Malformed JSON, unknown frames and binary frames answer `bad_request` and leave the
/// connection usable; an oversized frame closes it with 1009.
#[tokio::test]
async fn bad_frames_answer_errors_and_oversize_closes_1009() {
    let server = TestServer::start().await;
    let (token, _) = server.register("badinput").await;
    let mut ws = server.ws(&token).await;

    ws.send_raw(WsMessage::Text("{not json".into())).await;
    assert_error(&ws.recv().await, ErrorCode::BadRequest, None, None);

    ws.send(json!({"type": "frobnicate", "id": "u1", "session_id": Uuid::new_v4()})).await;
    assert_error(&ws.recv().await, ErrorCode::BadRequest, Some("u1"), None);

    ws.send(json!({"type": "send", "id": "m1"})).await; // a known type missing its fields
    assert_error(&ws.recv().await, ErrorCode::BadRequest, Some("m1"), None);

    ws.send_raw(WsMessage::Binary(vec![1u8, 2, 3].into())).await;
    assert_error(&ws.recv().await, ErrorCode::BadRequest, None, None);

    ws.send(json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(ws.recv().await, ServerFrame::Pong { id: Some("p1".into()) });

    let big = json!({"type": "ping", "id": "x".repeat(65 * 1024)}).to_string();
    assert!(big.len() > 64 * 1024);
    ws.send_raw(WsMessage::Text(big.into())).await;
    assert_eq!(ws.expect_close().await, Some(1009));
}

// ---- 13. other users' sessions --------------------------------------------------------------------------

/// Another user's session is `not_found` for subscribe, send and stop, echoing id and session_id.
#[tokio::test]
async fn other_users_session_is_not_found() {
    let server = TestServer::start().await;
    let (_owner_token, _, sid) = user_with_session(&server, "owner").await;
    let (token, _) = server.register("intruder").await;
    let mut ws = server.ws(&token).await;

    ws.send(json!({"type": "subscribe", "id": "a", "session_id": sid})).await;
    assert_error(&ws.recv().await, ErrorCode::NotFound, Some("a"), Some(sid));
    send(&mut ws, sid, "b", "let me in").await;
    assert_error(&ws.recv().await, ErrorCode::NotFound, Some("b"), Some(sid));
    ws.send(json!({"type": "stop", "id": "c", "session_id": sid})).await;
    assert_error(&ws.recv().await, ErrorCode::NotFound, Some("c"), Some(sid));
    // A session that does not exist at all looks the same.
    let nowhere = Uuid::new_v4();
    ws.send(json!({"type": "subscribe", "id": "d", "session_id": nowhere})).await;
    assert_error(&ws.recv().await, ErrorCode::NotFound, Some("d"), Some(nowhere));

    // Nothing was stored in the owner's session.
    let messages = server.state().store.recent_messages(sid, 10).await.unwrap();
    assert!(messages.is_empty(), "{messages:?}");
    ws.send(json!({"type": "ping", "id": "still"})).await;
    assert_eq!(ws.recv().await, ServerFrame::Pong { id: Some("still".into()) });
}

// ---- 14. authentication ------------------------------------------------------------------------------------

/// A connection whose token expires is closed with 4401.
#[tokio::test]
async fn expiring_token_closes_4401() {
    let server = TestServer::start().await;
    let (_, user_id) = server.register("expiring").await;
    let token = craft_token(user_id, "expiring", now_secs() + 2);
    let mut ws = server.ws(&token).await; // ready
    let started = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(5), ws.expect_close()).await.expect("closed in time");
    assert_eq!(code, Some(4401));
    assert!(started.elapsed() >= Duration::from_millis(500), "closed at expiry, not at once");
}

/// Without a header the first frame must be `auth`: none in time, or a bad token, closes
/// with 4401; a good token gives `ready`. A bad header is a plain HTTP 401.
#[tokio::test]
async fn websocket_authentication() {
    let server = TestServer::with(&[("WS_AUTH_TIMEOUT_SECS", "1")]).await;
    let (token, user_id) = server.register("authframe").await;

    // No header, no auth frame.
    let mut silent = server.ws_raw(None).await;
    let started = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(5), silent.expect_close()).await.expect("closed in time");
    assert_eq!(code, Some(4401));
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A good auth frame.
    let mut good = server.ws_raw(None).await;
    good.send(json!({"type": "auth", "token": token})).await;
    match good.recv().await {
        ServerFrame::Ready { user, protocol, .. } => {
            assert_eq!(user.id, user_id);
            assert_eq!(protocol, 1);
        }
        other => panic!("expected ready, got {other:?}"),
    }
    good.send(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(good.recv().await, ServerFrame::Pong { id: Some("p".into()) });

    // A bad token in the auth frame: forged, and plain garbage.
    let forged = {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": user_id.to_string(), "exp": now_secs() + 3600, "username": "authframe"}),
            &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-that-is-long-enough-000"),
        )
        .unwrap()
    };
    for bad in [forged.as_str(), "not-a-token"] {
        let mut ws = server.ws_raw(None).await;
        ws.send(json!({"type": "auth", "token": bad})).await;
        assert_eq!(ws.expect_close().await, Some(4401), "token {bad}");
    }
    // An expired token in the auth frame (beyond the leeway).
    let mut ws = server.ws_raw(None).await;
    ws.send(json!({"type": "auth", "token": craft_token(user_id, "authframe", now_secs() - 3600)})).await;
    assert_eq!(ws.expect_close().await, Some(4401));

    // A bad Authorization header on the upgrade request.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/api/v1/ws", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("authorization", "Bearer not-a-token".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        Err(other) => panic!("expected an HTTP 401, got {other:?}"),
        Ok(_) => panic!("the upgrade must be refused"),
    }
}

// ---- 15. per-user hub -----------------------------------------------------------------------------------------

/// Session list changes reach every connection of the user; only the asking connection gets
/// its id echoed. Deleting a session while a reply streams cancels it for its watchers.
#[tokio::test]
async fn user_hub_announces_session_changes() {
    let server = TestServer::start().await;
    let (token, _) = server.register("hubuser").await;
    let (other_token, _) = server.register("otheruser").await;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    let mut stranger = server.ws(&other_token).await;

    // create_session over the WebSocket.
    a.send(json!({"type": "create_session", "id": "c1", "title": "From A"})).await;
    let created = match a.recv().await {
        ServerFrame::SessionCreated { id, session } => {
            assert_eq!(id.as_deref(), Some("c1"));
            assert_eq!(session.title, "From A");
            session
        }
        other => panic!("expected session_created, got {other:?}"),
    };
    assert_eq!(b.recv().await, ServerFrame::SessionCreated { id: None, session: created.clone() });

    // REST create and rename.
    let rest_created = server.create_session(&token).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(ws.recv().await, ServerFrame::SessionCreated { id: None, session: rest_created.clone() });
    }
    let response = server.rename(&token, created.id, "Renamed").await;
    assert_eq!(response.status(), 200);
    for ws in [&mut a, &mut b] {
        match ws.recv().await {
            ServerFrame::SessionUpdated { id: None, session } => {
                assert_eq!(session.id, created.id);
                assert_eq!(session.title, "Renamed");
            }
            other => panic!("expected session_updated, got {other:?}"),
        }
    }

    // Delete while a reply streams.
    let sid = created.id;
    send(&mut a, sid, "s1", &directive(2000, 100)).await;
    let mut frames = until_deltas(&mut a, sid, 5).await;
    let reply = started_reply(&frames);
    let response = server
        .http
        .delete(server.url(&format!("/api/v1/chat/sessions/{sid}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    frames.extend(a.recv_until(|f| matches!(f, ServerFrame::SessionDeleted { .. })).await);
    let done_at = frames
        .iter()
        .position(|f| matches!(f, ServerFrame::Done { finish_reason: FinishReason::Cancelled, message_id, .. } if *message_id == reply))
        .expect("the watcher gets done cancelled");
    let deleted_at = frames.len() - 1;
    assert!(done_at < deleted_at, "done comes before session_deleted");
    assert_eq!(frames[deleted_at], ServerFrame::SessionDeleted { id: None, session_id: sid });
    let b_frames = b.recv_until(|f| matches!(f, ServerFrame::SessionDeleted { .. })).await;
    assert_eq!(b_frames.last().unwrap(), &ServerFrame::SessionDeleted { id: None, session_id: sid });
    assert!(server.mock.wait_for_closed_early(1, Duration::from_secs(5)).await, "upstream stream closed");
    let (status, _) = server.get(&token, &format!("/api/v1/chat/sessions/{sid}")).await;
    assert_eq!(status, 404);

    // Delete over the WebSocket echoes the id to the asker only.
    a.send(json!({"type": "delete_session", "id": "d1", "session_id": rest_created.id})).await;
    assert_eq!(
        a.recv_until(|f| matches!(f, ServerFrame::SessionDeleted { .. })).await.last().unwrap(),
        &ServerFrame::SessionDeleted { id: Some("d1".into()), session_id: rest_created.id }
    );
    assert_eq!(
        b.recv_until(|f| matches!(f, ServerFrame::SessionDeleted { .. })).await.last().unwrap(),
        &ServerFrame::SessionDeleted { id: None, session_id: rest_created.id }
    );

    // Another user heard nothing of it.
    stranger.send(json!({"type": "ping", "id": "quiet"})).await;
    assert_eq!(stranger.recv().await, ServerFrame::Pong { id: Some("quiet".into()) });
}

// ---- 16. graceful shutdown ------------------------------------------------------------------------------------

/// On shutdown a streaming reply ends with `done` cancelled, the connection closes with
/// 1001, and the partial reply is stored as cancelled.
#[tokio::test]
async fn graceful_shutdown_cancels_and_closes_1001() {
    let mut server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "shutdown").await;
    let store = server.state().store.clone();
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "s1", &directive(2000, 100)).await;
    let mut frames = until_deltas(&mut ws, sid, 5).await;
    let reply = started_reply(&frames);

    let read = async {
        let mut rest = Vec::new();
        loop {
            match ws.read().await {
                Read::Frame(frame) => rest.push(frame),
                Read::Closed(code) => return (rest, code),
            }
        }
    };
    let ((), (rest, code)) = tokio::join!(server.shutdown(), read);
    frames.extend(rest);
    assert_eq!(code, Some(1001));
    assert_eq!(done_of(&frames, reply), FinishReason::Cancelled);
    assert!(matches!(frames.last(), Some(ServerFrame::Done { .. })), "done is the last frame before the close");

    let seen = reply_text(&frames, reply);
    let messages = store.recent_messages(sid, 10).await.unwrap();
    let message = messages.iter().find(|m| m.id == reply).expect("the partial reply is stored");
    assert_eq!(message.status, MessageStatus::Cancelled);
    assert_eq!(message.content, seen);
    assert!(!seen.is_empty());
}

// ---- 17. send subscribes ----------------------------------------------------------------------------------------

/// A `send` without a prior `subscribe` subscribes the connection: `subscribed`, `ack`, the
/// user `message`, then the reply.
#[tokio::test]
async fn send_subscribes_implicitly() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "implicit").await;
    let mut ws = server.ws(&token).await;
    let content = format!("implicit {}", directive(20, 1000));
    send(&mut ws, sid, "m1", &content).await;
    let frames = until_dones(&mut ws, sid, 1).await;
    // Hub frames (quota, the derived title) may come in between; they are not part of the order.
    let main: Vec<&ServerFrame> = frames
        .iter()
        .filter(|f| !matches!(f, ServerFrame::Quota { .. } | ServerFrame::SessionUpdated { .. }))
        .collect();

    let ServerFrame::Subscribed { id, session, messages, seq, generating, has_older } = main[0] else {
        panic!("expected subscribed first, got {:?}", main[0]);
    };
    assert_eq!(*id, None, "an implicit subscription answers no request");
    assert_eq!(session.id, sid);
    assert!(messages.is_empty() && !has_older);
    assert!(generating.is_none());
    let ServerFrame::Ack { id: Some(ack_id), message: acked } = main[1] else {
        panic!("expected ack second, got {:?}", main[1]);
    };
    assert_eq!(ack_id, "m1");
    assert_eq!(acked.content, content);
    assert_eq!(acked.role, Role::User);
    match main[2] {
        ServerFrame::Message { message, seq: s, .. } => {
            assert_eq!(message, acked);
            assert_eq!(*s, seq + 1);
        }
        other => panic!("expected the user message third, got {other:?}"),
    }
    assert!(matches!(main[3], ServerFrame::GenerationStarted { .. }), "{:?}", main[3]);
    assert_contiguous(&frames, sid, *seq);
    let reply = started_reply(&frames);
    assert_eq!(reply_text(&frames, reply), mock::reply_text(20, None));
    assert_eq!(done_of(&frames, reply), FinishReason::Stop);
    // The assistant message is broadcast as stored, just before done.
    match &main[main.len() - 2] {
        ServerFrame::Message { message, .. } => {
            assert_eq!(message.id, reply);
            assert_eq!(message.status, MessageStatus::Complete);
            assert_eq!(message.content, mock::reply_text(20, None));
        }
        other => panic!("expected the stored reply before done, got {other:?}"),
    }

    // The connection now receives the session's later events without subscribing again.
    let response = server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
        .bearer_auth(&token)
        .json(&json!({"content": format!("again {}", directive(5, 1000))}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let later = until_dones(&mut ws, sid, 1).await;
    let last_seq = events_of(&frames, sid).last().and_then(ServerFrame::seq).unwrap();
    assert_contiguous(&later, sid, last_seq);
    let later_reply = started_reply(&later);
    assert_eq!(body["assistant_message"]["id"], json!(later_reply));
    assert_eq!(reply_text(&later, later_reply), mock::reply_text(5, None));
}

// ---- queue, policies, actor lifetime, checkpoints ---------------------------------------

/// More sends than the queue holds answer `busy` (with a retry hint); `stop` cancels the
/// running reply only, and the send queued behind it is still answered.
#[tokio::test]
async fn full_queue_answers_busy_and_stop_keeps_the_queue() {
    let server = TestServer::with(&[("CHAT_MAX_QUEUED_SENDS", "1")]).await;
    let (token, _, sid) = user_with_session(&server, "queuer").await;
    let mut ws = server.ws(&token).await;
    subscribe(&mut ws, sid).await;
    send(&mut ws, sid, "q1", &format!("long {}", directive(400, 40))).await;
    let first = until_deltas(&mut ws, sid, 1).await;
    let running = started_reply(&first);
    send(&mut ws, sid, "q2", &format!("queued {}", directive(5, 1000))).await;
    send(&mut ws, sid, "q3", "one too many").await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { .. })).await;
    let acks: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Ack { id, .. } => id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(acks, ["q2"], "the second send is queued");
    assert_error(frames.last().unwrap(), ErrorCode::Busy, Some("q3"), Some(sid));
    if let ServerFrame::Error { error, .. } = frames.last().unwrap() {
        assert!(error.retry_after_ms.is_some(), "busy carries a retry hint");
    }

    ws.send(json!({"type": "stop", "id": "s", "session_id": sid})).await;
    let rest = until_dones(&mut ws, sid, 2).await;
    assert_eq!(done_of(&rest, running), FinishReason::Cancelled);
    let queued = rest
        .iter()
        .find_map(|f| match f {
            ServerFrame::GenerationStarted { message_id, .. } if *message_id != running => Some(*message_id),
            _ => None,
        })
        .expect("the queued send is answered after the stop");
    assert_eq!(done_of(&rest, queued), FinishReason::Stop);
    assert_eq!(reply_text(&rest, queued), mock::reply_text(5, None));

    let messages = stored(&server, &token, sid).await.messages;
    let contents: Vec<_> = messages.iter().filter(|m| m.role == Role::User).map(|m| m.content.as_str()).collect();
    assert!(!contents.contains(&"one too many"), "a refused send is not stored");
}

/// When nobody watches, the running reply is cancelled and the queued sends are dropped:
/// the mock never gets a request for them.
#[tokio::test]
async fn abandonment_drops_the_queue() {
    let server = TestServer::with(&[("CHAT_CANCEL_GRACE_MS", "0")]).await;
    let (token, _, sid) = user_with_session(&server, "leaver").await;
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "a", &format!("first {}", directive(400, 40))).await;
    send(&mut ws, sid, "b", &format!("second {}", directive(5, 1000))).await;
    let frames = until_deltas(&mut ws, sid, 2).await;
    assert!(frames.iter().any(|f| matches!(f, ServerFrame::Ack { id: Some(id), .. } if id == "b")));
    ws.close().await;
    assert!(server.mock.wait_for_closed_early(1, Duration::from_secs(1)).await, "the running reply is cancelled");

    // Give a wrongly kept queue time to start its reply, then check it never did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.mock.stats().requests, 1, "the queued send was dropped, not generated");
    let messages = stored(&server, &token, sid).await.messages;
    let roles: Vec<_> = messages.iter().map(|m| (m.role, m.status)).collect();
    assert_eq!(
        roles,
        [
            (Role::User, MessageStatus::Complete),
            (Role::Assistant, MessageStatus::Cancelled),
            (Role::User, MessageStatus::Complete)
        ],
        "both user messages stay stored; only the first has a (partial) reply"
    );
}

/// An actor with nobody watching and nothing to do stops after the idle period, and the
/// session starts a fresh one on next use, with its history.
#[tokio::test]
async fn idle_actors_stop_and_restart_on_use() {
    let server = TestServer::with(&[("CHAT_SESSION_IDLE_SECS", "1")]).await;
    let (token, _, sid) = user_with_session(&server, "idler").await;
    let sessions = server.state().sessions.clone();
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "m", &format!("hello {}", directive(3, 1000))).await;
    until_dones(&mut ws, sid, 1).await;
    assert_eq!(sessions.live_actors(), 1);
    ws.send(json!({"type": "unsubscribe", "id": "u", "session_id": sid})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Unsubscribed { .. })).await;
    assert!(
        matches!(frames.last(), Some(ServerFrame::Unsubscribed { id: Some(id), session_id }) if id == "u" && *session_id == sid)
    );

    common::eventually("the idle actor stops", || {
        let sessions = sessions.clone();
        async move { sessions.live_actors() == 0 }
    })
    .await;
    let before = sessions.actors_started();
    ws.send(json!({"type": "subscribe", "id": "again", "session_id": sid})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
    match frames.last().unwrap() {
        ServerFrame::Subscribed { messages, seq, .. } => {
            assert_eq!(messages.len(), 2, "the new actor loaded the history");
            assert_eq!(*seq, 0, "a fresh actor counts from zero");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sessions.actors_started(), before + 1);
}

/// A reply in progress is saved while it streams, so a crash would lose at most one
/// checkpoint interval of it.
#[tokio::test]
async fn replies_are_checkpointed_while_streaming() {
    let server = TestServer::with(&[("CHAT_CHECKPOINT_MS", "200")]).await;
    let (token, _, sid) = user_with_session(&server, "saver").await;
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "c", &format!("long {}", directive(400, 40))).await;
    let frames = until_deltas(&mut ws, sid, 1).await;
    let reply = started_reply(&frames);
    let full = mock::reply_text(400, None);
    common::eventually("a checkpoint of the reply in progress", || {
        let (server, token) = (&server, &token);
        let full = &full;
        async move {
            match stored_message(server, token, sid, reply).await {
                Some(m) => {
                    assert_eq!(m.status, MessageStatus::Generating, "a checkpoint reads as a reply in progress");
                    assert!(full.starts_with(&m.content));
                    m.content.len() > 20
                }
                None => false,
            }
        }
    })
    .await;
    ws.send(json!({"type": "stop", "session_id": sid})).await;
    until_dones(&mut ws, sid, 1).await;
}

/// Every send updates the quota on all of the user's connections.
#[tokio::test]
async fn sends_push_the_quota_to_every_tab() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "counter").await;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    send(&mut a, sid, "1", &format!("one {}", directive(2, 1000))).await;
    for ws in [&mut a, &mut b] {
        let frames = ws.recv_until(|f| matches!(f, ServerFrame::Quota { .. })).await;
        match frames.last().unwrap() {
            ServerFrame::Quota { quota } => {
                assert_eq!((quota.messages_today, quota.limit, quota.remaining), (1, Some(100), Some(99)));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// An SSE client that goes away is a watcher leaving: with no grace the upstream request
/// is closed at once and the partial reply is stored.
#[tokio::test]
async fn sse_client_leaving_cancels_the_reply() {
    let server = TestServer::with(&[("CHAT_CANCEL_GRACE_MS", "0")]).await;
    let (token, _, sid) = user_with_session(&server, "sseleaver").await;
    let response = server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .json(&json!({"content": format!("stream {}", directive(400, 40))}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"chunk\"").count() < 3 {
        let chunk = tokio::time::timeout(WAIT, body.next()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    assert!(server.mock.wait_for_closed_early(1, Duration::from_secs(1)).await, "upstream closed within 1 s");
    common::eventually("the partial reply is stored as cancelled", || async {
        let messages = stored(&server, &token, sid).await.messages;
        messages
            .iter()
            .any(|m| m.role == Role::Assistant && m.status == MessageStatus::Cancelled && !m.content.is_empty())
    })
    .await;
}

/// `unsubscribe` is always answered: for a live session after its queued events, for a
/// session that was deleted meanwhile, and for one never subscribed.
#[tokio::test]
async fn unsubscribe_is_always_answered() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "unsub").await;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    subscribe(&mut a, sid).await;
    subscribe(&mut b, sid).await;
    // Deleted from the other tab: this tab's unsubscribe still gets its answer.
    b.send(json!({"type": "delete_session", "id": "del", "session_id": sid})).await;
    a.recv_until(|f| matches!(f, ServerFrame::SessionDeleted { .. })).await;
    a.send(json!({"type": "unsubscribe", "id": "u1", "session_id": sid})).await;
    let frames = a.recv_until(|f| matches!(f, ServerFrame::Unsubscribed { .. })).await;
    assert!(
        matches!(frames.last(), Some(ServerFrame::Unsubscribed { id: Some(id), session_id }) if id == "u1" && *session_id == sid)
    );
    let never = Uuid::new_v4();
    a.send(json!({"type": "unsubscribe", "id": "u2", "session_id": never})).await;
    let frames = a.recv_until(|f| matches!(f, ServerFrame::Unsubscribed { .. })).await;
    assert!(
        matches!(frames.last(), Some(ServerFrame::Unsubscribed { id: Some(id), session_id }) if id == "u2" && *session_id == never)
    );
}

/// A peer that goes silent (answers no pings, sends nothing) is dropped after the ping
/// timeout, and counts as a watcher leaving: its reply is cancelled.
#[tokio::test]
async fn silent_peers_are_dropped_after_the_ping_timeout() {
    let server = TestServer::with(&[
        ("WS_PING_INTERVAL_SECS", "1"),
        ("WS_PING_TIMEOUT_SECS", "2"),
        ("CHAT_CANCEL_GRACE_MS", "0"),
    ])
    .await;
    let (token, _, sid) = user_with_session(&server, "ghost").await;
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "g", &format!("slow {}", directive(200, 5))).await;
    until_deltas(&mut ws, sid, 1).await;
    // From here the client neither reads (so it answers no ping) nor writes.
    let went_silent = Instant::now();
    assert!(
        server.mock.wait_for_closed_early(1, Duration::from_secs(6)).await,
        "the silent peer was dropped and its reply cancelled"
    );
    assert!(went_silent.elapsed() >= Duration::from_secs(1), "not before the ping timeout could pass");
    let metrics = server.state().metrics.clone();
    common::eventually("the connection is gone on the server", || {
        let metrics = metrics.clone();
        async move { metrics.ws_connections.get() == 0 }
    })
    .await;
    drop(ws);
}

/// A peer that stops reading while frames are still being written (its TCP window full,
/// the outbound queue not yet overflowing) is dropped after the ping timeout as well.
#[tokio::test]
async fn peers_that_stop_reading_mid_write_are_dropped() {
    let server = TestServer::with(&[
        ("WS_PING_INTERVAL_SECS", "1"),
        ("WS_PING_TIMEOUT_SECS", "2"),
        ("WS_OUTBOUND_QUEUE", "128"),
        ("CHAT_CANCEL_GRACE_MS", "0"),
        ("CHAT_MAX_TOKENS", "100000"),
    ])
    .await;
    let (token, _, sid) = user_with_session(&server, "stuck").await;
    let mut ws = server.ws_small_buffer(&token).await;
    // Far more than the socket buffers hold, far less than the outbound queue.
    send(&mut ws, sid, "w", "[[mock tokens=20000 bytes=1000 tps=0 delay_ms=0]]").await;
    let metrics = server.state().metrics.clone();
    common::eventually("the stuck connection is dropped", || {
        let metrics = metrics.clone();
        async move { metrics.ws_connections.get() == 0 }
    })
    .await;
    assert_eq!(metrics.ws_slow_closed.get(), 0, "dropped by the timeout, not by an overflow");
    drop(ws);
}

/// `rename_session` and `list_sessions` over the WebSocket, with their errors.
#[tokio::test]
async fn rename_and_list_over_the_websocket() {
    let server = TestServer::start().await;
    let (token, _) = server.register("lister").await;
    let (other, _) = server.register("stranger").await;
    let theirs = server.create_session(&other).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(server.create_session(&token).await.id);
    }
    let mut ws = server.ws(&token).await;

    ws.send(json!({"type": "rename_session", "id": "r1", "session_id": ids[0], "title": "First"})).await;
    match ws.recv().await {
        ServerFrame::SessionUpdated { id, session } => {
            assert_eq!((id.as_deref(), session.id, session.title.as_str()), (Some("r1"), ids[0], "First"));
        }
        other => panic!("{other:?}"),
    }
    ws.send(json!({"type": "rename_session", "id": "r2", "session_id": ids[1], "title": "  "})).await;
    assert_error(&ws.recv().await, ErrorCode::BadRequest, Some("r2"), Some(ids[1]));
    ws.send(json!({"type": "rename_session", "id": "r3", "session_id": theirs.id, "title": "Mine now"})).await;
    assert_error(&ws.recv().await, ErrorCode::NotFound, Some("r3"), Some(theirs.id));

    ws.send(json!({"type": "list_sessions", "id": "l1", "page": 1, "per_page": 2})).await;
    match ws.recv().await {
        ServerFrame::Sessions { id, sessions, total, page, per_page, total_pages } => {
            assert_eq!((id.as_deref(), total, page, per_page, total_pages), (Some("l1"), 3, 1, 2, 2));
            assert_eq!(sessions[0].id, ids[0], "the renamed session is the most recently active");
            assert_eq!(sessions.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    ws.send(json!({"type": "list_sessions", "id": "l2", "per_page": 500})).await;
    assert_error(&ws.recv().await, ErrorCode::BadRequest, Some("l2"), None);
    ws.send(json!({"type": "list_sessions", "id": "l3", "per_page": 100})).await;
    match ws.recv().await {
        ServerFrame::Sessions { id, per_page, sessions, .. } => {
            assert_eq!((id.as_deref(), per_page, sessions.len()), (Some("l3"), 100, 3));
            assert!(sessions.iter().all(|s| s.id != theirs.id), "only the caller's sessions");
        }
        other => panic!("{other:?}"),
    }
}
