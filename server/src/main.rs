//! The `relay-server` binary: sets up logging, loads the configuration, serves until
//! Ctrl-C or SIGTERM, then shuts down gracefully.

use std::io::IsTerminal;

use relay_server::{Config, Server, app};
use tracing_subscriber::EnvFilter;

// mimalloc hands most freed memory back to the system after a load peak, where glibc's
// per-thread arenas keep it; what mimalloc still keeps is measured in BENCHMARKS.md ("Memory
// after a load"). `--no-default-features` goes back to glibc.
#[cfg(all(feature = "mimalloc", not(feature = "heap-stats")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
// `heap-stats` counts what the program holds, around whichever allocator is chosen.
#[cfg(all(feature = "mimalloc", feature = "heap-stats"))]
#[global_allocator]
static ALLOCATOR: relay_server::heap_stats::Counting<mimalloc::MiMalloc> =
    relay_server::heap_stats::Counting(mimalloc::MiMalloc);
#[cfg(all(not(feature = "mimalloc"), feature = "heap-stats"))]
#[global_allocator]
static ALLOCATOR: relay_server::heap_stats::Counting<std::alloc::System> =
    relay_server::heap_stats::Counting(std::alloc::System);

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads start allocating, so none of their memory is in huge pages.
    no_transparent_huge_pages();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(relay_server::idle_memory::thread_going_idle)
        .build()?
        .block_on(serve())
}

/// Logging, configuration, then the server until Ctrl-C or SIGTERM.
async fn serve() -> anyhow::Result<()> {
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["create-admin", name] => create_admin(&config, name).await,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
    match raise_open_files_limit() {
        Some(limit) => tracing::info!(limit, "open files limit"),
        None => tracing::warn!("could not read or raise the open files limit"),
    }
    #[cfg(feature = "profile")]
    let profiler = profile::start();
    #[cfg(feature = "heap-stats")]
    relay_server::heap_stats::report_from_env();
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
    // Held past the shutdown, which closes the database: when the embedded engine's last
    // handle goes, it shuts its datastore down again, logging errors about the store it
    // finds closed. The process exits below, which drops nothing.
    let _last_handle = server.state.store.clone();
    let result = server.shutdown().await;
    #[cfg(feature = "profile")]
    profile::finish(profiler);
    if let Err(e) = result {
        tracing::error!(error = %redact(&e), "shutdown failed");
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// What the binary takes.
const USAGE: &str = "usage: relay-server                     serve (configured by environment variables; see README)
       relay-server create-admin <name>  create the account <name>, listed in CHAT_ADMIN_USERS,
                                         with the password read from stdin";

/// `relay-server create-admin <name>`: creates the admin account, its password read from
/// the first line of stdin (not echoed on a terminal), and exits: 0 when created, 2 for a
/// usage error (a name not listed in `CHAT_ADMIN_USERS`, a name or password breaking the
/// rules), 1 when the database fails or the account exists already.
async fn create_admin(config: &Config, name: &str) -> ! {
    let password = match read_password() {
        Ok(password) => password,
        Err(e) => {
            eprintln!("relay-server: create-admin: cannot read the password from stdin: {e}");
            std::process::exit(2);
        }
    };
    // The closed database's handle is held until the exit (see `accounts::create_admin`).
    let (created, _closed_store) = relay_server::accounts::create_admin(config, name, password).await;
    let code = match created {
        Ok(()) => {
            eprintln!("relay-server: created the admin account {name:?}");
            0
        }
        Err(e) => {
            eprintln!("relay-server: create-admin: {}", config.redact(&e.to_string()));
            if e.is_usage() { 2 } else { 1 }
        }
    };
    std::process::exit(code)
}

/// The first line of stdin, without its line ending; on a terminal, asked for and read
/// without echo.
fn read_password() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let mut saved = None;
    if terminal {
        eprint!("Password for the admin account: ");
        saved = echo_off();
    }
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Some(saved) = saved {
        // SAFETY: restores the terminal settings read from the same descriptor by echo_off.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns the terminal's echo off; the settings before, to restore.
fn echo_off() -> Option<libc::termios> {
    // SAFETY: tcgetattr and tcsetattr only read and write the struct passed to them.
    unsafe {
        let mut settings: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut settings) != 0 {
            return None;
        }
        let saved = settings;
        settings.c_lflag &= !libc::ECHO;
        (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &settings) == 0).then_some(saved)
    }
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

/// Turns transparent huge pages off for this process. mimalloc asks the kernel for them on
/// its arenas (`madvise`), and a 2 MiB page stays resident while any 4 KiB of it is in use:
/// in one pair of runs, two minutes after a burst of 1,000 sends the server kept 45–67 MiB
/// more resident with them (BENCHMARKS.md, "Memory after a load").
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; it takes no pointers, and
    // the unused arguments are passed as the zero longs the kernel requires.
    if unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } != 0
    {
        eprintln!("relay-server: could not turn transparent huge pages off; memory after a load may stay higher");
    }
}
