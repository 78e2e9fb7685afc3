//! Issue "Limits and resilience": the send rate and the daily quota, the same over
//! WebSocket, REST and SSE, kept in a real `redis-server` shared by two server processes,
//! surviving Redis going away and coming back; admins are unlimited.

mod common;

use std::time::Duration;

use common::flow::*;
use common::{Process, RedisServer, TestServer, error_of};
use redis::AsyncCommands;
use relay_protocol::{ErrorCode, ErrorResponse, ServerFrame};
use serde_json::{Value, json};
use uuid::Uuid;

async fn post_message(http: &reqwest::Client, url: String, token: &str, content: &str) -> reqwest::Response {
    http.post(url).bearer_auth(token).json(&json!({"content": content})).send().await.unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// The send rate in process: `X-RateLimit-*` count down on every answer, the send past the
/// limit is `429 rate_limited` with `Retry-After`, and it stores nothing and bills nothing.
#[tokio::test]
async fn the_send_rate_counts_down_then_refuses() {
    let server = TestServer::with(&[("CHAT_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let (token, _, sid) = user_with_session(&server, "hasty").await;
    let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    for remaining in [2, 1, 0] {
        let response = post_message(&server.http, url.clone(), &token, "hi [[mock tokens=1]]").await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit"), Some(3));
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some(remaining));
        assert!(header(&response, "x-ratelimit-reset").unwrap() <= 60);
    }
    let requests = server.mock.stats().requests;
    let refused = post_message(&server.http, url.clone(), &token, "one more").await;
    assert_eq!(refused.status(), 429);
    let retry = header(&refused, "retry-after").unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some(0));
    let body: ErrorResponse = refused.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::RateLimited);
    assert!(body.error.retry_after_ms.unwrap() <= 20_000);
    assert_eq!(server.mock.stats().requests, requests, "nothing sent upstream");
    assert_eq!(stored(&server, &token, sid).await.messages.len(), 6, "nothing stored");

    // Over WebSocket: the same limit, an `error` with `retry_after_ms`.
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "ws", "and over the socket").await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "ws")).await;
    let ServerFrame::Error { error, .. } = frames.last().unwrap() else { unreachable!() };
    assert_eq!(error.code, ErrorCode::RateLimited);
    assert!(error.retry_after_ms.is_some());
}

