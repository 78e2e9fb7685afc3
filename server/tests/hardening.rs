//! Issue "Hardening": each defect found by trying the server as a new user and as an
//! attacker would, with a test that failed before its fix, plus the abuse limits. Driven
//! over real sockets against the real server (in-process, or the real binary where a
//! restart or a signal is part of the story).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::flow::*;
use common::{Process, Read, SECRET, TestServer, Ws, error_of, reply_text, rss_bytes};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_mock_llm as mock;
use relay_protocol::{ErrorCode, FinishReason, Message, MessageStatus, Role, ServerFrame, UserRole};
use relay_server::session::Fault;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

fn hs256(claims: Value) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

async fn me(http: &reqwest::Client, url: String, token: &str) -> (u16, Value) {
    let response = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The messages of a `subscribed` snapshot for a fresh subscription of `ws`.
async fn snapshot_messages(ws: &mut Ws, sid: Uuid) -> Vec<Message> {
    ws.send(json!({"type": "subscribe", "id": "snap", "session_id": sid})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
    match frames.into_iter().last() {
        Some(ServerFrame::Subscribed { messages, .. }) => messages,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// Frames up to and including the error answering request `id`.
async fn until_error_for(ws: &mut Ws, id: &str) -> Vec<ServerFrame> {
    ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == id)).await
}

fn error_code(frames: &[ServerFrame]) -> ErrorCode {
    match frames.last() {
        Some(ServerFrame::Error { error, .. }) => error.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

// ---- 1. context order after queued sends ------------------------------------------------------

/// Two quick sends, then a third: the model, a late tab's snapshot and the store all read
/// "one, its reply, two, its reply, three" (before the fix, memory put both replies after
/// both questions, and the model got `user, user, assistant, assistant, user`).
#[tokio::test]
async fn replies_follow_the_messages_they_answer_everywhere() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "orderly").await;
    let mut ws = server.ws(&token).await;
    subscribe(&mut ws, sid).await;
    send(&mut ws, sid, "1", &format!("one {}", directive(20, 400))).await;
    send(&mut ws, sid, "2", &format!("two {}", directive(5, 1000))).await;
    until_dones(&mut ws, sid, 2).await;
    send(&mut ws, sid, "3", &format!("three {}", directive(7, 1000))).await;
    until_dones(&mut ws, sid, 1).await;

    let request = server.mock.stats().last_request.expect("the model got a request");
    let sent: Vec<(String, String)> = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect();
    let roles: Vec<&str> = sent.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant", "user"], "{sent:?}");
    assert!(sent[1].1.starts_with("one") && sent[3].1.starts_with("two") && sent[5].1.starts_with("three"));
    assert_eq!(sent[2].1, mock::reply_text(20, None));
    assert_eq!(sent[4].1, mock::reply_text(5, None));

    let stored = stored(&server, &token, sid).await.messages;
    let expected_roles = [Role::User, Role::Assistant, Role::User, Role::Assistant, Role::User, Role::Assistant];
    assert_eq!(stored.iter().map(|m| m.role).collect::<Vec<_>>(), expected_roles);
    assert!(stored.windows(2).all(|w| w[0].created_at < w[1].created_at), "stored in conversation order");
    // A tab that subscribes now sees exactly what the store holds, in the same order.
    let mut late = server.ws(&token).await;
    assert_eq!(snapshot_messages(&mut late, sid).await, stored);
}

// ---- 2. memory pinned by one client, and the caps --------------------------------------------------

/// One connection that asks for snapshot after snapshot of a session with long messages
/// (each about 1.2 MB) and never reads is closed with 4429 once its queue holds
/// `WS_OUTBOUND_QUEUE_BYTES` (4 MiB), instead of growing the server by hundreds of MiB.
/// The server is its own process, so its peak memory is its alone (tests running beside
/// this one would blur a measure of the test process): the peak may pass the memory it
/// had before by at most 40 MiB, the bounded queue, the snapshots in the making and the
/// allocator's noise (measured here: 4 to 22 MiB in debug builds, 26 under coverage on a
/// loaded machine), where 300 unbounded snapshots would take 350 MB and a queue bound of
/// 8 times the setting grew the server by 74 to 86 MiB.
#[tokio::test]
async fn a_client_that_never_reads_cannot_pin_memory() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let server = Process::start_with(dir.path(), &[("METRICS_TOKEN", "scrape")], std::process::Stdio::inherit());
    server.ready(&http).await;
    let token = server.register(&http, "hoarder").await.token;
    let sid = server.create_session(&http, &token, None).await.id;
    let mut ws = server.ws(&token).await;
    for i in 0..3 {
        send(&mut ws, sid, &format!("long{i}"), "[[mock tokens=200 bytes=2000 tps=0 delay_ms=0]]").await;
        until_dones(&mut ws, sid, 1).await;
    }
    // One snapshot, read, so the steps building one have been taken once already.
    assert_eq!(snapshot_messages(&mut ws, sid).await.len(), 6);
    ws.close().await;
    let (before, _) = common::process_memory(server.child.id());

    let mut hoarder = common::ws_small_buffer_at(server.addr.parse().unwrap(), &token).await;
    for i in 0..300 {
        hoarder.send(json!({"type": "subscribe", "id": format!("s{i}"), "session_id": sid})).await;
    }
    // It reads only now: whatever was queued, then the close.
    let code = hoarder.expect_close().await;
    assert_eq!(code, Some(4429), "a client that does not read is closed for it");
    let (_, peak) = common::process_memory(server.child.id());
    let grown = peak.saturating_sub(before);
    eprintln!("the server grew by {} KiB (peak {} KiB)", grown >> 10, peak >> 10);
    assert!(grown < 40 << 20, "the server grew by {} MiB for one client", grown >> 20);
    let metrics = http.get(server.url("/metrics")).bearer_auth("scrape").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("relay_ws_slow_closed_total 1"), "{metrics}");
    assert!(metrics.contains(r#"relay_ws_closes_total{code="4429"} 1"#), "{metrics}");
}

/// `WS_MAX_SUBSCRIPTIONS_PER_CONNECTION`: one more session than allowed answers
/// `limit_exceeded` (subscribe or send); leaving one makes room.
#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let server = TestServer::with(&[("WS_MAX_SUBSCRIPTIONS_PER_CONNECTION", "2")]).await;
    let (token, _, first) = user_with_session(&server, "watcher").await;
    let second = server.create_session(&token).await.id;
    let third = server.create_session(&token).await.id;
    let mut ws = server.ws(&token).await;
    subscribe(&mut ws, first).await;
    subscribe(&mut ws, second).await;
    subscribe(&mut ws, first).await; // the same session again is no new subscription

    ws.send(json!({"type": "subscribe", "id": "over", "session_id": third})).await;
    let frames = until_error_for(&mut ws, "over").await;
    assert_error(frames.last().unwrap(), ErrorCode::LimitExceeded, Some("over"), Some(third));
    send(&mut ws, third, "over-send", "hello").await;
    let frames = until_error_for(&mut ws, "over-send").await;
    assert_error(frames.last().unwrap(), ErrorCode::LimitExceeded, Some("over-send"), Some(third));
    assert!(stored(&server, &token, third).await.messages.is_empty(), "a refused send stores nothing");

    ws.send(json!({"type": "unsubscribe", "id": "u", "session_id": first})).await;
    ws.recv_until(|f| matches!(f, ServerFrame::Unsubscribed { .. })).await;
    subscribe(&mut ws, third).await;
}

/// `WS_MAX_CONNECTIONS_PER_USER`: one connection more than allowed is refused, 403
/// `limit_exceeded` when it authenticates by header, close 4409 by `auth` frame; closing
/// one makes room. Other users are not affected.
#[tokio::test]
async fn connections_per_user_are_capped() {
    let server = TestServer::with(&[("WS_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let (token, _) = server.register("tabby").await;
    let (other, _) = server.register("othertabs").await;
    let a = server.ws(&token).await;
    let _b = server.ws(&token).await;

    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        server.url("/api/v1/ws").replace("http", "ws"),
    )
    .unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "limit_exceeded");
        }
        other => panic!("a third connection must be refused, got {other:?}"),
    }
    let mut by_frame = server.ws_raw(None).await;
    by_frame.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(by_frame.expect_close().await, Some(4409));

    let _c = server.ws(&other).await; // another user is not counted
    a.close().await;
    common::eventually("the closed connection's place is given back", || async {
        server.state().hub.connections_of(server.state().tokens.verify(&token).unwrap().id) < 2
    })
    .await;
    let _d = server.ws(&token).await;
}

