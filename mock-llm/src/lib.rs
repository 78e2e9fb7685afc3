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

mod plan;
mod respond;
mod settings;
mod stamps;
mod state;
#[cfg(test)]
mod tests;
mod text;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;

use respond::{MAX_REQUEST_BYTES, chat_completions, get_stats, not_found, post_reset};

pub use settings::{Fault, MAX_DELAY_MS, MAX_REPLY_BYTES, MAX_REPLY_TOKENS, MAX_TOKEN_BYTES, MockSettings};
pub use stamps::{STAMP_TOKEN_BYTES, parse_stamps, stamp_token, unix_micros_now};
pub use state::{JournalEntry, JournalOutcome, MockState, MockStats};
pub use text::{DEMO_REPLY, demo_reply_text, demo_tokens, echo_tokens, reply_text};

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
        let shutdown = state.shutdown_token();
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
