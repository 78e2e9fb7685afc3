//! Issue "Fault tolerance ... Edges (tried as an attacker would)": each edge found by
//! attacking the server, with a test that failed before its fix. Driven over real sockets
//! against the real server (in process, or the real binary where its log, its exit or a
//! subcommand is the point), a real redis-server and, for the proxy, a real nginx.

mod common;

use std::time::{Duration, Instant};

use common::flow::*;
use common::{Process, RedisServer, SECRET, TestServer, create_admin, error_of};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redis::AsyncCommands;
use relay_protocol::{ErrorCode, ErrorResponse, ServerFrame, UserRole};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

async fn login(server: &TestServer, username: &str, password: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request =
        server.http.post(server.url("/api/v1/auth/login")).json(&json!({"username": username, "password": password}));
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    request.send().await.unwrap()
}

async fn register(server: &TestServer, username: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = server
        .http
        .post(server.url("/api/v1/auth/register"))
        .json(&json!({"username": username, "password": "password123"}));
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    request.send().await.unwrap()
}

async fn post_message(server: &TestServer, token: &str, sid: Uuid, content: &str) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
        .bearer_auth(token)
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap()
}

fn hs256(claims: Value) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---- 18. tokens not valid yet ------------------------------------------------------------------

/// A token whose `nbf` lies in the future (beyond the leeway) is refused; one already
/// valid, or valid within the leeway, is accepted.
#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let server = TestServer::start().await;
    let url = server.url("/api/v1/auth/me");
    let now = now_secs();
    let sub = Uuid::new_v4().to_string();
    for (nbf, want) in [(now + 600, 401), (now + 10, 200), (now - 10, 200)] {
        let token = hs256(json!({"sub": sub, "exp": now + 3600, "nbf": nbf}));
        let status = server.http.get(&url).bearer_auth(&token).send().await.unwrap().status();
        assert_eq!(status, want, "nbf now{:+}", nbf as i64 - now as i64);
    }
}

// ---- 18. a database password in the log, the database down -------------------------------------

/// A password in `DATABASE_URL` never reaches the log, even at debug level with the
/// database down: the server says which database it cannot open, without the password.
#[tokio::test]
async fn a_database_password_never_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let url = format!("ws://dbuser:secretpw@127.0.0.1:{}", closed_port());
    let mut server = Process::start_with(dir.path(), &[("DATABASE_URL", &url), ("RUST_LOG", "debug")], log.into());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server neither started nor gave up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "no database, no server");
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("database") && logged.contains("127.0.0.1"), "it says what failed: {logged}");
    assert!(!logged.contains("secretpw"), "the password leaked: {logged}");
}

// ---- 15. X-Forwarded-For fails closed -----------------------------------------------------------

/// An `X-Forwarded-For` entry that does not parse stops the walk from the right: what the
/// client wrote before it does not count, the last trusted hop (here the proxy itself)
/// does. Before the fix the walk skipped it and took the client's own entries.
#[tokio::test]
async fn an_unparsable_forwarded_entry_stops_the_walk() {
    let server = TestServer::with(&[("TRUSTED_PROXIES", "127.0.0.1"), ("AUTH_LOGIN_FAILURES_PER_ADDRESS", "2")]).await;
    server.register("walker").await;
    for claimed in ["198.51.100.1, not-an-address", "198.51.100.2, not-an-address"] {
        assert_eq!(login(&server, "nobody", "wrong-password", Some(claimed)).await.status(), 401);
    }
    let refused = login(&server, "walker", "password123", Some("198.51.100.3, not-an-address")).await;
    assert_eq!(error_of(refused).await, (429, ErrorCode::RateLimited), "counted against the proxy");
    assert_eq!(login(&server, "walker", "password123", Some("198.51.100.4")).await.status(), 200);
}

// ---- 14. limiter keys: IPv6 per /64, usernames checked first ------------------------------------

