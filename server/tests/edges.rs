//! Issue "Fault tolerance ... Edges (tried as an attacker would)": each edge found by
//! attacking the server, with a test that failed before its fix. Driven over real sockets
//! against the real server (in process, or the real binary where its log, its exit or a
//! subcommand is the point), a real redis-server and, for the proxy, a real nginx.

mod common;

use std::time::{Duration, Instant};

use common::flow::*;
use common::{Process, SECRET, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

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
