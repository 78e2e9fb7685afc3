//! The `relay-loadtest` command line: picks a scenario, starts the mock model and the
//! server if asked, runs the load and prints the figures (a table, or JSON with `--json`).

use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relay_loadtest::scenarios::{burst, chat, compare, direct, idle, search, search_streams, tabs};
use relay_loadtest::{SpawnOptions, SpawnedServer, Target};
use relay_mock_llm::{MockLlm, MockSettings};
use serde::Serialize;

/// Load generator and benchmark for relay-chat over its WebSocket protocol.
#[derive(Debug, Parser)]
#[command(name = "relay-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
}

/// Options every scenario takes (before or after the scenario's name).
#[derive(Debug, Args)]
struct Common {
    /// The server's base URL (ignored with --spawn-server).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Start this relay-server binary for the run (on a free port, stopped at the end).
    #[arg(long, global = true, value_name = "PATH")]
    spawn_server: Option<PathBuf>,
    /// The spawned server's database: mem://, surrealkv (on disk in a temporary directory) or ws://host:port.
    #[arg(long, global = true, default_value = "mem://")]
    database: String,
    /// More environment for the spawned server (repeatable).
    #[arg(long = "server-env", global = true, value_name = "KEY=VALUE", value_parser = key_value)]
    server_env: Vec<(String, String)>,
    /// The server's pid, to sample its memory and CPU (known when spawned).
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// The model's OpenAI base URL (direct, compare, and the spawned server); default: a built-in mock.
    #[arg(long, global = true, value_name = "URL")]
    upstream: Option<String>,
    /// Built-in mock: delay before the first token (ms).
    #[arg(long, global = true, default_value_t = 50)]
    mock_first_token_ms: u64,
    /// Built-in mock: tokens per second (0 = as fast as possible).
    #[arg(long, global = true, default_value_t = 200.0)]
    mock_tps: f64,
    /// Built-in mock: tokens per reply.
    #[arg(long, global = true, default_value_t = 40)]
    mock_tokens: usize,
    /// Built-in mock: do not stamp tokens with their send time (no delivery latency then).
    #[arg(long, global = true)]
    no_stamp: bool,
    /// Spread client sockets over 127.0.0.1 … 127.0.0.N (loopback servers).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    source_ips: u8,
    /// Seconds to wait after the load before the last server memory sample.
    #[arg(long, global = true, default_value_t = 0)]
    settle_secs: u64,
    /// The message text (may carry a mock directive, e.g. "hi [[mock tokens=500]]").
    #[arg(long, global = true, default_value = relay_loadtest::scenarios::DEFAULT_CONTENT)]
    message: String,
    /// Longest silence allowed while a reply is awaited (s).
    #[arg(long, global = true, default_value_t = 60)]
    reply_timeout_secs: u64,
    /// Print one JSON object with every figure instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// Also write that JSON object to this file (the table still goes to stdout).
    #[arg(long, global = true, value_name = "PATH")]
    json_file: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Search within conversations: a database filled with stored messages (written
    /// straight into it), then searched by their users over REST. Needs --spawn-server with
    /// an on-disk database (surrealkv, the default here) or a ws:// SurrealDB.
    Search {
        /// Messages to store.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Users they belong to.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Sessions per user.
        #[arg(long, default_value_t = 20)]
        sessions: usize,
        /// Searches of each kind (one word, three words).
        #[arg(long, default_value_t = 500)]
        queries: usize,
        /// Words in the vocabulary.
        #[arg(long, default_value_t = 20_000)]
        vocabulary: usize,
        /// Then replies streamed to this many users, alone and again beside searches (0: not).
        #[arg(long, default_value_t = 50)]
        streams: usize,
        /// Searches kept running at once beside those streams.
        #[arg(long, default_value_t = 4)]
        searchers: usize,
        /// Rounds of the searches, one after another: the first straight after the fill,
        /// while the database still folds the full-text index's changes, the later ones
        /// after it. Each round is printed; the report holds the last.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Users chatting: each on one WebSocket with several sessions, a few messages each.
    Chat {
        /// Users (one connection each).
        #[arg(long, default_value_t = 10)]
        users: usize,
        /// Sessions per user.
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        /// Messages per session.
        #[arg(long, default_value_t = 3)]
        messages: usize,
        /// Pause between a reply's end and the next message (ms).
        #[arg(long, default_value_t = 500)]
        think_ms: u64,
        /// Start the users spread over this many seconds.
        #[arg(long, default_value_t = 0.0)]
        ramp_secs: f64,
    },
    /// Sessions watched by several tabs each: delivery to every tab and the skew between them.
    Tabs {
        /// Sessions (one user each).
        #[arg(long, default_value_t = 4)]
        sessions: usize,
        /// Tabs per session.
        #[arg(long, default_value_t = 3)]
        tabs: usize,
        /// Messages per session.
        #[arg(long, default_value_t = 3)]
        messages: usize,
        /// Pause between a reply's end and the next message (ms).
        #[arg(long, default_value_t = 200)]
        think_ms: u64,
        /// Another node of the same cluster (`http://host:port`): every other tab connects
        /// there, and delivery is reported for each node.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Many idle authenticated connections: connect latency and server memory per connection.
    Idle {
        /// Connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Connections per user (the server's WS_MAX_CONNECTIONS_PER_USER is 32 by default).
        #[arg(long, default_value_t = 32)]
        per_user: usize,
        /// Seconds to hold them once all are open.
        #[arg(long, default_value_t = 10.0)]
        hold_secs: f64,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        connect_concurrency: usize,
    },
    /// The model alone, no server: concurrent streaming completions.
    Direct {
        /// Concurrent streams.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Requests per stream, one after another.
        #[arg(long, default_value_t = 1)]
        requests: usize,
    },
    /// Everyone presses Enter at once: all connections open and all sessions created
    /// first, then every send released together; the TTFT the server adds, beside as many
    /// simultaneous requests straight to the model.
    Burst {
        /// Users (one connection each).
        #[arg(long, default_value_t = 10)]
        users: usize,
        /// Sessions per user, each sending once in the burst.
        #[arg(long, default_value_t = 10)]
        sessions: usize,
        /// Answer every session once before the burst (its actor running).
        #[arg(long)]
        warm: bool,
        /// Rounds (each one direct and one server burst).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Direct and through the server, interleaved: the TTFT the server adds.
    Compare {
        /// Concurrent streams per phase.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Rounds (each one direct and one server phase).
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
}

/// Parses `KEY=VALUE`.
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    match relay_loadtest::raise_fd_limit() {
        Ok(limit) if limit < 4096 => eprintln!("note: open files limited to {limit}"),
        Ok(_) => {}
        Err(e) => eprintln!("note: cannot raise the open files limit: {e}"),
    }
    let needs_model = matches!(cli.command, Command::Direct { .. } | Command::Compare { .. } | Command::Burst { .. })
        || c.spawn_server.is_some();
    let mock = match (&c.upstream, needs_model) {
        (None, true) => {
            let settings = MockSettings {
                first_token_delay: Duration::from_millis(c.mock_first_token_ms),
                tokens_per_second: c.mock_tps,
                reply_tokens: c.mock_tokens,
                stamp: !c.no_stamp,
                ..MockSettings::default()
            };
            Some(MockLlm::start(settings, "127.0.0.1:0".parse()?).await?)
        }
        _ => None,
    };
    let upstream = c.upstream.clone().or_else(|| mock.as_ref().map(MockLlm::base_url));
    if let Some(url) = &upstream {
        let what = if mock.is_some() { "built-in mock" } else { "given" };
        eprintln!("model: {what} {url}");
    }
    if matches!(cli.command, Command::Compare { .. } | Command::Burst { .. })
        && c.spawn_server.is_none()
        && c.upstream.is_none()
    {
        eprintln!(
            "note: the server answers from its own model; give it and --upstream the same model for a fair comparison"
        );
    }
    if let Command::Search { messages, users, sessions, queries, vocabulary, streams, searchers, rounds } = cli.command
    {
        let config = search::SearchConfig { messages, users, sessions_per_user: sessions, queries, vocabulary };
        let streams = (streams > 0).then(|| search_streams::StreamsConfig {
            streams,
            searchers,
            ..search_streams::StreamsConfig::default()
        });
        return search_scenario(c, upstream.clone().unwrap_or_default(), config, streams, rounds).await;
    }
    let spawned = match &c.spawn_server {
        Some(binary) => {
            let options = SpawnOptions {
                binary: binary.clone(),
                database: c.database.clone(),
                upstream: upstream.clone().unwrap_or_default(),
                env: c.server_env.clone(),
            };
            let server = SpawnedServer::start(&options).await?;
            eprintln!("server: spawned {} (pid {}, database {})", server.url, server.pid, c.database);
            Some(server)
        }
        None => None,
    };
    let target = Target {
        server: spawned.as_ref().map_or_else(|| c.server.clone(), |s| s.url.clone()),
        pid: spawned.as_ref().map(|s| s.pid).or(c.pid),
        source_ips: c.source_ips,
        settle_secs: c.settle_secs,
        progress: !c.quiet,
    };
    let result = scenario(&cli.command, c, &target, upstream.as_deref()).await;
    if let Some(server) = spawned {
        server.stop().await;
    }
    result
}

/// The `search` scenario: its users registered through a spawned server, its messages
/// written into that server's database (stopped meanwhile when it is embedded), then the
/// searches against the server started again on the filled database.
async fn search_scenario(
    c: &Common,
    upstream: String,
    config: search::SearchConfig,
    streams: Option<search_streams::StreamsConfig>,
    rounds: usize,
) -> anyhow::Result<()> {
    let Some(binary) = &c.spawn_server else {
        anyhow::bail!("search fills the server's database itself: give --spawn-server");
    };
    let remote = relay_server::store::is_server(&c.database);
    anyhow::ensure!(
        remote || c.database.starts_with("surrealkv"),
        "search needs a database that outlives the server: --database surrealkv or ws://…"
    );
    // The searches beside the streams run flat out as a few users: lift the per-user
    // allowance (unless given), so they measure searches, not refusals.
    let mut env = c.server_env.clone();
    if !env.iter().any(|(k, _)| k == "CHAT_SEARCHES_PER_MINUTE") {
        env.push(("CHAT_SEARCHES_PER_MINUTE".into(), "1000000".into()));
    }
    let options = SpawnOptions { binary: binary.clone(), database: c.database.clone(), upstream, env };
    let server = SpawnedServer::start(&options).await?;
    let target = |server: &SpawnedServer| Target {
        server: server.url.clone(),
        pid: Some(server.pid),
        source_ips: 1,
        settle_secs: 0,
        progress: !c.quiet,
    };
    let users = search::register(&target(&server), config.users).await?;
    let env = |key: &str| c.server_env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    const DEFAULT: relay_server::store::EmbeddedSizes = relay_server::store::EmbeddedSizes::DEFAULT;
    let mut database = relay_server::store::StoreConfig {
        url: c.database.clone(),
        credentials: env("DATABASE_USER").zip(env("DATABASE_PASS")),
        namespace: env("DATABASE_NS").unwrap_or_else(|| "relay".into()),
        database: env("DATABASE_DB").unwrap_or_else(|| "chat".into()),
        timeout: std::time::Duration::from_secs(600),
        embedded: relay_server::store::EmbeddedSizes {
            cache_bytes: env("DATABASE_CACHE_BYTES").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT.cache_bytes),
            memtable_bytes: env("DATABASE_MEMTABLE_BYTES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT.memtable_bytes),
        },
    };
    let server = if remote {
        let took = search::fill(&database, &users, &config, !c.quiet).await?;
        (server, took)
    } else {
        let dir = server.stop_keeping_data().await;
        database.url = format!("surrealkv://{}", dir.path().join("relay.db").display());
        let took = search::fill(&database, &users, &config, !c.quiet).await?;
        // The embedded database closes in the background after its last handle is dropped.
        search::wait_unlocked(&dir.path().join("relay.db").join("LOCK"), std::time::Duration::from_secs(60)).await?;
        (SpawnedServer::start_in(&options, dir).await?, took)
    };
    let (server, took) = server;
    eprintln!(
        "server: {} (pid {}, database {}), filled in {:.0} s",
        server.url,
        server.pid,
        c.database,
        took.as_secs_f64()
    );
    let started = std::time::Instant::now();
    let mut result = search::run(&target(&server), &users, &config, took).await;
    for round in 2..=rounds {
        if let Ok(report) = &result {
            let since = started.elapsed().as_secs_f64();
            eprintln!("round {} of {rounds} (ended {since:.0} s after the searches began):\n{report}", round - 1);
        }
        result = search::run(&target(&server), &users, &config, took).await;
    }
    let result = match (result, streams) {
        (Ok(mut report), Some(streams)) => {
            search_streams::run(&target(&server), &users, &streams).await.map(|streams| {
                report.streams = Some(streams);
                report
            })
        }
        (result, _) => result,
    };
    server.stop().await;
    emit("search", &result?, c)
}

/// Runs the chosen scenario and prints its report.
async fn scenario(command: &Command, c: &Common, target: &Target, upstream: Option<&str>) -> anyhow::Result<()> {
    let content = c.message.clone();
    let reply_timeout_secs = c.reply_timeout_secs;
    let upstream = || upstream.ok_or_else(|| anyhow::anyhow!("no model: give --upstream"));
    match *command {
        Command::Chat { users, sessions, messages, think_ms, ramp_secs } => {
            let config =
                chat::ChatConfig { users, sessions, messages, think_ms, ramp_secs, content, reply_timeout_secs };
            emit("chat", &chat::run(target, &config).await?, c)
        }
        Command::Tabs { sessions, tabs, messages, think_ms, ref peer } => {
            let config = tabs::TabsConfig {
                sessions,
                tabs,
                messages,
                think_ms,
                content,
                reply_timeout_secs,
                peer: peer.clone(),
            };
            emit("tabs", &tabs::run(target, &config).await?, c)
        }
        Command::Idle { connections, per_user, hold_secs, connect_concurrency } => {
            let config = idle::IdleConfig { connections, per_user, hold_secs, connect_concurrency };
            emit("idle", &idle::run(target, &config).await?, c)
        }
        Command::Direct { streams, requests } => {
            let config = direct::DirectConfig { streams, requests, content, reply_timeout_secs };
            emit("direct", &direct::run(upstream()?, &config, target.progress).await?, c)
        }
        Command::Search { .. } => unreachable!("search runs on its own server"),
        Command::Burst { users, sessions, warm, rounds } => {
            let config = burst::BurstConfig { users, sessions, warm, rounds, content, reply_timeout_secs };
            emit("burst", &burst::run(target, upstream()?, &config).await?, c)
        }
        Command::Compare { streams, rounds } => {
            let config = compare::CompareConfig { streams, rounds, content, reply_timeout_secs };
            emit("compare", &compare::run(target, upstream()?, &config).await?, c)
        }
    }
}

/// Prints a report: the table, or one JSON object naming the scenario (and writes that
/// object to `--json-file` if given).
fn emit<R: Serialize + Display>(scenario: &str, report: &R, c: &Common) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(report)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("scenario".into(), scenario.into());
    }
    if let Some(path) = &c.json_file {
        std::fs::write(path, format!("{value}\n"))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if c.json {
        println!("{value}");
    } else {
        print!("{report}");
    }
    Ok(())
}
