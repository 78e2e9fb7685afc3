//! relay-loadtest: a WebSocket load generator and benchmark for the relay-chat server.
//!
//! Each scenario is an async function taking a config and returning a report
//! ([`serde::Serialize`] for `--json`, [`std::fmt::Display`] for the table):
//!
//! - [`scenarios::chat`]: users chatting, each on one WebSocket carrying several sessions;
//! - [`scenarios::tabs`]: sessions watched by several tabs of one user, and the skew between them;
//! - [`scenarios::idle`]: many authenticated idle connections, and the server's memory per connection;
//! - [`scenarios::direct`]: the model (OpenAI SSE) without the server, as a baseline;
//! - [`scenarios::compare`]: `direct` and `chat` interleaved, and the TTFT the server adds.
//!
//! Every frame and REST body is a [`relay_protocol`] type. With a stamping mock model
//! ([`relay_mock_llm::MockSettings::stamp`]) every delta carries the time its tokens left
//! the model, so each delta's delivery latency is measured too.

#![warn(missing_docs)]

pub mod client;
pub mod report;
pub mod scenarios;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use client::{Endpoint, Error};
pub use report::{Errors, Samples, Summary};
pub use server::{Monitor, ServerFigures, SpawnOptions, SpawnedServer};

/// The server under load and how to reach it, shared by every scenario but `direct`.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// Base URL of the server, `http://host:port`.
    pub server: String,
    /// The server's process id, to sample its memory and CPU from `/proc` (same machine only).
    pub pid: Option<u32>,
    /// Client sockets are spread over `127.0.0.1` … `127.0.0.N` (loopback servers only), so
    /// one address's ephemeral ports do not cap the connection count.
    pub source_ips: u8,
    /// Seconds to wait after the load before the last memory sample (memory after load).
    pub settle_secs: u64,
    /// Print a progress line every second (to stderr) on runs longer than a few seconds.
    pub progress: bool,
}

impl Target {
    /// A target at `server` with no process to sample, one source address and no progress.
    pub fn new(server: impl Into<String>) -> Self {
        Target { server: server.into(), pid: None, source_ips: 1, settle_secs: 0, progress: false }
    }

    /// Starts sampling the server process, if its pid is known.
    pub(crate) fn monitor(&self) -> Option<Monitor> {
        self.pid.and_then(|pid| Monitor::start(pid).map_err(|e| eprintln!("cannot sample pid {pid}: {e}")).ok())
    }
}

/// Live counters of a run, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    /// Open, authenticated connections.
    pub connections: AtomicI64,
    /// Replies (or upstream streams) in progress.
    pub streams: AtomicI64,
    /// Deltas received so far.
    pub deltas: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

impl Live {
    /// Adds `n` (may be negative) to a gauge.
    pub(crate) fn add(gauge: &AtomicI64, n: i64) {
        gauge.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one more event.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints the progress line each second while alive (from the third second on, so short
/// runs stay quiet); dropping it stops.
pub(crate) struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    /// Starts printing `live` if `enabled`.
    pub(crate) fn start(live: &Arc<Live>, enabled: bool) -> Progress {
        if !enabled {
            return Progress(None);
        }
        let live = live.clone();
        Progress(Some(tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = (0, start);
            loop {
                tick.tick().await;
                let (deltas, now) = (live.deltas.load(Ordering::Relaxed), Instant::now());
                let rate = (deltas - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-3);
                last = (deltas, now);
                if start.elapsed() >= Duration::from_millis(2500) {
                    eprintln!(
                        "{:>6.1}s  connections {:>6}  streams {:>5}  deltas/s {:>8.0}  errors {}",
                        start.elapsed().as_secs_f64(),
                        live.connections.load(Ordering::Relaxed),
                        live.streams.load(Ordering::Relaxed),
                        rate,
                        live.errors.load(Ordering::Relaxed),
                    );
                }
            }
        })))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Raises this process's open-file soft limit to its hard limit (many sockets), returning
/// the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}
