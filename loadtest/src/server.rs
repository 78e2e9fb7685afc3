//! The server process: starting a `relay-server` binary for a run, and sampling a server's
//! memory and CPU from `/proc` every second.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::report::line;

/// How long a spawned server may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start a `relay-server` binary.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// The `relay-server` binary.
    pub binary: PathBuf,
    /// `mem://`, `surrealkv` (embedded on disk, in a temporary directory) or a `ws://` URL.
    pub database: String,
    /// The model's OpenAI base URL (`SAMBANOVA_API_BASE`), e.g. the mock's `http://127.0.0.1:PORT/v1`.
    pub upstream: String,
    /// More environment for the server (`KEY=VALUE`), set last so it overrides the defaults.
    pub env: Vec<(String, String)>,
}

/// A `relay-server` process started for a run; stopped (SIGTERM, then SIGKILL) by
/// [`SpawnedServer::stop`] or, as a last resort, when dropped.
#[derive(Debug)]
pub struct SpawnedServer {
    child: tokio::process::Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its process id.
    pub pid: u32,
    _data_dir: tempfile::TempDir,
}

impl SpawnedServer {
    /// Starts the server on a free loopback port with load-test settings (no send rate or
    /// quota, many registrations and connections per user, `RUST_LOG=warn`) and waits
    /// until `GET /readyz` answers 200.
    pub async fn start(options: &SpawnOptions) -> anyhow::Result<SpawnedServer> {
        SpawnedServer::start_in(options, tempfile::Builder::new().prefix("relay-loadtest-").tempdir()?).await
    }

    /// Starts the server as [`SpawnedServer::start`] does, with its data in `data_dir` (one
    /// a stopped server left, from [`SpawnedServer::stop_keeping_data`]).
    pub async fn start_in(options: &SpawnOptions, data_dir: tempfile::TempDir) -> anyhow::Result<SpawnedServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = tokio::process::Command::new(&options.binary);
        cmd.env_remove("DATABASE_URL")
            .env_remove("LLM_MOCK")
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("RELAY_DATA_DIR", data_dir.path())
            .env("SAMBANOVA_API_KEY", "loadtest")
            .env("SAMBANOVA_API_BASE", &options.upstream)
            .env("JWT_SECRET", "relay-loadtest-secret-0123456789abcdef")
            .env("CHAT_RATE_LIMIT_PER_MINUTE", "0")
            .env("CHAT_DAILY_MESSAGE_QUOTA", "0")
            .env("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR", "1000000")
            .env("WS_MAX_CONNECTIONS_PER_USER", "1000000")
            // Every load socket comes from a few loopback addresses.
            .env("HTTP_MAX_CONNECTIONS_PER_ADDRESS", "0")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        match options.database.as_str() {
            "surrealkv" | "surrealkv://" => {}
            url => {
                cmd.env("DATABASE_URL", url);
            }
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", options.binary.display()))?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("the server exited at once"))?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the server exited before it was ready: {status}");
            }
            let ready = http.get(format!("{url}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the server was not ready within {READY_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(SpawnedServer { child, url, pid, _data_dir: data_dir })
    }

    /// The directory of its data (`RELAY_DATA_DIR`; the embedded database is `relay.db` in it).
    pub fn data_dir(&self) -> &std::path::Path {
        self._data_dir.path()
    }

    /// Stops the server as [`SpawnedServer::stop`] does, and hands back its data directory.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        self.terminate().await;
        let empty = tempfile::Builder::new().prefix("relay-loadtest-").tempdir().expect("a temporary directory");
        std::mem::replace(&mut self._data_dir, empty)
    }

    /// Stops the server: SIGTERM (graceful shutdown), then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        self.terminate().await;
    }

    async fn terminate(&mut self) {
        // SAFETY: sends a signal to our own child, whose pid we hold and have not reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// What the server process used during a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerFigures {
    /// Resident memory when the measurement started, before any load (bytes).
    pub rss_before_bytes: u64,
    /// Highest resident memory sampled during the load (bytes).
    pub rss_peak_bytes: u64,
    /// Resident memory when the load ended (bytes).
    pub rss_end_bytes: u64,
    /// Resident memory after the settle wait, once the load's connections are gone (bytes).
    pub rss_settled_bytes: Option<u64>,
    /// CPU used over the load, in percent of one core.
    pub cpu_avg_pct: f64,
    /// CPU time used over the load (s): the server's and, embedded, its database's.
    pub cpu_secs: f64,
    /// Highest one-second CPU sample, in percent of one core.
    pub cpu_peak_pct: f64,
}

