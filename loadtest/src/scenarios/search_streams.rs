//! The `search` scenario's last phase: replies streamed to some of its users, measured
//! alone and then again while other users search as fast as answers come back, so what a
//! search costs the streams shows (issue 22: "a search never slows streams").

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use relay_protocol::AuthResponse;
use serde::Serialize;

use super::Replies;
use super::chat::{ChatConfig, drive};
use super::words::{Rng, word};
use crate::report::{Errors, latency_rows, line};
use crate::{Endpoint, Samples, Summary, Target};

/// What the phase does.
#[derive(Clone, Debug, Serialize)]
pub struct StreamsConfig {
    /// Users streaming a reply at a time (one session each).
    pub streams: usize,
    /// Searches kept running at once beside them (each sent when the last is answered).
    pub searchers: usize,
    /// Replies each streaming user asks for, one after another.
    pub replies: usize,
    /// The message sent (its mock directive sets the reply's length and pace).
    pub content: String,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            streams: 50,
            searchers: 4,
            replies: 2,
            content: "streams beside searches [[mock tokens=100 tps=25 delay_ms=100]]".into(),
        }
    }
}

/// The figures of the phase.
#[derive(Clone, Debug, Serialize)]
pub struct StreamsReport {
    /// What ran.
    pub config: StreamsConfig,
    /// The replies with nothing else running.
    pub alone: Replies,
    /// Errors of those streams.
    pub alone_errors: Errors,
    /// The same replies while the searches ran.
    pub beside: Replies,
    /// Errors of those streams.
    pub beside_errors: Errors,
    /// The searches that were answered, while the streams ran.
    pub searches: Summary,
    /// Searches refused: `503` (every turn taken: `CHAT_SEARCH_CONCURRENCY`) and `429`
    /// (the user's `CHAT_SEARCHES_PER_MINUTE`), then any other failure.
    pub searches_refused: (u64, u64, u64),
}

impl fmt::Display for StreamsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "streams beside searches: {} streams, {} searches at once", c.streams, c.searchers)?;
        latency_rows(
            f,
            &[
                ("TTFT, alone", &self.alone.ttft),
                ("TTFT, beside searches", &self.beside.ttft),
                ("delta gap, alone", &self.alone.delta_gap),
                ("gap, beside searches", &self.beside.delta_gap),
                ("search, beside streams", &self.searches),
            ],
        )?;
        line(
            f,
            "replies completed",
            format!("{} alone, {} beside searches", self.alone.completed, self.beside.completed),
        )?;
        line(f, "stream errors", format!("{} alone, {} beside searches", self.alone_errors, self.beside_errors))?;
        let (busy, limited, failed) = self.searches_refused;
        line(f, "searches refused", format!("{busy} busy (503), {limited} rate-limited (429), {failed} failed"))
    }
}

/// Streams replies to the first `config.streams` users, alone and then beside searches by
/// all of `users`.
pub async fn run(target: &Target, users: &[AuthResponse], config: &StreamsConfig) -> anyhow::Result<StreamsReport> {
    anyhow::ensure!(!users.is_empty(), "no users to stream to");
    let endpoint = Endpoint::new(target).await?;
    let tokens: Vec<String> = users.iter().cycle().take(config.streams).map(|u| u.token.clone()).collect();
    let chat = ChatConfig {
        users: tokens.len(),
        sessions: 1,
        messages: config.replies,
        think_ms: 0,
        ramp_secs: 1.0,
        content: config.content.clone(),
        reply_timeout_secs: 60,
    };
    let (alone, _, _, alone_secs) = drive(&endpoint, &tokens, &chat, false).await;

    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let searchers: Vec<_> = (0..config.searchers)
        .map(|i| {
            let (stop, http, url) = (stop.clone(), http.clone(), format!("{}/api/v1/chat/search", target.server));
            let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
            tokio::spawn(search_until(stop, http, url, tokens, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)))
        })
        .collect();
    // The searches get going before the streams start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (beside, _, _, beside_secs) = drive(&endpoint, &tokens, &chat, false).await;
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut refused) = (Samples::default(), (0, 0, 0));
    for searcher in searchers {
        let (took, (busy, limited, failed)) = searcher.await?;
        answered.merge(took);
        refused = (refused.0 + busy, refused.1 + limited, refused.2 + failed);
    }
    Ok(StreamsReport {
        config: config.clone(),
        alone: alone.replies(alone_secs),
        alone_errors: alone.errors,
        beside: beside.replies(beside_secs),
        beside_errors: beside.errors,
        searches: answered.summary(),
        searches_refused: refused,
    })
}

/// How long a searcher waits after a refusal.
const BACK_OFF: Duration = Duration::from_millis(200);

/// One searcher: common words (the costliest searches), as different users, until `stop`;
/// the time of each answered search, and the refusals (busy, rate-limited, failed).
async fn search_until(
    stop: Arc<AtomicBool>,
    http: reqwest::Client,
    url: String,
    tokens: Vec<String>,
    seed: u64,
) -> (Samples, (u64, u64, u64)) {
    let mut rng = Rng(seed);
    let (mut took, mut refused) = (Samples::default(), (0, 0, 0));
    while !stop.load(Ordering::Relaxed) {
        let token = &tokens[(rng.next() % tokens.len() as u64) as usize];
        let query = if rng.next().is_multiple_of(2) {
            word((rng.next() % 8) as usize)
        } else {
            (0..3).map(|_| word((rng.next() % 30) as usize)).collect::<Vec<_>>().join(" ")
        };
        let started = Instant::now();
        let refusals = match http.get(&url).query(&[("q", query.as_str())]).bearer_auth(token).send().await {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
                took.record(started.elapsed());
                continue;
            }
            Ok(r) if r.status() == 503 => &mut refused.0,
            Ok(r) if r.status() == 429 => &mut refused.1,
            _ => &mut refused.2,
        };
        *refusals += 1;
        // Refused: back off as a client would, so refusals do not become the load.
        tokio::time::sleep(BACK_OFF).await;
    }
    (took, refused)
}
