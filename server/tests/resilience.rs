//! Issue "Limits and resilience", upstream part: retries before the first token, the
//! first-token and idle timeouts, the circuit breaker, and what the provider's own errors
//! (429, a rejected key, a missing model, a cut stream) become. The provider is the mock
//! over real HTTP, told by each message what to do.

mod common;

use std::time::{Duration, Instant};

use common::flow::*;
use common::{TestServer, error_of};
use relay_mock_llm as mock;
use relay_protocol::{ErrorCode, ErrorResponse, FinishReason, MessageStatus, SendMessageResponse};
use serde_json::json;
use uuid::Uuid;

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

fn metric(server: &TestServer, line_start: &str) -> Option<String> {
    server.state().metrics.render().lines().find(|l| l.starts_with(line_start)).map(str::to_string)
}

/// The mock answers 500, 500, then a reply: the send succeeds with one reply, after two
/// retries, and the model saw three requests.
#[tokio::test]
async fn a_provider_hiccup_before_the_first_token_is_retried() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "retrier").await;
    let response = post_message(&server, &token, sid, "hello [[mock fail_first=2 fault=500 tokens=5]]").await;
    assert_eq!(response.status(), 200);
    let sent: SendMessageResponse = response.json().await.unwrap();
    assert_eq!(sent.assistant_message.content, mock::reply_text(5, None));
    assert_eq!(server.mock.stats().requests, 3);
    assert_eq!(metric(&server, "relay_llm_retries_total").as_deref(), Some("relay_llm_retries_total 2"));
    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.len(), 2, "one question, one reply");

    // A stream that breaks before any text is retried too.
    let response = post_message(&server, &token, sid, "again [[mock fail_first=1 fault=cut:0 tokens=3]]").await;
    assert_eq!(response.status(), 200);
    assert_eq!(server.mock.stats().requests, 5);
}

/// A stream cut after text has reached the user is not retried (it would repeat what
/// they saw): the partial is stored as `error` and `done` says `error`.
#[tokio::test]
async fn a_stream_cut_mid_reply_keeps_its_partial_as_error() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "cutter").await;
    let mut ws = server.ws(&token).await;
    send(&mut ws, sid, "cut", "cut me [[mock fault=cut:4 tokens=50]]").await;
    let frames = until_dones(&mut ws, sid, 1).await;
    let reply = started_reply(&frames);
    assert_eq!(done_of(&frames, reply), FinishReason::Error);
    let message = stored_message(&server, &token, sid, reply).await.unwrap();
    assert_eq!(message.status, MessageStatus::Error);
    assert_eq!(message.content, mock::reply_text(4, None));
    assert_eq!(server.mock.stats().requests, 1, "no retry after the first token");
}

/// A provider that rejects our key: 503 `upstream_unavailable` at once, no retry.
#[tokio::test]
async fn a_rejected_key_is_unavailable_without_retries() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "keyless").await;
    let response = post_message(&server, &token, sid, "x [[mock fault=401]]").await;
    assert_eq!(error_of(response).await, (503, ErrorCode::UpstreamUnavailable));
    assert_eq!(server.mock.stats().requests, 1);
}

/// The provider's 429 is `rate_limited` with the provider's delay, not retried.
#[tokio::test]
async fn the_providers_429_is_rate_limited_with_its_delay() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "throttled").await;
    let response = post_message(&server, &token, sid, "x [[mock fault=429]]").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: ErrorResponse = response.json().await.unwrap();
    assert_eq!((body.error.code, body.error.retry_after_ms), (ErrorCode::RateLimited, Some(1000)));
    assert_eq!(server.mock.stats().requests, 1);
}

