//! The model client: one shared, pooled HTTP client that streams chat completions from an
//! OpenAI-compatible provider (SambaNova by default) or the built-in mock, and survives the
//! provider's hiccups.
//!
//! Requests are built with async-openai's typed request types. The response stream is
//! decoded here ([`decode`]) rather than by async-openai, for two reasons: its typed chunk
//! rejects SambaNova's final usage chunk with `"choices": null`, and its stream reads the
//! HTTP body in a detached task, so dropping it would not close a stalled upstream request.
//! Here the body is owned by [`LlmStream`]: dropping the stream closes the connection at
//! once, which is what stops the provider from billing a cancelled reply.
//!
//! Resilience, all before the first token only (after it, a retry would repeat text the
//! user has already seen):
//! - the first token must arrive within `first_token_timeout` of the send, across every
//!   attempt; after it, each chunk within `idle_timeout`;
//! - an attempt that fails in a way worth retrying (unreachable, 5xx, a stream that breaks
//!   before any text) is retried up to `max_attempts` in all, with exponential backoff and
//!   jitter, within that first-token deadline;
//! - a [circuit breaker](breaker) opens after consecutive failures and refuses requests at
//!   once (`upstream_unavailable`) until a probe succeeds;
//! - the provider's 429 is `rate_limited` with its delay; a rejected key is
//!   `upstream_unavailable`, logged once; a model the provider does not have says so.

pub mod breaker;
mod decode;
pub mod models;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{FutureExt, Stream, StreamExt};
use rand::Rng;
use relay_protocol::{Message, Role, Usage};
use tokio::time::Instant;

use crate::metrics::Metrics;
use breaker::Breaker;
pub use breaker::BreakerState;
pub use decode::decode_chunk;

/// Errors of the model provider, as the rest of the server needs to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider is unreachable, overloaded, rejected our key, or the breaker is open.
    #[error("model provider unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// How long to wait, when known.
        retry_after_ms: Option<u64>,
    },
    /// The provider rejected our API key (HTTP 401/403).
    #[error("the model provider rejected the API key: {0}")]
    KeyRejected(String),
    /// The provider refused the request for its own rate limit (HTTP 429).
    #[error("the model provider is rate limiting us")]
    RateLimited {
        /// How long the provider asked us to wait, if it did.
        retry_after_ms: Option<u64>,
    },
    /// The provider did not answer, or stopped sending, within the timeout.
    #[error("model provider timed out")]
    Timeout,
    /// The provider does not have the configured model.
    #[error("the model provider has no model {0:?}")]
    ModelNotFound(String),
    /// The provider answered with an error or a broken stream.
    #[error("model provider error: {0}")]
    Upstream(String),
}

/// Why the provider said a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFinish {
    /// The model finished its answer.
    Stop,
    /// The reply reached `max_tokens`.
    Length,
}

/// One decoded event of a streamed completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LlmEvent {
    /// Text to append to the reply.
    Delta(String),
    /// The provider's finish reason.
    Finish(UpstreamFinish),
    /// Token usage for the whole request (SambaNova sends it in a last chunk).
    Usage(Usage),
}

/// Settings of the model client.
#[derive(Clone, Debug)]
pub struct LlmSettings {
    /// Base URL ending before `/chat/completions`.
    pub api_base: String,
    /// Bearer key; `None` for the mock.
    pub api_key: Option<String>,
    /// Model name.
    pub model: String,
    /// Reply token limit.
    pub max_tokens: u32,
    /// Time from the send to the first token, across every attempt.
    pub first_token_timeout: Duration,
    /// Time allowed between two chunks once text flows.
    pub idle_timeout: Duration,
    /// Attempts per reply, the first included (retries happen only before the first token).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each later one, plus jitter.
    pub retry_backoff: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses requests before it lets one probe through.
    pub breaker_cooldown: Duration,
    /// The `User-Agent` of every request: the product and this node's id, so a provider's
    /// (or the mock's) logs tell which node asked.
    pub user_agent: String,
}