impl ServerFigures {
    /// Writes the figures as table lines.
    pub(crate) fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
        line(f, "server RSS before", mib(self.rss_before_bytes))?;
        line(f, "server RSS peak", mib(self.rss_peak_bytes))?;
        line(f, "server RSS at end", mib(self.rss_end_bytes))?;
        if let Some(settled) = self.rss_settled_bytes {
            line(f, "server RSS after settle", mib(settled))?;
        }
        line(f, "server CPU avg / peak", format!("{:.0}% / {:.0}% of a core", self.cpu_avg_pct, self.cpu_peak_pct))
    }
}

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: Instant,
    rss: u64,
    cpu_ticks: u64,
}

impl Reading {
    /// Reads `/proc/PID/status` (VmRSS) and `/proc/PID/stat` (utime + stime).
    fn take(pid: u32) -> std::io::Result<Reading> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces): state is the first, utime
        // the 12th and stime the 13th.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Reading { at: Instant::now(), rss, cpu_ticks: tick(11) + tick(12) })
    }
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU percent of one core between two readings.
fn cpu_pct(a: &Reading, b: &Reading) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 { 0.0 } else { b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / ticks_per_sec() / secs * 100.0 }
}

#[derive(Debug)]
struct MonitorState {
    first: Reading,
    last: Reading,
    end: Option<Reading>,
    rss_peak: u64,
    cpu_peak: f64,
}

/// Samples a process each second from the moment it starts (the "before" reading) until
/// [`Monitor::end_load`]; [`Monitor::finish`] then gives the figures.
#[derive(Debug)]
pub struct Monitor {
    pid: u32,
    state: Arc<Mutex<MonitorState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Takes the first reading and starts sampling.
    pub fn start(pid: u32) -> std::io::Result<Monitor> {
        let first = Reading::take(pid)?;
        let state =
            Arc::new(Mutex::new(MonitorState { first, last: first, end: None, rss_peak: first.rss, cpu_peak: 0.0 }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Ok(now) = Reading::take(pid) else { return };
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                if s.end.is_some() {
                    return;
                }
                s.cpu_peak = s.cpu_peak.max(cpu_pct(&s.last, &now));
                s.rss_peak = s.rss_peak.max(now.rss);
                s.last = now;
            }
        });
        Ok(Monitor { pid, state, task })
    }

    /// The process's resident memory now, in bytes.
    pub fn rss_now(&self) -> Option<u64> {
        Reading::take(self.pid).ok().map(|r| r.rss)
    }

    /// Marks the end of the load: the "end" reading, and the CPU average up to now.
    pub fn end_load(&self) {
        let now = Reading::take(self.pid).ok();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.end.is_none() {
            let end = now.unwrap_or(s.last);
            s.rss_peak = s.rss_peak.max(end.rss);
            if end.at.duration_since(s.last.at) >= Duration::from_millis(500) {
                s.cpu_peak = s.cpu_peak.max(cpu_pct(&s.last, &end));
            }
            s.end = Some(end);
        }
    }

    /// Ends the load if not yet done, waits `settle` and takes the settled reading.
    pub async fn finish(self, settle: Duration) -> ServerFigures {
        self.end_load();
        self.task.abort();
        let settled = if settle.is_zero() {
            None
        } else {
            tokio::time::sleep(settle).await;
            self.rss_now()
        };
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let end = s.end.unwrap_or(s.last);
        ServerFigures {
            rss_before_bytes: s.first.rss,
            rss_peak_bytes: s.rss_peak,
            rss_end_bytes: end.rss,
            rss_settled_bytes: settled,
            cpu_avg_pct: cpu_pct(&s.first, &end),
            cpu_secs: end.cpu_ticks.saturating_sub(s.first.cpu_ticks) as f64 / ticks_per_sec(),
            cpu_peak_pct: s.cpu_peak,
        }
    }
}
