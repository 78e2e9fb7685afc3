//! How the mock behaves unless a request says otherwise ([`MockSettings`], the `MOCK_*`
//! variables), the faults it can inject, and the bounds on what it builds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::text::{DEMO_TOKENS, MAX_WORD_BYTES};

/// Most content tokens one reply may have (`tokens=`, `MOCK_REPLY_TOKENS`).
pub const MAX_REPLY_TOKENS: usize = 1_000_000;

/// Largest fixed token size (`bytes=`, `MOCK_TOKEN_BYTES`).
pub const MAX_TOKEN_BYTES: usize = 1024 * 1024;

/// Largest whole reply, tokens times their size: whatever a message asks for, the mock
/// never builds more than this (a directive is user input, in the default no-key mode too).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Longest first-token delay (`delay_ms=`, `MOCK_FIRST_TOKEN_MS`).
pub const MAX_DELAY_MS: u64 = 10 * 60 * 1000;

/// Behaviour of the mock for every request unless a per-request directive overrides it.
#[derive(Clone)]
pub struct MockSettings {
    /// Delay before the first (role) chunk, standing in for the model's time to first token.
    pub first_token_delay: Duration,
    /// Content tokens per second; zero or negative streams as fast as possible.
    pub tokens_per_second: f64,
    /// Number of content tokens in a complete reply.
    pub reply_tokens: usize,
    /// `Some(n)` makes every content token exactly `n` bytes, for flood tests.
    pub token_bytes: Option<usize>,
    /// A fault injected into every request.
    pub fault: Option<Fault>,
    /// Whether the usage chunk carries `"choices": null` (SambaNova) rather than `"choices": []`.
    pub choices_null_in_usage_chunk: bool,
    /// `Some(k)` requires `Authorization: Bearer k` (else 401); `None` accepts anything.
    pub api_key: Option<String>,
    /// Makes every content token [`stamp_token`](crate::stamp_token): `@<unix micros, 16 digits> `, the time it
    /// was sent, so a load test measures delivery latency ([`parse_stamps`](crate::parse_stamps)).
    pub stamp: bool,
    /// Keeps a [`JournalEntry`](crate::JournalEntry) for every chat completion request (tests that check what
    /// the model was asked, and when; off by default, so a long-lived mock does not grow).
    pub journal: bool,
    /// Word-mode replies are pieces of the markdown [`DEMO_REPLY`](crate::DEMO_REPLY) ([`demo_reply_text`](crate::demo_reply_text))
    /// instead of lorem ipsum ([`reply_text`](crate::reply_text)). Off by default (tests compare replies with
    /// [`reply_text`](crate::reply_text)); the server's built-in mock turns it on ([`MockSettings::from_lookup`]).
    pub demo: bool,
}

impl fmt::Debug for MockSettings {
    /// Redacts the API key so settings can be logged safely.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockSettings")
            .field("first_token_delay", &self.first_token_delay)
            .field("tokens_per_second", &self.tokens_per_second)
            .field("reply_tokens", &self.reply_tokens)
            .field("token_bytes", &self.token_bytes)
            .field("fault", &self.fault)
            .field("choices_null_in_usage_chunk", &self.choices_null_in_usage_chunk)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("stamp", &self.stamp)
            .field("journal", &self.journal)
            .field("demo", &self.demo)
            .finish()
    }
}

impl Default for MockSettings {
    fn default() -> Self {
        Self {
            first_token_delay: Duration::from_millis(50),
            tokens_per_second: 200.0,
            reply_tokens: 40,
            token_bytes: None,
            fault: None,
            choices_null_in_usage_chunk: true,
            api_key: None,
            stamp: false,
            journal: false,
            demo: false,
        }
    }
}

