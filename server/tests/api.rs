//! REST API, auth and persistence tests: the real server over real HTTP.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Process, SECRET, TestServer, error_of};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_mock_llm::reply_text;
use relay_protocol::{
    ErrorCode, Message, MessageStatus, Role, SendMessageResponse, Session, SessionList, SessionWithMessages, SseEvent,
};
use serde_json::{Value, json};
use uuid::Uuid;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

async fn me_status(server: &TestServer, token: &str) -> u16 {
    server.http.get(server.url("/api/v1/auth/me")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

async fn send_json(server: &TestServer, token: &str, session: Uuid, content: &str) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{session}/messages")))
        .bearer_auth(token)
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    let r = server.http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn register_login_me() {
    let server = TestServer::start().await;
    let (token, id) = server.register("alice").await;
    let (status, me) = server.get(&token, "/api/v1/auth/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["user"]["id"], id.to_string());
    assert_eq!(me["user"]["username"], "alice");
    assert_eq!(me["user"]["role"], "user");
    assert_eq!(me["quota"]["limit"], 100);
    assert_eq!(me["quota"]["messages_today"], 0);

    let login = |password: &'static str| {
        server
            .http
            .post(server.url("/api/v1/auth/login"))
            .json(&json!({"username": "alice", "password": password}))
            .send()
    };
    let r = login("password123").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(me_status(&server, body["token"].as_str().unwrap()).await, 200);

    assert_eq!(error_of(login("wrong-password").await.unwrap()).await, (401, ErrorCode::Unauthorized));
    let r = server
        .http
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"username": "nobody", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, ErrorCode::Unauthorized));
}

