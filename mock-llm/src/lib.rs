//! relay-mock-llm: an OpenAI-compatible mock chat model served over real HTTP/SSE.
//!
//! It stands in for SambaNova's `POST /v1/chat/completions` in tests, load
//! tests and dev mode, so it reproduces the wire format exactly, including the
//! quirks real clients must survive: a usage chunk whose `choices` is `null`,
//! unknown extra fields in deltas, and the `data: [DONE]` terminator.
//!
//! One shared instance can serve many tests because the last user message may
//! carry a `[[mock key=value ...]]` directive overriding the settings for that
//! request only (syntax: `[[mock tokens=N tps=F delay_ms=N bytes=N fault=.. choices=null|empty demo=0|1]]`).
//!
//! For load tests it can stamp every content token with the time it was sent
//! ([`MockSettings::stamp`], `MOCK_STAMP=1`, or `[[mock stamp]]`): a receiver finds the
//! stamps with [`parse_stamps`] and measures each token's delivery latency.
//!
//! Replies are words cycled from a fixed list ("Lorem ipsum ...", [`reply_text`]), or, in
//! demo mode ([`MockSettings::demo`], `MOCK_DEMO=1`, or `[[mock demo]]`), pieces of a
//! markdown document ([`DEMO_REPLY`], [`demo_reply_text`]) that shows what a chat client
//! renders: the server's built-in mock runs in demo mode, so a new user sees headings,
//! lists, a table and highlighted code instead of lorem ipsum.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Words cycled through to build word-mode replies; a fixed list keeps replies deterministic.
const WORDS: &[&str] = &[
    "Lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet,",
    "consectetur",
    "adipiscing",
    "elit,",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua.",
];

/// Bytes cycled through in fixed-size token mode; JSON-safe ASCII so a token's wire size is predictable.
const BYTE_PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The demo reply ([`MockSettings::demo`]): a friendly markdown answer using what a chat
/// client renders (headings, emphasis, inline code, a link, both kinds of list, a table, a
/// fenced Rust block, a blockquote). It ends with a blank line, so a reply longer than it,
/// which starts it again, starts a new block: a repetition never lands inside the previous
/// one's code block or table.
pub const DEMO_REPLY: &str = r#"## Hello from the built-in mock model

This reply comes from **relay-chat's built-in mock model**, not a real one: the server starts it when no `SAMBANOVA_API_KEY` is set, so you can try everything *without an account anywhere*. Set `SAMBANOVA_API_KEY` and restart the server, and the real model answers instead. The text is always the same; it is here to show what the client renders, with [pulldown-cmark](https://github.com/pulldown-cmark/pulldown-cmark) doing the markdown.

### Things to try

- Send a few messages and watch each reply stream in, piece by piece.
- Open a second tab: both show the same chat as it is written.
- Press **Stop** (or `Esc`) in the middle of a reply.
- Steer the mock with a directive, e.g. `[[mock tokens=500 tps=50]]`.

### Using the real model

1. Get an API key from SambaNova Cloud.
2. Start the server with it: `SAMBANOVA_API_KEY=... cargo xtask run`.
3. Reload this page: the banner about the mock model is gone.

| Variable | Default | What it does |
|---|---|---|
| `SAMBANOVA_API_KEY` | unset | Set, the real model answers |
| `MOCK_TOKENS_PER_SEC` | `200` | How fast the mock writes |
| `MOCK_REPLY_TOKENS` | this reply | How long its replies are |
| `MOCK_DEMO` | `1` | `0` makes it write lorem ipsum |

Code blocks are highlighted, and each has a *Copy* button:

```rust
/// Splits a reply into the pieces a model streams.
fn pieces(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

fn main() {
    for piece in pieces("Hello, world! ") {
        print!("{piece}");
    }
}
```

> **Note:** a reply longer than this one starts it again from the top.

Happy chatting!

"#;

/// The demo reply's tokens, each a piece of [`DEMO_REPLY`] with the whitespace after it.
static DEMO_TOKENS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| split_tokens(DEMO_REPLY));

/// `system_fingerprint` SambaNova puts on its chunks.
const SYSTEM_FINGERPRINT: &str = "fastcoe";

