//! `compare`: what the server adds to time to first token. Rounds alternate (ABBA) between
//! `direct` (the model alone) and `chat` through the server (one message per session), with
//! the same number of concurrent streams against the same model, then the two TTFT
//! distributions are compared.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::chat::{self, ChatConfig};
use super::direct::{self, DirectConfig};
use super::{Measured, Replies};
use crate::report::{latency_rows, line};
use crate::{Endpoint, Errors, ServerFigures, Summary, Target};

/// What the `compare` scenario does.
#[derive(Clone, Debug, Serialize)]
pub struct CompareConfig {
    /// Concurrent streams in each round, direct and through the server alike.
    pub streams: usize,
    /// Rounds; each runs a direct phase and a server phase (in alternating order).
    pub rounds: usize,
    /// The message text.
    pub content: String,
    /// Longest wait for a reply (s).
    pub reply_timeout_secs: u64,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig { streams: 10, rounds: 4, content: super::DEFAULT_CONTENT.into(), reply_timeout_secs: 60 }
    }
}

/// Server TTFT minus (and over) direct TTFT, at three percentiles.
#[derive(Clone, Debug, Serialize)]
pub struct Added {
    /// p50 difference (ms).
    pub p50_ms: f64,
    /// p90 difference (ms).
    pub p90_ms: f64,
    /// p99 difference (ms).
    pub p99_ms: f64,
    /// p50 ratio, server over direct.
    pub p50_ratio: f64,
    /// p90 ratio.
    pub p90_ratio: f64,
    /// p99 ratio.
    pub p99_ratio: f64,
}

impl Added {
    pub(crate) fn between(direct: &Summary, server: &Summary) -> Added {
        let ratio = |s: f64, d: f64| if d > 0.0 { s / d } else { 0.0 };
        Added {
            p50_ms: server.p50_ms - direct.p50_ms,
            p90_ms: server.p90_ms - direct.p90_ms,
            p99_ms: server.p99_ms - direct.p99_ms,
            p50_ratio: ratio(server.p50_ms, direct.p50_ms),
            p90_ratio: ratio(server.p90_ms, direct.p90_ms),
            p99_ratio: ratio(server.p99_ms, direct.p99_ms),
        }
    }
}

/// The figures of a `compare` run.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// What ran.
    pub config: CompareConfig,
    /// The model's base URL used by the direct phases.
    pub upstream: String,
    /// The model alone, over every direct phase.
    pub direct: Replies,
    /// Through the server, over every server phase.
    pub via_server: Replies,
    /// What the server adds to TTFT.
    pub added_ttft: Added,
    /// Errors by code, both kinds of phase.
    pub errors: Errors,
    /// The server process, when its pid is known.
    pub server: Option<ServerFigures>,
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "compare: {} rounds of {} concurrent streams, direct vs through the server", c.rounds, c.streams)?;
        latency_rows(
            f,
            &[
                ("TTFT direct", &self.direct.ttft),
                ("TTFT via server", &self.via_server.ttft),
                ("delivery direct", &self.direct.delivery),
                ("delivery via server", &self.via_server.delivery),
                ("inter-delta gap direct", &self.direct.delta_gap),
                ("inter-delta gap via server", &self.via_server.delta_gap),
            ],
        )?;
        let a = &self.added_ttft;
        line(
            f,
            "server adds to TTFT",
            format!(
                "p50 {:+.2} ms (×{:.2}), p90 {:+.2} ms (×{:.2}), p99 {:+.2} ms (×{:.2})",
                a.p50_ms, a.p50_ratio, a.p90_ms, a.p90_ratio, a.p99_ms, a.p99_ratio
            ),
        )?;
        line(f, "replies direct / server", format!("{} / {}", self.direct.completed, self.via_server.completed))?;
        line(f, "errors", &self.errors)?;
        if let Some(server) = &self.server {
            server.write(f)?;
        }
        Ok(())
    }
}

/// Registers one user per stream, then runs the rounds.
pub async fn run(target: &Target, upstream: &str, config: &CompareConfig) -> anyhow::Result<CompareReport> {
    let endpoint = Endpoint::new(target).await?;
    let (tokens, mut errors) = endpoint.register_many(config.streams).await;
    let monitor = target.monitor();
    let direct_config = DirectConfig {
        streams: config.streams,
        requests: 1,
        content: config.content.clone(),
        reply_timeout_secs: config.reply_timeout_secs,
    };
    let chat_config = ChatConfig {
        users: config.streams,
        sessions: 1,
        messages: 1,
        think_ms: 0,
        ramp_secs: 0.0,
        content: config.content.clone(),
        reply_timeout_secs: config.reply_timeout_secs,
    };
    let (mut direct, mut via_server) = (Measured::default(), Measured::default());
    let (mut direct_secs, mut server_secs) = (0.0, 0.0);
    for round in 0..config.rounds {
        for server_phase in [round % 2 == 1, round % 2 == 0] {
            if server_phase {
                let (m, _, _, secs) = chat::drive(&endpoint, &tokens, &chat_config, target.progress).await;
                via_server.merge(m);
                server_secs += secs;
            } else {
                let (m, secs) = direct::drive(upstream, &direct_config, target.progress).await?;
                direct.merge(m);
                direct_secs += secs;
            }
        }
    }
    let server = match monitor {
        Some(m) => Some(m.finish(Duration::from_secs(target.settle_secs)).await),
        None => None,
    };
    errors.merge(direct.errors.clone());
    errors.merge(via_server.errors.clone());
    let (direct, via_server) = (direct.replies(direct_secs), via_server.replies(server_secs));
    Ok(CompareReport {
        config: config.clone(),
        upstream: upstream.into(),
        added_ttft: Added::between(&direct.ttft, &via_server.ttft),
        direct,
        via_server,
        errors,
        server,
    })
}
