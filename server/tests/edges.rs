//! Issue "Fault tolerance ... Edges (tried as an attacker would)": each edge found by
//! attacking the server, with a test that failed before its fix. Driven over real sockets
//! against the real server (in process, or the real binary where its log, its exit or a
//! subcommand is the point), a real redis-server and, for the proxy, a real nginx.

mod common;

use common::flow::*;
use common::{SECRET, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use uuid::Uuid;

fn hs256(claims: Value) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
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