/// Pause before breaking a body for a cut fault, long enough for hyper to flush what precedes the break.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// Request bodies up to this size are accepted, so long chat histories in load tests are not rejected.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Most content tokens one reply may have (`tokens=`, `MOCK_REPLY_TOKENS`).
pub const MAX_REPLY_TOKENS: usize = 1_000_000;
/// Largest fixed token size (`bytes=`, `MOCK_TOKEN_BYTES`).
pub const MAX_TOKEN_BYTES: usize = 1024 * 1024;
/// Largest whole reply, tokens times their size: whatever a message asks for, the mock
/// never builds more than this (a directive is user input, in the default no-key mode too).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// Longest first-token delay (`delay_ms=`, `MOCK_FIRST_TOKEN_MS`).
pub const MAX_DELAY_MS: u64 = 10 * 60 * 1000;
/// Longest word token, with its space, in word mode. Demo tokens vary, but average no more
/// than this (a unit test keeps it so), so it bounds a demo reply's size too.
const MAX_WORD_BYTES: usize = 12;

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
    /// Makes every content token [`stamp_token`]: `@<unix micros, 16 digits> `, the time it
    /// was sent, so a load test measures delivery latency ([`parse_stamps`]).
    pub stamp: bool,
    /// Keeps a [`JournalEntry`] for every chat completion request (tests that check what
    /// the model was asked, and when; off by default, so a long-lived mock does not grow).
    pub journal: bool,
    /// Word-mode replies are pieces of the markdown [`DEMO_REPLY`] ([`demo_reply_text`])
    /// instead of lorem ipsum ([`reply_text`]). Off by default (tests compare replies with
    /// [`reply_text`]); the server's built-in mock turns it on ([`MockSettings::from_lookup`]).
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

/// One chat completion request as the mock saw it (with [`MockSettings::journal`]).
#[derive(Clone, Debug, Serialize)]
pub struct JournalEntry {
    /// When it arrived.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When its response ended (`None` while it runs).
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How it ended.
    pub outcome: JournalOutcome,
    /// The client's `User-Agent` (which node asked).
    pub user_agent: Option<String>,
    /// The text of the last user message.
    pub last_user: String,
}

/// How a journaled request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalOutcome {
    /// Still answering.
    Running,
    /// The whole reply was sent.
    Completed,
    /// The client went away first.
    ClosedEarly,
    /// Refused (a bad request, a fault status) before any reply.
    Refused,
}

impl MockSettings {
    /// Reads `MOCK_FIRST_TOKEN_MS`, `MOCK_TOKENS_PER_SEC`, `MOCK_REPLY_TOKENS`, `MOCK_TOKEN_BYTES`, `MOCK_FAULT`, `MOCK_CHOICES`, `MOCK_API_KEY`, `MOCK_STAMP` and `MOCK_DEMO` over the defaults, the demo off unless `MOCK_DEMO=1` (the standalone mock); the error names the bad variable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok(), false)
    }

    /// Builds settings from any variable source, so parsing is testable without mutating the
    /// process environment. `demo_by_default` is [`MockSettings::demo`] when `MOCK_DEMO` is
    /// unset (the server's built-in mock: on, so a new user sees the demo; the standalone
    /// mock: off); with the demo on, `MOCK_REPLY_TOKENS` defaults to the whole [`DEMO_REPLY`].
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
fn parse_flag(s: &str) -> Result<bool, String> {
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
fn parse_optional_fault(s: &str) -> Result<Option<Fault>, String> {
    if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("off") { Ok(None) } else { s.parse().map(Some) }
}

/// Checks a reply's size against the bounds ([`MAX_REPLY_TOKENS`], [`MAX_TOKEN_BYTES`],
/// [`MAX_REPLY_BYTES`]).
fn check_reply_size(tokens: usize, token_bytes: Option<usize>) -> Result<(), String> {
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
fn parse_choices(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "null" => Ok(true),
        "empty" | "[]" => Ok(false),
        _ => Err(format!("expected \"null\" or \"empty\", got {s:?}")),
    }
}

/// A snapshot of what the mock has seen, also served as JSON by `GET /mock/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    /// Chat completion POSTs received.
    pub requests: u64,
    /// Streaming responses that began.
    pub streams_started: u64,
    /// Streaming responses whose `data: [DONE]` was handed to the body.
    pub streams_completed: u64,
    /// Responses (streaming or not) dropped before completion because the client went away.
    pub streams_closed_early: u64,
    /// Streaming responses currently in flight; a gauge, so `/mock/reset` leaves it alone.
    pub active_streams: u64,
    /// The last chat completion request body that parsed as JSON.
    pub last_request: Option<Value>,
}