/// The daily quota, in process and in Redis: the send past it is `quota_exceeded` over
/// WebSocket, REST and SSE alike; nothing is stored or sent upstream; history stays
/// readable; a `quota` frame followed each send.
#[tokio::test]
async fn the_daily_quota_is_enforced_everywhere() {
    let redis = RedisServer::start().await;
    for redis_url in [None, Some(redis.url())] {
        let mut vars = vec![("CHAT_DAILY_MESSAGE_QUOTA", "3".to_string())];
        if let Some(url) = &redis_url {
            vars.push(("REDIS_URL", url.clone()));
        }
        let vars: Vec<(&'static str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = TestServer::with(&vars).await;
        let (token, _, sid) = user_with_session(&server, "counted").await;
        let mut ws = server.ws(&token).await;
        for i in 0..3 {
            send(&mut ws, sid, &format!("m{i}"), "hello [[mock tokens=1]]").await;
            let mut frames = until_dones(&mut ws, sid, 1).await;
            // The quota frame follows the send once its count is stored, which may be
            // after a one-token reply has ended.
            if !frames.iter().any(|f| matches!(f, ServerFrame::Quota { .. })) {
                frames.extend(ws.recv_until(|f| matches!(f, ServerFrame::Quota { .. })).await);
            }
            let quota = frames.iter().find_map(|f| match f {
                ServerFrame::Quota { quota } => Some(quota.clone()),
                _ => None,
            });
            assert_eq!(quota.expect("a quota frame follows each send").remaining, Some(2 - i));
        }
        let requests = server.mock.stats().requests;

        send(&mut ws, sid, "over", "one too many").await;
        let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "over")).await;
        let ServerFrame::Error { error, .. } = frames.last().unwrap() else { unreachable!() };
        assert_eq!(error.code, ErrorCode::QuotaExceeded, "{redis_url:?}");
        let wait = error.retry_after_ms.unwrap();
        assert!(wait > 0 && wait <= 86_400_000, "until midnight UTC: {wait}");

        let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
        let rest = post_message(&server.http, url.clone(), &token, "over REST").await;
        assert_eq!(rest.status(), 429);
        assert!(header(&rest, "retry-after").is_some());
        assert_eq!(header(&rest, "x-ratelimit-limit"), Some(3));
        assert_eq!(header(&rest, "x-ratelimit-remaining"), Some(0));
        assert_eq!(error_of(rest).await, (429, ErrorCode::QuotaExceeded));
        let sse = server
            .http
            .post(url)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .json(&json!({"content": "over SSE"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(sse).await, (429, ErrorCode::QuotaExceeded));

        assert_eq!(server.mock.stats().requests, requests, "nothing sent upstream");
        let history = stored(&server, &token, sid).await;
        assert_eq!(history.messages.len(), 6, "nothing stored; history still readable");
        let (status, quota) = server.get(&token, "/api/v1/chat/quota").await;
        assert_eq!((status, quota["remaining"].as_u64()), (200, Some(0)));
    }
}

/// Admins have neither a send rate nor a quota.
#[tokio::test]
async fn admins_are_unlimited() {
    let server = TestServer::with(&[
        ("CHAT_ADMIN_USERS", "boss"),
        ("CHAT_DAILY_MESSAGE_QUOTA", "2"),
        ("CHAT_RATE_LIMIT_PER_MINUTE", "2"),
    ])
    .await;
    let (token, _) = server.admin("boss").await;
    let sid = server.create_session(&token).await.id;
    let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    for _ in 0..5 {
        let response = post_message(&server.http, url.clone(), &token, "unlimited [[mock tokens=1]]").await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("x-ratelimit-limit").is_none(), "no limit applies");
    }
}

