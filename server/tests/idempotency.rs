//! Idempotent sends: a send, edit or regenerate repeated with the same key
//! (`client_message_id` over the WebSocket, the `Idempotency-Key` header over REST) by the
//! same user within 24 hours stores nothing new, asks the model nothing, and is answered
//! as the first was, also after a restart.

mod common;

use common::flow::{subscribe, until_dones, user_with_session};
use common::{Process, TestServer, error_of};
use relay_protocol::{ErrorCode, Message, SendMessageResponse, ServerFrame};
use serde_json::json;
use uuid::Uuid;

fn acked(frames: &[ServerFrame], id: &str) -> Option<Message> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Ack { id: Some(i), message } if i == id => Some(message.clone()),
        _ => None,
    })
}

async fn stored_messages(server: &TestServer, token: &str, sid: Uuid) -> Vec<Message> {
    let (_, body) = server.get(token, &format!("/api/v1/chat/sessions/{sid}")).await;
    serde_json::from_value(body["messages"].clone()).unwrap()
}

/// Over the WebSocket: the repeat gets an `ack` of the first message (echoing its own
/// request id) and nothing else happens: no message, no reply, no model request.
#[tokio::test]
async fn a_repeated_send_over_the_websocket_is_acknowledged_as_the_first() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "ws-repeat").await;
    let mut ws = server.ws(&token).await;
    subscribe(&mut ws, sid).await;
    let send = |id: &str| json!({"type": "send", "id": id, "session_id": sid, "content": "once only", "client_message_id": "k1"});
    ws.send(send("first")).await;
    let frames = until_dones(&mut ws, sid, 1).await;
    let first = acked(&frames, "first").expect("acknowledged");
    let requests = server.mock.stats().requests;

    ws.send(send("again")).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Ack { id: Some(i), .. } if i == "again")).await;
    assert_eq!(acked(&frames, "again").unwrap(), first, "answered as the first");
    ws.send(json!({"type": "ping", "id": "p"})).await;
    let after = ws.recv_until(|f| matches!(f, ServerFrame::Pong { .. })).await;
    assert!(after.iter().all(|f| f.seq().is_none()), "no event followed the repeat: {after:?}");
    assert_eq!(server.mock.stats().requests, requests, "the model was not asked again");
    let stored = stored_messages(&server, &token, sid).await;
    assert_eq!(stored.iter().filter(|m| m.content == "once only").count(), 1);
    assert_eq!(stored.len(), 2, "one message and its reply");

    // Another key is another send; the same key of another user is theirs.
    ws.send(
        json!({"type": "send", "id": "other", "session_id": sid, "content": "once only", "client_message_id": "k2"}),
    )
    .await;
    until_dones(&mut ws, sid, 1).await;
    assert_eq!(stored_messages(&server, &token, sid).await.len(), 4);
    let (token2, _, sid2) = user_with_session(&server, "ws-repeat-2").await;
    let mut ws2 = server.ws(&token2).await;
    ws2.send(json!({"type": "send", "id": "x", "session_id": sid2, "content": "mine", "client_message_id": "k1"}))
        .await;
    let frames = until_dones(&mut ws2, sid2, 1).await;
    assert_ne!(acked(&frames, "x").unwrap().id, first.id);
}

