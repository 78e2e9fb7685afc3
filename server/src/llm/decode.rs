//! Decoding what the provider sends: stream chunks (OpenAI's format and SambaNova's
//! variants) and error answers.

use relay_protocol::Usage;
use serde::Deserialize;

use super::{LlmError, LlmEvent, UpstreamFinish};

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

/// Pulls the `error.message` out of an OpenAI-style error body.
pub fn provider_message(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    e.get("message").and_then(|m| m.as_str()).map(str::to_string).or_else(|| e.as_str().map(str::to_string))
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
        assert_eq!(provider_message(r#"{"error":{"message":"boom"}}"#).as_deref(), Some("boom"));
        assert_eq!(provider_message(r#"{"error":"plain"}"#).as_deref(), Some("plain"));
    }
}