#[tokio::test]
async fn registration_rules() {
    let server = TestServer::start().await;
    server.register("bob").await;
    let register = |username: &str, password: &str| {
        server
            .http
            .post(server.url("/api/v1/auth/register"))
            .json(&json!({"username": username, "password": password}))
            .send()
    };
    assert_eq!(error_of(register("bob", "password123").await.unwrap()).await, (409, ErrorCode::Conflict));
    assert_eq!(error_of(register("ab", "password123").await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(register(&"a".repeat(33), "password123").await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(register("bad name", "password123").await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(register("carol", "short").await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(register("carol", &"p".repeat(1025)).await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(register("a.b-c_9", "12345678").await.unwrap().status(), 201);
    // A password no account can have fails at once, without spending a hash on it.
    let login = server
        .http
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"username": "bob", "password": "p".repeat(5000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(login).await, (401, ErrorCode::Unauthorized));
}

#[tokio::test]
async fn admins_are_unlimited() {
    let server = TestServer::with(&[("CHAT_ADMIN_USERS", "root,ops")]).await;
    let (token, _) = server.admin("root").await;
    let (_, me) = server.get(&token, "/api/v1/auth/me").await;
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["quota"]["limit"], Value::Null);
    let (_, quota) = server.get(&token, "/api/v1/chat/quota").await;
    assert_eq!(quota["remaining"], Value::Null);
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let server = TestServer::with(&[("JWT_ISSUER", "relay"), ("JWT_AUDIENCE", "chat")]).await;
    let (good, id) = server.register("dave").await;
    assert_eq!(me_status(&server, &good).await, 200);

    let claims = |exp: u64, aud: &str| json!({"sub": id, "exp": exp, "iat": now(), "iss": "relay", "aud": aud, "username": "dave"});
    // Signed with the right key but expired (beyond the leeway).
    assert_eq!(me_status(&server, &hs256(claims(now() - 3600, "chat"), SECRET)).await, 401);
    // Forged: right claims, wrong key.
    assert_eq!(
        me_status(&server, &hs256(claims(now() + 3600, "chat"), "some-other-secret-0123456789abcdef")).await,
        401
    );
    // Right key, wrong audience.
    assert_eq!(me_status(&server, &hs256(claims(now() + 3600, "elsewhere"), SECRET)).await, 401);
    // Right key, wrong issuer.
    let wrong_iss = json!({"sub": id, "exp": now() + 3600, "iss": "evil", "aud": "chat"});
    assert_eq!(me_status(&server, &hs256(wrong_iss, SECRET)).await, 401);
    // No expiry at all.
    assert_eq!(me_status(&server, &hs256(json!({"sub": id, "iss": "relay", "aud": "chat"}), SECRET)).await, 401);
    // alg: none, unsigned.
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims(now() + 3600, "chat")));
    assert_eq!(me_status(&server, &none).await, 401);
    // Tampered payload with the original signature.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(json!({"sub": Uuid::new_v4(), "exp": now() + 3600, "iss": "relay", "aud": "chat"})),
        parts[2]
    );
    assert_eq!(me_status(&server, &tampered).await, 401);
    // Garbage, and no token at all.
    assert_eq!(me_status(&server, "not.a.token").await, 401);
    let r = server.http.get(server.url("/api/v1/auth/me")).send().await.unwrap();
    assert_eq!(error_of(r).await, (401, ErrorCode::Unauthorized));
    // A host application's token with the same key, issuer and audience is accepted,
    // for a user this server has never seen.
    let host = hs256(
        json!({"sub": Uuid::new_v4(), "exp": now() + 600, "iss": "relay", "aud": "chat", "preferred_username": "erin"}),
        SECRET,
    );
    let r = server.http.get(server.url("/api/v1/auth/me")).bearer_auth(&host).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["user"]["username"], "erin");
}

#[tokio::test]
async fn host_tokens_signed_with_rs256_are_accepted() {
    let public = include_str!("fixtures/host_public.pem");
    let private = include_str!("fixtures/host_private.pem");
    let server = TestServer::with(&[("JWT_PUBLIC_KEY_PEM", public)]).await;
    let claims = json!({"sub": Uuid::new_v4(), "exp": now() + 600, "role": "admin", "name": "frank"});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, me) = server.get(&token, "/api/v1/auth/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["user"]["role"], "admin");
    // The same claims as HS256 signed with the public key text (the classic key-confusion
    // attack) must fail: HS256 uses only the configured secret.
    let confused = hs256(claims, public);
    assert_eq!(me_status(&server, &confused).await, 401);
}

#[tokio::test]
async fn host_tokens_signed_with_es256_are_accepted() {
    let public = include_str!("fixtures/host_ec_public.pem");
    let private = include_str!("fixtures/host_ec_private.pem");
    let server = TestServer::with(&[("JWT_PUBLIC_KEY_PEM", public), ("JWT_ISSUER", "host")]).await;
    let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
    let sign = |claims: Value| jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
    let good = sign(json!({"sub": Uuid::new_v4(), "exp": now() + 600, "iss": "host", "preferred_username": "gus"}));
    let (status, me) = server.get(&good, "/api/v1/auth/me").await;
    assert_eq!(
        (status, me["user"]["username"].as_str(), me["user"]["role"].as_str()),
        (200, Some("gus"), Some("user"))
    );
    let wrong_issuer = sign(json!({"sub": Uuid::new_v4(), "exp": now() + 600, "iss": "other"}));
    assert_eq!(me_status(&server, &wrong_issuer).await, 401);
    // An algorithm the key does not pin is refused even when the signature would check out.
    let rs = include_str!("fixtures/host_private.pem");
    let other_alg = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": Uuid::new_v4(), "exp": now() + 600, "iss": "host"}),
        &EncodingKey::from_rsa_pem(rs.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(me_status(&server, &other_alg).await, 401);
}

#[tokio::test]
async fn session_crud_and_pagination() {
    let server = TestServer::start().await;
    let (token, _) = server.register("gina").await;

    let r = server.http.post(server.url("/api/v1/chat/sessions")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 201, "an empty body is allowed");
    let first: Session = r.json().await.unwrap();
    assert_eq!(first.title, "New chat");
    let r = server
        .http
        .post(server.url("/api/v1/chat/sessions"))
        .bearer_auth(&token)
        .json(&json!({"title": "  Trip plans "}))
        .send()
        .await
        .unwrap();
    let titled: Session = r.json().await.unwrap();
    assert_eq!(titled.title, "Trip plans");
    for _ in 0..3 {
        server.create_session(&token).await;
    }

    let (status, page) = server.get(&token, "/api/v1/chat/sessions?page=1&per_page=2").await;
    assert_eq!(status, 200);
    let page: SessionList = serde_json::from_value(page).unwrap();
    assert_eq!((page.total, page.page, page.per_page, page.total_pages, page.sessions.len()), (5, 1, 2, 3, 2));
    let (_, last) = server.get(&token, "/api/v1/chat/sessions?page=3&per_page=2").await;
    let last: SessionList = serde_json::from_value(last).unwrap();
    assert_eq!(last.sessions.len(), 1);
    let (_, beyond) = server.get(&token, "/api/v1/chat/sessions?page=9&per_page=2").await;
    assert_eq!(beyond["sessions"].as_array().unwrap().len(), 0);
    // Out of range is refused, as the OpenAPI document's bounds say (not quietly clamped).
    for query in ["per_page=1000", "per_page=0", "page=0"] {
        let r = server.http.get(server.url(&format!("/api/v1/chat/sessions?{query}"))).bearer_auth(&token).send();
        assert_eq!(error_of(r.await.unwrap()).await, (400, ErrorCode::BadRequest), "{query}");
    }
    let (_, default) = server.get(&token, "/api/v1/chat/sessions").await;
    assert_eq!((default["per_page"].as_u64(), default["total"].as_u64()), (Some(20), Some(5)));
    let r = server.http.get(server.url("/api/v1/chat/sessions?page=abc")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest));

    // Newest activity first: renaming moves a session to the top.
    let r = server.rename(&token, first.id, "Renamed").await;
    assert_eq!(r.status(), 200);
    let renamed: Session = r.json().await.unwrap();
    assert_eq!(renamed.title, "Renamed");
    let (_, top) = server.get(&token, "/api/v1/chat/sessions?per_page=1").await;
    assert_eq!(top["sessions"][0]["id"], first.id.to_string());

    let (status, got) = server.get(&token, &format!("/api/v1/chat/sessions/{}", first.id)).await;
    assert_eq!(status, 200);
    let got: SessionWithMessages = serde_json::from_value(got).unwrap();
    assert_eq!(got.session.title, "Renamed");
    assert!(got.messages.is_empty());

    let r = server.rename(&token, first.id, "   ").await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest));

    let r = server
        .http
        .delete(server.url(&format!("/api/v1/chat/sessions/{}", first.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"message": "Session deleted"}));
    let (status, body) = server.get(&token, &format!("/api/v1/chat/sessions/{}", first.id)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let r = server
        .http
        .delete(server.url(&format!("/api/v1/chat/sessions/{}", first.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound));
    let r = send_json(&server, &token, first.id, "hello?").await;
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound));
    let (_, list) = server.get(&token, "/api/v1/chat/sessions").await;
    assert_eq!(list["total"], 4, "deleted sessions are not listed");

    let (status, _) = server.get(&token, "/api/v1/chat/sessions/not-a-uuid").await;
    assert_eq!(status, 404);
    let (status, _) = server.get(&token, &format!("/api/v1/chat/sessions/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn other_users_sessions_are_not_found() {
    let server = TestServer::start().await;
    let (owner, _) = server.register("henry").await;
    let (intruder, _) = server.register("ivan").await;
    let session = server.create_session(&owner).await;
    let path = format!("/api/v1/chat/sessions/{}", session.id);

    let (status, body) = server.get(&intruder, &path).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let r = server.rename(&intruder, session.id, "mine").await;
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound));
    let r = server.http.delete(server.url(&path)).bearer_auth(&intruder).send().await.unwrap();
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound));
    let r = send_json(&server, &intruder, session.id, "hi").await;
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound));
    let (_, list) = server.get(&intruder, "/api/v1/chat/sessions").await;
    assert_eq!(list["total"], 0);

    // The owner still has it, untouched.
    let (status, body) = server.get(&owner, &path).await;
    assert_eq!((status, body["session"]["title"].as_str()), (200, Some("New chat")));
}

