//! Answering HTTP: the chat completions endpoint (a whole reply, or a stream of the
//! plan's chunks, paced, with injected faults), the stats and reset endpoints, and errors.

use std::io;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::plan::{Directives, Plan, Timing};
use crate::settings::{Fault, check_reply_size};
use crate::state::{JournalOutcome, MockState};

/// Pause before breaking a body for a cut fault, long enough for hyper to flush what precedes the break.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// Request bodies up to this size are accepted, so long chat histories in load tests are not rejected.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Counts a response's outcome exactly once; if dropped unfinished, the client went away.
struct ResponseGuard {
    state: MockState,
    streaming: bool,
    finished: bool,
    /// The request's journal entry, if journaled.
    entry: Option<usize>,
}

impl ResponseGuard {
    fn new(state: MockState, streaming: bool, entry: Option<usize>) -> Self {
        if streaming {
            state.modify(|s| {
                s.streams_started += 1;
                s.active_streams += 1;
            });
        }
        Self { state, streaming, finished: false, entry }
    }

    /// Marks a normal completion.
    fn complete(&mut self) {
        self.finish(true);
    }

    /// Marks a server-side end (cut fault, shutdown) that is neither a completion nor a client close.
    fn abort(&mut self) {
        self.finish(false);
    }

    fn finish(&mut self, completed: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let streaming = self.streaming;
        self.state.modify(|s| {
            if streaming {
                s.active_streams = s.active_streams.saturating_sub(1);
                if completed {
                    s.streams_completed += 1;
                }
            }
        });
        let outcome = if completed { JournalOutcome::Completed } else { JournalOutcome::ClosedEarly };
        self.state.journal_end(self.entry, outcome);
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // hyper drops the body (or the handler future) when the peer closes, so reaching here unfinished means an early close.
        let streaming = self.streaming;
        self.state.modify(|s| {
            s.streams_closed_early += 1;
            if streaming {
                s.active_streams = s.active_streams.saturating_sub(1);
            }
        });
        self.state.journal_end(self.entry, JournalOutcome::ClosedEarly);
        tracing::debug!(streaming, "mock llm: client closed the response early");
    }
}

pub(crate) async fn get_stats(State(state): State<MockState>) -> Response {
    axum::Json(state.stats()).into_response()
}

pub(crate) async fn post_reset(State(state): State<MockState>) -> Response {
    state.reset();
    axum::Json(state.stats()).into_response()
}

pub(crate) async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "Not found", "invalid_request_error", None)
}

/// An OpenAI-style error response: `{"error":{"message","type","code"}}`.
fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn fault_response(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match status.as_u16() {
        401 => error_response(status, "Invalid API key (mock fault)", "invalid_request_error", Some("invalid_api_key")),
        429 => error_response(
            status,
            "Rate limit exceeded (mock fault)",
            "rate_limit_exceeded",
            Some("rate_limit_exceeded"),
        ),
        503 => error_response(status, "The model is overloaded (mock fault)", "service_unavailable", None),
        404 => error_response(
            status,
            "The model does not exist or you do not have access to it (mock fault)",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        c if c < 500 => error_response(status, "Request rejected (mock fault)", "invalid_request_error", None),
        _ => error_response(status, "Internal server error (mock fault)", "server_error", None),
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Text of an OpenAI message `content`: a string, or the `text` parts of a content-part array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

pub(crate) async fn chat_completions(State(state): State<MockState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let started_wall = chrono::Utc::now();
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let last_request = parsed.as_ref().ok().cloned();
    state.modify(|s| {
        s.requests += 1;
        if last_request.is_some() {
            s.last_request = last_request;
        }
    });

    let settings = state.settings().clone();
    if let Some(key) = &settings.api_key {
        let expected = format!("Bearer {key}");
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "Invalid API key",
                "invalid_request_error",
                Some("invalid_api_key"),
            );
        }
    }

    let req = match parsed {
        Ok(v) if v.is_object() => v,
        Ok(_) => return bad_request("Request body must be a JSON object"),
        Err(e) => return bad_request(&format!("Invalid JSON body: {e}")),
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return bad_request("'messages' is a required array");
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad_request("'stream' must be a boolean"),
    };
    let max_tokens = req
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| req.get("max_tokens").and_then(Value::as_u64));
    let model = req.get("model").and_then(Value::as_str).unwrap_or("mock").to_owned();

    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default();
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let entry = state.journal_start(user_agent, &last_user);
    let refused = |response: Response| {
        state.journal_end(entry, JournalOutcome::Refused);
        response
    };
    let mut directives = match Directives::parse(&last_user) {
        Ok(d) => d,
        Err(e) => return refused(bad_request(&e)),
    };
    if let Some(n) = directives.fail_first {
        // The fault applies to the first `n` requests with this message; later ones (a
        // client's retries) get a normal reply.
        if state.attempt(&last_user) > n {
            directives.fault = Some(None);
        }
    }
    let prompt_tokens = messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(|c| content_text(c).split_whitespace().count())
        .sum::<usize>()
        .max(1);
    let plan = Plan::new(&settings, directives, model, max_tokens, prompt_tokens, &last_user);
    if let Err(why) = check_reply_size(plan.tokens, plan.token_size()) {
        return refused(bad_request(&format!("mock reply too large: {why}")));
    }
    let timing = Timing { started, started_wall, first_at: None };

    if let Some(Fault::Status(code)) = plan.fault {
        return refused(fault_response(code));
    }
    if stream {
        streaming_response(state, plan, timing, entry)
    } else {
        unary_response(state, plan, timing, entry).await
    }
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, message, "invalid_request_error", None)
}

