//! The cluster's promises under faults, one fault at a time, on real processes (a
//! SurrealDB server, a redis-server, two server nodes, the mock model): an owner paused
//! past its lease, an owner killed under a tab that only watches, a lease given up late,
//! a node shutting down with writes queued, messages lost between nodes, a node restarted
//! under frames still addressed to its old self, and requests dropped mid-flight.
//! Several faults are made to happen on demand with the binary's `RELAY_FAULT_*` knobs
//! (see `server/src/faults.rs`).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, LEASE_MS, send, subscribe};
use common::flow::{self, events_of, started_reply, until_deltas, until_dones};
use common::{Read, Ws, eventually, signal};
use relay_protocol::{FinishReason, MessageStatus, ServerFrame};
use serde_json::json;
use uuid::Uuid;

/// Reads frames for `how_long`, returning them and whether the connection closed.
async fn frames_for(ws: &mut Ws, how_long: Duration) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + how_long;
    loop {
        match tokio::time::timeout_at(deadline, ws.read()).await {
            Ok(Read::Frame(frame)) => frames.push(frame),
            Ok(Read::Closed(_)) | Err(_) => return frames,
        }
    }
}

/// Whether a frame is a numbered event of a session (`message`, `delta`, `done`, ...).
fn is_event(frame: &ServerFrame) -> bool {
    frame.seq().is_some()
}

/// An owner paused past its lease (SIGSTOP) while a reply streams: the other node's tab is
/// told within the lease, takes the session over and goes on. When the paused owner
/// resumes, it sends its own tab no further event of the session (only the `error` that
/// sends it elsewhere) and writes nothing: the reply stays stored as the new owner marked
/// it (`error`), not as the old owner would have finished it.
#[tokio::test]
async fn an_owner_paused_past_its_lease_resumes_without_writing_or_emitting() {
    let cluster = Cluster::start(2, &[("CHAT_CANCEL_GRACE_MS", "60000")]).await;
    let (token, sid) = cluster.session_owned_by_a("paused").await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_a, sid).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_a, sid, "long", "a long one [[mock tokens=400 tps=40 delay_ms=0]]").await;
    let frames = until_deltas(&mut tab_a, sid, 5).await;
    let reply = started_reply(&frames);
    until_deltas(&mut tab_b, sid, 5).await;
    // Everything tab a gets from here on is kept, with when it came.
    let seen_by_a = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, ServerFrame)>::new()));
    let reader = tokio::spawn({
        let seen = seen_by_a.clone();
        async move {
            while let Read::Frame(frame) = tab_a.read().await {
                seen.lock().unwrap().push((Instant::now(), frame));
            }
        }
    });
    // A checkpoint lands, then the owner stops dead.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let owner_pid = cluster.node(0).child.id();
    signal(owner_pid, "STOP");
    let paused = Instant::now();

    let failed = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { id: None, .. })).await;
    assert_eq!(flow::done_of(&failed, reply), FinishReason::Error);
    assert!(paused.elapsed() <= Duration::from_millis(LEASE_MS + 500), "told within the lease: {:?}", paused.elapsed());
    // Node b takes the session over (the old owner's heartbeat is gone) and answers.
    let (_, generating) = flow::subscribe(&mut tab_b, sid).await;
    assert!(generating.is_none());
    assert!(cluster.owner(sid).await.unwrap().starts_with("b#"));
    send(&mut tab_b, sid, "next", "on b now [[mock tokens=5]]").await;
    let frames = until_dones(&mut tab_b, sid, 1).await;
    assert_eq!(flow::done_of(&frames, started_reply(&frames)), FinishReason::Stop);
    let marked = cluster.stored(1, &token, sid).await;
    let partial = marked.messages.iter().find(|m| m.id == reply).expect("the checkpoint").clone();
    assert_eq!(partial.status, MessageStatus::Error, "the new owner marked the cut-off reply");

    // The old owner comes back after a peer took the session over. What it had queued for
    // its tab before the pause may still go out (a frame or two); nothing it would emit
    // after (it had hundreds of the model's tokens waiting) does.
    signal(owner_pid, "CONT");
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    reader.abort();
    let seen = seen_by_a.lock().unwrap().clone();
    let late: Vec<&ServerFrame> = seen.iter().filter(|(at, f)| *at >= resumed && is_event(f)).map(|(_, f)| f).collect();
    assert!(late.len() <= 2, "no further event of the session after the resume: {late:?}");
    assert!(
        seen.iter().any(|(at, f)| *at >= resumed
            && matches!(f, ServerFrame::Error { id: None, session_id: Some(s), .. } if *s == sid)),
        "its tab is sent elsewhere: {seen:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = cluster.stored(1, &token, sid).await;
    let kept = stored.messages.iter().find(|m| m.id == reply).unwrap();
    assert_eq!((kept.status, &kept.content), (MessageStatus::Error, &partial.content), "nothing written over it");
    assert!(cluster.owner(sid).await.unwrap().starts_with("b#"), "b still owns the session");
}

