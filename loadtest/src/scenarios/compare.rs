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
use crate::server::Monitor;
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
    fn between(direct: &Summary, server: &Summary) -> Added {
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

impl Added {
    /// Writes the report line.
    pub(crate) fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        line(
            f,
            "server adds to TTFT",
            format!(
                "p50 {:+.2} ms (×{:.2}), p90 {:+.2} ms (×{:.2}), p99 {:+.2} ms (×{:.2})",
                self.p50_ms, self.p50_ratio, self.p90_ms, self.p90_ratio, self.p99_ms, self.p99_ratio
            ),
        )
    }
}

/// Direct and server phases run in alternating rounds (ABBA), with what each server phase
/// measured besides its replies.
pub(crate) struct Rounds<T> {
    direct: Measured,
    direct_secs: f64,
    via_server: Measured,
    server_secs: f64,
    /// What each server phase returned besides its measurements, in order.
    pub(crate) extras: Vec<T>,
}

/// What [`Rounds`] come to.
pub(crate) struct Compared {
    pub(crate) direct: Replies,
    pub(crate) via_server: Replies,
    pub(crate) added_ttft: Added,
    pub(crate) errors: Errors,
    pub(crate) server: Option<ServerFigures>,
}

impl<T> Rounds<T> {
    /// Runs `rounds` rounds of one direct phase (`direct_config` against `upstream`) and one
    /// `server_phase` (its measurements, its length in seconds, and anything else), in
    /// alternating order.
    pub(crate) async fn run<F, Fut>(
        rounds: usize,
        upstream: &str,
        direct_config: &DirectConfig,
        progress: bool,
        mut server_phase: F,
    ) -> anyhow::Result<Rounds<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = (Measured, f64, T)>,
    {
        let mut all = Rounds {
            direct: Measured::default(),
            direct_secs: 0.0,
            via_server: Measured::default(),
            server_secs: 0.0,
            extras: Vec::new(),
        };
        for round in 0..rounds {
            for server in [round % 2 == 1, round % 2 == 0] {
                if server {
                    let (m, secs, extra) = server_phase().await;
                    all.via_server.merge(m);
                    all.server_secs += secs;
                    all.extras.push(extra);
                } else {
                    let (m, secs) = direct::drive(upstream, direct_config, progress).await?;
                    all.direct.merge(m);
                    all.direct_secs += secs;
                }
            }
        }
        Ok(all)
    }

    /// The two paths' figures side by side, with `errors` from before the rounds and the
    /// server's figures once `monitor` has watched it settle.
    pub(crate) async fn compare(&self, mut errors: Errors, monitor: Option<Monitor>, target: &Target) -> Compared {
        let server = match monitor {
            Some(m) => Some(m.finish(Duration::from_secs(target.settle_secs)).await),
            None => None,
        };
        errors.merge(self.direct.errors.clone());
        errors.merge(self.via_server.errors.clone());
        let (direct, via_server) = (self.direct.replies(self.direct_secs), self.via_server.replies(self.server_secs));
        Compared { added_ttft: Added::between(&direct.ttft, &via_server.ttft), direct, via_server, errors, server }
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
        self.added_ttft.write(f)?;
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
    let (tokens, errors) = endpoint.register_many(config.streams).await;
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
    let rounds = Rounds::run(config.rounds, upstream, &direct_config, target.progress, || async {
        let (m, _, _, secs) = chat::drive(&endpoint, &tokens, &chat_config, target.progress).await;
        (m, secs, ())
    })
    .await?;
    let Compared { direct, via_server, added_ttft, errors, server } = rounds.compare(errors, monitor, target).await;
    Ok(CompareReport {
        config: config.clone(),
        upstream: upstream.into(),
        added_ttft,
        direct,
        via_server,
        errors,
        server,
    })
}