/// Two server processes on one Redis share one send rate: the 21st send in a minute
/// across both is refused with a sensible `Retry-After`.
#[tokio::test]
async fn two_nodes_share_one_send_rate_through_redis() {
    let redis = RedisServer::start().await;
    let http = reqwest::Client::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let vars = [
        ("REDIS_URL", redis.url()),
        ("CHAT_RATE_LIMIT_PER_MINUTE", "20".into()),
        ("JWT_SECRET", common::SECRET.into()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Process::start_with(dir_a.path(), &vars, std::process::Stdio::inherit());
    let b = Process::start_with(dir_b.path(), &vars, std::process::Stdio::inherit());
    a.ready(&http).await;
    b.ready(&http).await;
    // One user (tokens are the same on both nodes), one session on each node's store.
    let token = a.register(&http, "everywhere").await.token;
    let on_a = a.create_session(&http, &token, None).await.id;
    let on_b = b.create_session(&http, &token, None).await.id;
    let to = |node: &Process, sid: Uuid| node.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    for i in 0..20 {
        let (node, sid) = if i % 2 == 0 { (&a, on_a) } else { (&b, on_b) };
        let response = post_message(&http, to(node, sid), &token, "shared [[mock tokens=1]]").await;
        assert_eq!(response.status(), 200, "send {i}");
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some(19 - i));
    }
    for (node, sid) in [(&a, on_a), (&b, on_b)] {
        let refused = post_message(&http, to(node, sid), &token, "the 21st").await;
        assert_eq!(refused.status(), 429);
        let retry = header(&refused, "retry-after").unwrap();
        assert!((1..=3).contains(&retry), "Retry-After {retry} s: one send comes back every 3 s");
        assert_eq!(error_of(refused).await.1, ErrorCode::RateLimited);
    }
    let ready: Value = http.get(a.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["redis"], "up");
}

/// Redis stopped mid-test: sends are still served, and still limited, in process (logged,
/// in `/readyz` and `/metrics`); once Redis is back the server uses it again, handing it
/// the daily counts it kept meanwhile.
#[tokio::test]
async fn limits_survive_redis_going_away_and_coming_back() {
    let mut redis = RedisServer::start().await;
    let server = TestServer::with(&[
        ("REDIS_URL", &redis.url()),
        ("CHAT_RATE_LIMIT_PER_MINUTE", "4"),
        ("CHAT_DAILY_MESSAGE_QUOTA", "100"),
    ])
    .await;
    let (token, user_id, sid) = user_with_session(&server, "resilient").await;
    let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    for _ in 0..2 {
        assert_eq!(post_message(&server.http, url.clone(), &token, "a [[mock tokens=1]]").await.status(), 200);
    }
    let mut conn = redis.connection().await;
    let rate_key = format!("relay:rate:send:{user_id}");
    let quota_key = format!("relay:quota:{user_id}:{}", chrono::Utc::now().date_naive());
    assert!(conn.exists::<_, bool>(&rate_key).await.unwrap(), "the rate lives in Redis");
    assert_eq!(conn.get::<_, u32>(&quota_key).await.unwrap(), 2);

    redis.stop();
    // Served and limited in process: a fresh in-process rate of 4.
    for i in 0..4 {
        let response = post_message(&server.http, url.clone(), &token, "b [[mock tokens=1]]").await;
        assert_eq!(response.status(), 200, "send {i} without Redis");
    }
    let refused = post_message(&server.http, url.clone(), &token, "c").await;
    assert_eq!(error_of(refused).await.1, ErrorCode::RateLimited, "still limited without Redis");
    let (_, ready) = (200, server.http.get(server.url("/readyz")).send().await.unwrap().json::<Value>().await.unwrap());
    assert_eq!((ready["status"].as_str(), ready["redis"].as_str()), (Some("ready"), Some("down")));
    assert!(server.state().metrics.render().contains("relay_redis_up 0"));

    redis.resume().await;
    common::eventually("the server uses Redis again", || async {
        let ready: Value = server.http.get(server.url("/readyz")).send().await.unwrap().json().await.unwrap();
        ready["redis"] == "up"
    })
    .await;
    assert!(server.state().metrics.render().contains("relay_redis_up 1"));
    let mut conn = redis.connection().await;
    assert_eq!(conn.get::<_, u32>(&quota_key).await.unwrap(), 6, "the day's count kept in process was handed over");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(post_message(&server.http, url, &token, "d [[mock tokens=1]]").await.status(), 200);
    assert!(conn.exists::<_, bool>(&rate_key).await.unwrap(), "the rate lives in Redis again");
    assert_eq!(conn.get::<_, u32>(&quota_key).await.unwrap(), 7);
}

async fn login(server: &TestServer, username: &str, password: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request =
        server.http.post(server.url("/api/v1/auth/login")).json(&json!({"username": username, "password": password}));
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    request.send().await.unwrap()
}

/// Failed logins are limited per username and per client address: past the limit even
/// the right password is refused `rate_limited` with `retry_after_ms`, until the window ends.
#[tokio::test]
async fn failed_logins_are_limited_per_username_and_per_address() {
    let server = TestServer::with(&[
        ("AUTH_LOGIN_FAILURES_PER_USERNAME", "3"),
        ("AUTH_LOGIN_FAILURES_PER_ADDRESS", "5"),
        ("AUTH_LOGIN_WINDOW_SECS", "2"),
    ])
    .await;
    server.register("target").await;
    server.register("bystander").await;
    for _ in 0..3 {
        assert_eq!(error_of(login(&server, "target", "wrong-password", None).await).await.1, ErrorCode::Unauthorized);
    }
    let refused = login(&server, "target", "password123", None).await;
    assert_eq!(refused.status(), 429);
    let body: ErrorResponse = refused.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::RateLimited);
    assert!(body.error.retry_after_ms.unwrap() <= 2000);
    // Names are counted whatever their case.
    assert_eq!(login(&server, "TARGET", "password123", None).await.status(), 429);
    // Another name from the same address still logs in, until the address's own limit.
    assert_eq!(login(&server, "bystander", "password123", None).await.status(), 200);
    for name in ["nobody1", "nobody2"] {
        assert_eq!(login(&server, name, "wrong-password", None).await.status(), 401);
    }
    assert_eq!(login(&server, "bystander", "password123", None).await.status(), 429, "the address is limited too");
    // Without TRUSTED_PROXIES, a client cannot claim another address.
    assert_eq!(login(&server, "bystander", "password123", Some("198.51.100.1")).await.status(), 429);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(login(&server, "target", "password123", None).await.status(), 200, "the window ended");
}