/// Answers a non-streaming request after the time the whole reply would have taken.
async fn unary_response(state: MockState, plan: Plan, mut timing: Timing, entry: Option<usize>) -> Response {
    let mut guard = ResponseGuard::new(state.clone(), false, entry);
    let cancel = state.shutdown_token();
    let wait = async {
        tokio::time::sleep(plan.first_token_delay).await;
        if plan.fault == Some(Fault::Stall) {
            // Dropped by hyper when the client disconnects; the guard then records the early close.
            std::future::pending::<()>().await;
        }
        let first_at = Instant::now();
        if let Some(due) = plan.tokens.checked_sub(1).and_then(|last| plan.token_due(first_at, last)) {
            tokio::time::sleep_until(due.into()).await;
        }
        first_at
    };
    let first_at = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            guard.abort();
            return fault_response(503);
        }
        first_at = wait => first_at,
    };
    timing.first_at = Some(first_at);
    let body = serde_json::to_vec(&plan.completion(&timing)).unwrap_or_default();
    if let Some(Fault::CutAfter(_)) = plan.fault {
        // Half a JSON document followed by a broken body is what a dropped upstream connection looks like.
        guard.abort();
        let half = Bytes::from(body[..body.len() / 2].to_vec());
        let cut = futures::stream::once(async {
            // Pause first so hyper flushes the headers and the half body before the error.
            tokio::time::sleep(CUT_FLUSH_PAUSE).await;
            Err(io::Error::other("mock fault: connection cut"))
        });
        let chunks = futures::stream::once(async move { Ok::<_, io::Error>(half) }).chain(cut);
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(chunks))
            .unwrap_or_else(|_| fault_response(500));
    }
    guard.complete();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| fault_response(500))
}

/// Where a streaming reply is in its sequence of events.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Role,
    Token(usize),
    Finish,
    Usage,
    Done,
    Stalled,
    Ended,
}

/// The body stream's state; owning the guard ties early-close detection to hyper dropping the body.
struct SseStream {
    plan: Plan,
    timing: Timing,
    phase: Phase,
    sent: usize,
    guard: ResponseGuard,
}

impl SseStream {
    /// Produces the next body item, sleeping as the pacing requires; `None` ends the body.
    async fn next_item(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            match self.phase {
                Phase::Role => {
                    tokio::time::sleep(self.plan.first_token_delay).await;
                    self.timing.first_at = Some(Instant::now());
                    self.phase = if self.plan.fault == Some(Fault::Stall) { Phase::Stalled } else { Phase::Token(0) };
                    return Some(Ok(sse(&self.plan.role_chunk())));
                }
                Phase::Stalled => {
                    // Never resolves: the stream ends only when hyper drops it (client closed) or on shutdown.
                    std::future::pending::<()>().await;
                }
                Phase::Token(i) => {
                    if let Some(Fault::CutAfter(n)) = self.plan.fault
                        && i >= n.min(self.plan.tokens)
                    {
                        self.phase = Phase::Ended;
                        self.guard.abort();
                        // Pausing lets hyper flush the chunks already written; an immediate error
                        // would make it drop its write buffer and the client would see none of them.
                        tokio::time::sleep(CUT_FLUSH_PAUSE).await;
                        // An error item makes hyper abort the chunked body without its terminator, so the client sees a truncated stream.
                        return Some(Err(io::Error::other("mock fault: connection cut")));
                    }
                    if i >= self.plan.tokens {
                        self.phase = Phase::Finish;
                        continue;
                    }
                    let first_at = self.timing.first_at.unwrap_or_else(Instant::now);
                    if let Some(due) = self.plan.token_due(first_at, i) {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    self.sent = i + 1;
                    self.phase = Phase::Token(i + 1);
                    return Some(Ok(sse(&self.plan.token_chunk(i))));
                }
                Phase::Finish => {
                    self.phase = Phase::Usage;
                    return Some(Ok(sse(&self.plan.finish_chunk())));
                }
                Phase::Usage => {
                    self.phase = Phase::Done;
                    return Some(Ok(sse(&self.plan.usage_chunk(self.sent, &self.timing))));
                }
                Phase::Done => {
                    self.phase = Phase::Ended;
                    self.guard.complete();
                    return Some(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
                }
                Phase::Ended => return None,
            }
        }
    }
}

fn sse(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing a Value cannot fail.
    serde_json::to_writer(&mut out, value).unwrap_or_default();
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn streaming_response(state: MockState, plan: Plan, timing: Timing, entry: Option<usize>) -> Response {
    let cancel = state.shutdown_token();
    let sse_state =
        SseStream { guard: ResponseGuard::new(state, true, entry), plan, timing, phase: Phase::Role, sent: 0 };
    let body = futures::stream::unfold((sse_state, cancel), |(mut st, cancel)| async move {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            item = st.next_item() => Some(item),
        };
        match item {
            Some(Some(item)) => Some((item, (st, cancel))),
            Some(None) => None,
            None => {
                // Server shutdown: end the body abruptly, which is not the client's doing.
                st.guard.abort();
                None
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| fault_response(500))
}
