//! The scenarios, and the reply measurements they share.

pub mod burst;
pub mod chat;
pub mod compare;
pub mod direct;
pub mod idle;
pub mod search;
pub mod search_streams;
pub mod tabs;
mod words;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_mock_llm::{parse_stamps, unix_micros_now};
use serde::Serialize;

use crate::report::{latency_rows, line, rate};
use crate::{Errors, Live, Samples, Summary};

/// The default message text.
pub const DEFAULT_CONTENT: &str = "Hello from relay-loadtest";

/// A reply being received: when it was asked for and when its last delta came.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reply {
    sent_at: Instant,
    last_delta: Option<Instant>,
}

impl Reply {
    /// A reply asked for now.
    pub(crate) fn new() -> Reply {
        Reply { sent_at: Instant::now(), last_delta: None }
    }
}

/// What the replies of a run measured, before summarising.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// Send to first delta.
    pub ttft: Samples,
    /// Between two deltas of one reply.
    pub gap: Samples,
    /// Stamp in a delta to its arrival.
    pub delivery: Samples,
    /// Deltas received.
    pub deltas: u64,
    /// Replies that ended `stop` or `length`.
    pub completed: u64,
    /// Everything that went wrong.
    pub errors: Errors,
}

impl Measured {
    /// Records a delta of `reply` (if one is awaited; `None` only counts it) that arrived
    /// `at` carrying `text`.
    pub(crate) fn delta(&mut self, reply: Option<&mut Reply>, at: Instant, text: &str, live: &Live) {
        let wall = unix_micros_now();
        self.deltas += 1;
        Live::bump(&live.deltas);
        for stamp in parse_stamps(text) {
            self.delivery.record_micros(wall.saturating_sub(stamp));
        }
        if let Some(reply) = reply {
            match reply.last_delta {
                None => self.ttft.record(at.duration_since(reply.sent_at)),
                Some(last) => self.gap.record(at.duration_since(last)),
            }
            reply.last_delta = Some(at);
        }
    }

    /// Counts an error.
    pub(crate) fn error(&mut self, key: impl Into<String>, live: &Live) {
        self.errors.add(key);
        Live::bump(&live.errors);
    }

    /// Adds another task's measurements.
    pub(crate) fn merge(&mut self, other: Measured) {
        self.ttft.merge(other.ttft);
        self.gap.merge(other.gap);
        self.delivery.merge(other.delivery);
        self.deltas += other.deltas;
        self.completed += other.completed;
        self.errors.merge(other.errors);
    }

    /// The summary over a run of `secs` seconds.
    pub(crate) fn replies(&self, secs: f64) -> Replies {
        Replies {
            ttft: self.ttft.summary(),
            delta_gap: self.gap.summary(),
            delivery: self.delivery.summary(),
            deltas: self.deltas,
            deltas_per_sec: rate(self.deltas, secs),
            completed: self.completed,
        }
    }
}

/// The figures of streamed replies.
#[derive(Clone, Debug, Serialize)]
pub struct Replies {
    /// Time to first token: send to the reply's first delta.
    pub ttft: Summary,
    /// Time between two deltas of one reply.
    pub delta_gap: Summary,
    /// Delivery latency: a token's stamp (when the model sent it) to the delta's arrival;
    /// empty without a stamping model.
    pub delivery: Summary,
    /// Deltas received.
    pub deltas: u64,
    /// Deltas received per second of the run.
    pub deltas_per_sec: f64,
    /// Replies that finished (`stop` or `length`).
    pub completed: u64,
}

impl Replies {
    /// Writes the reply lines, with `extra` latency rows after the reply latencies.
    pub(crate) fn write(&self, f: &mut fmt::Formatter<'_>, extra: &[(&str, &Summary)]) -> fmt::Result {
        let mut rows =
            vec![("TTFT", &self.ttft), ("inter-delta gap", &self.delta_gap), ("delta delivery", &self.delivery)];
        rows.extend_from_slice(extra);
        latency_rows(f, &rows)?;
        line(f, "deltas", format!("{} ({:.0}/s)", self.deltas, self.deltas_per_sec))?;
        line(f, "replies completed", self.completed)
    }
}

/// Runs `n` tasks made by `task(i)` at once and collects their results (a panicked task
/// is counted as an error by the caller's `on_panic`).
pub(crate) async fn join_all<T, F>(n: usize, task: impl Fn(usize) -> F) -> Vec<Result<T, tokio::task::JoinError>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(task(i))).collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await);
    }
    out
}

/// A fresh live counter set with its progress line.
pub(crate) fn live(progress: bool) -> (Arc<Live>, crate::Progress) {
    let live = Arc::new(Live::default());
    let progress = crate::Progress::start(&live, progress);
    (live, progress)
}

/// Seconds since `start`.
pub(crate) fn secs_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Milliseconds as a duration.
pub(crate) fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