/// Behind a trusted proxy the forwarded client address is what counts.
#[tokio::test]
async fn forwarded_addresses_count_behind_trusted_proxies() {
    let server =
        TestServer::with(&[("AUTH_LOGIN_FAILURES_PER_ADDRESS", "2"), ("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    server.register("proxied").await;
    for _ in 0..2 {
        assert_eq!(login(&server, "nobody", "wrong-password", Some("198.51.100.1")).await.status(), 401);
    }
    assert_eq!(login(&server, "proxied", "password123", Some("198.51.100.1")).await.status(), 429);
    assert_eq!(login(&server, "proxied", "password123", Some("198.51.100.2")).await.status(), 200);
}

/// Registrations are limited per client address.
#[tokio::test]
async fn registrations_are_limited_per_address() {
    let server = TestServer::with(&[("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR", "2")]).await;
    server.register("first").await;
    server.register("second").await;
    let refused = server
        .http
        .post(server.url("/api/v1/auth/register"))
        .json(&json!({"username": "third", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(header(&refused, "retry-after").unwrap() > 60, "one registration comes back every 30 minutes");
    assert_eq!(error_of(refused).await.1, ErrorCode::RateLimited);
}

// ---- feature flag and rollout ------------------------------------------------------------

/// Status of a WebSocket upgrade authenticated by header (101 when it connects).
async fn ws_status(server: &TestServer, token: &str) -> u16 {
    common::ws_upgrade(&server.addr.to_string(), token).await.0
}

/// `FEATURE_CHAT_ENABLED=false`: every chat route and the WebSocket answer 404 with the
/// JSON error, token or not; accounts still work.
#[tokio::test]
async fn chat_can_be_switched_off() {
    let server = TestServer::with(&[("FEATURE_CHAT_ENABLED", "false")]).await;
    let (token, _) = server.register("waiting").await;
    assert_eq!(server.get(&token, "/api/v1/auth/me").await.0, 200);
    for path in
        ["/api/v1/chat/sessions", "/api/v1/chat/quota", "/api/v1/chat/sessions/6f1c2b9e-0d57-4a51-9a39-0c4a8c1f2e11"]
    {
        let (status, body) = server.get(&token, path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{path}");
    }
    let anonymous = server.http.get(server.url("/api/v1/chat/sessions")).send().await.unwrap();
    assert_eq!(error_of(anonymous).await, (404, ErrorCode::NotFound));
    assert_eq!(ws_status(&server, &token).await, 404);
}

/// `FEATURE_CHAT_ENABLED=admins`: only admins have chat; the others get 404 (and a
/// WebSocket authenticated by frame closes 4404).
#[tokio::test]
async fn chat_can_be_for_admins_only() {
    let server = TestServer::with(&[("FEATURE_CHAT_ENABLED", "admins"), ("CHAT_ADMIN_USERS", "staff")]).await;
    let (admin, _) = server.admin("staff").await;
    let (user, _) = server.register("public").await;
    assert_eq!(server.get(&admin, "/api/v1/chat/sessions").await.0, 200);
    assert_eq!(server.get(&user, "/api/v1/chat/sessions").await.0, 404);
    assert_eq!(ws_status(&server, &admin).await, 101);
    assert_eq!(ws_status(&server, &user).await, 404);
    let mut by_frame = server.ws_raw(None).await;
    by_frame.send(json!({"type": "auth", "token": user})).await;
    assert_eq!(by_frame.expect_close().await, Some(4404));
}

/// `FEATURE_CHAT_ROLLOUT_PERCENT`: a stable share of users by id has chat, the rest 404.
#[tokio::test]
async fn chat_rolls_out_to_a_stable_share_of_users() {
    let server = TestServer::with(&[("FEATURE_CHAT_ROLLOUT_PERCENT", "50")]).await;
    let (mut inside, mut outside) = (0, 0);
    for i in 0..24 {
        let (token, id) = server.register(&format!("rollout{i}")).await;
        let expected = if id.as_u128() % 100 < 50 { 200 } else { 404 };
        for _ in 0..2 {
            assert_eq!(server.get(&token, "/api/v1/chat/sessions").await.0, expected, "user {id}, asked twice");
        }
        if expected == 200 { inside += 1 } else { outside += 1 }
    }
    assert!(inside > 0 && outside > 0, "{inside} inside, {outside} outside");
    let none = TestServer::with(&[("FEATURE_CHAT_ROLLOUT_PERCENT", "0"), ("CHAT_ADMIN_USERS", "root")]).await;
    let (user, _) = none.register("someone").await;
    let (admin, _) = none.admin("root").await;
    assert_eq!(none.get(&user, "/api/v1/chat/sessions").await.0, 404);
    assert_eq!(none.get(&admin, "/api/v1/chat/sessions").await.0, 200, "admins always have chat");
}

// ---- the usage ledger --------------------------------------------------------------------

/// Tokens in and out per user per day are kept: `/auth/me`, `/chat/quota` and the `quota`
/// frames show the caller's, and admins read anyone's (`/admin/usage?day=`).
#[tokio::test]
async fn the_usage_ledger_counts_tokens_in_and_out() {
    let server = TestServer::with(&[("CHAT_ADMIN_USERS", "auditor")]).await;
    let (token, user_id, sid) = user_with_session(&server, "spender").await;
    let (other, other_id, other_sid) = user_with_session(&server, "saver").await;
    let (admin, _) = server.admin("auditor").await;
    let mut ws = server.ws(&token).await;
    let (mut prompt, mut completion) = (0u64, 0u64);
    for (i, tokens) in [7, 11].into_iter().enumerate() {
        send(&mut ws, sid, &format!("u{i}"), &format!("count me please [[mock tokens={tokens}]]")).await;
        let frames = until_dones(&mut ws, sid, 1).await;
        let usage = frames
            .iter()
            .find_map(|f| match f {
                ServerFrame::Done { usage, .. } => *usage,
                _ => None,
            })
            .expect("the mock reports usage");
        assert_eq!(usage.completion_tokens, tokens);
        prompt += u64::from(usage.prompt_tokens);
        completion += u64::from(usage.completion_tokens);
    }
    let url = server.url(&format!("/api/v1/chat/sessions/{other_sid}/messages"));
    assert_eq!(post_message(&server.http, url, &other, "hi [[mock tokens=3]]").await.status(), 200);

    let (_, me) = server.get(&token, "/api/v1/auth/me").await;
    assert_eq!(me["quota"]["messages_today"], 2);
    assert_eq!(me["quota"]["prompt_tokens_today"].as_u64(), Some(prompt));
    assert_eq!(me["quota"]["completion_tokens_today"].as_u64(), Some(completion));
    let (_, quota) = server.get(&token, "/api/v1/chat/quota").await;
    assert_eq!(quota["completion_tokens_today"].as_u64(), Some(completion));

    let today = chrono::Utc::now().date_naive();
    let (status, report) = server.get(&admin, &format!("/api/v1/admin/usage?day={today}")).await;
    assert_eq!(status, 200);
    let report: relay_protocol::UsageReport = serde_json::from_value(report).unwrap();
    assert_eq!(report.day, today);
    let row = |id: Uuid| report.users.iter().find(|u| u.user_id == id).cloned().unwrap();
    assert_eq!((row(user_id).messages, row(user_id).completion_tokens), (2, completion));
    assert_eq!(row(other_id).completion_tokens, 3);
    assert_eq!(report.users[0].user_id, user_id, "the most tokens first");
    let (_, one) = server.get(&admin, &format!("/api/v1/admin/usage?user_id={other_id}")).await;
    assert_eq!(one["users"].as_array().unwrap().len(), 1);
    let (_, yesterday) = server.get(&admin, "/api/v1/admin/usage?day=2001-01-01").await;
    assert_eq!(yesterday["users"].as_array().unwrap().len(), 0);
    assert_eq!(server.get(&token, "/api/v1/admin/usage").await.0, 404, "not for ordinary users");
    assert_eq!(server.get(&admin, "/api/v1/admin/usage?day=yesterday").await.0, 400);
}

// ---- retention and the storage cap ---------------------------------------------------------

/// The retention job archives sessions deleted long enough ago (their messages leave the
/// live table), and purges them with every message later; live sessions are untouched.
#[tokio::test]
async fn retention_archives_then_purges_old_deleted_sessions() {
    let server = TestServer::with(&[
        ("CHAT_ARCHIVE_AFTER_DAYS", "0"),
        ("CHAT_PURGE_AFTER_DAYS", "36500"),
        ("CHAT_RETENTION_INTERVAL_SECS", "1"),
    ])
    .await;
    let (token, _, old) = user_with_session(&server, "tidy").await;
    let kept = server.create_session(&token).await.id;
    for sid in [old, kept] {
        let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
        assert_eq!(post_message(&server.http, url, &token, "keep or not [[mock tokens=2]]").await.status(), 200);
    }
    let deleted = server.http.delete(server.url(&format!("/api/v1/chat/sessions/{old}"))).bearer_auth(&token).send();
    assert_eq!(deleted.await.unwrap().status(), 200);

    let store = &server.state().store;
    common::eventually("the job archives the deleted session", || async {
        server.state().metrics.render().contains(r#"relay_retention_sessions_total{action="archived"} 1"#)
    })
    .await;
    assert!(store.recent_messages(old, 10).await.unwrap().is_empty(), "its messages left the live table");
    assert_eq!(store.archived_messages(old).await.unwrap(), 2);
    assert_eq!(store.recent_messages(kept, 10).await.unwrap().len(), 2, "a live session is untouched");
    assert!(server.state().metrics.render().contains(r#"relay_retention_messages_total{action="archived"} 2"#));

    // A year on (here: a purge age of zero), the deleted session goes for good.
    let purge = relay_server::retention::Retention {
        store: store.clone(),
        archive_after: Duration::ZERO,
        purge_after: Duration::ZERO,
        every: Duration::from_secs(3600),
        metrics: server.state().metrics.clone(),
    };
    let report = purge.run().await.unwrap();
    assert_eq!((report.purged_sessions, report.purged_messages), (1, 2));
    assert_eq!(store.archived_messages(old).await.unwrap(), 0);
    assert_eq!(store.recent_messages(kept, 10).await.unwrap().len(), 2);
    assert_eq!(purge.run().await.unwrap(), Default::default(), "nothing left to do");
    assert_eq!(stored(&server, &token, kept).await.messages.len(), 2);
}

/// `CHAT_MAX_STORED_MESSAGES_PER_USER`: a user whose sessions hold that many messages is
/// refused `storage_full` (403) over REST and WebSocket; deleting a session makes room.
#[tokio::test]
async fn stored_messages_are_capped_per_user() {
    let server = TestServer::with(&[("CHAT_MAX_STORED_MESSAGES_PER_USER", "4")]).await;
    let (token, _, sid) = user_with_session(&server, "hoarder2").await;
    let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    for _ in 0..2 {
        assert_eq!(post_message(&server.http, url.clone(), &token, "keep [[mock tokens=1]]").await.status(), 200);
    }
    let refused = post_message(&server.http, url.clone(), &token, "one more").await;
    assert_eq!(error_of(refused).await, (403, ErrorCode::StorageFull));
    let other = server.create_session(&token).await.id;
    let mut ws = server.ws(&token).await;
    send(&mut ws, other, "full", "over the socket").await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "full")).await;
    let ServerFrame::Error { error, .. } = frames.last().unwrap() else { unreachable!() };
    assert_eq!(error.code, ErrorCode::StorageFull);
    assert_eq!(stored(&server, &token, sid).await.messages.len(), 4, "nothing more stored");

    let deleted = server.http.delete(server.url(&format!("/api/v1/chat/sessions/{sid}"))).bearer_auth(&token).send();
    assert_eq!(deleted.await.unwrap().status(), 200);
    let url = server.url(&format!("/api/v1/chat/sessions/{other}/messages"));
    assert_eq!(post_message(&server.http, url, &token, "room again [[mock tokens=1]]").await.status(), 200);
}

// ---- observability ------------------------------------------------------------------------

/// `/metrics` moves with what happens: errors by code, reply durations, conversation depth,
/// active users, refusals by limit.
#[tokio::test]
async fn metrics_follow_what_happens() {
    let server = TestServer::with(&[("METRICS_TOKEN", "scrape"), ("CHAT_RATE_LIMIT_PER_MINUTE", "2")]).await;
    let (token, _, sid) = user_with_session(&server, "observed").await;
    let _ws = server.ws(&token).await;
    let url = server.url(&format!("/api/v1/chat/sessions/{sid}/messages"));
    for _ in 0..2 {
        assert_eq!(post_message(&server.http, url.clone(), &token, "hi [[mock tokens=2]]").await.status(), 200);
    }
    assert_eq!(post_message(&server.http, url.clone(), &token, "third").await.status(), 429);
    assert_eq!(server.get(&token, "/api/v1/chat/sessions/6f1c2b9e-0d57-4a51-9a39-0c4a8c1f2e11").await.0, 404);
    let text =
        server.http.get(server.url("/metrics")).bearer_auth("scrape").send().await.unwrap().text().await.unwrap();
    for line in [
        r#"relay_errors_total{code="rate_limited"} 1"#,
        r#"relay_errors_total{code="not_found"} 1"#,
        r#"relay_limits_refused_total{limit="send_rate"} 1"#,
        "relay_reply_duration_seconds_count 2",
        "relay_session_depth_messages_count 2",
        "relay_active_users 1",
        r#"relay_generations_total{finish_reason="stop"} 2"#,
        "relay_redis_up 0",
        "relay_llm_breaker_state 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
}

/// `LOG_FORMAT=json` writes one JSON object per line; an unknown format is refused.
#[tokio::test]
async fn logs_can_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let http = reqwest::Client::new();
    let server = Process::start_with(dir.path(), &[("LOG_FORMAT", "json"), ("RUST_LOG", "info")], log.into());
    server.ready(&http).await;
    server.register(&http, "jsonlogs").await;
    assert!(server.terminate().success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "relay-chat listening"), "{text}");
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"))
        .env("LOG_FORMAT", "xml")
        .env("RELAY_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("LOG_FORMAT"));
}

/// Sends to many sessions at once cannot overshoot the stored-message cap: each send's
/// check and the write it guards happen under the user's lock, and the count is stored
/// with the message.
#[tokio::test]
async fn the_storage_cap_holds_against_sends_to_many_sessions_at_once() {
    let server = TestServer::with(&[("CHAT_MAX_STORED_MESSAGES_PER_USER", "10")]).await;
    let (token, _) = server.register("hoarder").await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(server.create_session(&token).await.id);
    }
    let sends = sessions.iter().map(|sid| {
        server
            .http
            .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
            .bearer_auth(&token)
            .json(&serde_json::json!({"content": "hello [[mock tokens=1]]"}))
            .send()
    });
    let answers = futures::future::join_all(sends).await;
    let mut accepted = 0;
    for answer in answers {
        match answer.unwrap().status().as_u16() {
            200 => accepted += 1,
            403 => {}
            other => panic!("a send either passes or is storage_full, not {other}"),
        }
    }
    let mut user_messages = 0;
    for sid in &sessions {
        let (_, body) = server.get(&token, &format!("/api/v1/chat/sessions/{sid}")).await;
        user_messages += body["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "user").count();
    }
    assert_eq!(user_messages, accepted, "every accepted send is stored, no refused one");
    assert!((1..=10).contains(&accepted), "at most the cap was taken in: {accepted}");
}

/// A connection's subscribes are bounded (`WS_SUBSCRIBES_PER_MINUTE`): each is answered with
/// a snapshot of up to half the outbound queue, so re-subscribing to a watched session over
/// and over is refused `rate_limited` once the allowance is spent, with when to try again.
#[tokio::test]
async fn subscribes_of_a_connection_are_bounded() {
    let server = TestServer::with(&[("WS_SUBSCRIBES_PER_MINUTE", "5")]).await;
    let (token, _, sid) = user_with_session(&server, "resubscriber").await;
    let mut ws = server.ws(&token).await;
    let (mut snapshots, mut refused) = (0, Vec::new());
    for i in 0..12 {
        ws.send(json!({"type": "subscribe", "id": format!("s{i}"), "session_id": sid})).await;
        match ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. } | ServerFrame::Error { .. })).await.pop() {
            Some(ServerFrame::Subscribed { .. }) => snapshots += 1,
            Some(ServerFrame::Error { error, .. }) => refused.push(error),
            _ => unreachable!(),
        }
    }
    assert_eq!(snapshots, 5, "the burst, then no more snapshots");
    assert_eq!(refused.len(), 7);
    assert!(refused.iter().all(|e| e.code == ErrorCode::RateLimited && e.retry_after_ms.is_some_and(|ms| ms > 0)));
}

/// A send whose write timed out is still queued and is stored once the database takes it,
/// so the user's next send checks the stored-message cap only once it is (or three write
/// deadlines have passed): a database slow to write cannot let sends past the cap.
#[tokio::test]
async fn a_send_that_timed_out_still_counts_against_the_storage_cap() {
    let dir = tempfile::tempdir().unwrap();
    let stall = dir.path().join("stall-writes");
    let stall_var = stall.to_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let vars = [
        ("JWT_SECRET", common::SECRET),
        ("DATABASE_TIMEOUT_MS", "1000"),
        ("RELAY_FAULT_WRITE_STALL_FILE", stall_var.as_str()),
        ("CHAT_MAX_STORED_MESSAGES_PER_USER", "1"),
    ];
    let node = Process::start_with(dir.path(), &vars, std::process::Stdio::inherit());
    node.ready(&http).await;
    let token = node.register(&http, "slow-writes").await.token;
    let (a, b) = (node.create_session(&http, &token, None).await.id, node.create_session(&http, &token, None).await.id);
    let send = |sid: Uuid| {
        http.post(node.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
            .bearer_auth(&token)
            .json(&json!({"content": "hello [[mock tokens=1]]"}))
            .send()
    };

    std::fs::write(&stall, "").unwrap();
    assert_eq!(error_of(send(a).await.unwrap()).await, (503, ErrorCode::Unavailable), "not stored in time");
    let second = tokio::spawn(send(b));
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::remove_file(&stall).unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(error_of(second).await, (403, ErrorCode::StorageFull), "the first message counts, though it timed out");

    let user_messages = || async {
        let mut count = 0;
        for sid in [a, b] {
            let session = node.get(&http, &token, &format!("/api/v1/chat/sessions/{sid}")).await;
            count += session["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "user").count();
        }
        count
    };
    let mut stored = 0;
    for _ in 0..40 {
        stored = user_messages().await;
        if stored > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((stored, user_messages().await), (1, 1), "the first message is stored, the second never");
}