/// With no provider key the built-in mock answers, with its markdown demo (the whole
/// document unless the reply length is set), and `ready` says it is the mock.
#[tokio::test]
async fn the_built_in_mock_answers_with_its_demo() {
    let server =
        TestServer::with(&[("LLM_MOCK", "1"), ("MOCK_FIRST_TOKEN_MS", "1"), ("MOCK_TOKENS_PER_SEC", "0")]).await;
    let (token, _) = server.register("newcomer").await;
    let mut ws = server.ws_raw(Some(&token)).await;
    match ws.recv().await {
        relay_protocol::ServerFrame::Ready { model: Some(model), .. } => assert!(model.mock, "{model:?}"),
        other => panic!("expected ready with a model, got {other:?}"),
    }
    let session = server.create_session(&token).await;
    let sent: SendMessageResponse = send_json(&server, &token, session.id, "hello?").await.json().await.unwrap();
    assert_eq!(sent.assistant_message.content, relay_mock_llm::DEMO_REPLY);
    assert_eq!(sent.assistant_message.token_count, Some(relay_mock_llm::demo_tokens().len() as u32));
    let sent: SendMessageResponse =
        send_json(&server, &token, session.id, "shorter [[mock tokens=12]]").await.json().await.unwrap();
    assert_eq!(sent.assistant_message.content, relay_mock_llm::demo_reply_text(12));
}