/// `CHAT_MAX_SESSIONS_PER_USER`: the next session is refused with `limit_exceeded` (REST
/// 403 and WebSocket), even when many are created at once; deleting one makes room.
#[tokio::test]
async fn sessions_per_user_are_capped() {
    let server = TestServer::with(&[("CHAT_MAX_SESSIONS_PER_USER", "3")]).await;
    let (token, _) = server.register("collector").await;
    let creates = (0..10)
        .map(|_| server.http.post(server.url("/api/v1/chat/sessions")).bearer_auth(&token).json(&json!({})).send());
    let statuses: Vec<u16> =
        futures::future::join_all(creates).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 7, "{statuses:?}");
    let metrics = server.state().metrics.render();
    assert!(metrics.contains(r#"relay_limits_refused_total{limit="sessions_per_user"} 7"#), "{metrics}");

    let refused = server.http.post(server.url("/api/v1/chat/sessions")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_of(refused).await, (403, ErrorCode::LimitExceeded));
    let mut ws = server.ws(&token).await;
    ws.send(json!({"type": "create_session", "id": "c"})).await;
    let frames = until_error_for(&mut ws, "c").await;
    assert_eq!(error_code(&frames), ErrorCode::LimitExceeded);

    let (_, list) = server.get(&token, "/api/v1/chat/sessions").await;
    let victim = list["sessions"][0]["id"].as_str().unwrap().to_string();
    let deleted =
        server.http.delete(server.url(&format!("/api/v1/chat/sessions/{victim}"))).bearer_auth(&token).send().await;
    assert_eq!(deleted.unwrap().status(), 200);
    assert_eq!(server.create_session(&token).await.title, "New chat");
}

// ---- 3. and 4. tokens: audience, issuer, admins ------------------------------------------------

/// With `JWT_AUDIENCE` and `JWT_ISSUER` set, both claims are required; an `aud` array
/// containing ours is accepted (RFC 7519).
#[tokio::test]
async fn audience_and_issuer_are_required_and_aud_may_be_an_array() {
    let server = TestServer::with(&[("JWT_AUDIENCE", "chat-api"), ("JWT_ISSUER", "https://host.example")]).await;
    let exp = now_secs() + 600;
    let sub = Uuid::new_v4().to_string();
    let url = server.url("/api/v1/auth/me");
    let cases = [
        (json!({"sub": sub, "exp": exp, "aud": "chat-api", "iss": "https://host.example"}), 200),
        (json!({"sub": sub, "exp": exp, "aud": ["other", "chat-api"], "iss": "https://host.example"}), 200),
        (json!({"sub": sub, "exp": exp, "iss": "https://host.example"}), 401),
        (json!({"sub": sub, "exp": exp, "aud": "chat-api"}), 401),
        (json!({"sub": sub, "exp": exp, "aud": ["other"], "iss": "https://host.example"}), 401),
        (json!({"sub": sub, "exp": exp, "aud": "chat-api", "iss": "https://evil.example"}), 401),
    ];
    for (claims, want) in cases {
        let (status, _) = me(&server.http, url.clone(), &hs256(claims.clone())).await;
        assert_eq!(status, want, "{claims}");
    }
    let (token, _) = server.register("ownaccount").await;
    assert_eq!(me(&server.http, url, &token).await.0, 200, "tokens this server issues carry both claims");
}

/// A host token is an admin only through its `role` claim: a display name that matches an
/// admin's username grants nothing.
#[tokio::test]
async fn host_tokens_are_admins_only_by_their_role_claim() {
    let server = TestServer::with(&[("CHAT_ADMIN_USERS", "boss")]).await;
    let url = server.url("/api/v1/auth/me");
    let exp = now_secs() + 600;
    for name_claim in ["name", "username", "preferred_username"] {
        let token = hs256(json!({"sub": Uuid::new_v4().to_string(), "exp": exp, name_claim: "boss"}));
        let (status, body) = me(&server.http, url.clone(), &token).await;
        assert_eq!(status, 200);
        assert_eq!(body["user"]["role"], "user", "{name_claim}: boss");
        assert_eq!(body["quota"]["limit"], 100);
    }
    let token = hs256(json!({"sub": Uuid::new_v4().to_string(), "exp": exp, "name": "someone", "role": "admin"}));
    assert_eq!(me(&server.http, url, &token).await.1["user"]["role"], "admin");
}

/// `CHAT_ADMIN_USERS` is read at every login and every token check: a server restarted
/// without a name makes that account an ordinary user at once, through its old token too.
#[tokio::test]
async fn removing_an_admin_name_revokes_it() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let created = common::create_admin(dir.path(), &[("CHAT_ADMIN_USERS", "boss")], "boss", "password123");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let first = Process::start_with(dir.path(), &[("CHAT_ADMIN_USERS", "boss")], std::process::Stdio::inherit());
    first.ready(&http).await;
    let registered: relay_protocol::AuthResponse =
        first.login(&http, "boss", "password123").await.json().await.unwrap();
    assert_eq!(registered.user.role, UserRole::Admin);
    let metrics = http.get(first.url("/metrics")).bearer_auth(&registered.token).send().await.unwrap();
    assert_eq!(metrics.status(), 200, "an admin reads the metrics");
    assert!(first.terminate().success());

    let second = Process::start(dir.path());
    second.ready(&http).await;
    let (status, body) = me(&http, second.url("/api/v1/auth/me"), &registered.token).await;
    assert_eq!((status, body["user"]["role"].as_str()), (200, Some("user")), "the old token lost admin");
    let metrics = http.get(second.url("/metrics")).bearer_auth(&registered.token).send().await.unwrap();
    assert_eq!(metrics.status(), 404);
    let login: Value = second.login(&http, "boss", "password123").await.json().await.unwrap();
    assert_eq!(login["user"]["role"], "user", "a fresh login is not admin either");
    assert!(second.terminate().success());
}