/// An IPv6 client holds a whole /64 (any host can pick any address in it), so failed
/// logins and registrations count per /64; another /64 is another client.
#[tokio::test]
async fn ipv6_clients_are_limited_per_64_prefix() {
    let server = TestServer::with(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("AUTH_LOGIN_FAILURES_PER_ADDRESS", "2"),
        ("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR", "2"),
    ])
    .await;
    server.register("sixer").await;
    for addr in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
        assert_eq!(login(&server, "nobody", "wrong-password", Some(addr)).await.status(), 401);
    }
    let same_prefix = login(&server, "sixer", "password123", Some("2001:db8:1:2::abcd")).await;
    assert_eq!(error_of(same_prefix).await, (429, ErrorCode::RateLimited), "the same /64 is the same client");
    assert_eq!(login(&server, "sixer", "password123", Some("2001:db8:1:3::1")).await.status(), 200);

    for (i, addr) in ["2001:db8:9:9::1", "2001:db8:9:9::2"].into_iter().enumerate() {
        assert_eq!(register(&server, &format!("six{i}"), Some(addr)).await.status(), 201);
    }
    let refused = register(&server, "six2", Some("2001:db8:9:9:1:2:3:4")).await;
    assert_eq!(error_of(refused).await, (429, ErrorCode::RateLimited));
    assert_eq!(register(&server, "six3", Some("2001:db8:9:a::1")).await.status(), 201);
}