/// The owner's tab sent; the other node's tab only subscribed. When the owner dies (killed,
/// or paused past its lease), that tab still gets `done` `error` and an `error` to
/// subscribe again, within the lease.
#[tokio::test]
async fn a_tab_that_only_watches_from_another_node_is_told_when_the_owner_dies() {
    for fault in ["KILL", "STOP"] {
        let mut cluster = Cluster::start(2, &[]).await;
        let (token, sid) = cluster.session_owned_by_a(&format!("watcher{fault}")).await;
        let mut tab_a = cluster.node(0).ws(&token).await;
        let mut tab_b = cluster.node(1).ws(&token).await;
        subscribe(&mut tab_a, sid).await;
        subscribe(&mut tab_b, sid).await;
        send(&mut tab_a, sid, "long", "go [[mock tokens=2000 tps=40 delay_ms=0]]").await;
        let reply = started_reply(&until_deltas(&mut tab_b, sid, 3).await);
        let pid = cluster.node(0).child.id();
        signal(pid, fault);
        let hit = Instant::now();
        let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { id: None, .. })).await;
        assert_eq!(flow::done_of(&frames, reply), FinishReason::Error, "{fault}");
        assert!(
            hit.elapsed() <= Duration::from_millis(LEASE_MS + 500),
            "{fault}: within the lease: {:?}",
            hit.elapsed()
        );
        if fault == "STOP" {
            signal(pid, "CONT");
        } else {
            cluster.nodes[0] = None;
        }
    }
}

/// The owner's tab sent and the other node's tab only subscribed. The owner's tab closes,
/// then the other one: nobody watches, so the reply is cancelled once the grace passes
/// (not before), and stored as cancelled.
#[tokio::test]
async fn the_last_tab_leaving_another_node_cancels_even_if_it_only_watched() {
    let cluster = Cluster::start(2, &[("CHAT_CANCEL_GRACE_MS", "800")]).await;
    let (token, sid) = cluster.session_owned_by_a("leavers").await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_a, sid).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_a, sid, "long", "talk [[mock tokens=4000 tps=40 delay_ms=0]]").await;
    let reply = started_reply(&until_deltas(&mut tab_b, sid, 3).await);
    tab_a.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tab_b.close().await;
    let left = Instant::now();
    assert!(cluster.mock.wait_for_closed_early(1, Duration::from_secs(10)).await, "cancelled after the grace");
    assert!(left.elapsed() >= Duration::from_millis(800), "not before the grace: {:?}", left.elapsed());
    eventually("the reply stored as cancelled", || async {
        cluster
            .stored(1, &token, sid)
            .await
            .messages
            .iter()
            .any(|m| m.id == reply && m.status == MessageStatus::Cancelled)
    })
    .await;
}

/// An actor that stops (idle) gives its lease up late, after a new actor of the same
/// session on the same node claimed it: the late release leaves the new claim alone, so
/// the session keeps its owner and no other node starts a second actor for it.
#[tokio::test]
async fn a_stopping_actor_never_releases_the_lease_of_the_actor_after_it() {
    let cluster = Cluster::start(2, &[("CHAT_SESSION_IDLE_SECS", "1"), ("RELAY_FAULT_RELEASE_DELAY_MS", "1500")]).await;
    let (token, sid) = cluster.session_owned_by_a("successor").await;
    let metrics = |i: usize| {
        let (http, url) = (cluster.http.clone(), cluster.node(i).url("/metrics"));
        async move { http.get(url).bearer_auth("scrape").send().await.unwrap().text().await.unwrap() }
    };
    eventually("the idle actor stopped", || async { metrics(0).await.contains("relay_session_actors 0") }).await;
    // Within the late release's window, the session starts again on a.
    assert_eq!(cluster.rename(0, &token, sid, "again").await.status(), 200);
    let claimed = cluster.owner(sid).await.expect("the new actor holds the lease");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(cluster.owner(sid).await, Some(claimed), "the late release left the new claim alone");
    // A request through b still goes to a's actor.
    assert_eq!(cluster.rename(1, &token, sid, "via b").await.status(), 200);
    assert!(metrics(1).await.contains("relay_session_actors 0"), "b runs no second actor");
    assert!(cluster.owner(sid).await.unwrap().starts_with("a#"));
}

