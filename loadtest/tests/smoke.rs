//! A tiny run of every scenario against the real server, started in process with an
//! in-memory database, and the mock model stamping its tokens.

use std::collections::HashMap;
use std::time::Duration;

use relay_loadtest::Target;
use relay_loadtest::scenarios::{burst, chat, compare, direct, idle, search, search_streams, tabs};
use relay_mock_llm::{MockLlm, MockSettings};
use relay_server::{Config, Server};

/// Tokens per reply of the test mock.
const TOKENS: u64 = 20;

/// The mock model, fast and stamping.
async fn mock() -> MockLlm {
    let settings = MockSettings {
        first_token_delay: Duration::from_millis(5),
        tokens_per_second: 1000.0,
        reply_tokens: TOKENS as usize,
        stamp: true,
        ..MockSettings::default()
    };
    MockLlm::start(settings, "127.0.0.1:0".parse().unwrap()).await.expect("mock starts")
}

/// A server on an ephemeral port in front of `mock`, configured for load.
struct Running {
    server: Server,
    target: Target,
    _dir: tempfile::TempDir,
}

async fn server(mock: &MockLlm) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let map: HashMap<&str, String> = [
        ("BIND_ADDR", "127.0.0.1:0".to_string()),
        ("DATABASE_URL", "mem://".into()),
        ("RELAY_DATA_DIR", dir.path().display().to_string()),
        ("JWT_SECRET", "relay-loadtest-smoke-secret-0123456789".into()),
        ("SAMBANOVA_API_KEY", "loadtest".into()),
        ("SAMBANOVA_API_BASE", mock.base_url()),
        ("CHAT_RATE_LIMIT_PER_MINUTE", "0".into()),
        ("CHAT_DAILY_MESSAGE_QUOTA", "0".into()),
        ("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR", "1000000".into()),
    ]
    .into_iter()
    .collect();
    let server = Server::start(Config::from_map(&map).expect("valid config")).await.expect("server starts");
    let target = Target::new(format!("http://{}", server.addr));
    Running { server, target, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completes_every_reply_with_stamps() {
    let mock = mock().await;
    let s = server(&mock).await;
    let config = chat::ChatConfig {
        users: 2,
        sessions: 2,
        messages: 2,
        think_ms: 10,
        ramp_secs: 0.2,
        ..chat::ChatConfig::default()
    };
    // The server runs in this process: sampling it gives the CPU lines.
    let target = Target { pid: Some(std::process::id()), ..s.target.clone() };
    let report = chat::run(&target, &config).await.unwrap();
    println!("{report}");
    assert_eq!(report.errors.total(), 0, "{}", report.errors);
    let printed = report.to_string();
    assert!(printed.contains("replies completed per second") && printed.contains("server CPU per reply"), "{printed}");
    assert!(report.server.as_ref().is_some_and(|s| s.cpu_secs > 0.0), "the run used some CPU");
    assert_eq!((report.connections, report.connect.count), (2, 2));
    assert_eq!(report.replies_expected, 8);
    assert_eq!(report.replies.completed, 8);
    assert_eq!(report.replies.ttft.count, 8);
    assert!(report.replies.deltas >= 8 && report.replies.delta_gap.count > 0);
    assert!(report.replies.deltas_per_sec > 0.0);
    // Every stamped token arrived, merged into deltas or not.
    assert_eq!(report.replies.delivery.count as u64, 8 * TOKENS);
    assert!(report.replies.ttft.p50_ms >= 5.0, "the model's own first-token delay is part of TTFT");
    assert!(report.replies.delivery.max_ms < 10_000.0);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_deliver_every_reply_to_every_tab() {
    let mock = mock().await;
    let s = server(&mock).await;
    let config = tabs::TabsConfig { sessions: 2, tabs: 3, messages: 2, think_ms: 10, ..tabs::TabsConfig::default() };
    let report = tabs::run(&s.target, &config).await.unwrap();
    println!("{report}");
    assert_eq!(report.errors.total(), 0, "{}", report.errors);
    assert_eq!(report.connections, 6);
    // Two replies per session, seen by each of its three tabs.
    assert_eq!(report.replies.completed, 12);
    assert_eq!(report.replies.ttft.count, 4, "TTFT is measured on the sending tab");
    assert_eq!(report.replies.delivery.count as u64, 12 * TOKENS);
    assert!(report.skew.count > 0 && report.skew.count as u64 == report.replies.deltas / 3);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_all_authenticate_and_stay() {
    let mock = mock().await;
    let mut s = server(&mock).await;
    // This process hosts the server: its /proc figures stand in for a spawned server's.
    s.target.pid = Some(std::process::id());
    let config = idle::IdleConfig { connections: 10, per_user: 4, hold_secs: 1.0, connect_concurrency: 4 };
    let report = idle::run(&s.target, &config).await.unwrap();
    println!("{report}");
    assert_eq!(report.errors.total(), 0, "{}", report.errors);
    assert_eq!((report.authenticated, report.dropped, report.connect.count), (10, 0, 10));
    let server = report.server.as_ref().expect("figures of the sampled process");
    assert!(server.rss_before_bytes > 0 && server.rss_peak_bytes >= server.rss_end_bytes);
    assert!(report.rss_per_connection_bytes.is_some());
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_streams_from_the_model() {
    let mock = mock().await;
    let config = direct::DirectConfig { streams: 3, ..direct::DirectConfig::default() };
    let report = direct::run(&mock.base_url(), &config, false).await.unwrap();
    println!("{report}");
    assert_eq!(report.errors.total(), 0, "{}", report.errors);
    assert_eq!((report.replies.completed, report.replies.ttft.count), (3, 3));
    assert_eq!(report.replies.deltas, 3 * TOKENS);
    assert_eq!(report.replies.delivery.count as u64, 3 * TOKENS);
    assert_eq!(mock.stats().streams_completed, 3);
}

/// Cold and warm bursts: every send released together is answered, through the server and
/// straight from the model; the warm-up replies are not measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_releases_every_send_together_and_answers_each() {
    let mock = mock().await;
    let s = server(&mock).await;
    for warm in [false, true] {
        let before = mock.stats().streams_completed;
        let config = burst::BurstConfig { users: 3, sessions: 4, warm, rounds: 2, ..burst::BurstConfig::default() };
        let report = burst::run(&s.target, &mock.base_url(), &config).await.unwrap();
        println!("{report}");
        assert_eq!(report.errors.total(), 0, "{}", report.errors);
        assert_eq!(report.sends, 24, "12 sends in each of 2 server bursts");
        assert_eq!((report.direct.completed, report.via_server.completed), (24, 24));
        assert_eq!((report.direct.ttft.count, report.via_server.ttft.count), (24, 24));
        assert_eq!(report.via_server.delivery.count as u64, 24 * TOKENS);
        assert_eq!(report.release_spread.count, 2, "one release per server burst");
        let warmed = if warm { 24 } else { 0 };
        assert_eq!(mock.stats().streams_completed - before, 48 + warmed, "warm: every session answered once before");
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["added_ttft"]["p99_ms"].is_number() && json["config"]["warm"] == warm);
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_measures_both_paths() {
    let mock = mock().await;
    let s = server(&mock).await;
    let config = compare::CompareConfig { streams: 2, rounds: 2, ..compare::CompareConfig::default() };
    let report = compare::run(&s.target, &mock.base_url(), &config).await.unwrap();
    println!("{report}");
    assert_eq!(report.errors.total(), 0, "{}", report.errors);
    assert_eq!((report.direct.completed, report.via_server.completed), (4, 4));
    assert_eq!((report.direct.ttft.count, report.via_server.ttft.count), (4, 4));
    assert_eq!(report.via_server.delivery.count as u64, 4 * TOKENS);
    assert!(report.added_ttft.p50_ratio > 0.0);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["added_ttft"]["p99_ms"].is_number() && json["via_server"]["ttft"]["count"] == 4);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_fills_and_every_search_answers() {
    let mock = mock().await;
    let s = server(&mock).await;
    let config = search::SearchConfig { messages: 400, users: 2, sessions_per_user: 4, queries: 20, vocabulary: 300 };
    let users = search::register(&s.target, config.users).await.unwrap();
    let took = search::fill_store(&s.server.state.store, &users, &config, false).await.unwrap();
    let stored = s.server.state.store.stored_messages(users[0].user.id).await.unwrap();
    assert_eq!(stored, 200, "half the messages are the first user's");
    let report = search::run(&s.target, &users, &config, took).await.unwrap();
    assert_eq!(report.errors, 0);
    assert_eq!((report.one_word.count, report.three_words.count), (20, 20));
    // Common words of a small vocabulary: every one-word search finds something.
    assert!(report.mean_matches.0 >= 1.0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_measured_alone_and_beside_searches() {
    let mock = mock().await;
    let s = server(&mock).await;
    let config = search::SearchConfig { messages: 200, users: 2, sessions_per_user: 2, queries: 1, vocabulary: 100 };
    let users = search::register(&s.target, config.users).await.unwrap();
    search::fill_store(&s.server.state.store, &users, &config, false).await.unwrap();
    let streams = search_streams::StreamsConfig {
        streams: 3,
        searchers: 2,
        replies: 2,
        content: "beside [[mock tokens=20 tps=40]]".into(),
    };
    let report = search_streams::run(&s.target, &users, &streams).await.unwrap();
    assert_eq!((report.alone.completed, report.beside.completed), (6, 6), "{report:?}");
    assert_eq!((report.alone_errors.total(), report.beside_errors.total()), (0, 0), "{report:?}");
    assert!(report.alone.delta_gap.count > 0 && report.beside.delta_gap.count > 0, "{report:?}");
    assert!(report.searches.count > 0, "searches ran beside the streams: {report:?}");
    assert!(report.to_string().contains("gap, beside searches"));
}
