//! Test harness: the real server on an ephemeral port with an in-memory SurrealDB (or an
//! on-disk one), the mock model served over real HTTP, and real HTTP and WebSocket clients.
#![allow(dead_code)]

pub mod cluster;
pub mod flow;
pub mod sse;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use relay_mock_llm::{MockLlm, MockSettings};
use relay_protocol::{AuthResponse, ServerFrame, Session};
use relay_server::{Config, Server};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret test servers use, so tests can forge and craft tokens.
pub const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

/// How long a test waits for any one expected frame or response.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running server with its mock model.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub mock: MockLlm,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

/// Mock settings fast enough for tests; directives in messages slow single replies down.
pub fn fast_mock() -> MockSettings {
    MockSettings {
        first_token_delay: Duration::from_millis(5),
        tokens_per_second: 1000.0,
        reply_tokens: 20,
        ..MockSettings::default()
    }
}

impl TestServer {
    /// A server with default settings.
    pub async fn start() -> TestServer {
        TestServer::with(&[]).await
    }

    /// A server with some environment variables set (others take test defaults).
    pub async fn with(vars: &[(&'static str, &str)]) -> TestServer {
        let mock = MockLlm::start(fast_mock(), "127.0.0.1:0".parse().unwrap()).await.expect("mock starts");
        let dir = tempfile::tempdir().unwrap();
        let mut map: HashMap<&str, String> = HashMap::new();
        map.insert("BIND_ADDR", "127.0.0.1:0".into());
        map.insert("DATABASE_URL", "mem://".into());
        map.insert("RELAY_DATA_DIR", dir.path().display().to_string());
        map.insert("JWT_SECRET", SECRET.into());
        map.insert("SAMBANOVA_API_KEY", "test-key".into());
        map.insert("SAMBANOVA_API_BASE", mock.base_url());
        // Retries stay quick, and the breaker out of the way unless a test is about it.
        map.insert("LLM_RETRY_BACKOFF_MS", "10".into());
        map.insert("LLM_BREAKER_FAILURES", "1000".into());
        // Tests send quickly; the send rate is tested where it is the point.
        map.insert("CHAT_RATE_LIMIT_PER_MINUTE", "0".into());
        // Tests subscribe as fast as they like; the allowance is tested where it is the point.
        map.insert("WS_SUBSCRIBES_PER_MINUTE", "100000".into());
        map.insert("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR", "10000".into());
        for (k, v) in vars {
            map.insert(k, v.to_string());
        }
        let config = Config::from_map(&map).expect("test config is valid");
        let server = Server::start(config).await.expect("server starts");
        TestServer { addr: server.addr, server: Some(server), mock, http: reqwest::Client::new(), dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn state(&self) -> &relay_server::AppState {
        &self.server.as_ref().expect("server running").state
    }

    /// Registers a user and returns its token and id.
    pub async fn register(&self, username: &str) -> (String, uuid::Uuid) {
        let response = self
            .http
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"username": username, "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "register {username}");
        let body: AuthResponse = response.json().await.unwrap();
        (body.token, body.user.id)
    }

    /// Creates an account directly in the store (as `relay-server create-admin` does: a
    /// name in `CHAT_ADMIN_USERS` cannot be registered over the API) and returns a token
    /// for it and its id; listed in `CHAT_ADMIN_USERS`, it is an admin.
    pub async fn admin(&self, username: &str) -> (String, uuid::Uuid) {
        let state = self.state();
        let hash = state.passwords.hash("password123".into()).await.unwrap();
        let role = state.tokens.account_role(username);
        let record = state.store.create_user(username, &hash, role).await.unwrap();
        let user = relay_protocol::User { id: record.id, username: record.username, role };
        (state.tokens.issue(&user).unwrap(), user.id)
    }

    /// Creates a session for the token's user.
    pub async fn create_session(&self, token: &str) -> Session {
        let response =
            self.http.post(self.url("/api/v1/chat/sessions")).bearer_auth(token).json(&json!({})).send().await.unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    /// Sends `content` to a session over REST and returns the stored pair once the reply is
    /// complete (the send must succeed).
    pub async fn send_rest(
        &self,
        token: &str,
        session: uuid::Uuid,
        content: &str,
    ) -> relay_protocol::SendMessageResponse {
        let response = self
            .http
            .post(self.url(&format!("/api/v1/chat/sessions/{session}/messages")))
            .bearer_auth(token)
            .json(&json!({"content": content}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "send {content:?}");
        response.json().await.unwrap()
    }

    /// GET with a token; returns status and JSON body.
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Renames a session over REST (`PATCH /chat/sessions/:id`).
    pub async fn rename(&self, token: &str, session_id: uuid::Uuid, title: &str) -> reqwest::Response {
        self.http
            .patch(self.url(&format!("/api/v1/chat/sessions/{session_id}")))
            .bearer_auth(token)
            .json(&json!({"title": title}))
            .send()
            .await
            .unwrap()
    }

    /// A WebSocket authenticated by header, after its `ready` frame.
    pub async fn ws(&self, token: &str) -> Ws {
        let mut ws = self.ws_raw(Some(token)).await;
        match ws.recv().await {
            ServerFrame::Ready { .. } => ws,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// A WebSocket with or without an `Authorization` header, before any frame.
    pub async fn ws_raw(&self, token: Option<&str>) -> Ws {
        ws_at(&self.addr.to_string(), token).await
    }

    /// A WebSocket whose TCP receive buffer is tiny, for slow-reader tests.
    pub async fn ws_small_buffer(&self, token: &str) -> Ws {
        ws_small_buffer_at(self.addr, token).await
    }

    /// Shuts the server down gracefully.
    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }
}

/// A WebSocket to a server at `addr`, with or without an `Authorization` header, before
/// any frame.
pub async fn ws_at(addr: &str, token: Option<&str>) -> Ws {
    let mut request = format!("ws://{addr}/api/v1/ws").into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
    Ws { stream }
}

/// A WebSocket to `addr` whose TCP receive buffer is tiny (for slow-reader tests), after
/// its `ready` frame.
pub async fn ws_small_buffer_at(addr: SocketAddr, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/api/v1/ws").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (stream, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await.unwrap();
    let mut ws = Ws { stream };
    assert!(matches!(ws.recv().await, ServerFrame::Ready { .. }));
    ws
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes (Linux).
pub fn process_memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A WebSocket upgrade to `addr` authenticated by header: its status (101 when it
/// connects) and, then, the connection (before any frame).
pub async fn ws_upgrade(addr: &str, token: &str) -> (u16, Option<Ws>) {
    let mut request = format!("ws://{addr}/api/v1/ws").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, _)) => (101, Some(Ws { stream })),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (response.status().as_u16(), None),
        Err(e) => panic!("{e}"),
    }
}

/// The status and error code of a REST error response (panics if the body is not one).
pub async fn error_of(response: reqwest::Response) -> (u16, relay_protocol::ErrorCode) {
    let status = response.status().as_u16();
    let body: relay_protocol::ErrorResponse = response.json().await.expect("an error body");
    (status, body.error.code)
}

/// This process's resident memory, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A test WebSocket client.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a WebSocket read gave.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a test helper: one read at a time
pub enum Read {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.stream.send(WsMessage::Text(frame.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: WsMessage) {
        self.stream.send(message).await.unwrap();
    }

    /// The next frame or the close, skipping pings.
    pub async fn read(&mut self) -> Read {
        loop {
            let next = tokio::time::timeout(WAIT, self.stream.next()).await.expect("a frame in time");
            match next {
                Some(Ok(WsMessage::Text(text))) => {
                    return Read::Frame(
                        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad frame {text}: {e}")),
                    );
                }
                Some(Ok(WsMessage::Close(frame))) => return Read::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Read::Closed(None),
            }
        }
    }

    /// The next frame; panics on close.
    pub async fn recv(&mut self) -> ServerFrame {
        match self.read().await {
            Read::Frame(frame) => frame,
            Read::Closed(code) => panic!("connection closed ({code:?}) while a frame was expected"),
        }
    }

    /// Frames up to and including the first that matches.
    pub async fn recv_until(&mut self, mut done: impl FnMut(&ServerFrame) -> bool) -> Vec<ServerFrame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let stop = done(&frame);
            frames.push(frame);
            if stop {
                return frames;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            if let Read::Closed(code) = self.read().await {
                return code;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// Whether a frame is the `done` of a given reply (any reply when `None`).
pub fn is_done(frame: &ServerFrame) -> bool {
    matches!(frame, ServerFrame::Done { .. })
}

/// The text of a reply, from a list of frames.
pub fn reply_text(frames: &[ServerFrame], message_id: uuid::Uuid) -> String {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Delta { message_id: m, text, .. } if *m == message_id => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Asserts that session events carry contiguous `seq` numbers, starting after `after`.
pub fn assert_contiguous(frames: &[ServerFrame], session_id: uuid::Uuid, after: u64) {
    let mut expected = after + 1;
    for frame in frames {
        let sid = match frame {
            ServerFrame::Message { session_id, .. }
            | ServerFrame::Superseded { session_id, .. }
            | ServerFrame::GenerationStarted { session_id, .. }
            | ServerFrame::Delta { session_id, .. }
            | ServerFrame::Done { session_id, .. } => *session_id,
            _ => continue,
        };
        if sid != session_id {
            continue;
        }
        assert_eq!(frame.seq(), Some(expected), "gap or repeat at {frame:?}");
        expected += 1;
    }
}

/// Polls until `check` is true or the wait runs out.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Runs `relay-server create-admin <name>` with a clean environment plus `vars`, its data in
/// `data_dir` and the password on stdin; its output once it has exited.
pub fn create_admin(
    data_dir: &std::path::Path,
    vars: &[(&str, &str)],
    name: &str,
    password: &str,
) -> std::process::Output {
    use std::io::Write as _;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("RELAY_DATA_DIR", data_dir);
    if let Ok(profile) = std::env::var("LLVM_PROFILE_FILE") {
        command.env("LLVM_PROFILE_FILE", profile);
    }
    for (k, v) in vars {
        command.env(k, v);
    }
    let mut child = command
        .args(["create-admin", name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the relay-server binary starts");
    // A binary that does not read its stdin may have exited already.
    let _ = child.stdin.take().expect("stdin is piped").write_all(format!("{password}\n").as_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("create-admin did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A server process of the real binary, for restart, signal and log tests. It runs with a
/// clean environment: the data directory, a free port, the built-in mock model (fast, and
/// writing lorem ipsum, which tests compare with `relay_mock_llm::reply_text`, rather than
/// its demo), and whatever variables a test adds.
pub struct Process {
    pub child: std::process::Child,
    pub addr: String,
}

impl Process {
    /// Starts the binary with its data in `data_dir`; logs go to the test's stderr.
    pub fn start(data_dir: &std::path::Path) -> Process {
        Process::start_with(data_dir, &[], std::process::Stdio::inherit())
    }

    /// Starts the binary with extra variables, its stderr going to `stderr`.
    pub fn start_with(data_dir: &std::path::Path, vars: &[(&str, &str)], stderr: std::process::Stdio) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BIND_ADDR", &addr)
            .env("RELAY_DATA_DIR", data_dir)
            .env("RUST_LOG", "warn")
            .env("MOCK_FIRST_TOKEN_MS", "1")
            .env("MOCK_TOKENS_PER_SEC", "0")
            .env("MOCK_DEMO", "0")
            .env("CHAT_RATE_LIMIT_PER_MINUTE", "0")
            .env("WS_SUBSCRIBES_PER_MINUTE", "100000")
            .env("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR", "10000");
        // Coverage runs collect a profile from every process they start.
        if let Ok(profile) = std::env::var("LLVM_PROFILE_FILE") {
            command.env("LLVM_PROFILE_FILE", profile);
        }
        for (k, v) in vars {
            command.env(k, v);
        }
        let child =
            command.stdout(std::process::Stdio::null()).stderr(stderr).spawn().expect("the relay-server binary starts");
        Process { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn ready(&self, http: &reqwest::Client) {
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("http://{}/readyz", self.addr)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server at {} never became ready", self.addr);
    }

    /// Registers a user with the tests' password and returns the whole answer.
    pub async fn register(&self, http: &reqwest::Client, username: &str) -> AuthResponse {
        self.register_with(http, username, "password123").await
    }

    /// Registers a user with a given password and returns the whole answer.
    pub async fn register_with(&self, http: &reqwest::Client, username: &str, password: &str) -> AuthResponse {
        let response = http
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "register {username}");
        response.json().await.unwrap()
    }

    /// Logs in; returns the raw response.
    pub async fn login(&self, http: &reqwest::Client, username: &str, password: &str) -> reqwest::Response {
        http.post(self.url("/api/v1/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Creates a session with an optional title.
    pub async fn create_session(&self, http: &reqwest::Client, token: &str, title: Option<&str>) -> Session {
        let response =
            http.post(self.url("/api/v1/chat/sessions")).bearer_auth(token).json(&json!({"title": title})).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    /// GET with a token; the JSON body.
    pub async fn get(&self, http: &reqwest::Client, token: &str, path: &str) -> Value {
        http.get(self.url(path)).bearer_auth(token).send().await.unwrap().json().await.unwrap()
    }

    /// Registers a user and creates a session with a title.
    pub async fn user_with_session(&self, http: &reqwest::Client, username: &str, title: &str) -> (String, Session) {
        let token = self.register(http, username).await.token;
        let session = self.create_session(http, &token, Some(title)).await;
        (token, session)
    }

    /// A WebSocket to this process, authenticated by header, after its `ready` frame.
    pub async fn ws(&self, token: &str) -> Ws {
        let mut ws = ws_at(&self.addr, Some(token)).await;
        assert!(matches!(ws.recv().await, ServerFrame::Ready { .. }));
        ws
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("server did not stop on SIGTERM");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` on a free loopback port, without persistence; killed when dropped.
/// `stop` and `start` again keep the port, so servers configured with its URL see Redis go
/// away and come back.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one (Debian's `redis-server`; `.ci/run` installs it).
    /// The free port it is given may be taken by another test's process before it binds:
    /// then it exits, and it starts again on another port.
    pub async fn start() -> RedisServer {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut redis = RedisServer { port, child: None };
            redis.resume().await;
            let pong: Option<String> = match redis::Client::open(redis.url()) {
                Ok(client) => match client.get_multiplexed_async_connection().await {
                    Ok(mut c) => redis::cmd("PING").query_async(&mut c).await.ok(),
                    Err(_) => None,
                },
                Err(_) => None,
            };
            let alive = redis.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none());
            if alive && pong.as_deref() == Some("PONG") {
                return redis;
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub async fn resume(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection for looking at keys.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Namespace and database [`SurrealServer::sql`] queries.
const NS: &str = "relay_cluster";
const DB: &str = "chat";

/// The SurrealDB server binary: `RELAY_TEST_SURREAL_BIN`, or the one `scripts/test.sh` builds.
pub fn surreal_bin() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("RELAY_TEST_SURREAL_BIN") {
        return bin.into();
    }
    let home = std::env::var("HOME").expect("HOME is set");
    let bin = std::path::PathBuf::from(home).join(".cache/surreal-target/release/surreal");
    assert!(
        bin.exists(),
        "no SurrealDB server at {}: run scripts/test.sh (it builds tools/surreal), or set RELAY_TEST_SURREAL_BIN",
        bin.display()
    );
    bin
}

/// A SurrealDB server on a free port, in memory or on disk; killed when dropped. It can be
/// paused (SIGSTOP), resumed, killed and started again on the same port (on disk, with the
/// same data), as a fault would.
pub struct SurrealServer {
    child: Option<std::process::Child>,
    pub port: u16,
    /// Where it keeps its data (`None`: in memory).
    path: Option<std::path::PathBuf>,
}

impl SurrealServer {
    /// Starts one in memory (root password `root-pass`) and waits until it answers.
    pub async fn start() -> SurrealServer {
        SurrealServer::start_with(None).await
    }

    /// Starts one keeping its data in `dir` (SurrealKV), so a kill and a start lose nothing
    /// it committed.
    pub async fn start_on_disk(dir: &std::path::Path) -> SurrealServer {
        SurrealServer::start_with(Some(dir.join("surreal.db"))).await
    }

    /// The free port it is given may be taken by another test's process before it binds:
    /// then it exits (or something else answers there), and it starts again on another port.
    async fn start_with(path: Option<std::path::PathBuf>) -> SurrealServer {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut server = SurrealServer { child: None, port, path: path.clone() };
            if server.launch().await {
                return server;
            }
            server.kill();
        }
        panic!("surreal did not come up");
    }

    /// Starts the process on its port; true once it answers as SurrealDB.
    async fn launch(&mut self) -> bool {
        let storage = match &self.path {
            Some(path) => format!("surrealkv://{}", path.display()),
            None => "memory".to_string(),
        };
        let child = std::process::Command::new(surreal_bin())
            .args(["start", "--bind", &format!("127.0.0.1:{}", self.port), "--user", "root", "--pass", "root-pass"])
            .arg(storage)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("surreal starts");
        self.child = Some(child);
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                return false;
            }
            let version = http.get(format!("http://127.0.0.1:{}/version", self.port)).send().await;
            if let Ok(response) = version
                && response.text().await.is_ok_and(|v| v.starts_with("surrealdb"))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("surreal is running").id()
    }

    /// Pauses it (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// Resumes it after [`SurrealServer::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port after [`SurrealServer::kill`].
    pub async fn restart(&mut self) {
        assert!(self.launch().await, "surreal came back on port {}", self.port);
    }

    /// Runs SurrealQL over its HTTP endpoint, in the cluster's namespace and database.
    pub async fn sql(&self, query: &str) -> Value {
        self.sql_in(NS, DB, query).await
    }

    /// Runs SurrealQL over its HTTP endpoint in a namespace and database.
    pub async fn sql_in(&self, ns: &str, db: &str, query: &str) -> Value {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/sql", self.port))
            .basic_auth("root", Some("root-pass"))
            .header("surreal-ns", ns)
            .header("surreal-db", db)
            .header("Accept", "application/json")
            .body(query.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for SurrealServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused process dies of SIGKILL too, but resume it first so nothing lingers.
            signal(child.id(), "CONT");
        }
        self.kill();
    }
}

/// Sends a signal (`STOP`, `CONT`, `KILL`, `TERM`) to a process.
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}