/// Over REST: the repeat answers the stored messages of the first (JSON), or replays the
/// stored reply (SSE), and a repeat that arrives while the first reply is still being
/// written waits for it. Regenerate and edit are keyed the same way.
#[tokio::test]
async fn a_repeated_rest_request_answers_the_stored_messages() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "rest-repeat").await;
    let post = |path: String, key: &str, body: serde_json::Value, sse: bool| {
        let mut request =
            server.http.post(server.url(&path)).bearer_auth(&token).header("Idempotency-Key", key).json(&body);
        if sse {
            request = request.header("Accept", "text/event-stream");
        }
        request.send()
    };
    let messages = format!("/api/v1/chat/sessions/{sid}/messages");
    // The repeat comes while the first reply is still being written.
    let slow = json!({"content": "slow one [[mock tokens=30 tps=30 delay_ms=0]]"});
    let (first, second) = tokio::join!(post(messages.clone(), "r1", slow.clone(), false), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        post(messages.clone(), "r1", slow.clone(), false).await
    });
    let first: SendMessageResponse = first.unwrap().json().await.unwrap();
    let second: SendMessageResponse = second.unwrap().json().await.unwrap();
    assert_eq!(first, second, "the repeat answers as the first");
    assert_eq!(server.mock.stats().requests, 1);
    // After it finished, as JSON and as SSE.
    let again: SendMessageResponse =
        post(messages.clone(), "r1", slow.clone(), false).await.unwrap().json().await.unwrap();
    assert_eq!(again, first);
    let sse = post(messages.clone(), "r1", slow.clone(), true).await.unwrap().text().await.unwrap();
    assert!(sse.contains(&first.assistant_message.content) && sse.contains("\"done\":true"), "{sse}");
    assert_eq!(server.mock.stats().requests, 1, "the model was asked once");
    assert_eq!(stored_messages(&server, &token, sid).await.len(), 2);

    // Regenerate and edit, each repeated.
    let regenerate = format!("/api/v1/chat/sessions/{sid}/regenerate");
    let r1: SendMessageResponse = post(regenerate.clone(), "g1", json!({}), false).await.unwrap().json().await.unwrap();
    let r2: SendMessageResponse = post(regenerate.clone(), "g1", json!({}), false).await.unwrap().json().await.unwrap();
    assert_eq!(r1, r2);
    let edit = format!("/api/v1/chat/sessions/{sid}/messages/{}/edit", first.user_message.id);
    let e1: SendMessageResponse =
        post(edit.clone(), "e1", json!({"content": "edited"}), false).await.unwrap().json().await.unwrap();
    let e2: SendMessageResponse =
        post(edit.clone(), "e1", json!({"content": "edited"}), false).await.unwrap().json().await.unwrap();
    assert_eq!(e1, e2);
    assert_eq!(server.mock.stats().requests, 3, "one reply each");
    assert_eq!(stored_messages(&server, &token, sid).await.len(), 5, "2 + a regenerated reply + an edit and its reply");

    // Bad keys are refused (too long, or with a space: the OpenAPI document's pattern); a
    // key of another session's message is a conflict.
    for bad in ["x".repeat(65), "two words".to_string()] {
        assert_eq!(
            error_of(post(messages.clone(), &bad, json!({"content": "hi"}), false).await.unwrap()).await,
            (400, ErrorCode::BadRequest),
            "{bad}"
        );
    }
    let other = server.create_session(&token).await;
    let response = post(format!("/api/v1/chat/sessions/{}/messages", other.id), "r1", json!({"content": "hi"}), false);
    assert_eq!(error_of(response.await.unwrap()).await, (409, ErrorCode::Conflict));
}

/// The key is kept in the database: after a restart, the repeat is still answered as the
/// first, and nothing new is stored or asked.
#[tokio::test]
async fn a_repeat_after_a_restart_is_still_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let vars = [("JWT_SECRET", common::SECRET)];
    let node = Process::start_with(dir.path(), &vars, std::process::Stdio::inherit());
    node.ready(&http).await;
    let token = node.register(&http, "restarted").await.token;
    let sid = node.create_session(&http, &token, None).await.id;
    let url = node.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    let send = || {
        http.post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", "boot")
            .json(&json!({"content": "survive"}))
            .send()
    };
    let first: SendMessageResponse = send().await.unwrap().json().await.unwrap();
    assert_eq!(node.terminate().code(), Some(0));

    let node = Process::start_with(dir.path(), &vars, std::process::Stdio::inherit());
    node.ready(&http).await;
    let url = node.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    let again: SendMessageResponse = http
        .post(&url)
        .bearer_auth(&token)
        .header("Idempotency-Key", "boot")
        .json(&json!({"content": "survive"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, first);
    let stored = node.get(&http, &token, &format!("/api/v1/chat/sessions/{sid}")).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 2, "nothing new stored");
}

/// The answer to a request over the WebSocket: its `ack`, or its `error`.
async fn answer_to(ws: &mut common::Ws, id: &str) -> ServerFrame {
    let frames = ws
        .recv_until(|f| match f {
            ServerFrame::Ack { id: Some(i), .. } | ServerFrame::Error { id: Some(i), .. } => i == id,
            _ => false,
        })
        .await;
    frames.last().unwrap().clone()
}