/// A login name that breaks the naming rule (here 60,000 characters, or a space) is
/// answered 401 at once and never becomes a limiter key: Redis holds no key for it, while
/// a well-formed unknown name is counted as usual.
#[tokio::test]
async fn usernames_are_checked_before_they_become_limiter_keys() {
    let redis = RedisServer::start().await;
    let server = TestServer::with(&[("REDIS_URL", &redis.url())]).await;
    let long = "a".repeat(60_000);
    for name in [long.as_str(), "bad name", "x"] {
        let response = login(&server, name, "wrong-password", None).await;
        assert_eq!(error_of(response).await, (401, ErrorCode::Unauthorized), "{}", &name[..name.len().min(20)]);
    }
    let response = login(&server, "wellformed", "wrong-password", None).await;
    assert_eq!(error_of(response).await, (401, ErrorCode::Unauthorized));
    let mut conn = redis.connection().await;
    let keys: Vec<String> = conn.keys("relay:login-fail:user:*").await.unwrap();
    assert_eq!(keys, ["relay:login-fail:user:wellformed"], "only the well-formed name is a key");
    let registered = server
        .http
        .post(server.url("/api/v1/auth/register"))
        .json(&json!({"username": long, "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(registered).await, (400, ErrorCode::BadRequest));
}

// ---- 10. failed logins are reserved before the password is checked ----------------------------

/// Sixty wrong passwords for one name at once, with `AUTH_LOGIN_FAILURES_PER_USERNAME=10`:
/// exactly ten are checked (401), the other fifty are refused (429) without a hash, and
/// then even the right password is refused until the window ends, in process and in
/// Redis (before the fix the limit was read before the hash and counted after it, so all
/// sixty were checked).
#[tokio::test]
async fn a_burst_of_wrong_passwords_gets_only_the_allowed_guesses() {
    let redis = RedisServer::start().await;
    for redis_url in [None, Some(redis.url())] {
        let mut vars = vec![
            ("AUTH_LOGIN_FAILURES_PER_USERNAME", "10".to_string()),
            ("AUTH_LOGIN_FAILURES_PER_ADDRESS", "1000".into()),
            ("AUTH_LOGIN_WINDOW_SECS", "6".into()),
            ("AUTH_HASH_QUEUE", "500".into()),
        ];
        if let Some(url) = &redis_url {
            vars.push(("REDIS_URL", url.clone()));
        }
        let vars: Vec<(&'static str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = TestServer::with(&vars).await;
        server.register("besieged").await;
        let started = Instant::now();
        let passwords: Vec<String> = (0..60).map(|i| format!("wrong-password-{i}")).collect();
        let guesses = passwords.iter().map(|password| login(&server, "besieged", password, None));
        let mut statuses = Vec::new();
        for response in futures::future::join_all(guesses).await {
            statuses.push(error_of(response).await);
        }
        let checked = statuses.iter().filter(|s| **s == (401, ErrorCode::Unauthorized)).count();
        let refused = statuses.iter().filter(|s| **s == (429, ErrorCode::RateLimited)).count();
        assert_eq!((checked, refused), (10, 50), "{redis_url:?}: {statuses:?}");
        let metrics = server.state().metrics.render();
        assert!(metrics.contains(r#"relay_limits_refused_total{limit="login_failures"} 50"#), "{metrics}");

        let right = login(&server, "besieged", "password123", None).await;
        assert_eq!(error_of(right).await, (429, ErrorCode::RateLimited), "{redis_url:?}: the right password too");
        assert!(started.elapsed() < Duration::from_secs(5), "the window has not ended yet");
        tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed()) + Duration::from_millis(300)).await;
        let after = login(&server, "besieged", "password123", None).await;
        assert_eq!(after.status(), 200, "{redis_url:?}: the window ended");
    }
}

// ---- 12. a second Redis outage on the same day ---------------------------------------------------

/// Redis goes away twice in a day: each time the in-process quota starts from the day's
/// count in the database, not from what was left of the first outage (which would let
/// sends through past the quota).
#[tokio::test]
async fn a_second_redis_outage_counts_the_quota_from_the_database() {
    let mut redis = RedisServer::start().await;
    let server = TestServer::with(&[("REDIS_URL", &redis.url()), ("CHAT_DAILY_MESSAGE_QUOTA", "6")]).await;
    let (token, _, sid) = user_with_session(&server, "twice").await;
    let sent_today = || async {
        let (_, quota) = server.get(&token, "/api/v1/chat/quota").await;
        quota["messages_today"].as_u64().unwrap()
    };
    let ready = || async {
        let ready: Value = server.http.get(server.url("/readyz")).send().await.unwrap().json().await.unwrap();
        ready["redis"].as_str().unwrap().to_string()
    };
    for _ in 0..2 {
        assert_eq!(post_message(&server, &token, sid, "a [[mock tokens=1]]").await.status(), 200);
    }

    redis.stop();
    assert_eq!(post_message(&server, &token, sid, "b [[mock tokens=1]]").await.status(), 200, "first outage");
    assert_eq!(ready().await, "down");
    redis.resume().await;
    common::eventually("Redis is used again", || async { ready().await == "up" }).await;
    for _ in 0..2 {
        assert_eq!(post_message(&server, &token, sid, "c [[mock tokens=1]]").await.status(), 200);
    }
    common::eventually("the database counts five", || async { sent_today().await == 5 }).await;

    redis.stop();
    assert_eq!(post_message(&server, &token, sid, "d [[mock tokens=1]]").await.status(), 200, "the sixth");
    assert_eq!(ready().await, "down");
    let over = post_message(&server, &token, sid, "e [[mock tokens=1]]").await;
    assert_eq!(error_of(over).await, (429, ErrorCode::QuotaExceeded), "the seventh, in the second outage");
}

// ---- 11. admin names are the operator's ---------------------------------------------------------

/// A name in `CHAT_ADMIN_USERS` cannot be registered over the API, whether or not it
/// exists: the answer is the one a taken name gets, so it tells nothing more. The operator
/// creates the account with `relay-server create-admin <name>` (password on stdin), which
/// closes the database (the server's next start has no log to replay), and it logs in as
/// an admin.
#[tokio::test]
async fn admin_names_are_created_by_the_operator_not_by_whoever_registers_first() {
    let server = TestServer::with(&[("CHAT_ADMIN_USERS", "boss")]).await;
    server.register("taken").await;
    let reserved = register(&server, "boss", None).await;
    assert_eq!(reserved.status(), 409);
    let reserved: ErrorResponse = reserved.json().await.unwrap();
    let taken: ErrorResponse = register(&server, "taken", None).await.json().await.unwrap();
    assert_eq!(reserved, taken, "a reserved name answers exactly like a taken one");
    assert_eq!(reserved.error.code, ErrorCode::Conflict);

    let dir = tempfile::tempdir().unwrap();
    let admins = [("CHAT_ADMIN_USERS", "boss,chief")];
    let out = create_admin(dir.path(), &admins, "boss", "a-strong-password");
    assert!(out.status.success(), "create-admin: {}", String::from_utf8_lossy(&out.stderr));
    let again = create_admin(dir.path(), &admins, "boss", "another-password");
    assert!(!again.status.success(), "an existing account is not replaced");
    let unlisted = create_admin(dir.path(), &admins, "nobody", "a-strong-password");
    assert_eq!(unlisted.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unlisted.stderr).contains("CHAT_ADMIN_USERS"));
    let weak = create_admin(dir.path(), &admins, "chief", "short");
    assert_eq!(weak.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("password"));
    let out = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.contains("a-strong-password"), "the password is not echoed: {out}");
    for run in [&out, &String::from_utf8_lossy(&again.stderr).to_string()] {
        assert!(!run.contains(" ERROR "), "the database closed quietly: {run}");
    }

    let http = reqwest::Client::new();
    let log = dir.path().join("node.log");
    let vars = [admins[0], ("RUST_LOG", "warn,surrealkv::wal::recovery=info")];
    let node = Process::start_with(dir.path(), &vars, std::fs::File::create(&log).unwrap().into());
    node.ready(&http).await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("WAL recovery complete: 0 batches"), "create-admin closed the database: {log}");
    let login = node.login(&http, "boss", "a-strong-password").await;
    assert_eq!(login.status(), 200);
    let login: relay_protocol::AuthResponse = login.json().await.unwrap();
    assert_eq!(login.user.role, UserRole::Admin);
    assert_eq!(node.login(&http, "boss", "another-password").await.status(), 401);
    assert!(node.terminate().success());
}

// ---- 19. what the docs say is what the code does -------------------------------------------------

/// `/metrics` and `/admin/usage` do not exist for anyone but their users: no token, a bad
/// token, or a user's token all answer `404`, and only an admin learns that a query is bad.
#[tokio::test]
async fn admin_endpoints_are_not_found_for_everyone_else() {
    let server = TestServer::with(&[("CHAT_ADMIN_USERS", "auditor"), ("METRICS_TOKEN", "scrape")]).await;
    let (user, _) = server.register("plain").await;
    let (admin, _) = server.admin("auditor").await;
    for path in ["/metrics", "/api/v1/admin/usage", "/api/v1/admin/usage?day=yesterday"] {
        let anonymous = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(error_of(anonymous).await, (404, ErrorCode::NotFound), "{path} without a token");
        let forged = server.http.get(server.url(path)).bearer_auth("not.a.token").send().await.unwrap();
        assert_eq!(error_of(forged).await, (404, ErrorCode::NotFound), "{path} with a bad token");
        let plain = server.http.get(server.url(path)).bearer_auth(&user).send().await.unwrap();
        assert_eq!(error_of(plain).await, (404, ErrorCode::NotFound), "{path} for a user");
    }
    let bad_day = server.http.get(server.url("/api/v1/admin/usage?day=yesterday")).bearer_auth(&admin).send();
    assert_eq!(error_of(bad_day.await.unwrap()).await, (400, ErrorCode::BadRequest));
    assert_eq!(server.get(&admin, "/api/v1/admin/usage").await.0, 200);
    assert_eq!(server.http.get(server.url("/metrics")).bearer_auth("scrape").send().await.unwrap().status(), 200);
    assert_eq!(server.http.get(server.url("/metrics")).bearer_auth(&admin).send().await.unwrap().status(), 200);
}

// ---- 13. slow and idle sockets, and sockets per address ------------------------------------------

/// Reads until the server closes the socket (end of stream or an error); the time it took.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A client that trickles its request header a line every 200 ms (slowloris) is cut off
/// after `HTTP_HEADER_TIMEOUT_SECS`, counted from its first byte.
#[tokio::test]
async fn a_trickled_header_is_cut_off() {
    let server = TestServer::with(&[("HTTP_HEADER_TIMEOUT_SECS", "1"), ("HTTP_IDLE_TIMEOUT_SECS", "30")]).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await;
    trickle.abort();
    let took = started.elapsed();
    match read {
        Err(_) => panic!("a trickled header held the socket for 10 s"),
        Ok(Ok(n)) => assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "answered"),
        Ok(Err(_)) => {}
    }
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "cut off after {took:?}");
    let metrics = server.state().metrics.render();
    assert!(metrics.contains(r#"relay_http_connections_closed_total{reason="header_timeout"} 1"#), "{metrics}");
}

/// A keep-alive connection with no request in progress is closed after
/// `HTTP_IDLE_TIMEOUT_SECS`, after a request as well as one that never sent any.
#[tokio::test]
async fn idle_connections_are_closed() {
    let server = TestServer::with(&[("HTTP_HEADER_TIMEOUT_SECS", "10"), ("HTTP_IDLE_TIMEOUT_SECS", "1")]).await;
    let mut used = TcpStream::connect(server.addr).await.unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    used.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), used.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"ok\""), "{answer}");
    let took = until_closed(&mut used, Duration::from_secs(6)).await.expect("an idle keep-alive connection is closed");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{took:?}");
    assert!(until_closed(&mut silent, Duration::from_secs(4)).await.is_some(), "a silent connection is closed");
}