/// A node shutting down stores what it queued before it gives its leases up: here its
/// writes stall (a database that stops taking them) as it shuts down, so the final save of
/// the reply it cancels cannot be confirmed and is still queued when the sessions stop.
/// The node waits for its writes before it lets the session go: the node that takes the
/// session over finds the reply stored as its tab last saw it, not as an older checkpoint
/// (and nothing the old node queued is refused as stale).
#[tokio::test]
async fn shutdown_stores_its_queued_writes_before_it_gives_the_leases_up() {
    let mut cluster = Cluster::start(2, &[]).await;
    let stall = cluster.dirs[0].path().join("stall-writes");
    let stall_var = stall.display().to_string();
    cluster
        .restart_with(0, &[("RELAY_FAULT_WRITE_STALL_FILE", stall_var.as_str()), ("DATABASE_TIMEOUT_MS", "1000")])
        .await;
    let (token, sid) = cluster.session_owned_by_a("shutter").await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    subscribe(&mut tab_a, sid).await;
    send(&mut tab_a, sid, "long", "long one [[mock tokens=2000 tps=100 delay_ms=0]]").await;
    let mut frames = until_deltas(&mut tab_a, sid, 30).await;
    let reply = started_reply(&frames);
    std::fs::write(&stall, b"").unwrap();
    let node_a = cluster.nodes[0].take().unwrap();
    signal(node_a.child.id(), "TERM");
    frames.extend(tab_a.recv_until(|f| matches!(f, ServerFrame::Done { .. })).await);
    let shown: String = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Delta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    // Node b tries to take the session over the whole time; a's writes go through later.
    let mut tab_b = cluster.node(1).ws(&token).await;
    let released = tokio::spawn({
        let stall = stall.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            std::fs::remove_file(&stall).unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("sub-{n}");
        tab_b.send(json!({"type": "subscribe", "id": id, "session_id": sid})).await;
        let answer =
            tab_b.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. } | ServerFrame::Error { .. })).await;
        if matches!(answer.last(), Some(ServerFrame::Subscribed { .. })) {
            break;
        }
        assert!(Instant::now() < deadline, "b never took the session over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    released.await.unwrap();
    drop(node_a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = cluster.stored(1, &token, sid).await;
    let kept = stored.messages.iter().find(|m| m.id == reply).expect("the reply is stored");
    assert_eq!((kept.status, &kept.content), (MessageStatus::Error, &shown), "stored as its tab last saw it");
}

/// Messages between nodes that are lost make the tabs that depended on them subscribe
/// again (with an `error`), instead of waiting forever: the `done` of a reply (the owner's
/// publish fails), a snapshot, and the answer to a forwarded send (which is then sent
/// again, safely: one message is stored and one reply generated).
#[tokio::test]
async fn lost_messages_between_nodes_make_remote_tabs_subscribe_again() {
    // The done of a reply.
    let mut cluster = Cluster::start(2, &[]).await;
    cluster.restart_with(0, &[("RELAY_FAULT_FAIL_PUBLISH", r#""type":"done""#)]).await;
    let (token, sid) = cluster.session_owned_by_a("lossy").await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_b, sid, "m1", "hello [[mock tokens=5]]").await;
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { id: None, .. })).await;
    assert!(
        !frames.iter().any(|f| matches!(f, ServerFrame::Done { finish_reason: FinishReason::Stop, .. })),
        "the done was lost"
    );
    let events = events_of(&frames, sid);
    common::assert_contiguous(&events, sid, events.first().and_then(|e| e.seq()).unwrap_or(1) - 1);

    // A snapshot.
    // (A snapshot travels inside a node-channel envelope, as an escaped string.)
    cluster.restart_with(0, &[("RELAY_FAULT_FAIL_PUBLISH", r#"type\":\"subscribed"#)]).await;
    let (token, sid) = cluster.session_owned_by_a("lossy2").await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    tab_b.send(json!({"type": "subscribe", "id": "s", "session_id": sid})).await;
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { .. } | ServerFrame::Subscribed { .. })).await;
    assert!(matches!(frames.last(), Some(ServerFrame::Error { session_id: Some(s), .. }) if *s == sid), "{frames:?}");
    // (The subscribe whose answer was lost with it may be sent again by the node, and
    // answered: only the one made now is waited for.)
    tab_b.send(json!({"type": "subscribe", "id": "again", "session_id": sid})).await;
    tab_b.recv_until(|f| matches!(f, ServerFrame::Subscribed { id: Some(i), .. } if i == "again")).await;

    // The answer to a forwarded send: sent again with its key, answered as the first.
    cluster.restart_with(0, &[("RELAY_FAULT_FAIL_PUBLISH", r#""t":"answer""#)]).await;
    let (token, sid) = cluster.session_owned_by_a("lossy3").await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;
    let requests = cluster.mock.stats().requests;
    tab_b
        .send(json!({"type": "send", "id": "k", "session_id": sid, "content": "once [[mock tokens=5]]", "client_message_id": "key-1"}))
        .await;
    let frames = frames_for(&mut tab_b, Duration::from_secs(8)).await;
    let acks: Vec<Uuid> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Ack { id: Some(i), message } if i == "k" => Some(message.id),
            _ => None,
        })
        .collect();
    assert!(!acks.is_empty() && acks.iter().all(|a| *a == acks[0]), "acknowledged, as one message: {acks:?}");
    let stored = cluster.stored(1, &token, sid).await;
    assert_eq!(stored.messages.iter().filter(|m| m.content.starts_with("once")).count(), 1, "stored once");
    assert_eq!(cluster.mock.stats().requests - requests, 1, "answered once");
}

/// A node restarts while its old instance's receivers are still named in the owner's
/// state: a frame the owner sends later to one of them (a queued send dropped) never
/// reaches whichever connection of the new instance got the same receiver id.
#[tokio::test]
async fn frames_for_a_gone_instance_never_reach_the_new_instances_connections() {
    let mut cluster = Cluster::start(2, &[("CHAT_CANCEL_GRACE_MS", "6000")]).await;
    let (token, sid) = cluster.session_owned_by_a("victim").await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_b, sid, "long", "first [[mock tokens=4000 tps=40 delay_ms=0]]").await;
    until_deltas(&mut tab_b, sid, 2).await;
    send(&mut tab_b, sid, "queued", "second, queued [[mock tokens=5]]").await;
    tab_b.recv_until(|f| matches!(f, ServerFrame::Ack { id: Some(i), .. } if i == "queued")).await;
    // Node b dies and comes back as a new instance with the same node id.
    let mut node_b = cluster.nodes[1].take().unwrap();
    node_b.child.kill().unwrap();
    node_b.child.wait().unwrap();
    cluster.nodes[1] = Some(cluster.spawn(1));
    cluster.node(1).ready(&cluster.http).await;
    // Another user's first connection on the new instance, watching a session of theirs
    // that a runs (so a may address it).
    let (other, theirs) = cluster.session_owned_by_a("bystander").await;
    let mut bystander = cluster.node(1).ws(&other).await;
    subscribe(&mut bystander, theirs).await;
    // Node a notices b's old instance gone; nobody watches; the grace ends; the queued send
    // is dropped, and its sender (b's old instance) is told.
    let seen = frames_for(&mut bystander, Duration::from_secs(10)).await;
    let leaked: Vec<&ServerFrame> = seen.iter().filter(|f| format!("{f:?}").contains(&sid.to_string())).collect();
    assert!(leaked.is_empty(), "another user's frames reached this connection: {leaked:?}");
}

/// The gauges of what a node holds: actors, registry slots, leases, relays, addressable
/// receivers, forwarded requests waiting, WebSocket connections.
const HELD: [&str; 7] = [
    "relay_session_actors",
    "relay_session_slots",
    "relay_cluster_owned_sessions",
    "relay_cluster_relayed_sessions",
    "relay_cluster_direct_receivers",
    "relay_cluster_pending_calls",
    "relay_ws_connections",
];

async fn held(cluster: &Cluster, i: usize) -> Vec<(String, i64)> {
    let url = cluster.node(i).url("/metrics");
    // Right after the load, the sockets it dropped may still count against this address's
    // cap on the server (HTTP_MAX_CONNECTIONS_PER_ADDRESS), so a scrape may be refused a
    // few times; a node that never answers fails the test.
    let mut scraped = None;
    for _ in 0..20 {
        match cluster.http.get(&url).bearer_auth("scrape").send().await {
            Ok(response) => {
                scraped = Some(response.text().await.unwrap());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let text = scraped.unwrap_or_else(|| panic!("node {i} answers no scrape"));
    HELD.iter()
        .map(|name| {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(-1.0);
            (name.to_string(), value as i64)
        })
        .collect()
}

/// Redis keys of this cluster that belong to sessions, users and locks (not to the nodes
/// themselves), with their hash fields.
async fn session_keys(cluster: &Cluster) -> Vec<String> {
    let mut redis = cluster.redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("relay:*").query_async(&mut redis).await.unwrap();
    let mut kept = Vec::new();
    for key in keys {
        if key.starts_with("relay:alive:") || key == "relay:nodes" || key.starts_with("relay:up") {
            continue;
        }
        if key.starts_with("relay:connections:") {
            let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut redis).await.unwrap();
            if fields.is_empty() {
                continue;
            }
        }
        kept.push(key);
    }
    kept.sort();
    kept
}

/// Ten thousand requests dropped mid-flight (sends over REST and SSE cut off after a few
/// milliseconds, WebSocket connections that subscribe or send and close at once, on the
/// node that owns the session and on the other), then a short wait: every actor, registry
/// slot, lease, relay, addressable receiver and waiting request is gone again on both
/// nodes, and Redis holds no session, user or lock key.
#[tokio::test]
async fn ten_thousand_requests_dropped_mid_flight_leave_nothing_behind() {
    let cluster = Cluster::start(
        2,
        &[
            ("CHAT_SESSION_IDLE_SECS", "1"),
            ("CHAT_CANCEL_GRACE_MS", "200"),
            ("CHAT_DAILY_MESSAGE_QUOTA", "0"),
            ("CHAT_MAX_QUEUED_SENDS", "2"),
        ],
    )
    .await;
    let mut users = Vec::new();
    for u in 0..8 {
        let token = cluster.register(u % 2, &format!("dropper{u}")).await;
        let mut sessions = Vec::new();
        for s in 0..4 {
            let sid = cluster.session(0, &token).await;
            // Half the sessions run on each node.
            assert_eq!(cluster.rename(s % 2, &token, sid, "owned").await.status(), 200);
            sessions.push(sid);
        }
        users.push((token, sessions));
    }
    // Nothing is held once the sessions went idle: that is the baseline.
    let settled = |now: &[Vec<(String, i64)>; 2]| now.iter().all(|node| node.iter().all(|(_, value)| *value == 0));

    let total = 10_000usize;
    let started = std::sync::atomic::AtomicUsize::new(0);
    let worker = |w: usize| {
        let (cluster, users, started) = (&cluster, &users, &started);
        async move {
            let mut rng = w as u64 * 7919 + 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            while started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let (token, sessions) = &users[next() as usize % users.len()];
                let sid = sessions[next() as usize % sessions.len()];
                let node = cluster.node(next() as usize % 2);
                let cut = Duration::from_millis(1 + next() % 25);
                match next() % 10 {
                    0..=4 => {
                        let send = cluster
                            .http
                            .post(node.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
                            .bearer_auth(token)
                            .json(&json!({"content": "drop me [[mock tokens=40 tps=200 delay_ms=0]]"}))
                            .timeout(cut)
                            .send();
                        let _ = send.await;
                    }
                    5..=6 => {
                        let stream = cluster
                            .http
                            .post(node.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
                            .bearer_auth(token)
                            .header("Accept", "text/event-stream")
                            .json(&json!({"content": "stream me [[mock tokens=40 tps=200 delay_ms=0]]"}))
                            .timeout(cut)
                            .send();
                        if let Ok(response) = stream.await {
                            let _ = tokio::time::timeout(cut, response.bytes()).await;
                        }
                    }
                    _ => {
                        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                            Duration::from_secs(5),
                            tokio_tungstenite::connect_async({
                                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                                let mut request =
                                    format!("ws://{}/api/v1/ws", node.addr).into_client_request().unwrap();
                                request
                                    .headers_mut()
                                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                                request
                            }),
                        )
                        .await
                        else {
                            continue;
                        };
                        use futures::SinkExt;
                        let frame = if next() % 2 == 0 {
                            json!({"type": "subscribe", "session_id": sid})
                        } else {
                            json!({"type": "send", "session_id": sid, "content": "and go [[mock tokens=40 tps=200 delay_ms=0]]"})
                        };
                        let _ = ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into())).await;
                        tokio::time::sleep(cut).await;
                        drop(ws);
                    }
                }
            }
        }
    };
    futures::future::join_all((0..48).map(worker)).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = [held(&cluster, 0).await, held(&cluster, 1).await];
        let keys = session_keys(&cluster).await;
        if settled(&now) && keys.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still held a minute after the load: {now:?} keys {keys:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