// ---- 5. oversized first frame ------------------------------------------------------------------

/// A frame over `WS_MAX_FRAME_BYTES` closes with 1009, also when it is the first frame of
/// a connection that has not authenticated yet.
#[tokio::test]
async fn an_oversized_first_frame_closes_1009() {
    let server = TestServer::start().await;
    let mut ws = server.ws_raw(None).await;
    let huge = format!(r#"{{"type":"auth","token":"{}"}}"#, "x".repeat(100 * 1024));
    ws.send_raw(WsMessage::Text(huge.into())).await;
    assert_eq!(ws.expect_close().await, Some(1009));
}

// ---- 7. delete racing the actor's start ----------------------------------------------------------

/// A delete that races the first use of a session wins for good: whatever the timing, a
/// send after the delete answered is `not_found` (before the fix, an actor still starting
/// missed the delete and kept accepting sends).
#[tokio::test]
async fn a_send_after_a_delete_is_not_found_whatever_the_timing() {
    let server = TestServer::start().await;
    let (token, _) = server.register("racer").await;
    let mut ws = server.ws(&token).await;
    for i in 0..30 {
        let sid = server.create_session(&token).await.id;
        let delete = server.http.delete(server.url(&format!("/api/v1/chat/sessions/{sid}"))).bearer_auth(&token).send();
        let (_, deleted) =
            tokio::join!(ws.send(json!({"type": "subscribe", "id": format!("sub{i}"), "session_id": sid})), delete);
        assert_eq!(deleted.unwrap().status(), 200);
        let id = format!("after{i}");
        send(&mut ws, sid, &id, "are you still there?").await;
        let frames = ws
            .recv_until(|f| {
                matches!(f, ServerFrame::Error { id: Some(x), .. } if *x == id)
                    || matches!(f, ServerFrame::Ack { id: Some(x), .. } if *x == id)
            })
            .await;
        assert!(
            matches!(frames.last(), Some(ServerFrame::Error { error, .. }) if error.code == ErrorCode::NotFound),
            "round {i}: a send to a deleted session must be not_found, got {:?}",
            frames.last()
        );
    }
}

// ---- 8. a panicking actor is supervised ----------------------------------------------------------

/// A session actor that panics mid-reply: the reply is stored as `error`, its watchers
/// get `done` `error` and an `error` telling them to resubscribe, the upstream stream is
/// closed, and the next use starts a fresh actor that works.
#[tokio::test]
async fn a_panicked_actor_is_forgotten_and_replaced() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "crashy").await;
    let mut ws = server.ws(&token).await;
    subscribe(&mut ws, sid).await;
    send(&mut ws, sid, "long", &format!("long {}", directive(2000, 40))).await;
    let frames = until_deltas(&mut ws, sid, 2).await;
    let reply = started_reply(&frames);
    let started = server.state().sessions.actors_started();

    server.state().sessions.inject_fault(sid, Fault::Panic).await.unwrap();
    let frames =
        ws.recv_until(|f| matches!(f, ServerFrame::Error { id: None, session_id: Some(s), .. } if *s == sid)).await;
    let done = frames.iter().find_map(|f| match f {
        ServerFrame::Done { message_id, finish_reason, error, .. } if *message_id == reply => {
            Some((*finish_reason, error.clone()))
        }
        _ => None,
    });
    let (reason, error) = done.expect("the watcher got done for the running reply");
    assert_eq!(reason, FinishReason::Error);
    assert_eq!(error.unwrap().code, ErrorCode::Internal);
    assert!(server.mock.wait_for_closed_early(1, Duration::from_secs(10)).await, "the upstream stream was closed");
    let stored = stored_message(&server, &token, sid, reply).await.unwrap();
    assert_eq!(stored.status, MessageStatus::Error);
    assert!(!stored.content.is_empty());

    // The next use starts a fresh actor, which answers.
    subscribe(&mut ws, sid).await;
    send(&mut ws, sid, "again", &format!("again {}", directive(5, 1000))).await;
    let frames = until_dones(&mut ws, sid, 1).await;
    assert_eq!(done_of(&frames, started_reply(&frames)), FinishReason::Stop);
    assert_eq!(server.state().sessions.actors_started(), started + 1);
    assert_eq!(server.state().sessions.live_actors(), 1);
}