/// WebSockets live past the idle timeout (they have their own pings), and so does a
/// request whose answer takes longer than it (a slow reply, over REST and SSE).
#[tokio::test]
async fn websockets_and_slow_answers_outlive_the_idle_timeout() {
    let server = TestServer::with(&[("HTTP_HEADER_TIMEOUT_SECS", "1"), ("HTTP_IDLE_TIMEOUT_SECS", "1")]).await;
    let (token, _, sid) = user_with_session(&server, "patient").await;
    let mut ws = server.ws(&token).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(json!({"type": "ping", "id": "still-here"})).await;
    assert!(matches!(ws.recv().await, ServerFrame::Pong { id: Some(id) } if id == "still-here"));
    let slow = format!("slowly {}", directive(25, 10));
    let response = post_message(&server, &token, sid, &slow).await;
    assert_eq!(response.status(), 200, "a 2.5 s reply over REST");
    let streamed = server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .json(&json!({"content": format!("slow start [[mock tokens=3 delay_ms=2500]]")}))
        .send()
        .await
        .unwrap();
    assert!(streamed.text().await.unwrap().contains("\"done\":true"), "a 2.5 s wait over SSE");
    ws.send(json!({"type": "ping", "id": "and-still"})).await;
    // The user's `session_updated` and `quota` frames of those sends may come first.
    ws.recv_until(|f| matches!(f, ServerFrame::Pong { id: Some(id) } if id == "and-still")).await;
}