/// The shared state behind a mock router: settings, live stats and the shutdown signal.
#[derive(Clone, Debug)]
pub struct MockState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: MockSettings,
    // A watch channel doubles as the stats store and the change notifier, so
    // `wait_for_closed_early` wakes exactly when a counter moves, without polling.
    stats: watch::Sender<MockStats>,
    // Ends stalled and in-flight streams on shutdown; otherwise graceful
    // shutdown would wait forever for a stalled client.
    shutdown: CancellationToken,
    // How many requests carried each last user message with a `fail_first` directive, so
    // the first N of them fail and the rest (a client's retries) succeed.
    attempts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    // Every request, when `settings.journal` is on.
    journal: std::sync::Mutex<Vec<JournalEntry>>,
}

impl MockState {
    /// Creates fresh state with zeroed stats for the given settings.
    pub fn new(settings: MockSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                stats: watch::Sender::new(MockStats::default()),
                shutdown: CancellationToken::new(),
                attempts: Default::default(),
                journal: Default::default(),
            }),
        }
    }

    /// Every request so far, oldest first (empty unless [`MockSettings::journal`] is on).
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.inner.journal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes a request's arrival; returns its place in the journal.
    fn journal_start(&self, user_agent: Option<String>, last_user: &str) -> Option<usize> {
        if !self.inner.settings.journal {
            return None;
        }
        let mut journal = self.inner.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.push(JournalEntry {
            started_at: chrono::Utc::now(),
            ended_at: None,
            outcome: JournalOutcome::Running,
            user_agent,
            last_user: last_user.to_owned(),
        });
        Some(journal.len() - 1)
    }

    /// Notes how a journaled request ended.
    fn journal_end(&self, entry: Option<usize>, outcome: JournalOutcome) {
        let Some(i) = entry else { return };
        let mut journal = self.inner.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = journal.get_mut(i)
            && entry.ended_at.is_none()
        {
            entry.ended_at = Some(chrono::Utc::now());
            entry.outcome = outcome;
        }
    }

    /// Returns the settings every request starts from.
    pub fn settings(&self) -> &MockSettings {
        &self.inner.settings
    }

    /// Returns a snapshot of the stats.
    pub fn stats(&self) -> MockStats {
        self.inner.stats.borrow().clone()
    }

    /// Zeroes the counters and forgets the last request, keeping the `active_streams` gauge.
    pub fn reset(&self) {
        self.inner.attempts.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.inner.stats.send_modify(|s| *s = MockStats { active_streams: s.active_streams, ..MockStats::default() });
    }

    /// Waits until `streams_closed_early >= at_least`, returning false if `timeout` passes first.
    pub async fn wait_for_closed_early(&self, at_least: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.stats.subscribe();
        let waited =
            tokio::time::timeout(timeout, async { rx.wait_for(|s| s.streams_closed_early >= at_least).await.is_ok() })
                .await;
        matches!(waited, Ok(true))
    }

    /// Ends every in-flight response abruptly; used when the server stops.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    fn modify(&self, f: impl FnOnce(&mut MockStats)) {
        self.inner.stats.send_modify(f);
    }
}

/// Builds the mock's routes: `POST /v1/chat/completions`, `GET /mock/stats` and `POST /mock/reset`.
pub fn router(state: MockState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/mock/stats", get(get_stats))
        .route("/mock/reset", post(post_reset))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// A running mock server bound to a local address; dropping it stops the server.
#[derive(Debug)]
pub struct MockLlm {
    state: MockState,
    addr: SocketAddr,
}

impl MockLlm {
    /// Binds `bind` (port 0 picks a free port) and serves the mock in a background task until shutdown.
    pub async fn start(settings: MockSettings, bind: SocketAddr) -> io::Result<MockLlm> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        // Small SSE chunks must not sit in Nagle's buffer, or measured latencies lie.
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::trace!("mock llm: failed to set TCP_NODELAY: {err}");
            }
        });
        let state = MockState::new(settings);
        let shutdown = state.inner.shutdown.clone();
        let app = router(state.clone());
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(err) = serve.await {
                tracing::warn!("mock llm server stopped with an error: {err}");
            }
        });
        tracing::debug!("mock llm listening on {addr}");
        Ok(MockLlm { state, addr })
    }

    /// Returns the address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the OpenAI base URL, e.g. `http://127.0.0.1:PORT/v1`, using loopback when bound to a wildcard address.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}/v1", SocketAddr::new(ip, self.addr.port()))
    }

    /// Returns the shared state, e.g. to reset counters between test phases.
    pub fn state(&self) -> &MockState {
        &self.state
    }

    /// Returns a snapshot of the stats.
    pub fn stats(&self) -> MockStats {
        self.state.stats()
    }

    /// Every request so far, oldest first (with [`MockSettings::journal`]).
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.state.journal()
    }

    /// Waits until `streams_closed_early >= at_least`, returning false if `timeout` passes first.
    pub async fn wait_for_closed_early(&self, at_least: u64, timeout: Duration) -> bool {
        self.state.wait_for_closed_early(at_least, timeout).await
    }

    /// Stops accepting connections and ends in-flight responses.
    pub fn shutdown(&self) {
        self.state.shutdown();
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        // A forgotten mock must not keep serving (and holding stalled streams) for the rest of the process.
        self.state.shutdown();
    }
}