// ---- 9. shutdown order -------------------------------------------------------------------------

/// SIGTERM with replies running and sends still arriving: every running reply is stored
/// as `cancelled` and its watcher gets `done` before the connection's 1001; a send that
/// arrives during shutdown is refused `unavailable` (never a 500, never a reply started
/// only to be killed); every connection gets its close frame before the process exits.
#[tokio::test]
async fn shutdown_refuses_new_work_then_stores_replies_then_closes_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let server = Process::start_with(dir.path(), &[("MOCK_TOKENS_PER_SEC", "50")], std::process::Stdio::inherit());
    server.ready(&http).await;
    let token = server.register(&http, "stopper").await.token;

    let mut watchers = Vec::new();
    for i in 0..12 {
        let sid = server.create_session(&http, &token, None).await.id;
        let mut ws = server.ws(&token).await;
        send(&mut ws, sid, &format!("w{i}"), "[[mock tokens=5000]]").await;
        let frames = until_deltas(&mut ws, sid, 1).await;
        watchers.push((ws, sid, started_reply(&frames)));
    }
    let busy = server.create_session(&http, &token, None).await.id;
    let senders = (0..4).map(|_| {
        let (http, url, token) =
            (http.clone(), server.url(&format!("/api/v1/chat/sessions/{busy}/messages")), token.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                match http.post(&url).bearer_auth(&token).json(&json!({"content": "[[mock tokens=3]]"})).send().await {
                    Ok(r) => statuses.push(r.status().as_u16()),
                    Err(_) => break, // the process is gone
                }
            }
            statuses
        })
    });
    let senders: Vec<_> = senders.collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = server.child.id();
    let stopping = tokio::task::spawn_blocking(move || server.terminate());

    for (ws, sid, reply) in &mut watchers {
        let mut done = None;
        loop {
            match ws.read().await {
                Read::Frame(ServerFrame::Done { message_id, finish_reason, .. }) if message_id == *reply => {
                    done = Some(finish_reason)
                }
                Read::Frame(_) => {}
                Read::Closed(code) => {
                    assert_eq!(code, Some(1001), "session {sid}: every connection gets 1001");
                    break;
                }
            }
        }
        assert_eq!(done, Some(FinishReason::Cancelled), "session {sid}: done before the close");
    }
    assert!(stopping.await.unwrap().success(), "pid {pid} exits cleanly");
    let mut statuses = Vec::new();
    for sender in senders {
        statuses.extend(sender.await.unwrap());
    }
    // Evidence, not just the absence of a bad status: sends were answered before the
    // shutdown, and sends that arrived during it were refused `unavailable`.
    assert!(statuses.contains(&200), "sends before the shutdown were answered: {statuses:?}");
    assert!(statuses.contains(&503), "a send during the shutdown is refused unavailable: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "sends during shutdown: {statuses:?}");

    // What was stored says the same: every running reply `cancelled`, nothing left generating.
    let again = Process::start(dir.path());
    again.ready(&http).await;
    for (_, sid, reply) in &watchers {
        let got = again.get(&http, &token, &format!("/api/v1/chat/sessions/{sid}")).await;
        let stored = got["messages"].as_array().unwrap().iter().find(|m| m["id"] == reply.to_string()).cloned();
        assert_eq!(stored.expect("the reply was stored")["status"], "cancelled");
    }
    let got = again.get(&http, &token, &format!("/api/v1/chat/sessions/{busy}")).await;
    let messages = got["messages"].as_array().unwrap();
    let answered = messages.iter().filter(|m| m["role"] == "assistant" && m["status"] == "complete").count();
    assert!(answered > 0, "the busy session holds the replies answered before the shutdown: {got}");
    assert!(messages.iter().all(|m| m["status"] != "error" && m["status"] != "generating"), "{got}");
    assert!(again.terminate().success());
}