/// A model the provider does not have says so.
#[tokio::test]
async fn a_missing_model_says_so() {
    let server = TestServer::with(&[("SAMBANOVA_MODEL", "No-Such-Model-9000")]).await;
    let (token, _, sid) = user_with_session(&server, "modeless").await;
    let response = post_message(&server, &token, sid, "x [[mock fault=404]]").await;
    assert_eq!(response.status(), 502);
    let body: ErrorResponse = response.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::UpstreamError);
    assert!(body.error.message.contains("No-Such-Model-9000"), "{}", body.error.message);
}

/// A provider that stalls before its first token: 504 within the first-token timeout, the
/// retries included.
#[tokio::test]
async fn a_stall_times_out_within_the_first_token_timeout() {
    let server = TestServer::with(&[("LLM_FIRST_TOKEN_TIMEOUT_SECS", "1")]).await;
    let (token, _, sid) = user_with_session(&server, "staller").await;
    let started = Instant::now();
    let response = post_message(&server, &token, sid, "x [[mock stall]]").await;
    assert_eq!(error_of(response).await, (504, ErrorCode::UpstreamTimeout));
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
}

/// Text that stops flowing: `upstream_timeout` after the idle timeout, the partial kept.
#[tokio::test]
async fn a_stream_that_goes_quiet_times_out() {
    let server = TestServer::with(&[("LLM_IDLE_TIMEOUT_SECS", "1"), ("LLM_FIRST_TOKEN_TIMEOUT_SECS", "5")]).await;
    let (token, _, sid) = user_with_session(&server, "quiet").await;
    let mut ws = server.ws(&token).await;
    // Two tokens, then a token every 3 s: the gap exceeds the idle timeout.
    send(&mut ws, sid, "q", "[[mock tokens=5 tps=0.33 delay_ms=0]]").await;
    let frames = until_dones(&mut ws, sid, 1).await;
    let reply = started_reply(&frames);
    assert_eq!(done_of(&frames, reply), FinishReason::Error);
    let done_error = frames.iter().find_map(|f| match f {
        relay_protocol::ServerFrame::Done { error, .. } => error.clone(),
        _ => None,
    });
    assert_eq!(done_error.unwrap().code, ErrorCode::UpstreamTimeout);
}

/// Five consecutive failures open the breaker: sends are refused at once without calling
/// the provider; after the cooldown one probe goes through, and its success closes it.
#[tokio::test]
async fn the_circuit_breaker_opens_and_recovers() {
    let server = TestServer::with(&[("LLM_BREAKER_FAILURES", "5"), ("LLM_BREAKER_COOLDOWN_SECS", "1")]).await;
    let (token, _, sid) = user_with_session(&server, "breaker").await;
    // Three attempts, three failures.
    let response = post_message(&server, &token, sid, "one [[mock fault=503]]").await;
    assert_eq!(error_of(response).await, (503, ErrorCode::UpstreamUnavailable));
    assert_eq!(server.mock.stats().requests, 3);
    // Two more failures open it; the third attempt is refused without a request.
    let response = post_message(&server, &token, sid, "two [[mock fault=503]]").await;
    assert_eq!(error_of(response).await, (503, ErrorCode::UpstreamUnavailable));
    assert_eq!(server.mock.stats().requests, 5);
    assert_eq!(metric(&server, "relay_llm_breaker_state").as_deref(), Some("relay_llm_breaker_state 1"));

    // Open: refused at once, the provider never asked.
    let response = post_message(&server, &token, sid, "three").await;
    assert_eq!(response.status(), 503);
    let body: ErrorResponse = response.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::UpstreamUnavailable);
    assert!(body.error.retry_after_ms.is_some());
    assert_eq!(server.mock.stats().requests, 5);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = post_message(&server, &token, sid, "four [[mock tokens=2]]").await;
    assert_eq!(response.status(), 200, "the half-open probe succeeds");
    assert_eq!(server.mock.stats().requests, 6);
    assert_eq!(metric(&server, "relay_llm_breaker_state").as_deref(), Some("relay_llm_breaker_state 0"));
    assert_eq!(post_message(&server, &token, sid, "five [[mock tokens=2]]").await.status(), 200);
}
