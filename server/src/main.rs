//! The `relay-server` binary: sets up logging, loads the configuration, serves until
//! Ctrl-C or SIGTERM, then shuts down gracefully.

use std::io::IsTerminal;

use relay_server::{Config, Server, app};
use tracing_subscriber::EnvFilter;

// mimalloc hands freed memory back to the system soon after a load peak, where glibc's
// per-thread arenas keep it (see BENCHMARKS.md); `--no-default-features` goes back to glibc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,relay_server=info"));
    // Logs go to stderr: as text (colored on a terminal), or with `LOG_FORMAT=json` one JSON
    // object per line, spans (session and user ids) included, for log collectors.
    match std::env::var("LOG_FORMAT").unwrap_or_default().trim() {
        "" | "text" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        "json" => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        other => {
            eprintln!("relay-server: invalid configuration: LOG_FORMAT: expected text or json, got {other:?}");
            std::process::exit(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relay-server: {e}");
            std::process::exit(2);
        }
    };
    match raise_open_files_limit() {
        Some(limit) => tracing::info!(limit, "open files limit"),
        None => tracing::warn!("could not read or raise the open files limit"),
    }
    #[cfg(feature = "profile")]
    let profiler = profile::start();
    // Errors are printed here rather than by returning them: a library's error may echo
    // a secret it was given, and this is the last place that knows them all to scrub.
    let redact = {
        let config = config.clone();
        move |error: &anyhow::Error| config.redact(&format!("{error:#}"))
    };
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %redact(&e), "relay-server could not start");
            std::process::exit(1);
        }
    };
    app::shutdown_signal().await;
    let result = server.shutdown().await;
    #[cfg(feature = "profile")]
    profile::finish(profiler);
    if let Err(e) = result {
        tracing::error!(error = %redact(&e), "shutdown failed");
        std::process::exit(1);
    }
    Ok(())
}

/// CPU profiling in process: `perf` gets no samples on some machines, a SIGPROF sampler does.
#[cfg(feature = "profile")]
mod profile {
    use std::fmt::Write as _;

    /// Starts sampling at 999 Hz when `RELAY_PROFILE_FILE` names a file.
    pub fn start() -> Option<(pprof::ProfilerGuard<'static>, String)> {
        let path = std::env::var("RELAY_PROFILE_FILE").ok().filter(|p| !p.is_empty())?;
        match pprof::ProfilerGuardBuilder::default()
            .frequency(999)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
        {
            Ok(guard) => {
                tracing::warn!(%path, "CPU profiling on; folded stacks are written at exit");
                Some((guard, path))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the CPU profiler");
                None
            }
        }
    }

    /// Writes the samples as folded stacks (`frame;frame;... count`, for flamegraph tools).
    pub fn finish(profiler: Option<(pprof::ProfilerGuard<'static>, String)>) {
        let Some((guard, path)) = profiler else { return };
        let report = match guard.report().build() {
            Ok(report) => report,
            Err(e) => return tracing::error!(error = %e, "cannot build the CPU profile"),
        };
        let mut out = String::new();
        for (frames, count) in &report.data {
            let mut names = vec![frames.thread_name.clone()];
            names.extend(frames.frames.iter().rev().flat_map(|symbols| symbols.iter().rev().map(|s| s.name())));
            let _ = writeln!(out, "{} {count}", names.join(";"));
        }
        match std::fs::write(&path, out) {
            Ok(()) => tracing::info!(%path, "CPU profile written"),
            Err(e) => tracing::error!(%path, error = %e, "cannot write the CPU profile"),
        }
    }
}

/// Raises this process's open-files limit to the most the system allows: every WebSocket
/// is a file descriptor, and the usual soft limit of 1,024 would cap the connections.
/// Returns the limit now in force.
fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}