/// Returns exactly the content the mock streams for a complete reply of `n_tokens` tokens.
pub fn reply_text(n_tokens: usize, token_bytes: Option<usize>) -> String {
    (0..n_tokens).map(|i| token(i, token_bytes)).collect()
}

/// Returns content token `i`: a word plus a space, or `n` bytes of the pattern starting at offset `i`.
fn token(i: usize, token_bytes: Option<usize>) -> String {
    match token_bytes {
        None => format!("{} ", WORDS[i % WORDS.len()]),
        // Starting each token at a different offset makes reordering or loss visible in comparisons.
        Some(n) => (0..n).map(|j| BYTE_PATTERN[(i + j) % BYTE_PATTERN.len()] as char).collect(),
    }
}

/// The tokens of [`DEMO_REPLY`], in order: what a demo-mode mock streams
/// ([`MockSettings::demo`]) before it starts the document again.
pub fn demo_tokens() -> &'static [&'static str] {
    &DEMO_TOKENS
}

/// Returns exactly the content a demo-mode mock ([`MockSettings::demo`]) streams for a
/// complete reply of `n_tokens` tokens: the first `n_tokens` pieces of [`DEMO_REPLY`],
/// starting it again from the top as often as needed.
pub fn demo_reply_text(n_tokens: usize) -> String {
    (0..n_tokens).map(demo_token).collect()
}

/// Demo token `i`, cycling through [`DEMO_REPLY`].
fn demo_token(i: usize) -> &'static str {
    DEMO_TOKENS[i % DEMO_TOKENS.len()]
}

/// `text` in pieces, each a run of non-whitespace with the whitespace after it (so a code
/// line's indentation rides on the line break before it).
fn split_tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            tokens.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    tokens
}

/// The tokens of an `echo` reply: the message without its directives, word by word (each
/// with the whitespace after it), so markdown arrives piece by piece as a model's would.
pub fn echo_tokens(message: &str) -> Vec<String> {
    let mut text = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("[[mock") {
        text.push_str(&rest[..start]);
        match rest[start..].find("]]") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = "";
            }
        }
    }
    text.push_str(rest);
    text.trim().split_inclusive(char::is_whitespace).map(str::to_string).collect()
}

/// Bytes of one stamped token: `@`, 16 digits and a space.
pub const STAMP_TOKEN_BYTES: usize = 18;

/// A stamped content token for the time `unix_micros`: `@<16 digits> `, e.g.
/// `@1764300000123456 ` (the format [`parse_stamps`] reads).
pub fn stamp_token(unix_micros: u64) -> String {
    format!("@{unix_micros:016} ")
}

/// Microseconds since the Unix epoch now, the clock stamps are read against.
pub fn unix_micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Every stamp in `text` (each `@` followed by exactly 16 ASCII digits), in order: the
/// send times, in Unix microseconds, of the stamped tokens a delta carries (a server may
/// merge several tokens into one delta).
pub fn parse_stamps(text: &str) -> impl Iterator<Item = u64> + '_ {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().filter_map(move |(i, &b)| {
        let digits = bytes.get(i + 1..i + 17).filter(|_| b == b'@')?;
        if !digits.iter().all(u8::is_ascii_digit) || bytes.get(i + 17).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
    })
}

