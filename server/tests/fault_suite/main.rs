//! The fault-injection suite, in the spirit of Jepsen: real processes (three server nodes,
//! a SurrealDB server on disk, a redis-server, the mock model), clients that behave as real
//! ones would (see `clients`), a nemesis that injects a seeded schedule of faults (see
//! `nemesis`): kill -9 and restart of a node, SIGSTOP of a node within or past its lease,
//! a node cut off from everything by a network partition (in a network namespace), kill
//! and restart of the database, a paused database, Redis restarted empty, Redis
//! connections killed. After each schedule the faults are healed, every session must answer
//! again, and the checker (see `checker`) reads the history, the database and the mock's
//! journal and names every broken promise.
//!
//! `RELAY_FAULT_SCHEDULES` schedules are run (3 by default, the test command's short run),
//! with seeds from `RELAY_FAULT_SEED` (1) on; a failure prints its seed, and
//! `RELAY_FAULT_SEED=<seed> RELAY_FAULT_SCHEDULES=1` replays it. `RELAY_FAULT_RUN_SECS`
//! sets how long the clients run per schedule (15). With `RELAY_FAULT_REPORT=<file>` the
//! totals are written there as JSON. The long run, figures in RELIABILITY.md:
//!
//! ```sh
//! scripts/fault-suite.sh --schedules 200
//! ```

mod checker;
mod clients;
mod history;
mod nemesis;
mod world;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_protocol::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use clients::{Tab, probe, run_sender, setup};
use history::{FaultRecord, OpRecord, Transcript};
use world::World;