// ---- 10. one slow session does not stall a connection ------------------------------------------

/// A session whose actor is stuck (as on a slow database) holds up only its own requests:
/// on the same connection a ping and another session's subscribe are answered first.
#[tokio::test]
async fn one_stuck_session_does_not_stall_the_connection() {
    let server = TestServer::start().await;
    let (token, _, stuck) = user_with_session(&server, "multiplexer").await;
    let free = server.create_session(&token).await.id;
    let mut ws = server.ws(&token).await;
    server.state().sessions.inject_fault(stuck, Fault::Stall(Duration::from_secs(3))).await.unwrap();
    ws.send(json!({"type": "subscribe", "id": "stuck", "session_id": stuck})).await;
    ws.send(json!({"type": "ping", "id": "p"})).await;
    ws.send(json!({"type": "subscribe", "id": "free", "session_id": free})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { id: Some(i), .. } if i == "stuck")).await;
    let position = |want: &dyn Fn(&ServerFrame) -> bool| frames.iter().position(want);
    let pong = position(&|f| matches!(f, ServerFrame::Pong { id: Some(i) } if i == "p")).expect("pong");
    let other = position(&|f| matches!(f, ServerFrame::Subscribed { id: Some(i), .. } if i == "free")).expect("free");
    assert!(pong < frames.len() - 1 && other < frames.len() - 1, "answered before the stuck session: {frames:?}");
}