/// The shared model client; cheap to clone.
#[derive(Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    settings: LlmSettings,
    breaker: Breaker,
    /// Set while the provider rejects our key, so that is logged once, not per request.
    key_rejected: AtomicBool,
    metrics: Arc<Metrics>,
}

/// A message of the model's context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl From<&Message> for ContextMessage {
    fn from(m: &Message) -> Self {
        ContextMessage { role: m.role, content: m.content.clone() }
    }
}

/// How one attempt failed: whether another attempt may help, and whether it says the
/// provider is unwell (which the breaker counts).
struct Failure {
    error: LlmError,
    retry: bool,
    provider_fault: bool,
}

impl Failure {
    /// A failure worth another attempt, which the breaker counts.
    fn transient(error: LlmError) -> Failure {
        Failure { error, retry: true, provider_fault: true }
    }

    /// A failure another attempt would repeat; `provider_fault` says whether the breaker
    /// counts it.
    fn permanent(error: LlmError, provider_fault: bool) -> Failure {
        Failure { error, retry: false, provider_fault }
    }
}

impl LlmClient {
    /// Builds the client; one per server, so connections to the provider are pooled.
    pub fn new(settings: LlmSettings, metrics: Arc<Metrics>) -> Result<LlmClient, LlmError> {
        let http = reqwest::Client::builder()
            .user_agent(settings.user_agent.clone())
            .connect_timeout(settings.first_token_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build HTTP client: {e}")))?;
        let breaker = Breaker::new(settings.breaker_failures, settings.breaker_cooldown);
        Ok(LlmClient {
            inner: Arc::new(Inner { http, settings, breaker, key_rejected: AtomicBool::new(false), metrics }),
        })
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The typed request body for a context.
    pub fn request(&self, context: &[ContextMessage]) -> Result<CreateChatCompletionRequest, LlmError> {
        let messages = context
            .iter()
            .map(|m| -> Result<ChatCompletionRequestMessage, async_openai::error::OpenAIError> {
                Ok(match m.role {
                    Role::System => {
                        ChatCompletionRequestSystemMessageArgs::default().content(m.content.as_str()).build()?.into()
                    }
                    Role::User => {
                        ChatCompletionRequestUserMessageArgs::default().content(m.content.as_str()).build()?.into()
                    }
                    Role::Assistant => {
                        ChatCompletionRequestAssistantMessageArgs::default().content(m.content.as_str()).build()?.into()
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LlmError::Upstream(format!("cannot build request: {e}")))?;
        #[allow(deprecated)] // SambaNova reads `max_tokens`; `max_completion_tokens` is OpenAI's newer name.
        CreateChatCompletionRequestArgs::default()
            .model(self.inner.settings.model.as_str())
            .messages(messages)
            .max_tokens(self.inner.settings.max_tokens)
            .stream(true)
            .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None })
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build request: {e}")))
    }

    /// Starts a streamed completion, retrying as the module explains; the returned stream
    /// owns the HTTP response (and retries on its own until its first token).
    pub async fn stream(&self, context: &[ContextMessage]) -> Result<LlmStream, LlmError> {
        let body = serde_json::to_vec(&self.request(context)?)
            .map_err(|e| LlmError::Upstream(format!("cannot encode request: {e}")))?;
        let mut stream = LlmStream {
            client: self.clone(),
            body: body.into(),
            deadline: Instant::now() + self.inner.settings.first_token_timeout,
            attempts: 0,
            events: None,
            probe: None,
            first_token: false,
            finished: false,
            saw_finish: false,
            deferred: None,
            pending: Vec::new(),
        };
        stream.connect().await?;
        Ok(stream)
    }

    /// One attempt at the HTTP request, up to the response headers.
    async fn send(&self, body: &bytes::Bytes, deadline: Instant) -> Result<EventStream, Failure> {
        let settings = &self.inner.settings;
        let mut request = self
            .inner
            .http
            .post(format!("{}/chat/completions", settings.api_base))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(key) = &settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(|_| Failure::transient(LlmError::Timeout))?
            .map_err(|e| {
                Failure::transient(if e.is_timeout() {
                    LlmError::Timeout
                } else {
                    LlmError::Unavailable {
                        message: format!("cannot reach the model provider: {e}"),
                        retry_after_ms: None,
                    }
                })
            })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after_ms = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s * 1000);
            let text = tokio::time::timeout(Duration::from_secs(2), response.text()).await.ok().and_then(Result::ok);
            return Err(self.status_error(status.as_u16(), text.unwrap_or_default(), retry_after_ms));
        }
        self.inner.key_rejected.store(false, Ordering::Relaxed);
        Ok(Box::pin(response.bytes_stream().eventsource()))
    }

    /// Maps a provider's HTTP error status to what it means for us, and whether to retry.
    fn status_error(&self, status: u16, body: String, retry_after_ms: Option<u64>) -> Failure {
        let detail = decode::provider_message(&body).unwrap_or_else(|| format!("HTTP {status}"));
        let model = || self.inner.settings.model.clone();
        match status {
            401 | 403 => {
                if !self.inner.key_rejected.swap(true, Ordering::Relaxed) {
                    tracing::error!(status, detail, "the model provider rejects our API key (SAMBANOVA_API_KEY)");
                }
                Failure::permanent(LlmError::KeyRejected(detail), true)
            }
            404 => Failure::permanent(LlmError::ModelNotFound(model()), false),
            400 if detail.to_ascii_lowercase().contains("model") => {
                Failure::permanent(LlmError::ModelNotFound(model()), false)
            }
            429 => Failure::permanent(LlmError::RateLimited { retry_after_ms }, false),
            500 => Failure::transient(LlmError::Upstream(detail)),
            502 | 503 | 529 => Failure::transient(LlmError::Unavailable {
                message: format!("the provider is overloaded or down ({detail})"),
                retry_after_ms,
            }),
            408 | 504 => Failure::transient(LlmError::Timeout),
            _ => Failure::permanent(LlmError::Upstream(detail), false),
        }
    }

    /// The pause before attempt `attempt` (2, 3, ...): exponential, with jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.inner.settings.retry_backoff;
        let exponential = base.saturating_mul(1 << attempt.saturating_sub(2).min(16));
        let jitter = base.mul_f64(rand::thread_rng().r#gen::<f64>());
        exponential + jitter
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// A streamed completion in progress; dropping it closes the upstream request.
pub struct LlmStream {
    client: LlmClient,
    body: bytes::Bytes,
    /// When the first token must have arrived by.
    deadline: Instant,
    attempts: u32,
    events: Option<EventStream>,
    /// Set while an attempt's outcome is not yet known to the breaker.
    probe: Option<Probe>,
    first_token: bool,
    finished: bool,
    saw_finish: bool,
    pending: Vec<LlmEvent>,
    /// An error met while merging ready text ([`LlmStream::append_ready_text`]), reported by
    /// the next [`LlmStream::next`].
    deferred: Option<LlmError>,
}

/// An attempt the breaker let through; tells the breaker its outcome exactly once
/// (abandoned if the stream is dropped first, so a half-open breaker can probe again).
struct Probe {
    client: LlmClient,
    told: bool,
}

impl Probe {
    fn new(client: &LlmClient) -> Probe {
        Probe { client: client.clone(), told: false }
    }

    fn succeeded(mut self) {
        self.told = true;
        self.client.inner.breaker.success();
        self.client.inner.metrics.llm_breaker_state.set(self.client.inner.breaker.state() as i64);
    }

    fn failed(mut self) {
        self.told = true;
        let inner = &self.client.inner;
        if inner.breaker.failure() {
            tracing::warn!("the model provider keeps failing; circuit breaker open");
        }
        inner.metrics.llm_breaker_state.set(inner.breaker.state() as i64);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.told {
            self.client.inner.breaker.abandon();
        }
    }
}

impl LlmStream {
    /// Makes attempts until one answers with a stream, or no attempt is left.
    async fn connect(&mut self) -> Result<(), LlmError> {
        loop {
            let inner = self.client.inner.clone();
            if let Err(refused) = inner.breaker.permit() {
                inner.metrics.llm_breaker_state.set(inner.breaker.state() as i64);
                return Err(LlmError::Unavailable {
                    message: "the model provider is failing; not calling it for a while (circuit open)".into(),
                    retry_after_ms: Some(refused.retry_after.as_millis() as u64),
                });
            }
            self.attempts += 1;
            let probe = Probe::new(&self.client);
            match self.client.send(&self.body, self.deadline).await {
                Ok(events) => {
                    self.events = Some(events);
                    self.probe = Some(probe);
                    inner.metrics.llm_breaker_state.set(inner.breaker.state() as i64);
                    return Ok(());
                }
                Err(failure) => self.after_failure(probe, failure).await?,
            }
        }
    }

    /// Tells the breaker about a failed attempt, then waits out the backoff if another
    /// attempt may help and fits before the deadline; otherwise gives up with the error.
    async fn after_failure(&mut self, probe: Probe, failure: Failure) -> Result<(), LlmError> {
        if failure.provider_fault {
            probe.failed();
        } else {
            probe.succeeded();
        }
        let settings = &self.client.inner.settings;
        let pause = self.client.backoff(self.attempts + 1);
        if !failure.retry || self.attempts >= settings.max_attempts || Instant::now() + pause >= self.deadline {
            return Err(failure.error);
        }
        tracing::info!(attempt = self.attempts, error = %failure.error, "model request failed; retrying");
        self.client.inner.metrics.llm_retries.inc();
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// The next event, `None` at the end of a whole reply, or an error for a broken one.
    pub async fn next(&mut self) -> Option<Result<LlmEvent, LlmError>> {
        loop {
            if let Some(event) = self.pending.pop() {
                if matches!(event, LlmEvent::Delta(_)) && !self.first_token {
                    self.first_token = true;
                    if let Some(probe) = self.probe.take() {
                        probe.succeeded();
                    }
                }
                return Some(Ok(event));
            }
            if let Some(error) = self.deferred.take() {
                return Some(self.fail(error));
            }
            if self.finished {
                return None;
            }
            match self.read().await {
                Ok(true) => {}
                Ok(false) => {
                    self.finished = true;
                    if let Some(probe) = self.probe.take() {
                        probe.succeeded();
                    }
                }
                Err(error) if self.first_token => return Some(self.fail(error)),
                Err(error) => {
                    // Nothing reached the user yet: another attempt may still answer.
                    let probe = self.probe.take().unwrap_or_else(|| Probe::new(&self.client));
                    let retried =
                        match self.after_failure(probe, Failure { retry: true, provider_fault: true, error }).await {
                            Ok(()) => self.connect().await,
                            Err(error) => Err(error),
                        };
                    if let Err(error) = retried {
                        return Some(self.fail(error));
                    }
                }
            }
        }
    }

    /// Reads the next chunk into `pending`: `Ok(true)` for more to come, `Ok(false)` at the
    /// end of a whole reply.
    async fn read(&mut self) -> Result<bool, LlmError> {
        let Some(events) = self.events.as_mut() else { return Ok(false) };
        let next = if self.first_token {
            tokio::time::timeout(self.client.inner.settings.idle_timeout, events.next()).await
        } else {
            tokio::time::timeout_at(self.deadline, events.next()).await
        };
        self.accept(next.map_err(|_| LlmError::Timeout)?)
    }

    /// Takes one item of the event stream into `pending`: `Ok(true)` for more to come,
    /// `Ok(false)` at the end of a whole reply.
    fn accept(&mut self, next: Option<Result<Event, EventStreamError<reqwest::Error>>>) -> Result<bool, LlmError> {
        match next {
            // Some providers close after the finish chunk without `[DONE]`.
            None if self.saw_finish => Ok(false),
            None => Err(LlmError::Upstream("the reply stream ended early".into())),
            Some(Err(e)) => Err(LlmError::Upstream(format!("the reply stream broke: {e}"))),
            Some(Ok(event)) => {
                let data = event.data.trim();
                if data == "[DONE]" {
                    return Ok(false);
                }
                if !data.is_empty() {
                    let events = decode_chunk(data)?;
                    if events.iter().any(|e| matches!(e, LlmEvent::Finish(_))) {
                        self.saw_finish = true;
                    }
                    // Popped from the back, so store reversed.
                    self.pending = events.into_iter().rev().collect();
                }
                Ok(true)
            }
        }
    }

    /// Appends to `text` the reply text that is already here (decoded, buffered or readable
    /// without waiting), up to about `max` bytes, stopping before anything that is not text.
    ///
    /// Under load several tokens wait by the time one is handled; sending them as one delta
    /// means fewer and larger frames for every watcher. Only after the first token (before
    /// it, a failure may still be retried).
    pub fn append_ready_text(&mut self, text: &mut String, max: usize) {
        while text.len() < max {
            match self.pending.last() {
                Some(LlmEvent::Delta(_)) => {
                    if let Some(LlmEvent::Delta(more)) = self.pending.pop() {
                        text.push_str(&more);
                    }
                }
                Some(_) => return,
                None => {
                    if self.finished || !self.first_token || self.deferred.is_some() {
                        return;
                    }
                    let Some(events) = self.events.as_mut() else { return };
                    let Some(next) = events.next().now_or_never() else { return };
                    match self.accept(next) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.finished = true;
                            return;
                        }
                        Err(error) => {
                            self.deferred = Some(error);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn fail(&mut self, error: LlmError) -> Result<LlmEvent, LlmError> {
        self.finished = true;
        self.events = None;
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> LlmClient {
        LlmClient::new(
            LlmSettings {
                api_base: "http://127.0.0.1:9".into(),
                api_key: None,
                model: "m".into(),
                max_tokens: 10,
                first_token_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
                max_attempts: 3,
                retry_backoff: Duration::from_millis(100),
                breaker_failures: 5,
                breaker_cooldown: Duration::from_secs(30),
                user_agent: "relay-chat/test".into(),
            },
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[test]
    fn statuses_map_to_meanings() {
        let c = client();
        let of = |status, body: &str, retry_after| {
            let f = c.status_error(status, body.to_string(), retry_after);
            (f.error, f.retry, f.provider_fault)
        };
        assert!(matches!(of(401, "", None), (LlmError::KeyRejected(_), false, true)));
        assert!(matches!(
            of(429, "", Some(1000)),
            (LlmError::RateLimited { retry_after_ms: Some(1000) }, false, false)
        ));
        assert!(matches!(of(503, "", None), (LlmError::Unavailable { .. }, true, true)));
        assert!(matches!(of(504, "", None), (LlmError::Timeout, true, true)));
        assert!(matches!(of(404, "", None), (LlmError::ModelNotFound(m), false, false) if m == "m"));
        assert!(matches!(
            of(400, r#"{"error":{"message":"unknown model x"}}"#, None),
            (LlmError::ModelNotFound(_), false, false)
        ));
        assert!(
            matches!(of(500, r#"{"error":{"message":"boom"}}"#, None), (LlmError::Upstream(m), true, true) if m == "boom")
        );
        assert!(
            matches!(of(418, r#"{"error":{"message":"teapot"}}"#, None), (LlmError::Upstream(m), false, false) if m == "teapot")
        );
    }

    #[test]
    fn backoff_grows_with_jitter() {
        let c = client();
        for _ in 0..20 {
            let second = c.backoff(2);
            let third = c.backoff(3);
            assert!(second >= Duration::from_millis(100) && second < Duration::from_millis(200), "{second:?}");
            assert!(third >= Duration::from_millis(200) && third < Duration::from_millis(300), "{third:?}");
        }
    }
}