/// Sends a request on a raw socket and reads the status line (`None` if the socket closes).
async fn status_line(stream: &mut TcpStream) -> Option<String> {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.ok()?;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n]).lines().next().map(str::to_string),
        Ok(_) => None,
        Err(_) => panic!("neither answered nor closed within 5 s"),
    }
}

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// `HTTP_MAX_CONNECTIONS_PER_ADDRESS`: with that many sockets open from one address, the
/// next is closed at once, unanswered; closing one makes room. A trusted proxy (which
/// carries many clients) is not capped.
#[tokio::test]
async fn sockets_per_address_are_capped() {
    let server = TestServer::with(&[("HTTP_MAX_CONNECTIONS_PER_ADDRESS", "3")]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(server.addr).await;
        assert_eq!(status_line(&mut stream).await.as_deref(), Some("HTTP/1.1 200 OK"));
        open.push(stream);
    }
    let mut fourth = connect(server.addr).await;
    assert_eq!(status_line(&mut fourth).await, None, "the fourth socket is closed unanswered");
    let metrics = server.state().metrics.render();
    assert!(metrics.contains(r#"relay_limits_refused_total{limit="connections_per_address"} 1"#), "{metrics}");
    drop(open.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut stream = connect(server.addr).await;
        if status_line(&mut stream).await.is_some() {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a closed socket gives its place back");

    let behind_proxy =
        TestServer::with(&[("HTTP_MAX_CONNECTIONS_PER_ADDRESS", "3"), ("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let mut many = Vec::new();
    for _ in 0..6 {
        let mut stream = connect(behind_proxy.addr).await;
        assert_eq!(status_line(&mut stream).await.as_deref(), Some("HTTP/1.1 200 OK"), "a trusted proxy is not capped");
        many.push(stream);
    }
}

// ---- 20. the proxy keeps the port the browser used ------------------------------------------------

/// `deploy/nginx.conf` (as `deploy/local-cluster.sh` runs it) in front of a server with
/// `CORS_ALLOWED_ORIGINS` set: the browser client's own WebSocket, whose `Origin` is the
/// address it was loaded from, port included, is let through; another origin is not.
/// Before the fix nginx sent `Host` without the port, and the client's own upgrade was
/// refused 403.
#[tokio::test]
async fn the_proxy_keeps_the_port_so_the_clients_own_origin_is_accepted() {
    let server =
        TestServer::with(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com"), ("TRUSTED_PROXIES", "127.0.0.1")])
            .await;
    let (token, _) = server.register("proxied").await;
    let nginx = Nginx::start(server.addr.port());
    let http = reqwest::Client::new();
    common::eventually("nginx answers", || async {
        http.get(format!("http://127.0.0.1:{}/readyz", nginx.port)).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let upgrade = |origin: String| {
        let (addr, token) = (format!("127.0.0.1:{}", nginx.port), token.clone());
        async move {
            let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
                "ws://{addr}/api/v1/ws"
            ))
            .unwrap();
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            request.headers_mut().insert("origin", origin.parse().unwrap());
            match tokio_tungstenite::connect_async(request).await {
                Ok((_, response)) => response.status().as_u16(),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(upgrade(format!("http://127.0.0.1:{}", nginx.port)).await, 101, "the client's own origin");
    assert_eq!(upgrade("https://evil.example".into()).await, 403);
    assert_eq!(upgrade("https://app.example.com".into()).await, 101);
}

/// nginx with `deploy/nginx.conf`, pointed at one local server the way
/// `deploy/local-cluster.sh` points it at its nodes; stopped when dropped.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream_port: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers may run as another user: they must reach their temp paths.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let port = closed_port();
        let work = dir.path().display().to_string();
        let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf")).unwrap();
        let conf: String = conf.lines().filter(|l| !l.contains("resolver 127.0.0.11")).collect::<Vec<_>>().join("\n");
        let conf = conf
            .replace(
                "    server relay:8080 max_fails=2 fail_timeout=5s;",
                &format!("    server 127.0.0.1:{upstream_port} max_fails=2 fail_timeout=5s;"),
            )
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
            .replace("\nevents {", &format!("\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log;\nevents {{"))
            .replace(
                "\nhttp {",
                &format!(
                    "\nhttp {{\n  access_log off;\n  client_body_temp_path {work}/nginx-body;\n  proxy_temp_path {work}/nginx-proxy;"
                ),
            );
        assert!(conf.contains(&format!("127.0.0.1:{upstream_port}")), "deploy/nginx.conf changed shape:\n{conf}");
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let nginx = if std::path::Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
        let child = std::process::Command::new(nginx)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("nginx runs (apt-get install nginx; scripts/test.sh installs it)");
        Nginx { child, port, _dir: dir }
    }
}

impl Drop for Nginx {
    /// Stops nginx the way it stops its workers too (a killed master leaves them running).
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- 21. the OpenAPI document says what the server does -------------------------------------------

/// Page sizes outside what the document allows are refused `400`, not clamped: the
/// document's `minimum`/`maximum` are the server's.
#[tokio::test]
async fn out_of_range_pages_are_refused_as_the_document_says() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "pager").await;
    for path in [
        "/api/v1/chat/sessions?per_page=2147483648".to_string(),
        "/api/v1/chat/sessions?per_page=0".into(),
        "/api/v1/chat/sessions?per_page=101".into(),
        "/api/v1/chat/sessions?per_page=-1".into(),
        "/api/v1/chat/sessions?page=0".into(),
        "/api/v1/chat/sessions?page=1000001".into(),
        format!("/api/v1/chat/sessions/{sid}/messages?limit=0"),
        format!("/api/v1/chat/sessions/{sid}/messages?limit=201"),
    ] {
        let response = server.http.get(server.url(&path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(error_of(response).await, (400, ErrorCode::BadRequest), "{path}");
    }
    assert_eq!(server.get(&token, "/api/v1/chat/sessions?page=1&per_page=100").await.0, 200);
    assert_eq!(server.get(&token, &format!("/api/v1/chat/sessions/{sid}/messages?limit=200")).await.0, 200);

    let (_, doc) = server.get(&token, "/api/v1/openapi.json").await;
    let param = |path: &str, name: &str| -> Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} has no {name}"))["schema"]
            .clone()
    };
    let per_page = param("/api/v1/chat/sessions", "per_page");
    assert_eq!((per_page["minimum"].as_u64(), per_page["maximum"].as_u64()), (Some(1), Some(100)), "{per_page}");
    let limit = param("/api/v1/chat/sessions/{id}/messages", "limit");
    assert_eq!((limit["minimum"].as_u64(), limit["maximum"].as_u64()), (Some(1), Some(200)), "{limit}");
    let schemas = &doc["components"]["schemas"];
    let content = &schemas["SendMessageRequest"]["properties"]["content"];
    assert_eq!((content["minLength"].as_u64(), content["maxLength"].as_u64()), (Some(1), Some(4000)), "{content}");
    let title = &schemas["UpdateSessionRequest"]["properties"]["title"];
    assert_eq!((title["minLength"].as_u64(), title["maxLength"].as_u64()), (Some(1), Some(255)), "{title}");
    assert_eq!(content["pattern"], relay_protocol::NOT_BLANK_PATTERN, "blank is what the server calls blank");
    assert_eq!(title["pattern"], relay_protocol::NOT_BLANK_PATTERN);
    let username = &schemas["RegisterRequest"]["properties"]["username"];
    assert_eq!((username["minLength"].as_u64(), username["maxLength"].as_u64()), (Some(3), Some(32)));
    // Every route that takes a token lists 401, with the error body.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("security").is_some() && path != "/metrics" && path != "/api/v1/admin/usage" {
                let unauthorized = &operation["responses"]["401"];
                assert!(unauthorized["content"]["application/json"]["schema"].is_object(), "{method} {path}");
            }
        }
    }
}

/// Every body of the API is a JSON object (the document says so): an array is refused,
/// though serde would read a struct from an array of its fields; an optional body may be
/// empty or `null`, as the document allows.
#[tokio::test]
async fn bodies_are_json_objects_as_the_document_says() {
    let server = TestServer::start().await;
    let (token, _) = server.register("shaped").await;
    let raw = |path: &str, body: &'static str, token: Option<&str>| {
        let mut request = server.http.post(server.url(path)).header("content-type", "application/json").body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let array = raw("/api/v1/auth/register", r#"["arrayed", "password123"]"#, None).await.unwrap();
    assert_eq!(error_of(array).await, (400, ErrorCode::BadRequest), "register from an array");
    let array = raw("/api/v1/chat/sessions", "[]", Some(&token)).await.unwrap();
    assert_eq!(error_of(array).await, (400, ErrorCode::BadRequest), "a session from an array");
    for body in ["null", "", "{}"] {
        let created = raw("/api/v1/chat/sessions", body, Some(&token)).await.unwrap();
        assert_eq!(created.status(), 201, "{body:?}");
        let created: relay_protocol::Session = created.json().await.unwrap();
        assert_eq!(created.title, "New chat");
    }
}

/// A configured message length is what the document says.
#[tokio::test]
async fn the_document_follows_the_configured_message_length() {
    let server = TestServer::with(&[("CHAT_MAX_MESSAGE_LENGTH", "123")]).await;
    let doc: Value = server.http.get(server.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    for schema in ["SendMessageRequest", "EditMessageRequest"] {
        assert_eq!(doc["components"]["schemas"][schema]["properties"]["content"]["maxLength"], 123, "{schema}");
    }
}