/// Per-request overrides parsed from `[[mock ...]]` in the last user message.
///
/// Syntax: `[[mock key=value key=value flag]]`, whitespace separated; several
/// blocks may appear and later values win. Keys: `tokens=N`, `tps=F`,
/// `delay_ms=N`, `bytes=N` (0 = words), `fault=429|500|401|503|stall|cut:N|none`,
/// `choices=null|empty`, `fail_first=N` (the fault applies to the first N requests with
/// this same message, later ones succeed: a client's retries). Bare flags: `echo` (the
/// reply is the message itself, directives removed, word by word: for markdown and
/// escaping tests), `stamp` (every token is its send time, [`stamp_token`]), `demo` (the
/// reply is pieces of [`DEMO_REPLY`]; `demo=0` or `demo=1` too, to switch it either way), anything
/// `fault=` accepts (`stall`,
/// `cut:3`, `429`), plus `instant` (`delay_ms=0 tps=0`). Unknown keys and flags
/// are ignored; a known key with a bad value is a 400 so typos do not pass silently, and so
/// is a reply past the bounds ([`MAX_REPLY_TOKENS`], [`MAX_TOKEN_BYTES`], [`MAX_REPLY_BYTES`],
/// [`MAX_DELAY_MS`]).
#[derive(Clone, Debug, Default, PartialEq)]
struct Directives {
    tokens: Option<usize>,
    tps: Option<f64>,
    delay_ms: Option<u64>,
    bytes: Option<Option<usize>>,
    fault: Option<Option<Fault>>,
    choices_null: Option<bool>,
    fail_first: Option<usize>,
    echo: bool,
    stamp: bool,
    demo: Option<bool>,
}

