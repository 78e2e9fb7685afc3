//! One request's reply, planned: the settings, the message's `[[mock ...]]` directives and
//! `max_tokens` merged; and the JSON it is answered with (SSE chunks as SambaNova sends
//! them, or one completion).

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::settings::{Fault, MAX_DELAY_MS, MockSettings, parse_choices, parse_flag, parse_optional_fault};
use crate::stamps::{STAMP_TOKEN_BYTES, stamp_token, unix_micros_now};
use crate::text::{demo_token, echo_tokens, token};

/// Per-request overrides parsed from `[[mock ...]]` in the last user message.
///
/// Syntax: `[[mock key=value key=value flag]]`, whitespace separated; several
/// blocks may appear and later values win. Keys: `tokens=N`, `tps=F`,
/// `delay_ms=N`, `bytes=N` (0 = words), `fault=429|500|401|503|stall|cut:N|none`,
/// `choices=null|empty`, `fail_first=N` (the fault applies to the first N requests with
/// this same message, later ones succeed: a client's retries). Bare flags: `echo` (the
/// reply is the message itself, directives removed, word by word: for markdown and
/// escaping tests), `stamp` (every token is its send time, [`stamp_token`]), `demo` (the
/// reply is pieces of [`DEMO_REPLY`](crate::DEMO_REPLY); `demo=0` or `demo=1` too, to switch it either way), anything
/// `fault=` accepts (`stall`,
/// `cut:3`, `429`), plus `instant` (`delay_ms=0 tps=0`). Unknown keys and flags
/// are ignored; a known key with a bad value is a 400 so typos do not pass silently, and so
/// is a reply past the bounds ([`MAX_REPLY_TOKENS`](crate::MAX_REPLY_TOKENS), [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES), [`MAX_REPLY_BYTES`](crate::MAX_REPLY_BYTES),
/// [`MAX_DELAY_MS`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Directives {
    pub(crate) tokens: Option<usize>,
    pub(crate) tps: Option<f64>,
    pub(crate) delay_ms: Option<u64>,
    pub(crate) bytes: Option<Option<usize>>,
    pub(crate) fault: Option<Option<Fault>>,
    pub(crate) choices_null: Option<bool>,
    pub(crate) fail_first: Option<usize>,
    pub(crate) echo: bool,
    stamp: bool,
    demo: Option<bool>,
}

impl Directives {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut d = Directives::default();
        let mut rest = text;
        while let Some(start) = rest.find("[[mock") {
            let after = &rest[start + "[[mock".len()..];
            let Some(end) = after.find("]]") else { break };
            // `[[mockery]]` is not a directive: the keyword must be followed by whitespace or the end.
            let body = &after[..end];
            rest = &after[end + 2..];
            if !body.is_empty() && !body.starts_with(char::is_whitespace) {
                continue;
            }
            for item in body.split_whitespace() {
                d.apply(item)?;
            }
        }
        Ok(d)
    }

    fn apply(&mut self, item: &str) -> Result<(), String> {
        let bad = |why: &dyn fmt::Display| format!("bad mock directive {item:?}: {why}");
        let Some((key, value)) = item.split_once('=') else {
            if item.eq_ignore_ascii_case("instant") {
                self.delay_ms = Some(0);
                self.tps = Some(0.0);
            } else if item.eq_ignore_ascii_case("echo") {
                self.echo = true;
            } else if item.eq_ignore_ascii_case("stamp") {
                self.stamp = true;
            } else if item.eq_ignore_ascii_case("demo") {
                self.demo = Some(true);
            } else if let Ok(fault) = parse_optional_fault(item) {
                self.fault = Some(fault);
            }
            return Ok(());
        };
        match key.to_ascii_lowercase().as_str() {
            "tokens" => self.tokens = Some(value.parse().map_err(|e| bad(&e))?),
            "tps" => {
                let tps: f64 = value.parse().map_err(|e| bad(&e))?;
                if tps.is_nan() {
                    return Err(bad(&"not a number"));
                }
                self.tps = Some(tps);
            }
            "delay_ms" => {
                let ms: u64 = value.parse().map_err(|e| bad(&e))?;
                if ms > MAX_DELAY_MS {
                    return Err(bad(&format!("at most {MAX_DELAY_MS}")));
                }
                self.delay_ms = Some(ms);
            }
            "bytes" => {
                let n: usize = value.parse().map_err(|e| bad(&e))?;
                self.bytes = Some((n > 0).then_some(n));
            }
            "fault" => self.fault = Some(parse_optional_fault(value).map_err(|e| bad(&e))?),
            "choices" => self.choices_null = Some(parse_choices(value).map_err(|e| bad(&e))?),
            "fail_first" => self.fail_first = Some(value.parse().map_err(|e| bad(&e))?),
            "demo" => self.demo = Some(parse_flag(value).map_err(|e| bad(&e))?),
            _ => {}
        }
        Ok(())
    }
}