// ---- 11. login floods ----------------------------------------------------------------------------

/// Password hashes run on a bounded number of threads: a flood of logins past the queue
/// is answered `unavailable` with `Retry-After` at once; the rest are checked. (The
/// failed-login limit is raised out of the way: it would refuse most of the flood first.)
#[tokio::test]
async fn login_floods_are_bounded() {
    let server = TestServer::with(&[
        ("AUTH_HASH_CONCURRENCY", "1"),
        ("AUTH_HASH_QUEUE", "1"),
        ("AUTH_LOGIN_FAILURES_PER_USERNAME", "1000"),
    ])
    .await;
    server.register("victim").await;
    let logins = (0..24).map(|_| {
        server
            .http
            .post(server.url("/api/v1/auth/login"))
            .json(&json!({"username": "victim", "password": "wrong-password"}))
            .send()
    });
    let mut refused = 0;
    let mut checked = 0;
    for response in futures::future::join_all(logins).await {
        let response = response.unwrap();
        if response.status() == 503 {
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(error_of(response).await, (503, ErrorCode::Unavailable));
            refused += 1;
        } else {
            assert_eq!(error_of(response).await, (401, ErrorCode::Unauthorized));
            checked += 1;
        }
    }
    assert!(refused > 0 && checked > 0, "refused {refused}, checked {checked}");
    let metrics = server.state().metrics.render();
    assert!(
        metrics.contains(&format!(r#"relay_limits_refused_total{{limit="password_queue"}} {refused}"#)),
        "{metrics}"
    );
    assert_eq!(server.state().passwords.in_flight(), 0);
}

// ---- 12. the automatic title never overwrites a rename -----------------------------------------

/// A rename racing a session's first message wins whatever the order: the automatic title
/// is only set while the title is still the default.
#[tokio::test]
async fn a_rename_racing_the_first_message_is_kept() {
    let server = TestServer::start().await;
    let (token, _) = server.register("namer").await;
    let mut ws = server.ws(&token).await;
    for i in 0..20 {
        let sid = server.create_session(&token).await.id;
        let title = format!("Mine {i}");
        let (id, content) = (format!("m{i}"), format!("first message {i} [[mock tokens=1]]"));
        let (_, renamed) = tokio::join!(send(&mut ws, sid, &id, &content), server.rename(&token, sid, &title));
        assert_eq!(renamed.status(), 200);
        until_dones(&mut ws, sid, 1).await;
        assert_eq!(stored(&server, &token, sid).await.session.title, title, "round {i}");
    }
}

// ---- 13. bounded replies -------------------------------------------------------------------------

/// A mock directive asking for gigabytes is refused by the mock (a 502 `upstream_error`,
/// nothing built), and a reply longer than `CHAT_MAX_REPLY_BYTES` from any upstream is cut
/// there and ends with `length`.
#[tokio::test]
async fn replies_are_bounded_whatever_the_upstream_sends() {
    let server = TestServer::with(&[("CHAT_MAX_REPLY_BYTES", "1000"), ("CHAT_MAX_TOKENS", "100000")]).await;
    let (token, _, sid) = user_with_session(&server, "greedy").await;
    let before = rss_bytes();
    let response = server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
        .bearer_auth(&token)
        .json(&json!({"content": "all of it [[mock bytes=100000000]]"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await, (502, ErrorCode::UpstreamError));
    assert!(rss_bytes().saturating_sub(before) < 50 << 20);

    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "long", "[[mock tokens=100 bytes=100 tps=0 delay_ms=0]]").await;
    let frames = until_dones(&mut ws, sid, 1).await;
    let reply = started_reply(&frames);
    assert_eq!(done_of(&frames, reply), FinishReason::Length);
    let text = reply_text(&frames, reply);
    assert_eq!(text.len(), 1000);
    assert!(mock::reply_text(100, Some(100)).starts_with(&text));
    let stored = stored_message(&server, &token, sid, reply).await.unwrap();
    assert_eq!((stored.content.len(), stored.status), (1000, MessageStatus::Complete));
}

// ---- 14. REST edges --------------------------------------------------------------------------------

/// Every error answers the JSON error body: an oversized body anywhere, a wrong method,
/// an unknown path, a WebSocket path without an upgrade.
#[tokio::test]
async fn every_rest_error_is_json() {
    let server = TestServer::start().await;
    let (token, _) = server.register("edgy").await;
    let big = "x".repeat(100 * 1024);
    let response =
        server.http.post(server.url("/api/v1/chat/sessions")).bearer_auth(&token).body(big.clone()).send().await;
    assert_eq!(error_of(response.unwrap()).await, (413, ErrorCode::TooLarge));
    let response = server
        .http
        .post(server.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    assert_eq!(error_of(response.unwrap()).await, (413, ErrorCode::TooLarge));
    let response = server.http.put(server.url("/api/v1/chat/sessions")).bearer_auth(&token).send().await;
    assert_eq!(error_of(response.unwrap()).await, (405, ErrorCode::MethodNotAllowed));
    let response = server.http.post(server.url("/healthz")).send().await;
    assert_eq!(error_of(response.unwrap()).await, (405, ErrorCode::MethodNotAllowed));
    let response = server.http.get(server.url("/api/v1/nothing/here")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["message"], "no such endpoint", "not \"session not found\"");
    let response = server.http.get(server.url("/api/v1/ws")).bearer_auth(&token).send().await.unwrap();
    assert!(response.status().is_client_error());
    assert_eq!(error_of(response).await.1, ErrorCode::BadRequest);
    // Outside the API, paths belong to the browser client (its routes, or how to build it).
    let response = server.http.get(server.url("/c/some-route")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    // The page may not be framed, sniffed or leak its address, and runs only its own code.
    let csp = response.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
}

/// A REST send queued behind a reply answers `not_found` when the session is deleted
/// meanwhile, and `unavailable` (503) when the server shuts down meanwhile; never 500.
#[tokio::test]
async fn queued_rest_sends_answer_what_became_of_their_session() {
    for shutdown in [false, true] {
        let mut server = TestServer::start().await;
        let (token, _, sid) = user_with_session(&server, "queued").await;
        let mut ws = server.ws(&token).await;
        send(&mut ws, sid, "running", &format!("long {}", directive(5000, 50))).await;
        until_deltas(&mut ws, sid, 1).await;
        let queued = {
            let (http, url, token) =
                (server.http.clone(), server.url(&format!("/api/v1/chat/sessions/{sid}/messages")), token.clone());
            tokio::spawn(
                async move { http.post(url).bearer_auth(token).json(&json!({"content": "me next"})).send().await },
            )
        };
        // The queued send is stored (and broadcast) before it waits.
        ws.recv_until(|f| matches!(f, ServerFrame::Message { message, .. } if message.content == "me next")).await;
        if shutdown {
            server.shutdown().await;
        } else {
            let deleted = server
                .http
                .delete(server.url(&format!("/api/v1/chat/sessions/{sid}")))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(deleted.status(), 200);
        }
        let response = queued.await.unwrap().unwrap();
        let want = if shutdown { (503, ErrorCode::Unavailable) } else { (404, ErrorCode::NotFound) };
        assert_eq!(error_of(response).await, want, "shutdown: {shutdown}");
    }
}

// ---- 18. origins -----------------------------------------------------------------------------------

/// With `CORS_ALLOWED_ORIGINS` set, a WebSocket upgrade from a page of another origin is
/// refused 403 `forbidden`; the allowed origin, the server's own origin and non-browser
/// clients (no `Origin`) connect. Without the setting, tokens (never cookies) are the only
/// gate and any origin connects.
#[tokio::test]
async fn websocket_upgrades_respect_the_allowed_origins() {
    async fn status(server: &TestServer, token: &str, origin: Option<&str>) -> u16 {
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/api/v1/ws",
            server.addr
        ))
        .unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((_, response)) => response.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "forbidden");
                response.status().as_u16()
            }
            Err(e) => panic!("{e}"),
        }
    }
    let server = TestServer::with(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let (token, _) = server.register("origins").await;
    assert_eq!(status(&server, &token, Some("https://evil.example")).await, 403);
    assert_eq!(status(&server, &token, Some("https://app.example.com")).await, 101);
    assert_eq!(status(&server, &token, Some(&format!("http://{}", server.addr))).await, 101);
    assert_eq!(status(&server, &token, None).await, 101);

    let open = TestServer::start().await;
    let (token, _) = open.register("anyorigin").await;
    assert_eq!(status(&open, &token, Some("https://evil.example")).await, 101);
}

// ---- 19. secrets never logged ----------------------------------------------------------------------

/// A whole session at `RUST_LOG=debug` (register, login, a wrong password, WebSocket auth by
/// frame, streamed and whole replies, metrics) leaves no token, password, API key or secret
/// in the log.
#[tokio::test]
async fn secrets_never_reach_the_log() {
    const JWT_SECRET: &str = "jwt-secret-never-logged-0123456789abcdef";
    const API_KEY: &str = "provider-key-never-logged-5678";
    const METRICS_TOKEN: &str = "metrics-token-never-logged-9012";
    const PASSWORD: &str = "password-never-logged-3456";
    let upstream = mock::MockLlm::start(
        mock::MockSettings { api_key: Some(API_KEY.into()), ..common::fast_mock() },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // An admin's account is the operator's to create (its name cannot be registered).
    let created = common::create_admin(dir.path(), &[("CHAT_ADMIN_USERS", "logged")], "logged", PASSWORD);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let server = Process::start_with(
        dir.path(),
        &[
            ("RUST_LOG", "debug"),
            ("JWT_SECRET", JWT_SECRET),
            ("SAMBANOVA_API_KEY", API_KEY),
            ("SAMBANOVA_API_BASE", &upstream.base_url()),
            ("METRICS_TOKEN", METRICS_TOKEN),
            ("CHAT_ADMIN_USERS", "logged"),
        ],
        log.into(),
    );
    let http = reqwest::Client::new();
    server.ready(&http).await;
    let first: Value = server.login(&http, "logged", PASSWORD).await.json().await.unwrap();
    let first_token = first["token"].as_str().unwrap().to_string();
    assert_eq!(first["user"]["role"], "admin");
    let wrong = server.login(&http, "logged", &format!("{PASSWORD}-wrong")).await;
    assert_eq!(wrong.status(), 401);
    let login: Value = server.login(&http, "logged", PASSWORD).await.json().await.unwrap();
    let token = login["token"].as_str().unwrap().to_string();
    let sid = server.create_session(&http, &token, None).await.id;

    let mut ws = common::ws_at(&server.addr, None).await;
    ws.send(json!({"type": "auth", "token": token})).await;
    assert!(matches!(ws.recv().await, ServerFrame::Ready { .. }));
    send(&mut ws, sid, "1", "hello over the socket").await;
    until_dones(&mut ws, sid, 1).await;
    let mut bad = common::ws_at(&server.addr, None).await;
    bad.send(json!({"type": "auth", "token": format!("{token}x")})).await;
    assert_eq!(bad.expect_close().await, Some(4401));
    let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    let whole = http.post(&url).bearer_auth(&first_token).json(&json!({"content": "and whole"})).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let streamed = http
        .post(&url)
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .json(&json!({"content": "and streamed"}))
        .send()
        .await
        .unwrap();
    assert!(streamed.text().await.unwrap().contains("\"done\":true"));
    let metrics = http.get(server.url("/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let refused = http.get(server.url("/api/v1/auth/me")).bearer_auth("not.a.token").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(server.terminate().success());

    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("relay-chat listening") && logged.contains("DEBUG"), "the log is at debug level: {logged}");
    for (what, secret) in [
        ("the JWT secret", JWT_SECRET),
        ("the API key", API_KEY),
        ("the metrics token", METRICS_TOKEN),
        ("the password", PASSWORD),
        ("a token", first_token.as_str()),
        ("a token", token.as_str()),
        // A token's signature alone identifies it.
        ("a token signature", token.rsplit('.').next().unwrap()),
    ] {
        assert!(!logged.contains(secret), "{what} appears in the log");
    }
}

// ---- the caps together -------------------------------------------------------------------------

/// Distinct limits do not leak into each other: a user at every cap can still read.
#[tokio::test]
async fn a_user_at_the_caps_can_still_read_history() {
    let server =
        TestServer::with(&[("CHAT_MAX_SESSIONS_PER_USER", "1"), ("WS_MAX_SUBSCRIPTIONS_PER_CONNECTION", "1")]).await;
    let (token, _, sid) = user_with_session(&server, "capped").await;
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "x", &format!("hello {}", directive(3, 1000))).await;
    until_dones(&mut ws, sid, 1).await;
    let refused = server.http.post(server.url("/api/v1/chat/sessions")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_of(refused).await.1, ErrorCode::LimitExceeded);
    let history = stored(&server, &token, sid).await;
    assert_eq!(history.messages.len(), 2);
    let ids: HashSet<Uuid> = snapshot_messages(&mut ws, sid).await.into_iter().map(|m| m.id).collect();
    assert_eq!(ids, history.messages.iter().map(|m| m.id).collect::<HashSet<Uuid>>());
    // The connection is still healthy at the caps: our close is answered by the server's
    // own, a normal one (not a close for a cap, nor a dropped socket).
    ws.stream.send(WsMessage::Close(None)).await.unwrap();
    let answer = tokio::time::timeout(common::WAIT, ws.stream.next()).await.expect("the close is answered");
    match answer {
        Some(Ok(WsMessage::Close(frame))) => {
            let code = frame.map(|f| u16::from(f.code));
            assert!(code.is_none() || code == Some(1000), "a normal close, got {code:?}");
        }
        other => panic!("expected the server's close frame, got {other:?}"),
    }
}