impl Directives {
    fn parse(text: &str) -> Result<Self, String> {
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
struct Plan {
    model: String,
    id: String,
    created: i64,
    tokens: usize,
    finish_reason: &'static str,
    token_bytes: Option<usize>,
    first_token_delay: Duration,
    /// Time between content tokens; `None` streams as fast as possible.
    period: Option<Duration>,
    fault: Option<Fault>,
    choices_null: bool,
    prompt_tokens: usize,
    /// With `echo`: the reply's tokens, instead of generated ones.
    echo: Option<Vec<String>>,
    /// Every token is its send time ([`stamp_token`]), whatever `echo` and `token_bytes` say.
    stamp: bool,
    /// Word tokens are pieces of [`DEMO_REPLY`] rather than lorem ipsum.
    demo: bool,
}

impl Plan {
    fn new(
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
    fn token_size(&self) -> Option<usize> {
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
    fn text(&self) -> String {
        (0..self.tokens).map(|i| self.token(i)).collect()
    }

    /// When token `i` (0-based) is due, counted from the role chunk; tokens keep a fixed schedule so the average rate is exact despite timer granularity.
    fn token_due(&self, first_at: Instant, i: usize) -> Option<Instant> {
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

    fn role_chunk(&self) -> Value {
        self.chunk(json!({
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }))
    }

    fn token_chunk(&self, i: usize) -> Value {
        let mut delta = json!({"content": self.token(i)});
        // SambaNova sprinkles fields clients do not know; odd chunks carry one so parsers must tolerate it.
        if i % 2 == 1 {
            delta["channel"] = Value::Null;
        }
        self.chunk(json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}))
    }

    fn finish_chunk(&self) -> Value {
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

    fn usage_chunk(&self, completion_tokens: usize, timing: &Timing) -> Value {
        let mut chunk = self.envelope(if self.choices_null { Value::Null } else { json!([]) });
        chunk["usage"] = self.usage(completion_tokens, timing);
        chunk
    }

    fn completion(&self, timing: &Timing) -> Value {
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

/// Clock readings for the usage block.
struct Timing {
    started: Instant,
    started_wall: chrono::DateTime<chrono::Utc>,
    first_at: Option<Instant>,
}

fn unix_secs(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

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

async fn get_stats(State(state): State<MockState>) -> Response {
    axum::Json(state.stats()).into_response()
}

async fn post_reset(State(state): State<MockState>) -> Response {
    state.reset();
    axum::Json(state.stats()).into_response()
}

async fn not_found() -> Response {
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

async fn chat_completions(State(state): State<MockState>, headers: HeaderMap, body: Bytes) -> Response {
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
        let mut attempts = state.inner.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let seen = attempts.entry(last_user.clone()).or_default();
        *seen += 1;
        if *seen > n {
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
    let cancel = state.inner.shutdown.clone();
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
    let cancel = state.inner.shutdown.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_parses_and_round_trips() {
        for (text, fault) in [
            ("429", Fault::Status(429)),
            ("500", Fault::Status(500)),
            ("stall", Fault::Stall),
            ("cut:5", Fault::CutAfter(5)),
        ] {
            assert_eq!(text.parse::<Fault>(), Ok(fault.clone()));
            assert_eq!(fault.to_string(), text);
        }
        assert!("200".parse::<Fault>().is_err());
        assert!("cut:x".parse::<Fault>().is_err());
        assert!("boom".parse::<Fault>().is_err());
    }

    #[test]
    fn directives_parse_keys_flags_and_ignore_unknown() {
        let d = Directives::parse("hi [[mock tokens=3 tps=0 delay_ms=1 bytes=8 fault=cut:2 choices=empty wat=1 frob]]")
            .unwrap();
        assert_eq!(d.tokens, Some(3));
        assert_eq!(d.tps, Some(0.0));
        assert_eq!(d.delay_ms, Some(1));
        assert_eq!(d.bytes, Some(Some(8)));
        assert_eq!(d.fault, Some(Some(Fault::CutAfter(2))));
        assert_eq!(d.choices_null, Some(false));

        let d = Directives::parse("[[mock stall]] then [[mock fault=none instant]]").unwrap();
        assert_eq!(d.fault, Some(None));
        assert_eq!(d.delay_ms, Some(0));
        assert_eq!(Directives::parse("[[mockery tokens=1]] [[mock]]").unwrap(), Directives::default());
        assert!(Directives::parse("[[mock tokens=many]]").is_err());
        assert!(Directives::parse("[[mock delay_ms=99999999999]]").is_err());
    }

    #[test]
    fn echo_replies_with_the_message_word_by_word() {
        let tokens = echo_tokens("say **this** [[mock echo tps=5]]\n```rust\nfn x() {}\n```");
        assert_eq!(tokens.concat(), "say **this** \n```rust\nfn x() {}\n```");
        assert_eq!(tokens[0], "say ");
        assert!(Directives::parse("x [[mock echo]]").unwrap().echo);
    }

    #[test]
    fn stamps_format_parse_and_switch_on() {
        let token = stamp_token(1_764_300_000_123_456);
        assert_eq!(token, "@1764300000123456 ");
        assert_eq!(token.len(), STAMP_TOKEN_BYTES);
        // Merged tokens, neighbours that are not stamps (too short, too long, no digits).
        let text = format!("{token}{}x@123 @12345678901234567 @abcdefghijklmnop @0000000000000042", stamp_token(7));
        assert_eq!(parse_stamps(&text).collect::<Vec<_>>(), vec![1_764_300_000_123_456, 7, 42]);
        assert_eq!(parse_stamps("no stamps @").count(), 0);

        let now = unix_micros_now();
        let plan = |settings: &MockSettings, message: &str| {
            Plan::new(settings, Directives::parse(message).unwrap(), "m".into(), None, 1, message)
        };
        let stamped = plan(&MockSettings::default(), "hi [[mock stamp tokens=3]]");
        let stamps: Vec<u64> = parse_stamps(&stamped.text()).collect();
        assert_eq!(stamps.len(), 3);
        assert!(stamps.iter().all(|&t| t >= now && t < now + 60_000_000), "{stamps:?}");
        assert_eq!(parse_stamps(&plan(&MockSettings::default(), "hi").text()).count(), 0);
        let env = |name: &str| (name == "MOCK_STAMP").then(|| "1".to_string());
        let settings = MockSettings::from_lookup(env, false).unwrap();
        assert!(settings.stamp);
        assert_eq!(parse_stamps(&plan(&settings, "hi [[mock echo]]").text()).count(), 1);
        let env = |name: &str| (name == "MOCK_STAMP").then(|| "maybe".to_string());
        assert!(MockSettings::from_lookup(env, false).unwrap_err().contains("MOCK_STAMP"));
    }

    #[test]
    fn reply_size_is_bounded() {
        assert!(check_reply_size(40, None).is_ok());
        assert!(check_reply_size(5000, Some(1000)).is_ok());
        assert!(check_reply_size(1, Some(100_000_000)).is_err());
        assert!(check_reply_size(100_000_000, None).is_err());
        assert!(check_reply_size(100_000, Some(1000)).is_err());
        let env = |name: &str| (name == "MOCK_TOKEN_BYTES").then(|| "100000000".to_string());
        assert!(MockSettings::from_lookup(env, false).unwrap_err().contains("MOCK_"));
    }

    #[test]
    fn settings_from_lookup() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let s = MockSettings::from_lookup(
            env(&[
                ("MOCK_FIRST_TOKEN_MS", "5"),
                ("MOCK_TOKENS_PER_SEC", "0"),
                ("MOCK_REPLY_TOKENS", "7"),
                ("MOCK_TOKEN_BYTES", "16"),
                ("MOCK_FAULT", "cut:5"),
                ("MOCK_API_KEY", "k"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(s.first_token_delay, Duration::from_millis(5));
        assert_eq!(s.tokens_per_second, 0.0);
        assert_eq!(s.reply_tokens, 7);
        assert_eq!(s.token_bytes, Some(16));
        assert_eq!(s.fault, Some(Fault::CutAfter(5)));
        assert_eq!(s.api_key.as_deref(), Some("k"));
        assert!(s.choices_null_in_usage_chunk);

        let err = MockSettings::from_lookup(env(&[("MOCK_REPLY_TOKENS", "lots")]), false).unwrap_err();
        assert!(err.contains("MOCK_REPLY_TOKENS"), "{err}");
        let err = MockSettings::from_lookup(env(&[("MOCK_FAULT", "teapot")]), false).unwrap_err();
        assert!(err.contains("MOCK_FAULT"), "{err}");
    }

    /// Every markdown element in `text`, as pulldown-cmark (the browser client's renderer,
    /// with its options) parses it.
    fn markdown_tags(text: &str) -> Vec<pulldown_cmark::Tag<'_>> {
        use pulldown_cmark::{Event, Options, Parser};
        let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
        Parser::new_ext(text, options)
            .filter_map(|event| match event {
                Event::Start(tag) => Some(tag),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_demo_is_markdown_a_client_renders() {
        use pulldown_cmark::{CodeBlockKind, HeadingLevel, Tag};
        assert!((1500..=3000).contains(&DEMO_REPLY.len()), "{} bytes", DEMO_REPLY.len());
        assert!(DEMO_REPLY.contains("built-in mock model") && DEMO_REPLY.contains("SAMBANOVA_API_KEY"));
        let tags = markdown_tags(DEMO_REPLY);
        let has = |want: &dyn Fn(&Tag<'_>) -> bool| tags.iter().any(want);
        assert!(has(&|t| matches!(t, Tag::Heading { level: HeadingLevel::H2, .. })), "a ## heading");
        assert!(has(&|t| matches!(t, Tag::Strong)) && has(&|t| matches!(t, Tag::Emphasis)), "bold and italic");
        assert!(has(&|t| matches!(t, Tag::Link { dest_url, .. } if dest_url.starts_with("https://github.com/"))));
        assert!(has(&|t| matches!(t, Tag::List(None))), "a bulleted list");
        assert!(has(&|t| matches!(t, Tag::List(Some(1)))), "a numbered list");
        assert!(has(&|t| matches!(t, Tag::Table(_))), "a table");
        assert!(has(&|t| matches!(t, Tag::BlockQuote(_))), "a blockquote");
        let rust = |t: &Tag<'_>| matches!(t, Tag::CodeBlock(CodeBlockKind::Fenced(lang)) if lang.as_ref() == "rust");
        let fence = tags.iter().position(rust).expect("a ```rust block");
        // The fence closes inside the document: blocks follow it (an open fence would run to
        // the end, swallowing them).
        assert!(tags[fence + 1..].iter().any(|t| matches!(t, Tag::BlockQuote(_))), "the fence is closed");
        assert!(pulldown_cmark::Parser::new(DEMO_REPLY).any(|e| matches!(e, pulldown_cmark::Event::Code(_))));
        // It ends with one blank line, so a repetition starts a new block.
        assert!(DEMO_REPLY.ends_with("!\n\n"));
    }

    #[test]
    fn demo_tokens_are_pieces_that_cycle_and_cut_anywhere() {
        let tokens = demo_tokens();
        assert_eq!(tokens.concat(), DEMO_REPLY);
        assert!(tokens.len() > 200, "{} tokens", tokens.len());
        for token in tokens {
            // A run of non-whitespace, then the whitespace after it.
            let word = token.trim_end();
            assert!(!word.is_empty() && !word.contains(char::is_whitespace), "{token:?}");
        }
        assert_eq!(tokens[0], "## ");
        assert!(tokens.contains(&"{\n    "), "a code line's indentation rides on the line break");
        assert_eq!(demo_reply_text(tokens.len()), DEMO_REPLY);
        // Past the end it starts again, and the repetitions are whole markdown documents.
        let n = 2 * tokens.len() + 5;
        assert_eq!(demo_reply_text(n), format!("{DEMO_REPLY}{DEMO_REPLY}{}", tokens[..5].concat()));
        let count = |text: &str, want: fn(&pulldown_cmark::Tag<'_>) -> bool| {
            markdown_tags(text).iter().filter(|t| want(t)).count()
        };
        let twice = demo_reply_text(2 * tokens.len());
        for want in [
            (|t| matches!(t, pulldown_cmark::Tag::Table(_))) as fn(&pulldown_cmark::Tag<'_>) -> bool,
            |t| matches!(t, pulldown_cmark::Tag::CodeBlock(_)),
            |t| matches!(t, pulldown_cmark::Tag::Heading { .. }),
            |t| matches!(t, pulldown_cmark::Tag::BlockQuote(_)),
        ] {
            assert_eq!(count(&twice, want), 2 * count(DEMO_REPLY, want));
        }
        // Any length is a prefix of the document (or its repetitions), cut after a token.
        for n in 0..=tokens.len() {
            let text = demo_reply_text(n);
            assert!(DEMO_REPLY.starts_with(&text), "{n}");
            assert!(n == 0 || text.ends_with(char::is_whitespace), "{n}");
            let _ = markdown_tags(&text);
        }
        // Demo tokens stay under the word-mode size bound on average, so the bound that
        // refuses oversized replies holds for demo replies too.
        assert!(DEMO_REPLY.len() <= tokens.len() * MAX_WORD_BYTES);
        assert!(MAX_REPLY_TOKENS * MAX_WORD_BYTES + DEMO_REPLY.len() <= MAX_REPLY_BYTES);
        assert_eq!(split_tokens("a  b\n\n c"), vec!["a  ", "b\n\n ", "c"]);
        assert!(split_tokens("").is_empty());
    }

    #[test]
    fn demo_mode_by_setting_variable_and_directive() {
        let plan = |settings: &MockSettings, message: &str, max_tokens: Option<u64>| {
            Plan::new(settings, Directives::parse(message).unwrap(), "m".into(), max_tokens, 1, message)
        };
        let whole = demo_tokens().len();
        let words = MockSettings::default();
        assert!(!words.demo);
        assert_eq!(plan(&words, "hi", None).text(), reply_text(40, None));
        assert_eq!(plan(&words, "hi [[mock demo tokens=4]]", None).text(), demo_reply_text(4));
        assert_eq!(plan(&words, "hi [[mock demo=1]]", None).text(), demo_reply_text(40));

        let demo = MockSettings { demo: true, reply_tokens: whole, ..MockSettings::default() };
        assert_eq!(plan(&demo, "hi", None).text(), DEMO_REPLY);
        assert_eq!(plan(&demo, "hi [[mock tokens=3]]", None).text(), "## Hello from ");
        assert_eq!(plan(&demo, "hi [[mock tokens=3 demo=0]]", None).text(), reply_text(3, None));
        assert_eq!(plan(&demo, "hi [[mock tokens=2 bytes=5]]", None).text(), reply_text(2, Some(5)));
        assert_eq!(plan(&demo, "say *this* [[mock echo]]", None).text(), "say *this*");
        let cut = plan(&demo, "hi", Some(10));
        assert_eq!((cut.text(), cut.finish_reason), (demo_reply_text(10), "length"));
        assert!(Directives::parse("[[mock demo=maybe]]").is_err());
        assert!(format!("{demo:?}").contains("demo: true"));

        // The server's built-in mock shows the whole demo unless told otherwise; the
        // standalone mock (and `MockSettings::default()`) only when told.
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let s = MockSettings::from_lookup(env(&[]), true).unwrap();
        assert_eq!((s.demo, s.reply_tokens), (true, whole));
        let s = MockSettings::from_lookup(env(&[("MOCK_REPLY_TOKENS", "7")]), true).unwrap();
        assert_eq!((s.demo, s.reply_tokens), (true, 7));
        let s = MockSettings::from_lookup(env(&[("MOCK_DEMO", "0")]), true).unwrap();
        assert_eq!((s.demo, s.reply_tokens), (false, 40));
        let s = MockSettings::from_lookup(env(&[]), false).unwrap();
        assert_eq!((s.demo, s.reply_tokens), (false, 40));
        let s = MockSettings::from_lookup(env(&[("MOCK_DEMO", "on")]), false).unwrap();
        assert_eq!((s.demo, s.reply_tokens), (true, whole));
        let err = MockSettings::from_lookup(env(&[("MOCK_DEMO", "maybe")]), true).unwrap_err();
        assert!(err.starts_with("MOCK_DEMO"), "{err}");
    }

    #[test]
    fn reply_text_is_tokens_concatenated() {
        assert_eq!(reply_text(3, None), "Lorem ipsum dolor ");
        let t = reply_text(4, Some(5));
        assert_eq!(t.len(), 20);
        assert_eq!(&t[..10], "abcdebcdef");
        assert_eq!(reply_text(WORDS.len() + 1, None).split(' ').nth(WORDS.len()), Some("Lorem"));
    }
}