/// Everything needed to produce one reply, after settings, directives and `max_tokens` are merged.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    model: String,
    id: String,
    created: i64,
    pub(crate) tokens: usize,
    pub(crate) finish_reason: &'static str,
    token_bytes: Option<usize>,
    pub(crate) first_token_delay: Duration,
    /// Time between content tokens; `None` streams as fast as possible.
    period: Option<Duration>,
    pub(crate) fault: Option<Fault>,
    choices_null: bool,
    prompt_tokens: usize,
    /// With `echo`: the reply's tokens, instead of generated ones.
    echo: Option<Vec<String>>,
    /// Every token is its send time ([`stamp_token`]), whatever `echo` and `token_bytes` say.
    stamp: bool,
    /// Word tokens are pieces of [`DEMO_REPLY`](crate::DEMO_REPLY) rather than lorem ipsum.
    demo: bool,
}

impl Plan {
    pub(crate) fn new(
        settings: &MockSettings,
        d: Directives,
        model: String,
        max_tokens: Option<u64>,
        prompt_tokens: usize,
        message: &str,
    ) -> Self {
        let echo = d.echo.then(|| echo_tokens(message));
        let wanted = echo.as_ref().map_or_else(|| d.tokens.unwrap_or(settings.reply_tokens), Vec::len);
        let (tokens, finish_reason) = match max_tokens {
            Some(max) if max < u64::try_from(wanted).unwrap_or(u64::MAX) => (max as usize, "length"),
            _ => (wanted, "stop"),
        };
        let tps = d.tps.unwrap_or(settings.tokens_per_second);
        Plan {
            model,
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4()),
            created: chrono::Utc::now().timestamp(),
            tokens,
            finish_reason,
            token_bytes: d.bytes.unwrap_or(settings.token_bytes),
            first_token_delay: d.delay_ms.map(Duration::from_millis).unwrap_or(settings.first_token_delay),
            period: (tps > 0.0 && tps.is_finite()).then(|| Duration::from_secs_f64(1.0 / tps)),
            fault: d.fault.unwrap_or_else(|| settings.fault.clone()),
            choices_null: d.choices_null.unwrap_or(settings.choices_null_in_usage_chunk),
            prompt_tokens,
            echo,
            stamp: d.stamp || settings.stamp,
            demo: d.demo.unwrap_or(settings.demo),
        }
    }

    /// The size every token is checked against: stamps, fixed-size tokens or words.
    pub(crate) fn token_size(&self) -> Option<usize> {
        if self.stamp { Some(STAMP_TOKEN_BYTES) } else { self.token_bytes }
    }

    /// Content token `i` of this reply.
    fn token(&self, i: usize) -> String {
        if self.stamp {
            return stamp_token(unix_micros_now());
        }
        match (&self.echo, self.token_bytes) {
            (Some(tokens), _) => tokens.get(i).cloned().unwrap_or_default(),
            (None, None) if self.demo => demo_token(i).to_owned(),
            (None, bytes) => token(i, bytes),
        }
    }

    /// The whole reply text.
    pub(crate) fn text(&self) -> String {
        (0..self.tokens).map(|i| self.token(i)).collect()
    }

    /// When token `i` (0-based) is due, counted from the role chunk; tokens keep a fixed schedule so the average rate is exact despite timer granularity.
    pub(crate) fn token_due(&self, first_at: Instant, i: usize) -> Option<Instant> {
        self.period.map(|p| first_at + p.saturating_mul(u32::try_from(i + 1).unwrap_or(u32::MAX)))
    }

    /// A stream chunk carrying `choices` (an array, or SambaNova's `null`).
    fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        })
    }

    fn chunk(&self, choice: Value) -> Value {
        self.envelope(json!([choice]))
    }

    pub(crate) fn role_chunk(&self) -> Value {
        self.chunk(json!({
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }))
    }

    pub(crate) fn token_chunk(&self, i: usize) -> Value {
        let mut delta = json!({"content": self.token(i)});
        // SambaNova sprinkles fields clients do not know; odd chunks carry one so parsers must tolerate it.
        if i % 2 == 1 {
            delta["channel"] = Value::Null;
        }
        self.chunk(json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}))
    }

    pub(crate) fn finish_chunk(&self) -> Value {
        self.chunk(json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": self.finish_reason}))
    }

    fn usage(&self, completion_tokens: usize, timing: &Timing) -> Value {
        let end = chrono::Utc::now();
        let total = timing.started.elapsed().as_secs_f64();
        let ttft = timing.first_at.map_or(total, |t| t.duration_since(timing.started).as_secs_f64());
        let generating = (total - ttft).max(f64::EPSILON);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
            "time_to_first_token": ttft,
            "end_time": unix_secs(end),
            "start_time": unix_secs(timing.started_wall),
            "is_last_response": true,
            "completion_tokens_per_sec": completion_tokens as f64 / generating,
            "total_latency": total,
        })
    }

    pub(crate) fn usage_chunk(&self, completion_tokens: usize, timing: &Timing) -> Value {
        let mut chunk = self.envelope(if self.choices_null { Value::Null } else { json!([]) });
        chunk["usage"] = self.usage(completion_tokens, timing);
        chunk
    }

    pub(crate) fn completion(&self, timing: &Timing) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text()},
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage(self.tokens, timing),
        })
    }
}

/// `system_fingerprint` SambaNova puts on its chunks.
const SYSTEM_FINGERPRINT: &str = "fastcoe";

/// Clock readings for the usage block.
pub(crate) struct Timing {
    pub(crate) started: Instant,
    pub(crate) started_wall: chrono::DateTime<chrono::Utc>,
    pub(crate) first_at: Option<Instant>,
}

fn unix_secs(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}