/// How many users, sessions per user and tabs per session a schedule has.
const USERS: usize = 3;
const SESSIONS_PER_USER: usize = 2;
const TABS_PER_SESSION: usize = 2;
const NODES: usize = 3;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one schedule did and found.
#[derive(Default, serde::Serialize)]
struct Report {
    seed: u64,
    faults: BTreeMap<String, u64>,
    operations: u64,
    acknowledged: u64,
    frames: u64,
    model_requests: u64,
    anomalies: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_of_faults_break_no_promise() {
    let schedules = env_number("RELAY_FAULT_SCHEDULES", 3);
    let first_seed = env_number("RELAY_FAULT_SEED", 1);
    let run = Duration::from_secs(env_number("RELAY_FAULT_RUN_SECS", 15));
    let use_net = std::env::var("RELAY_FAULT_NO_NETNS").is_err();
    let mut reports = Vec::new();
    for seed in first_seed..first_seed + schedules {
        let report = run_schedule(seed, run, use_net).await;
        eprintln!(
            "fault schedule seed {seed}: {} faults {:?}, {} operations ({} acknowledged), {} frames, {} model requests, {} anomalies",
            report.faults.values().sum::<u64>(),
            report.faults,
            report.operations,
            report.acknowledged,
            report.frames,
            report.model_requests,
            report.anomalies.len()
        );
        for anomaly in &report.anomalies {
            eprintln!("  ANOMALY (replay with RELAY_FAULT_SEED={seed} RELAY_FAULT_SCHEDULES=1): {anomaly}");
        }
        reports.push(report);
    }
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    for report in &reports {
        for (kind, n) in &report.faults {
            *faults.entry(kind.clone()).or_default() += n;
        }
    }
    let failed: Vec<u64> = reports.iter().filter(|r| !r.anomalies.is_empty()).map(|r| r.seed).collect();
    let totals = serde_json::json!({
        "schedules": reports.len(),
        "first_seed": first_seed,
        "run_secs": run.as_secs(),
        "faults": faults,
        "faults_total": faults.values().sum::<u64>(),
        "operations": reports.iter().map(|r| r.operations).sum::<u64>(),
        "acknowledged": reports.iter().map(|r| r.acknowledged).sum::<u64>(),
        "frames": reports.iter().map(|r| r.frames).sum::<u64>(),
        "model_requests": reports.iter().map(|r| r.model_requests).sum::<u64>(),
        "anomalies": reports.iter().map(|r| r.anomalies.len()).sum::<usize>(),
        "failed_seeds": failed,
        "schedules_detail": reports,
    });
    eprintln!("fault suite totals: {}", serde_json::to_string(&totals["faults"]).unwrap());
    eprintln!(
        "fault suite: {} schedules, {} faults, {} operations, {} anomalies",
        totals["schedules"], totals["faults_total"], totals["operations"], totals["anomalies"]
    );
    if let Ok(path) = std::env::var("RELAY_FAULT_REPORT") {
        std::fs::write(&path, serde_json::to_string_pretty(&totals).unwrap()).expect("the report is written");
    }
    assert!(failed.is_empty(), "schedules with anomalies (seeds): {failed:?}");
}

/// Runs one schedule: the world, the clients, the faults, the healing, the probe, the check.
async fn run_schedule(seed: u64, run: Duration, use_net: bool) -> Report {
    let mut world = World::start(NODES, use_net).await;
    let addrs: Arc<Vec<String>> = Arc::new(world.nodes.iter().map(|n| n.addr.clone()).collect());
    let (users, sessions) = setup(&world.http, &addrs, USERS, SESSIONS_PER_USER).await;
    let stop = CancellationToken::new();
    let mut tabs: Vec<Arc<Tab>> = Vec::new();
    for (s, session) in sessions.iter().enumerate() {
        for t in 0..TABS_PER_SESSION {
            let user = users[session.user].clone();
            let first_node = (s + t) % NODES;
            tabs.push(Arc::new(Tab::start(addrs.clone(), first_node, session.user, user, s, session.id, stop.clone())));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ops: Arc<Mutex<Vec<OpRecord>>> = Arc::default();
    let until = tokio::time::Instant::now() + run;
    let senders: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(s, session)| {
            let tab = tabs[s * TABS_PER_SESSION].clone();
            tokio::spawn(run_sender(tab, s, session.clone(), seed, until, ops.clone()))
        })
        .collect();
    let planned = nemesis::plan(seed, run, NODES, world.net.is_some());
    let faults: Vec<FaultRecord> = nemesis::run(&mut world, &planned).await;
    world.heal_all().await;
    for sender in senders {
        let _ = sender.await;
    }
    // Replies under way end; tabs that moved settle.
    for node in &world.nodes {
        node.ready(&world.http, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut anomalies = probe(&addrs, &users, &sessions).await;
    stop.cancel();
    let mut transcripts: Vec<Transcript> = Vec::new();
    for tab in tabs {
        let transcript = tab.transcript.clone();
        if let Ok(tab) = Arc::try_unwrap(tab) {
            tab.join().await;
        }
        transcripts.push(transcript.lock().unwrap().clone());
    }
    let stored = stored_messages(&world).await;
    let journal = world.mock.journal();
    let node_ids: Vec<&'static str> = world.nodes.iter().map(|n| n.id).collect();
    let ops = ops.lock().unwrap().clone();
    let evidence = checker::Evidence {
        sessions: &sessions,
        ops: &ops,
        transcripts: &transcripts,
        faults: &faults,
        journal: &journal,
        stored: &stored,
        node_ids: &node_ids,
    };
    anomalies.extend(checker::check(&evidence));
    if !anomalies.is_empty() {
        for node in &world.nodes {
            eprintln!("--- node {} log (tail) ---\n{}", node.id, node.log_tail(40));
        }
        for fault in &faults {
            eprintln!("fault: {} node {:?} {} .. {}", fault.kind.name(), fault.node, fault.started, fault.ended);
        }
        for (t, transcript) in transcripts.iter().enumerate() {
            if anomalies.iter().any(|a| a.starts_with(&format!("tab {t}:"))) {
                // RELAY_FAULT_TAIL: how many of the tab's last events to print (60).
                let shown = std::env::var("RELAY_FAULT_TAIL").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
                let tail = &transcript.events[transcript.events.len().saturating_sub(shown)..];
                eprintln!("--- tab {t} (session {}) last events ---", sessions[transcript.session].marker);
                for (at, event) in tail {
                    eprintln!("{at} {event:?}");
                }
            }
        }
    }
    world.stop_nodes();
    let mut fault_counts: BTreeMap<String, u64> = BTreeMap::new();
    for fault in &faults {
        *fault_counts.entry(fault.kind.name().to_owned()).or_default() += 1;
    }
    Report {
        seed,
        faults: fault_counts,
        operations: ops.len() as u64,
        acknowledged: ops.iter().filter(|o| o.acked.is_some()).count() as u64,
        frames: transcripts.iter().map(|t| t.events.len() as u64).sum(),
        model_requests: journal.len() as u64,
        anomalies,
    }
}

/// Every message in the database, by id.
async fn stored_messages(world: &World) -> HashMap<Uuid, Message> {
    let answer = world
        .surreal
        .sql(
            "SELECT record::id(id) AS id, session_id, role, content, token_count, status, created_at, \
             superseded ?? false AS superseded FROM chat_message",
        )
        .await;
    let rows = answer[0]["result"].as_array().cloned().unwrap_or_default();
    rows.into_iter().filter_map(|row| serde_json::from_value::<Message>(row).ok()).map(|m| (m.id, m)).collect()
}