/// A send the database does not take in time answers `unavailable` without an `ack`, and
/// its message is stored once the database takes it. Meanwhile the session's tabs are told
/// to subscribe again (the actor, unsure of what is stored, reloads) and sends answer
/// `unavailable` while the write is still queued. Sent again with the same key once it is
/// stored, the send is answered as stored and its reply, never generated, is generated
/// then, once: over the WebSocket and over REST alike.
#[tokio::test]
async fn a_send_that_timed_out_is_answered_when_sent_again_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let stall = dir.path().join("stall-writes");
    let stall_var = stall.to_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let vars = [
        ("JWT_SECRET", common::SECRET),
        ("DATABASE_TIMEOUT_MS", "500"),
        ("RELAY_FAULT_WRITE_STALL_FILE", stall_var.as_str()),
        ("CHAT_DAILY_MESSAGE_QUOTA", "10"),
    ];
    let node = Process::start_with(dir.path(), &vars, std::process::Stdio::inherit());
    node.ready(&http).await;
    let token = node.register(&http, "late-writes").await.token;
    let sid = node.create_session(&http, &token, None).await.id;
    let stored = || async {
        let session = node.get(&http, &token, &format!("/api/v1/chat/sessions/{sid}")).await;
        serde_json::from_value::<Vec<Message>>(session["messages"].clone()).unwrap()
    };
    let mut ws = node.ws(&token).await;
    subscribe(&mut ws, sid).await;
    let send = |id: &str| json!({"type": "send", "id": id, "session_id": sid, "content": "late question", "client_message_id": "late"});

    std::fs::write(&stall, "").unwrap();
    ws.send(send("first")).await;
    // The answer and the word to the session's tabs travel apart: either may come first.
    let (mut answered, mut told) = (None, None);
    let _ = ws
        .recv_until(|f| {
            match f {
                ServerFrame::Error { id: Some(i), .. } | ServerFrame::Ack { id: Some(i), .. } if i == "first" => {
                    answered = Some(f.clone())
                }
                ServerFrame::Error { id: None, session_id, error } => told = Some((*session_id, error.code)),
                _ => {}
            }
            answered.is_some() && told.is_some()
        })
        .await;
    match answered {
        Some(ServerFrame::Error { error, .. }) => assert_eq!(error.code, ErrorCode::Unavailable),
        other => panic!("a send the database did not take in time is not acknowledged: {other:?}"),
    }
    assert_eq!(told, Some((Some(sid), ErrorCode::Unavailable)), "told to subscribe again");
    ws.send(send("meanwhile")).await;
    match answer_to(&mut ws, "meanwhile").await {
        ServerFrame::Error { error, .. } => assert_eq!(error.code, ErrorCode::Unavailable),
        other => panic!("refused while the first write is queued: {other:?}"),
    }

    std::fs::remove_file(&stall).unwrap();
    let landed = {
        let mut landed = Vec::new();
        for _ in 0..100 {
            landed = stored().await;
            if !landed.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        landed
    };
    assert_eq!(landed.len(), 1, "the message is stored once the database takes it, once: {landed:?}");
    // Charged as sent, once, though its send answered `unavailable`; the refused send
    // meanwhile costs nothing, and the repeat below nothing more.
    let quota = || async {
        let mut quota = (None, None);
        for _ in 0..40 {
            let me = node.get(&http, &token, "/api/v1/auth/me").await;
            quota = (me["quota"]["messages_today"].as_u64(), me["quota"]["remaining"].as_u64());
            if quota.0 != Some(0) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        quota
    };
    assert_eq!(quota().await, (Some(1), Some(9)), "a send that timed out is charged once");

    subscribe(&mut ws, sid).await;
    ws.send(send("again")).await;
    let frames = until_dones(&mut ws, sid, 1).await;
    let acked = acked(&frames, "again").expect("the repeat is acknowledged");
    assert_eq!(acked.id, landed[0].id, "as the message the first attempt stored");
    let done = frames.iter().find_map(|f| match f {
        ServerFrame::Done { message_id, finish_reason, .. } => Some((*message_id, *finish_reason)),
        _ => None,
    });
    let (reply_id, finish) = done.expect("its reply is generated");
    assert_eq!(finish, relay_protocol::FinishReason::Stop);
    let messages = stored().await;
    assert_eq!(messages.len(), 2, "one message, one reply: {messages:?}");
    assert_eq!((messages[0].id, messages[1].id), (landed[0].id, reply_id));
    assert_eq!(messages[1].status, relay_protocol::MessageStatus::Complete);
    // A third repeat is answered as stored, and starts nothing.
    ws.send(send("third")).await;
    assert!(matches!(answer_to(&mut ws, "third").await, ServerFrame::Ack { .. }));
    assert_eq!(stored().await.len(), 2);
    assert_eq!(quota().await, (Some(1), Some(9)), "its reply, generated on the repeat, costs nothing more");

    // Over REST: the same, with the reply in the answer.
    let url = node.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    let post = || {
        http.post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", "late-rest")
            .json(&json!({"content": "rest"}))
            .send()
    };
    std::fs::write(&stall, "").unwrap();
    assert_eq!(error_of(post().await.unwrap()).await, (503, ErrorCode::Unavailable));
    std::fs::remove_file(&stall).unwrap();
    let mut answered = None;
    for _ in 0..100 {
        let response = post().await.unwrap();
        if response.status() == 200 {
            answered = Some(response.json::<SendMessageResponse>().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let answered = answered.expect("answered once the write is stored");
    assert_eq!(answered.assistant_message.status, relay_protocol::MessageStatus::Complete);
    let messages = stored().await;
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(messages.iter().filter(|m| m.content == "rest").count(), 1, "stored once");
    assert_eq!(messages[2].id, answered.user_message.id);
    assert_eq!(messages[3].id, answered.assistant_message.id);
}