impl MockSettings {
    /// Reads `MOCK_FIRST_TOKEN_MS`, `MOCK_TOKENS_PER_SEC`, `MOCK_REPLY_TOKENS`, `MOCK_TOKEN_BYTES`, `MOCK_FAULT`, `MOCK_CHOICES`, `MOCK_API_KEY`, `MOCK_STAMP` and `MOCK_DEMO` over the defaults, the demo off unless `MOCK_DEMO=1` (the standalone mock); the error names the bad variable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok(), false)
    }

    /// Builds settings from any variable source, so parsing is testable without mutating the
    /// process environment. `demo_by_default` is [`MockSettings::demo`] when `MOCK_DEMO` is
    /// unset (the server's built-in mock: on, so a new user sees the demo; the standalone
    /// mock: off); with the demo on, `MOCK_REPLY_TOKENS` defaults to the whole [`DEMO_REPLY`](crate::DEMO_REPLY).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, demo_by_default: bool) -> Result<Self, String> {
        // Empty values count as unset so `MOCK_FAULT=` in a shell script means "no fault".
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let bad = |name: &str, value: &str, why: &dyn fmt::Display| format!("{name}: invalid value {value:?}: {why}");
        let flag = |name: &str| match get(name) {
            None => Ok(None),
            Some(v) => parse_flag(&v).map(Some).map_err(|e| bad(name, &v, &e)),
        };
        let demo = flag("MOCK_DEMO")?.unwrap_or(demo_by_default);
        let defaults = Self::default();
        let reply_tokens = if demo { DEMO_TOKENS.len() } else { defaults.reply_tokens };
        let mut s = Self { demo, reply_tokens, ..defaults };
        if let Some(v) = get("MOCK_FIRST_TOKEN_MS") {
            let ms: u64 = v.parse().map_err(|e| bad("MOCK_FIRST_TOKEN_MS", &v, &e))?;
            if ms > MAX_DELAY_MS {
                return Err(bad("MOCK_FIRST_TOKEN_MS", &v, &format!("at most {MAX_DELAY_MS}")));
            }
            s.first_token_delay = Duration::from_millis(ms);
        }
        if let Some(v) = get("MOCK_TOKENS_PER_SEC") {
            let tps: f64 = v.parse().map_err(|e| bad("MOCK_TOKENS_PER_SEC", &v, &e))?;
            if tps.is_nan() {
                return Err(bad("MOCK_TOKENS_PER_SEC", &v, &"not a number"));
            }
            s.tokens_per_second = tps;
        }
        if let Some(v) = get("MOCK_REPLY_TOKENS") {
            s.reply_tokens = v.parse().map_err(|e| bad("MOCK_REPLY_TOKENS", &v, &e))?;
        }
        if let Some(v) = get("MOCK_TOKEN_BYTES") {
            let n: usize = v.parse().map_err(|e| bad("MOCK_TOKEN_BYTES", &v, &e))?;
            s.token_bytes = (n > 0).then_some(n);
        }
        if let Err(why) = check_reply_size(s.reply_tokens, s.token_bytes) {
            let v = format!("{} tokens of {:?} bytes", s.reply_tokens, s.token_bytes);
            return Err(bad("MOCK_REPLY_TOKENS", &v, &why));
        }
        if let Some(v) = get("MOCK_FAULT") {
            s.fault = parse_optional_fault(&v).map_err(|e| bad("MOCK_FAULT", &v, &e))?;
        }
        if let Some(v) = get("MOCK_CHOICES") {
            s.choices_null_in_usage_chunk = parse_choices(&v).map_err(|e| bad("MOCK_CHOICES", &v, &e))?;
        }
        s.api_key = get("MOCK_API_KEY");
        if let Some(stamp) = flag("MOCK_STAMP")? {
            s.stamp = stamp;
        }
        Ok(s)
    }
}

/// Parses an on/off setting: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off`.
pub(crate) fn parse_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 1 or 0".into()),
    }
}

/// A failure the mock injects instead of (or in the middle of) a normal reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this HTTP status (400..=599) and an OpenAI-style error body.
    Status(u16),
    /// Send headers and the role chunk, then nothing until the client gives up.
    Stall,
    /// Stream this many content chunks, then break the body without a finish chunk or `[DONE]`.
    CutAfter(usize),
}

impl FromStr for Fault {
    type Err = String;

    /// Parses the `MOCK_FAULT` syntax: an HTTP status such as `429`, `stall`, or `cut:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("stall") {
            return Ok(Fault::Stall);
        }
        if let Some(n) = s.strip_prefix("cut:") {
            return n.trim().parse().map(Fault::CutAfter).map_err(|e| format!("bad chunk count in {s:?}: {e}"));
        }
        match s.parse::<u16>() {
            Ok(code) if (400..=599).contains(&code) => Ok(Fault::Status(code)),
            _ => Err(format!("expected an HTTP status 400..=599, \"stall\" or \"cut:N\", got {s:?}")),
        }
    }
}

impl fmt::Display for Fault {
    /// Formats in the same syntax [`FromStr`] accepts, so faults round-trip through env vars and directives.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status(code) => write!(f, "{code}"),
            Fault::Stall => f.write_str("stall"),
            Fault::CutAfter(n) => write!(f, "cut:{n}"),
        }
    }
}

/// Parses a fault where `none`/`off` explicitly means no fault, so a directive can clear a global one.
pub(crate) fn parse_optional_fault(s: &str) -> Result<Option<Fault>, String> {
    if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("off") { Ok(None) } else { s.parse().map(Some) }
}

/// Checks a reply's size against the bounds ([`MAX_REPLY_TOKENS`], [`MAX_TOKEN_BYTES`],
/// [`MAX_REPLY_BYTES`]).
pub(crate) fn check_reply_size(tokens: usize, token_bytes: Option<usize>) -> Result<(), String> {
    if tokens > MAX_REPLY_TOKENS {
        return Err(format!("at most {MAX_REPLY_TOKENS} tokens"));
    }
    let size = token_bytes.unwrap_or(MAX_WORD_BYTES);
    if size > MAX_TOKEN_BYTES {
        return Err(format!("tokens of at most {MAX_TOKEN_BYTES} bytes"));
    }
    if tokens.saturating_mul(size) > MAX_REPLY_BYTES {
        return Err(format!("a reply of at most {MAX_REPLY_BYTES} bytes"));
    }
    Ok(())
}

/// Parses `null` / `empty` into the `choices_null_in_usage_chunk` flag.
pub(crate) fn parse_choices(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "null" => Ok(true),
        "empty" | "[]" => Ok(false),
        _ => Err(format!("expected \"null\" or \"empty\", got {s:?}")),
    }
}
