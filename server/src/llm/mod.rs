//! The model client: one shared HTTP client that streams chat completions from an
//! OpenAI-compatible provider (SambaNova by default) or the built-in mock.
//!
//! Requests are built with async-openai's typed request types. The response stream is
//! decoded here rather than by async-openai, for two reasons: its typed chunk rejects
//! SambaNova's final usage chunk with `"choices": null`, and its stream reads the HTTP body
//! in a detached task, so dropping it would not close a stalled upstream request. Here the
//! body is owned by [`LlmStream`]: dropping the stream closes the connection at once, which
//! is what stops the provider from billing a cancelled reply.

use std::pin::Pin;
use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use relay_protocol::{Message, Role, Usage};
use serde::Deserialize;

/// Errors of the model provider, as the rest of the server needs to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider is unreachable, overloaded, or rejected our key.
    #[error("model provider unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// How long the provider asked us to wait, if it did.
        retry_after_ms: Option<u64>,
    },
    /// The provider did not answer, or stopped sending, within the timeout.
    #[error("model provider timed out")]
    Timeout,
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
    /// Time allowed for the response headers, and between two chunks.
    pub timeout: Duration,
}

/// The shared model client.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    settings: LlmSettings,
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

impl LlmClient {
    /// Builds the client; one per server, so connections to the provider are pooled.
    pub fn new(settings: LlmSettings) -> Result<LlmClient, LlmError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build HTTP client: {e}")))?;
        Ok(LlmClient { http, settings })
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
            .model(self.settings.model.as_str())
            .messages(messages)
            .max_tokens(self.settings.max_tokens)
            .stream(true)
            .stream_options(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None })
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build request: {e}")))
    }

    /// Starts a streamed completion; the returned stream owns the HTTP response.
    pub async fn stream(&self, context: &[ContextMessage]) -> Result<LlmStream, LlmError> {
        let body = self.request(context)?;
        let mut request = self
            .http
            .post(format!("{}/chat/completions", self.settings.api_base))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = tokio::time::timeout(self.settings.timeout, request.send())
            .await
            .map_err(|_| LlmError::Timeout)?
            .map_err(|e| {
                if e.is_timeout() {
                    LlmError::Timeout
                } else {
                    LlmError::Unavailable {
                        message: format!("cannot reach the model provider: {e}"),
                        retry_after_ms: None,
                    }
                }
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
            return Err(status_error(status.as_u16(), text.unwrap_or_default(), retry_after_ms));
        }
        Ok(LlmStream {
            events: Box::pin(response.bytes_stream().eventsource()),
            timeout: self.settings.timeout,
            finished: false,
            saw_finish: false,
            pending: Vec::new(),
        })
    }
}

/// Maps a provider's HTTP error status to what it means for us.
fn status_error(status: u16, body: String, retry_after_ms: Option<u64>) -> LlmError {
    let detail = provider_message(&body).unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        401 | 403 => LlmError::Unavailable {
            message: format!("the provider rejected the API key ({detail})"),
            retry_after_ms: None,
        },
        429 | 502 | 503 => {
            LlmError::Unavailable { message: format!("the provider is overloaded or down ({detail})"), retry_after_ms }
        }
        408 | 504 => LlmError::Timeout,
        _ => LlmError::Upstream(detail),
    }
}