#[tokio::test]
async fn non_streaming_send_stores_both_messages() {
    let server = TestServer::start().await;
    let (token, _) = server.register("jane").await;
    let session = server.create_session(&token).await;

    let r = send_json(&server, &token, session.id, "What is Rust?\nTell me more.").await;
    assert_eq!(r.status(), 200);
    let sent: SendMessageResponse = r.json().await.unwrap();
    assert_eq!(sent.user_message.role, Role::User);
    assert_eq!(sent.user_message.content, "What is Rust?\nTell me more.");
    assert_eq!(sent.assistant_message.role, Role::Assistant);
    assert_eq!(sent.assistant_message.content, reply_text(20, None));
    assert_eq!(sent.assistant_message.status, MessageStatus::Complete);
    assert_eq!(sent.assistant_message.token_count, Some(20), "the provider's completion_tokens");
    assert!(sent.user_message.token_count.is_some_and(|t| t > 0));

    let (_, got) = server.get(&token, &format!("/api/v1/chat/sessions/{}", session.id)).await;
    let got: SessionWithMessages = serde_json::from_value(got).unwrap();
    assert_eq!(got.messages, vec![sent.user_message.clone(), sent.assistant_message.clone()]);
    assert_eq!(got.session.title, "What is Rust?", "the first message names a new chat");

    // The context sent upstream: system prompt, then history, oldest first, ending with the new message.
    let r = send_json(&server, &token, session.id, "And Go?").await;
    assert_eq!(r.status(), 200);
    let request = server.mock.stats().last_request.unwrap();
    let roles: Vec<&str> =
        request["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(request["messages"][0]["content"], "You are a helpful AI assistant.");
    assert_eq!(request["messages"][3]["content"], "And Go?");
    assert_eq!(request["model"], "Llama-4-Maverick-17B-128E-Instruct");
    assert_eq!(request["max_tokens"], 2048);
    let (_, got) = server.get(&token, &format!("/api/v1/chat/sessions/{}", session.id)).await;
    assert_eq!(got["session"]["title"], "What is Rust?", "only the first message names the chat");

    let (_, quota) = server.get(&token, "/api/v1/chat/quota").await;
    assert_eq!((quota["messages_today"].as_u64(), quota["remaining"].as_u64()), (Some(2), Some(98)));
}

#[tokio::test]
async fn context_window_is_bounded_and_system_prompt_configurable() {
    let server = TestServer::with(&[("CHAT_MAX_CONTEXT_MESSAGES", "3"), ("CHAT_SYSTEM_PROMPT", "Be terse.")]).await;
    let (token, _) = server.register("kate").await;
    let session = server.create_session(&token).await;
    for i in 0..3 {
        assert_eq!(
            send_json(&server, &token, session.id, &format!("question {i} [[mock tokens=2]]")).await.status(),
            200
        );
    }
    let request = server.mock.stats().last_request.unwrap();
    let messages = request["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "system + the last 3 messages");
    assert_eq!(messages[0]["content"], "Be terse.");
    assert_eq!(messages[1]["content"], "question 1 [[mock tokens=2]]");
    assert_eq!(messages[3]["content"], "question 2 [[mock tokens=2]]");
}

/// The context is the system prompt, then the newest messages that fit the token budget
/// (`CHAT_CONTEXT_TOKENS` less `CHAT_MAX_TOKENS`) whole, then the message answered; a
/// message that could never fit is refused, saying so.
#[tokio::test]
async fn context_holds_the_newest_messages_that_fit_the_token_budget() {
    use relay_server::session::budget::message_cost;
    let server = TestServer::with(&[
        ("CHAT_MAX_TOKENS", "256"),
        ("CHAT_CONTEXT_TOKENS", "1256"),
        ("CHAT_MAX_CONTEXT_MESSAGES", "50"),
        ("CHAT_SYSTEM_PROMPT", "Be terse."),
    ])
    .await;
    let (token, _) = server.register("kim").await;
    let session = server.create_session(&token).await;
    for i in 0..8 {
        let content = format!("question {i} {}[[mock tokens=2]]", "lorem ".repeat(100));
        assert_eq!(send_json(&server, &token, session.id, &content).await.status(), 200);
    }
    let request = server.mock.stats().last_request.unwrap();
    let sent: Vec<String> =
        request["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sent[0], "Be terse.");
    assert!(sent.last().unwrap().starts_with("question 7 "));
    let cost: u32 = sent.iter().map(|c| message_cost(c)).sum();
    assert!(cost <= 1000, "the prompt fits the budget: {cost}");

    // The newest messages, whole and without holes, and the one before them did not fit.
    let (_, stored) = server.get(&token, &format!("/api/v1/chat/sessions/{}", session.id)).await;
    let stored: Vec<String> =
        stored["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_owned()).collect();
    let earlier = &stored[..stored.len() - 1]; // the last reply came after the request
    let kept = sent.len() - 1;
    assert_eq!(sent[1..], earlier[earlier.len() - kept..], "the newest, in order");
    assert!(kept < earlier.len(), "older ones were left out ({kept} of {})", earlier.len());
    let next_older = &earlier[earlier.len() - kept - 1];
    assert!(cost + message_cost(next_older) > 1000, "the next older message would not have fit");

    let too_long = "lorem ".repeat(660);
    let r = send_json(&server, &token, session.id, &too_long).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("invalid_content")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("tokens") && message.contains("CHAT_CONTEXT_TOKENS"), "{message}");
}

#[tokio::test]
async fn sambanova_final_chunks_parse_through_the_server() {
    let server = TestServer::start().await;
    let (token, _) = server.register("liam").await;
    let session = server.create_session(&token).await;
    for choices in ["null", "empty"] {
        let r = server
            .http
            .post(server.url(&format!("/api/v1/chat/sessions/{}/messages", session.id)))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .json(&json!({"content": format!("hi [[mock tokens=7 choices={choices}]]")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let events = sse_events(&r.text().await.unwrap());
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                SseEvent::Chunk { chunk, done: false } => Some(chunk.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, reply_text(7, None));
        match events.last().unwrap() {
            SseEvent::Done { done: true, finish_reason, usage: Some(usage), .. } => {
                assert_eq!(*finish_reason, relay_protocol::FinishReason::Stop);
                assert_eq!(usage.completion_tokens, 7, "usage from the chunk with choices {choices}");
            }
            other => panic!("expected done with usage, got {other:?}"),
        }
    }
}

/// Parses an SSE body into its `data:` events.
fn sse_events(body: &str) -> Vec<SseEvent> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap_or_else(|e| panic!("bad SSE data {d}: {e}")))
        .collect()
}

#[tokio::test]
async fn upstream_failures_map_to_error_codes() {
    let server = TestServer::start().await;
    let (token, _) = server.register("mia").await;
    let session = server.create_session(&token).await;
    for (fault, status, code) in [
        ("500", 502, ErrorCode::UpstreamError),
        ("401", 503, ErrorCode::UpstreamUnavailable),
        ("503", 503, ErrorCode::UpstreamUnavailable),
        ("cut:3", 502, ErrorCode::UpstreamError),
    ] {
        let r = send_json(&server, &token, session.id, &format!("x [[mock fault={fault}]]")).await;
        assert_eq!(error_of(r).await, (status, code), "fault {fault}");
    }
    // The failed replies are stored with status error (the cut one with its partial text).
    let (_, got) = server.get(&token, &format!("/api/v1/chat/sessions/{}", session.id)).await;
    let got: SessionWithMessages = serde_json::from_value(got).unwrap();
    let replies: Vec<&Message> = got.messages.iter().filter(|m| m.role == Role::Assistant).collect();
    assert_eq!(replies.len(), 4);
    assert!(replies.iter().all(|m| m.status == MessageStatus::Error));
    assert_eq!(replies[3].content, reply_text(3, None));

    // SSE: the failure is an error event that ends the stream.
    let r = server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{}/messages", session.id)))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .json(&json!({"content": "x [[mock fault=500]]"}))
        .send()
        .await
        .unwrap();
    let events = sse_events(&r.text().await.unwrap());
    assert!(matches!(events.last(), Some(SseEvent::Error { code: ErrorCode::UpstreamError, .. })), "{events:?}");

    // A working reply after failures: failed replies are left out of the context.
    assert_eq!(send_json(&server, &token, session.id, "ok now").await.status(), 200);
    let request = server.mock.stats().last_request.unwrap();
    let roles: Vec<&str> =
        request["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert!(!roles.contains(&"assistant"), "{roles:?}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let server = TestServer::start().await;
    let (token, _) = server.register("nora").await;
    let session = server.create_session(&token).await;
    let url = server.url(&format!("/api/v1/chat/sessions/{}/messages", session.id));
    let post = |body: String| {
        server.http.post(&url).bearer_auth(&token).header("content-type", "application/json").body(body).send()
    };

    assert_eq!(error_of(post("{not json".into()).await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(post("{}".into()).await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(post(r#"{"content": 5}"#.into()).await.unwrap()).await, (400, ErrorCode::BadRequest));
    let r = server.http.post(&url).bearer_auth(&token).body(r#"{"content":"hi"}"#).send().await.unwrap();
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "no JSON content type");
    assert_eq!(
        error_of(post(json!({"content": ""}).to_string()).await.unwrap()).await,
        (400, ErrorCode::InvalidContent)
    );
    assert_eq!(
        error_of(post(json!({"content": "  \n "}).to_string()).await.unwrap()).await,
        (400, ErrorCode::InvalidContent)
    );
    let too_long = "é".repeat(4001);
    assert_eq!(
        error_of(post(json!({"content": too_long}).to_string()).await.unwrap()).await,
        (400, ErrorCode::InvalidContent)
    );
    let just_right = format!("{}[[mock tokens=1]]", "é".repeat(4000 - 17));
    assert_eq!(
        post(json!({"content": just_right}).to_string()).await.unwrap().status(),
        200,
        "4000 characters are fine"
    );
    let huge = json!({"content": "x".repeat(70_000)}).to_string();
    assert_eq!(error_of(post(huge).await.unwrap()).await, (413, ErrorCode::TooLarge));

    let r = server
        .http
        .post(server.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body("[1,2")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest));
    let r = server.http.get(server.url("/api/v1/nothing-here")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound));

    // Nothing invalid was stored; the one valid message and its reply were.
    let (_, got) = server.get(&token, &format!("/api/v1/chat/sessions/{}", session.id)).await;
    assert_eq!(got["messages"].as_array().unwrap().len(), 2);
}

/// `DATABASE_CACHE_BYTES` and `DATABASE_MEMTABLE_BYTES` reach the embedded SurrealKV of the
/// real binary: the engine logs the sizes it was built with (by default it would take half
/// the machine's memory less 1 GiB for its cache).
#[tokio::test]
async fn the_embedded_database_takes_its_memory_sizes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let vars = [
        ("DATABASE_CACHE_BYTES", "33554432"),
        ("DATABASE_MEMTABLE_BYTES", "268435456"),
        ("RUST_LOG", "warn,surrealdb::core::kvs::surrealkv=info"),
    ];
    let node = Process::start_with(&dir.path().join("data"), &vars, log.into());
    node.ready(&reqwest::Client::new()).await;
    assert!(node.terminate().success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("Setting block cache capacity: 33554432"), "{logs}");
    assert!(logs.contains("Setting max memtable size: 268435456"), "{logs}");
}

#[tokio::test]
async fn refuses_a_database_with_a_newer_schema() {
    use relay_server::store::{MIGRATIONS, Migration, Store, StoreConfig, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        url: format!("surrealkv://{}", dir.path().join("db").display()),
        credentials: None,
        namespace: "relay".into(),
        database: "chat".into(),
        timeout: std::time::Duration::from_secs(5),
        embedded: relay_server::store::EmbeddedSizes::DEFAULT,
    };
    {
        let store = Store::connect(&config).await.unwrap();
        // Applying twice is a no-op: migrations are recorded.
        let known = MIGRATIONS.len() as u32;
        assert_eq!(store.apply_migrations(MIGRATIONS).await.unwrap(), known);
        let mut future = MIGRATIONS.to_vec();
        future.push(Migration {
            version: known + 1,
            name: "from the future",
            sql: "DEFINE TABLE IF NOT EXISTS from_the_future SCHEMALESS;",
        });
        assert_eq!(store.apply_migrations(&future).await.unwrap(), known + 1);
        let refused = store.apply_migrations(MIGRATIONS).await;
        assert!(
            matches!(refused, Err(StoreError::SchemaTooNew { found, known: k }) if found == known + 1 && k == known),
            "{refused:?}"
        );
    }
}

/// Also: SIGTERM closes the embedded database (its memtables written, its log closed), so
/// the next start has nothing to replay, and nothing errs on the way out.
#[tokio::test]
async fn on_disk_data_and_logins_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let logs = ["first.log", "second.log"].map(|name| dir.path().join(name));
    let start = |log: &std::path::Path| {
        let vars = [("RUST_LOG", "warn,relay_server::app=info,surrealkv::wal::recovery=info")];
        Process::start_with(&data, &vars, std::fs::File::create(log).unwrap().into())
    };
    let first = start(&logs[0]);
    first.ready(&http).await;
    let base = format!("http://{}", first.addr);
    let (token, session) = first.user_with_session(&http, "olga", "Keep me").await;
    let sent: SendMessageResponse = http
        .post(format!("{base}/api/v1/chat/sessions/{}/messages", session.id))
        .bearer_auth(&token)
        .json(&json!({"content": "remember this [[mock tokens=5]]"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(first.terminate().success(), "SIGTERM is a clean exit");
    let first_log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(first_log.contains("database closed"), "{first_log}");
    assert!(!first_log.contains(" ERROR "), "{first_log}");

    let second = start(&logs[1]);
    second.ready(&http).await;
    // The generated dev secret was kept beside the data, so the old token still works.
    let got: SessionWithMessages =
        serde_json::from_value(second.get(&http, &token, &format!("/api/v1/chat/sessions/{}", session.id)).await)
            .unwrap();
    assert_eq!(got.session.title, "Keep me");
    assert_eq!(got.messages, vec![sent.user_message, sent.assistant_message]);
    assert_eq!(second.login(&http, "olga", "password123").await.status(), 200);
    assert!(second.terminate().success());
    let second_log = std::fs::read_to_string(&logs[1]).unwrap();
    assert!(
        second_log.contains("WAL recovery complete: 0 batches"),
        "a clean close leaves no log to replay: {second_log}"
    );
}

/// The binary turns transparent huge pages off for itself before its runtime starts
/// (a 2 MiB page stays resident while any 4 KiB of it is used: BENCHMARKS.md, "Memory after
/// a load").
#[tokio::test]
async fn the_server_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path());
    node.ready(&reqwest::Client::new()).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let thp = status.lines().find(|line| line.starts_with("THP_enabled:"));
    assert_eq!(thp.map(|line| line.split_whitespace().nth(1)), Some(Some("0")), "{status}");
    assert!(node.terminate().success());
}

#[test]
fn production_refuses_a_weak_secret() {
    let dir = tempfile::tempdir().unwrap();
    for secret in [None, Some("too-short")] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"));
        command
            .env_clear()
            .env("RELAY_ENV", "production")
            .env("RELAY_DATA_DIR", dir.path())
            .env("BIND_ADDR", "127.0.0.1:0");
        // Coverage runs collect a profile from every process they start.
        if let Ok(profile) = std::env::var("LLVM_PROFILE_FILE") {
            command.env("LLVM_PROFILE_FILE", profile);
        }
        if let Some(secret) = secret {
            command.env("JWT_SECRET", secret);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("JWT_SECRET"), "the error names the variable: {stderr}");
    }
}

#[tokio::test]
async fn a_crash_mid_reply_keeps_the_last_checkpoint() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut first = Process::start(dir.path());
    first.ready(&http).await;
    let base = format!("http://{}", first.addr);
    let (token, session) = first.user_with_session(&http, "pam", "Long story").await;
    let response = http
        .post(format!("{base}/api/v1/chat/sessions/{}/messages", session.id))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .json(&json!({"content": "tell me a long story [[mock tokens=400 tps=40]]"}))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut streamed = String::new();
    let started = std::time::Instant::now();
    // Read past at least one checkpoint interval (1 s by default) of the reply.
    while started.elapsed() < Duration::from_millis(1800) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(streamed.contains("\"chunk\""));
    first.child.kill().unwrap(); // SIGKILL: no shutdown code runs
    first.child.wait().unwrap();
    drop(body);

    let second = Process::start(dir.path());
    second.ready(&http).await;
    let got: SessionWithMessages =
        serde_json::from_value(second.get(&http, &token, &format!("/api/v1/chat/sessions/{}", session.id)).await)
            .unwrap();
    assert_eq!(got.messages.len(), 2, "the user message and the checkpointed reply");
    let reply = &got.messages[1];
    // The reply was `generating` when the process died; the next start marks it `error`.
    assert_eq!((reply.role, reply.status), (Role::Assistant, MessageStatus::Error));
    assert!(!reply.content.is_empty(), "at least one checkpoint was stored");
    assert!(reply_text(400, None).starts_with(&reply.content));
    assert!(second.terminate().success());
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let server = TestServer::with(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, server.url("/api/v1/chat/sessions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(allowed.headers().get("access-control-allow-origin").unwrap(), "https://app.example.com");
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_silent_provider_times_out() {
    let server = TestServer::with(&[("LLM_TIMEOUT_SECS", "1")]).await;
    let (token, _) = server.register("quinn").await;
    let session = server.create_session(&token).await;
    // The provider sends its headers and first chunk, then nothing.
    let r = send_json(&server, &token, session.id, "hello [[mock fault=stall]]").await;
    assert_eq!(error_of(r).await, (504, ErrorCode::UpstreamTimeout));
    assert!(server.mock.wait_for_closed_early(1, Duration::from_secs(2)).await, "the stalled request was closed");
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let server = TestServer::with(&[("METRICS_TOKEN", "scrape-me"), ("CHAT_ADMIN_USERS", "boss")]).await;
    let (token, _) = server.register("rita").await;
    let session = server.create_session(&token).await;
    assert_eq!(send_json(&server, &token, session.id, "hi [[mock tokens=4]]").await.status(), 200);
    assert_eq!(send_json(&server, &token, session.id, "x [[mock fault=500]]").await.status(), 502);
    let mut ws = server.ws(&token).await;

    // Only the scraper token or an admin may read them.
    let r = server.http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound), "no token");
    let r = server.http.get(server.url("/metrics")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound), "an ordinary user");
    let r = server.http.get(server.url("/metrics")).bearer_auth("scrape-mf").send().await.unwrap();
    assert_eq!(r.status(), 404, "a wrong scraper token");
    let (admin, _) = server.admin("boss").await;
    let r = server.http.get(server.url("/metrics")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200, "an admin");
    let r = server.http.get(server.url("/metrics")).bearer_auth("scrape-me").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for line in [
        "relay_generations_total{finish_reason=\"stop\"} 1",
        "relay_generations_total{finish_reason=\"error\"} 1",
        "relay_generations_active 0",
        "relay_user_messages_total 2",
        "relay_session_actors 1",
        "relay_ws_connections 1",
        "relay_llm_tokens_total{kind=\"completion\"} 4",
        "relay_llm_time_to_first_token_seconds_count 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("relay_http_responses_total{class=\"2xx\"}"));
    ws.send(json!({"type": "ping"})).await;
    ws.recv().await;
}

/// The store against a real SurrealDB server over `ws://` (namespace and database created,
/// credentials used, migrations applied).
#[tokio::test]
async fn remote_surrealdb_over_websocket() {
    let surreal = common::SurrealServer::start().await;
    let port = surreal.port;
    let url = format!("ws://127.0.0.1:{port}");
    let server = TestServer::with(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_USER", "root"),
        ("DATABASE_PASS", "root-pass"),
        ("DATABASE_NS", "relay_test"),
        ("DATABASE_DB", "chat_test"),
    ])
    .await;
    let (token, _) = server.register("remote").await;
    let session = server.create_session(&token).await;
    let r = send_json(&server, &token, session.id, "over the wire [[mock tokens=3]]").await;
    assert_eq!(r.status(), 200);
    let (_, got) = server.get(&token, &format!("/api/v1/chat/sessions/{}", session.id)).await;
    assert_eq!(got["messages"].as_array().unwrap().len(), 2);
    assert_eq!(got["session"]["title"], "over the wire [[mock tokens=3]]");
}

/// `/api/v1/openapi.json` is a parsable OpenAPI document listing every REST path of
/// `docs/PROTOCOL.md` with its methods, and the protocol's bodies as schemas.
#[tokio::test]
async fn the_openapi_document_lists_every_rest_path() {
    let server = TestServer::start().await;
    let response = server.http.get(server.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/auth/register", &["post"][..]),
        ("/api/v1/auth/login", &["post"]),
        ("/api/v1/auth/me", &["get"]),
        ("/api/v1/chat/sessions", &["get", "post"]),
        ("/api/v1/chat/sessions/{id}", &["get", "patch", "delete"]),
        ("/api/v1/chat/sessions/{id}/messages", &["post"]),
        ("/api/v1/chat/search", &["get"]),
        ("/api/v1/chat/sessions/{id}/export", &["get"]),
        ("/api/v1/me/export", &["get"]),
        ("/api/v1/chat/quota", &["get"]),
        ("/api/v1/admin/usage", &["get"]),
        ("/api/v1/ws", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
    ] {
        let listed = paths.get(path).unwrap_or_else(|| panic!("{path} is not documented"));
        for method in methods {
            assert!(listed.get(*method).is_some(), "{method} {path} is not documented");
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "Message",
        "Session",
        "Quota",
        "ErrorResponse",
        "ErrorCode",
        "SseEvent",
        "UsageReport",
        "SessionList",
        "SearchResults",
        "SessionExport",
        "UserExport",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    let codes = serde_json::to_string(&schemas["ErrorCode"]).unwrap();
    for code in ["rate_limited", "quota_exceeded", "storage_full", "limit_exceeded", "unavailable"] {
        assert!(codes.contains(code), "error code {code} missing from the schema");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}