/// Pulls the `error.message` out of an OpenAI-style error body.
fn provider_message(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    e.get("message").and_then(|m| m.as_str()).map(str::to_string).or_else(|| e.as_str().map(str::to_string))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// A streamed completion in progress; dropping it closes the upstream request.
pub struct LlmStream {
    events: EventStream,
    timeout: Duration,
    finished: bool,
    saw_finish: bool,
    pending: Vec<LlmEvent>,
}

impl LlmStream {
    /// The next event, `None` at the end of a whole reply, or an error for a broken one.
    pub async fn next(&mut self) -> Option<Result<LlmEvent, LlmError>> {
        loop {
            if let Some(event) = self.pending.pop() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            let next = match tokio::time::timeout(self.timeout, self.events.next()).await {
                Err(_) => return Some(self.fail(LlmError::Timeout)),
                Ok(next) => next,
            };
            match next {
                None if self.saw_finish => {
                    // Some providers close after the finish chunk without `[DONE]`.
                    self.finished = true;
                    return None;
                }
                None => return Some(self.fail(LlmError::Upstream("the reply stream ended early".into()))),
                Some(Err(e)) => return Some(self.fail(LlmError::Upstream(format!("the reply stream broke: {e}")))),
                Some(Ok(event)) => {
                    let data = event.data.trim();
                    if data == "[DONE]" {
                        self.finished = true;
                        return None;
                    }
                    if data.is_empty() {
                        continue;
                    }
                    match decode_chunk(data) {
                        Ok(events) => {
                            if events.iter().any(|e| matches!(e, LlmEvent::Finish(_))) {
                                self.saw_finish = true;
                            }
                            // Popped from the back, so store reversed.
                            self.pending = events.into_iter().rev().collect();
                        }
                        Err(e) => return Some(self.fail(e)),
                    }
                }
            }
        }
    }

    fn fail(&mut self, error: LlmError) -> Result<LlmEvent, LlmError> {
        self.finished = true;
        Err(error)
    }
}

/// A stream chunk, decoded tolerantly: unknown fields are ignored, and `choices` may be
/// missing, empty or `null` (SambaNova's final usage chunk).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
    #[serde(default)]
    total_tokens: Option<u32>,
}

/// Decodes one `data:` payload into the events it carries, in order.
pub fn decode_chunk(data: &str) -> Result<Vec<LlmEvent>, LlmError> {
    let chunk: Chunk =
        serde_json::from_str(data).map_err(|e| LlmError::Upstream(format!("undecodable stream chunk: {e}")))?;
    if let Some(error) = chunk.error {
        let message =
            error.get("message").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| error.to_string());
        return Err(LlmError::Upstream(message));
    }
    let mut events = Vec::new();
    for choice in chunk.choices.unwrap_or_default() {
        if let Some(text) = choice.delta.and_then(|d| d.content).filter(|t| !t.is_empty()) {
            events.push(LlmEvent::Delta(text));
        }
        match choice.finish_reason.as_deref() {
            Some("length") => events.push(LlmEvent::Finish(UpstreamFinish::Length)),
            Some(_) => events.push(LlmEvent::Finish(UpstreamFinish::Stop)),
            None => {}
        }
    }
    if let Some(u) = chunk.usage {
        let prompt = u.prompt_tokens.unwrap_or(0);
        let completion = u.completion_tokens.unwrap_or(0);
        events.push(LlmEvent::Usage(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u.total_tokens.unwrap_or(prompt + completion),
        }));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_openai_chunks() {
        let events = decode_chunk(r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(events, vec![LlmEvent::Delta("Hel".into())]);
        let events = decode_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(events, vec![LlmEvent::Finish(UpstreamFinish::Length)]);
    }

    #[test]
    fn decodes_sambanova_variants() {
        let last = r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"Llama-4-Maverick-17B-128E-Instruct",
            "system_fingerprint":"fastcoe","choices":null,
            "usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"time_to_first_token":0.12,
                     "is_last_response":true,"completion_tokens_per_sec":300.5,"end_time":1.0,"start_time":0.5}}"#;
        assert_eq!(
            decode_chunk(last).unwrap(),
            vec![LlmEvent::Usage(Usage { prompt_tokens: 12, completion_tokens: 30, total_tokens: 42 })]
        );
        let empty = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(decode_chunk(empty).unwrap().len(), 1);
        let extra = r#"{"choices":[{"index":0,"delta":{"content":"a","reasoning":"hm","channel":"final"},"logprobs":null,"finish_reason":null}],"system_fingerprint":"x"}"#;
        assert_eq!(decode_chunk(extra).unwrap(), vec![LlmEvent::Delta("a".into())]);
    }

    #[test]
    fn errors_in_the_stream_are_errors() {
        assert!(decode_chunk(r#"{"error":{"message":"overloaded"}}"#).is_err());
        assert!(decode_chunk("not json").is_err());
    }

    #[test]
    fn statuses_map_to_meanings() {
        assert!(matches!(status_error(401, String::new(), None), LlmError::Unavailable { .. }));
        assert!(matches!(
            status_error(429, String::new(), Some(1000)),
            LlmError::Unavailable { retry_after_ms: Some(1000), .. }
        ));
        assert!(matches!(status_error(504, String::new(), None), LlmError::Timeout));
        assert!(
            matches!(status_error(500, r#"{"error":{"message":"boom"}}"#.into(), None), LlmError::Upstream(m) if m == "boom")
        );
    }
}
