//! Several relay-server processes as one cluster: a real SurrealDB server, a real
//! redis-server, the real binary two or three times, and one mock model they all call (so
//! the tests see every upstream request, and when one is closed). Tabs on different nodes
//! watch one session; the tests check what they see, what the model was asked, and what
//! was stored.
//!
//! The SurrealDB server is the `surreal` binary built from `tools/surreal` (`scripts/test.sh`
//! builds it once into `$HOME/.cache/surreal-target`); `RELAY_TEST_SURREAL_BIN` names another.

mod common;

use std::time::{Duration, Instant};

use common::flow::{self, events_of, started_reply, until_deltas};
use common::{Process, WAIT, assert_contiguous};
use relay_protocol::{ErrorCode, FinishReason, MessageStatus, ServerFrame};
use serde_json::{Value, json};
use uuid::Uuid;

use common::cluster::{Cluster, LEASE_MS, replies, send, subscribe};

#[tokio::test]
async fn tabs_on_two_nodes_see_one_stream_and_sends_from_both_are_answered_in_order() {
    let cluster = Cluster::start(2, &[]).await;
    let token = cluster.register(0, "ada").await;
    let sid = cluster.session(0, &token).await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    let seq_a = subscribe(&mut tab_a, sid).await;
    let seq_b = subscribe(&mut tab_b, sid).await;
    assert_eq!(seq_a, seq_b, "one session, one seq, whichever node answers");
    let owner = cluster.owner(sid).await.expect("a live session has an owner");
    assert!(owner.starts_with("a#"), "the first node to use the session owns it: {owner}");

    // A send on each node, the second while the first reply streams: one reply at a time,
    // in the order the owner took them.
    send(&mut tab_a, sid, "s1", "first [[mock tokens=40 tps=200 delay_ms=0]]").await;
    let mut frames_a = tab_a.recv_until(|f| matches!(f, ServerFrame::Ack { .. })).await;
    send(&mut tab_b, sid, "s2", "second [[mock tokens=10 tps=200 delay_ms=0]]").await;
    frames_a.extend(replies(&mut tab_a, sid, 2).await);
    let frames_b = replies(&mut tab_b, sid, 2).await;
    let (events_a, events_b) = (events_of(&frames_a, sid), events_of(&frames_b, sid));
    assert_eq!(events_a, events_b, "both tabs see the same events");
    assert_contiguous(&events_a, sid, seq_a);
    let acked = |frames: &[ServerFrame], id: &str| {
        frames.iter().any(|f| matches!(f, ServerFrame::Ack { id: Some(i), .. } if i == id))
    };
    assert!(acked(&frames_a, "s1") && acked(&frames_b, "s2"), "each sender gets its ack");

    // Generations do not overlap, and answer the messages in the order they were sent.
    let mut running = None;
    let mut answered = Vec::new();
    for event in &events_a {
        match event {
            ServerFrame::GenerationStarted { message_id, .. } => {
                assert!(running.is_none(), "a generation started while another ran");
                running = Some(*message_id);
            }
            ServerFrame::Done { message_id, finish_reason, .. } => {
                assert_eq!(running.take(), Some(*message_id));
                assert_eq!(*finish_reason, FinishReason::Stop);
                answered.push(*message_id);
            }
            _ => {}
        }
    }
    assert_eq!(answered.len(), 2);

    // The model answered each message with the one before it in context.
    let stats = cluster.mock.stats();
    assert_eq!(stats.requests, 2, "one upstream request per reply, in the whole cluster");
    let last = stats.last_request.unwrap().to_string();
    assert!(last.contains("first") && last.contains("second"), "the second reply's context: {last}");

    // The store, read through either node, holds question, answer, question, answer.
    for node in 0..2 {
        let stored = cluster.stored(node, &token, sid).await;
        let contents: Vec<(String, MessageStatus)> =
            stored.messages.iter().map(|m| (m.content.chars().take(6).collect(), m.status)).collect();
        assert_eq!(contents.len(), 4, "{contents:?}");
        assert!(contents[0].0.starts_with("first") && contents[2].0.starts_with("second"), "{contents:?}");
        assert_eq!(stored.messages[1].id, answered[0]);
        assert_eq!(stored.messages[3].id, answered[1]);
        assert!(stored.messages.iter().all(|m| m.status == MessageStatus::Complete));
    }

    // A late tab on the other node gets a snapshot that already holds all of it.
    let mut late = cluster.node(1).ws(&token).await;
    late.send(json!({"type": "subscribe", "id": "late", "session_id": sid})).await;
    let frames = late.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
    let Some(ServerFrame::Subscribed { messages, seq, .. }) = frames.last() else { unreachable!() };
    assert_eq!(messages.len(), 4);
    assert_eq!(*seq, seq_a + events_a.len() as u64);
}

#[tokio::test]
async fn stop_on_one_node_cancels_the_upstream_stream_held_by_the_other() {
    let cluster = Cluster::start(2, &[]).await;
    let token = cluster.register(0, "bobby").await;
    let sid = cluster.session(0, &token).await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    subscribe(&mut tab_a, sid).await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;

    send(&mut tab_b, sid, "long", "talk [[mock tokens=2000 tps=20 delay_ms=0]]").await;
    let frames = until_deltas(&mut tab_b, sid, 2).await;
    let reply = started_reply(&frames);
    tab_b.send(json!({"type": "stop", "id": "halt", "session_id": sid})).await;
    let stopped = Instant::now();
    assert!(
        cluster.mock.wait_for_closed_early(1, Duration::from_secs(1)).await,
        "the upstream stream held by node a closes within 1 s of stop on node b"
    );
    assert!(stopped.elapsed() < Duration::from_secs(1));
    for tab in [&mut tab_a, &mut tab_b] {
        let frames = replies(tab, sid, 1).await;
        assert_eq!(flow::done_of(&frames, reply), FinishReason::Cancelled);
    }
    let stored = cluster.stored(1, &token, sid).await;
    let partial = stored.messages.iter().find(|m| m.id == reply).expect("the partial reply is stored");
    assert_eq!(partial.status, MessageStatus::Cancelled);
    assert!(!partial.content.is_empty());
}

#[tokio::test]
async fn the_last_watcher_leaving_another_node_cancels_after_the_grace() {
    let cluster = Cluster::start(2, &[("CHAT_CANCEL_GRACE_MS", "800")]).await;
    let (token, sid) = cluster.session_owned_by_a("cyd").await;

    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_b, sid, "long", "talk [[mock tokens=2000 tps=20 delay_ms=0]]").await;
    let reply = started_reply(&until_deltas(&mut tab_b, sid, 1).await);
    tab_b.close().await;
    let left = Instant::now();

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cluster.mock.stats().streams_closed_early, 0, "the reply runs on during the grace");
    assert!(cluster.mock.wait_for_closed_early(1, Duration::from_secs(5)).await, "cancelled after the grace");
    let waited = left.elapsed();
    assert!(waited >= Duration::from_millis(800), "not before the grace: {waited:?}");
    common::eventually("the partial reply stored as cancelled", || async {
        cluster
            .stored(1, &token, sid)
            .await
            .messages
            .iter()
            .any(|m| m.id == reply && m.status == MessageStatus::Cancelled)
    })
    .await;
}

#[tokio::test]
async fn killing_the_owner_mid_reply_fails_over_within_the_lease() {
    let mut cluster = Cluster::start(2, &[]).await;
    let (token, sid) = cluster.session_owned_by_a("deedee").await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_b, sid, "long", "remember me [[mock tokens=2000 tps=40 delay_ms=0]]").await;
    let frames = until_deltas(&mut tab_b, sid, 10).await;
    let reply = started_reply(&frames);
    let user_message = frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Ack { message, .. } => Some(message.id),
            _ => None,
        })
        .expect("the send was acknowledged");
    // Let a checkpoint of the partial reply land.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut owner = cluster.nodes[0].take().unwrap();
    owner.child.kill().unwrap(); // SIGKILL
    owner.child.wait().unwrap();
    let killed = Instant::now();
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { id: None, .. })).await;
    let failed_over = killed.elapsed();
    assert_eq!(flow::done_of(&frames, reply), FinishReason::Error);
    assert!(
        failed_over <= Duration::from_millis(LEASE_MS + 500),
        "done error within the lease time ({LEASE_MS} ms) of the kill, took {failed_over:?}"
    );
    let events = events_of(&frames, sid);
    let last = events.last().unwrap();
    assert!(matches!(last, ServerFrame::Done { .. }));
    let (before, done) = (events[events.len() - 2].seq().unwrap(), last.seq().unwrap());
    assert_eq!(done, before + 1, "the done continues the seq the tab saw");
    match frames.last().unwrap() {
        ServerFrame::Error { session_id, error, .. } => {
            assert_eq!(*session_id, Some(sid));
            assert_eq!(error.code, ErrorCode::Internal);
        }
        other => panic!("{other:?}"),
    }

    // Subscribing again claims the session on node b, from the store.
    let (_, generating) = flow::subscribe(&mut tab_b, sid).await;
    assert!(generating.is_none());
    assert!(cluster.owner(sid).await.unwrap().starts_with("b#"));
    let stored = cluster.stored(1, &token, sid).await;
    assert!(stored.messages.iter().any(|m| m.id == user_message), "the acknowledged message is kept");
    let partial = stored.messages.iter().find(|m| m.id == reply).expect("the checkpointed partial reply");
    assert_eq!(partial.status, MessageStatus::Error);
    assert!(!partial.content.is_empty());

    // And the session goes on.
    send(&mut tab_b, sid, "next", "still there? [[mock tokens=5]]").await;
    let frames = replies(&mut tab_b, sid, 1).await;
    assert_eq!(flow::done_of(&frames, started_reply(&frames)), FinishReason::Stop);
    let context = cluster.mock.stats().last_request.unwrap().to_string();
    assert!(context.contains("remember me"), "the new owner's context holds the earlier message: {context}");
}

#[tokio::test]
async fn one_rate_limit_for_the_whole_cluster() {
    let cluster = Cluster::start(2, &[("CHAT_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let token = cluster.register(0, "evelyn").await;
    let (s1, s2) = (cluster.session(0, &token).await, cluster.session(1, &token).await);
    let mut tab_a = cluster.node(0).ws(&token).await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    send(&mut tab_a, s1, "1", "one [[mock tokens=2]]").await;
    replies(&mut tab_a, s1, 1).await;
    send(&mut tab_b, s2, "2", "two [[mock tokens=2]]").await;
    replies(&mut tab_b, s2, 1).await;
    send(&mut tab_a, s2, "3", "three [[mock tokens=2]]").await;
    replies(&mut tab_a, s2, 1).await;
    send(&mut tab_b, s1, "4", "four").await;
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { .. })).await;
    flow::assert_error(frames.last().unwrap(), ErrorCode::RateLimited, Some("4"), Some(s1));
}

#[tokio::test]
async fn user_events_reach_the_users_connections_on_every_node() {
    let cluster = Cluster::start(2, &[]).await;
    let token = cluster.register(0, "fayette").await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    let mut tab_b = cluster.node(1).ws(&token).await;

    let sid = cluster.session(0, &token).await;
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::SessionCreated { .. })).await;
    assert!(matches!(frames.last(), Some(ServerFrame::SessionCreated { session, .. }) if session.id == sid));

    assert_eq!(cluster.rename(1, &token, sid, "renamed on b").await.status(), 200);
    let frames = tab_a.recv_until(|f| matches!(f, ServerFrame::SessionUpdated { .. })).await;
    assert!(
        matches!(frames.last(), Some(ServerFrame::SessionUpdated { session, .. }) if session.title == "renamed on b")
    );

    send(&mut tab_a, sid, "q", "count me [[mock tokens=2]]").await;
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Quota { .. })).await;
    assert!(matches!(frames.last(), Some(ServerFrame::Quota { quota }) if quota.messages_today == 1));

    let r = cluster.http.delete(cluster.node(0).url(&format!("/api/v1/chat/sessions/{sid}"))).bearer_auth(&token);
    assert_eq!(r.send().await.unwrap().status(), 200);
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::SessionDeleted { .. })).await;
    assert!(matches!(frames.last(), Some(ServerFrame::SessionDeleted { session_id, .. }) if *session_id == sid));
}

#[tokio::test]
async fn nodes_migrate_once_report_themselves_and_a_restarted_node_keeps_every_session() {
    let mut cluster = Cluster::start(3, &[]).await;
    // Three nodes started together on an empty database (racing to apply the migrations,
    // the losers retrying) all came up, and the database holds the whole schema: every
    // migration recorded, and what each one made (or removed) is there (a version record
    // cannot be duplicated anyway: its id is the version).
    let rows = cluster.surreal.sql("SELECT VALUE version FROM schema_migration ORDER BY version").await;
    let versions: Vec<u64> = rows[0]["result"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let known: Vec<u64> = relay_server::store::MIGRATIONS.iter().map(|m| u64::from(m.version)).collect();
    assert_eq!(versions, known, "every migration recorded");
    let schema = cluster.surreal.sql("INFO FOR DB; INFO FOR TABLE chat_session; INFO FOR TABLE chat_message;").await;
    let (db, session, message) = (&schema[0]["result"], &schema[1]["result"], &schema[2]["result"]);
    for table in
        ["user", "chat_session", "chat_message", "daily_usage", "chat_message_archive", "idempotency", "write_batch"]
    {
        assert!(db["tables"].get(table).is_some(), "table {table} exists: {db}");
    }
    for field in ["epoch", "message_count", "archived_at", "deleted_at"] {
        assert!(session["fields"].get(field).is_some(), "chat_session.{field} exists: {session}");
    }
    assert!(message["fields"].get("superseded").is_some(), "{message}");
    assert!(message["indexes"].get("chat_message_status").is_some(), "{message}");
    assert!(message["indexes"].get("chat_message_created").is_none(), "migration 6 removed it: {message}");

    // Each node says who it is, and sees the others.
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let ready: Value = cluster.http.get(cluster.node(i).url("/readyz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(ready["node_id"], *id, "{ready}");
        assert_eq!(ready["cluster"], "up");
        assert_eq!(ready["database"], "up");
        let metrics = cluster.http.get(cluster.node(i).url("/metrics")).bearer_auth("scrape").send().await.unwrap();
        let text = metrics.text().await.unwrap();
        assert!(text.contains(&format!("relay_node_info{{node_id=\"{id}\"}} 1")), "{text}");
    }
    common::eventually("every node sees three live nodes", || async {
        let ready: Value = cluster.http.get(cluster.node(2).url("/readyz")).send().await.unwrap().json().await.unwrap();
        ready["nodes"] == 3
    })
    .await;

    let token = cluster.register(0, "gustav").await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let sid = cluster.session(i, &token).await;
        let mut tab = cluster.node(i).ws(&token).await;
        send(&mut tab, sid, "m", &format!("hello from node {i} [[mock tokens=3]]")).await;
        replies(&mut tab, sid, 1).await;
        sessions.push(sid);
    }

    // Node a stops (SIGTERM) and comes back on the same database: everything is there.
    let node = cluster.nodes[0].take().unwrap();
    assert!(node.terminate().success());
    cluster.nodes[0] = Some(cluster.spawn(0));
    cluster.node(0).ready(&cluster.http).await;
    let list = cluster.node(0).get(&cluster.http, &token, "/api/v1/chat/sessions").await;
    let listed: Vec<Uuid> = list["sessions"]
        .as_array()
        .or(list.as_array())
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    for sid in &sessions {
        assert!(listed.contains(sid), "{sid} listed after the restart");
        let stored = cluster.stored(0, &token, *sid).await;
        assert_eq!(stored.messages.len(), 2);
        assert!(stored.messages.iter().all(|m| m.status == MessageStatus::Complete));
    }
    // And the sessions run again, wherever their lease lands.
    let mut tab = cluster.node(0).ws(&token).await;
    send(&mut tab, sessions[1], "again", "again [[mock tokens=2]]").await;
    replies(&mut tab, sessions[1], 1).await;
    let _ = WAIT;
}

/// The status of a WebSocket upgrade to a node with the token in a header (101 when accepted).
async fn upgrade_status(node: &Process, token: &str) -> u16 {
    common::ws_upgrade(&node.addr, token).await.0
}

#[tokio::test]
async fn per_user_caps_count_every_node() {
    let cluster = Cluster::start(2, &[("WS_MAX_CONNECTIONS_PER_USER", "2"), ("CHAT_MAX_SESSIONS_PER_USER", "3")]).await;
    let token = cluster.register(0, "hilda").await;

    // Connections: one on each node fills the cap of two, whichever node the third asks.
    let first = cluster.node(0).ws(&token).await;
    let _second = cluster.node(1).ws(&token).await;
    for node in 0..2 {
        assert_eq!(upgrade_status(cluster.node(node), &token).await, 403, "a third connection on node {node}");
    }
    first.close().await;
    common::eventually("the closed connection's place is given back across the cluster", || async {
        upgrade_status(cluster.node(1), &token).await == 101
    })
    .await;

    // Sessions: created at once on both nodes, exactly the cap succeed, for several users
    // (without the cluster-wide lock, the two nodes' checks race and let more through).
    for round in 0..4 {
        let token = cluster.register(round % 2, &format!("hilda{round}")).await;
        let creates = (0..24).map(|i| {
            let node = cluster.node(i % 2);
            cluster.http.post(node.url("/api/v1/chat/sessions")).bearer_auth(&token).json(&json!({})).send()
        });
        let statuses: Vec<u16> =
            futures::future::join_all(creates).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 21, "{statuses:?}");
    }
}

/// The load generator's two-node mode (the cluster benchmark) on a small run: tabs on the
/// relaying node get every reply whole, as the owner's do.
#[tokio::test]
async fn load_generator_measures_both_nodes() {
    let cluster = Cluster::start(2, &[("WS_MAX_CONNECTIONS_PER_USER", "100")]).await;
    let target = relay_loadtest::Target::new(format!("http://{}", cluster.node(0).addr));
    let config = relay_loadtest::scenarios::tabs::TabsConfig {
        sessions: 3,
        tabs: 4,
        messages: 2,
        think_ms: 0,
        content: "hello [[mock tokens=8 stamp]]".into(),
        peer: Some(format!("http://{}", cluster.node(1).addr)),
        ..Default::default()
    };
    let report = relay_loadtest::scenarios::tabs::run(&target, &config).await.unwrap();
    assert_eq!(report.errors.total(), 0, "{}", report.errors);
    let by_node = report.by_node.expect("figures for each node");
    assert_eq!(by_node.owner.completed, 3 * 2 * 2, "two tabs a session on the owner, each saw both replies");
    assert_eq!(by_node.relay.completed, 3 * 2 * 2, "and two on the relaying node");
    assert_eq!(by_node.owner.deltas, by_node.relay.deltas, "the same deltas on both nodes");
    assert!(by_node.relay.delivery.count > 0, "stamped tokens give delivery latency");
}

/// An owner that shuts down gracefully stores the running reply (`done` `cancelled` for
/// every watcher, also those on other nodes), tells the other nodes' watchers to subscribe
/// again, and gives its leases up at once: the session runs on at the next subscribe.
#[tokio::test]
async fn an_owner_shutting_down_hands_its_sessions_over() {
    let mut cluster = Cluster::start(2, &[]).await;
    let (token, sid) = cluster.session_owned_by_a("ingrid").await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_b, sid, "long", "long story [[mock tokens=2000 tps=40 delay_ms=0]]").await;
    let reply = started_reply(&until_deltas(&mut tab_b, sid, 3).await);

    let owner = cluster.nodes[0].take().unwrap();
    assert!(owner.terminate().success());
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { id: None, .. })).await;
    assert_eq!(flow::done_of(&frames, reply), FinishReason::Cancelled);
    match frames.last().unwrap() {
        ServerFrame::Error { session_id, error, .. } => {
            assert_eq!(*session_id, Some(sid));
            assert_eq!(error.code, ErrorCode::Unavailable);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cluster.owner(sid).await, None, "the lease was given up, not left to expire");
    subscribe(&mut tab_b, sid).await;
    assert!(cluster.owner(sid).await.unwrap().starts_with("b#"));
    let stored = cluster.stored(1, &token, sid).await;
    assert_eq!(stored.messages.iter().find(|m| m.id == reply).unwrap().status, MessageStatus::Cancelled);
}

/// Regenerate and edit from a node that does not own the session: the owner replaces the
/// messages, both nodes' tabs see the same `superseded` and new reply, the store agrees.
#[tokio::test]
async fn regenerate_and_edit_are_forwarded_to_the_owner() {
    let cluster = Cluster::start(2, &[]).await;
    let token = cluster.register(0, "jonas").await;
    let sid = cluster.session(0, &token).await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    let seq = subscribe(&mut tab_a, sid).await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;
    send(&mut tab_a, sid, "q", "question [[mock tokens=4]]").await;
    let mut seen_a = replies(&mut tab_a, sid, 1).await;
    let first = started_reply(&seen_a);
    replies(&mut tab_b, sid, 1).await;

    tab_b.send(json!({"type": "regenerate", "id": "again", "session_id": sid})).await;
    let frames_b = replies(&mut tab_b, sid, 1).await;
    let second = started_reply(&frames_b);
    assert_ne!(first, second);
    assert!(
        frames_b
            .iter()
            .any(|f| matches!(f, ServerFrame::Superseded { message_ids, .. } if message_ids == &vec![first]))
    );

    let question = cluster.stored(1, &token, sid).await.messages[0].id;
    tab_b
        .send(json!({"type": "edit", "id": "fix", "session_id": sid, "message_id": question, "content": "better question [[mock tokens=3]]"}))
        .await;
    replies(&mut tab_b, sid, 1).await;
    seen_a.extend(replies(&mut tab_a, sid, 2).await);
    assert_contiguous(&seen_a, sid, seq);
    assert_eq!(
        seen_a.iter().filter(|f| matches!(f, ServerFrame::Superseded { .. })).count(),
        2,
        "regenerate, then edit"
    );
    let stored = cluster.stored(0, &token, sid).await;
    let live: Vec<&str> = stored.messages.iter().filter(|m| !m.superseded).map(|m| m.content.as_str()).collect();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live[0].starts_with("better question"));
    assert_eq!(cluster.mock.stats().requests, 3, "one model request per reply, all at the owner");
}

/// Redis going away for longer than the lease: the relayed tab is told at once (its events
/// could be lost), the owner stops the session half a lease after its last confirmed
/// renewal (before any peer may claim it), sends are refused `unavailable`, and nodes are
/// not ready. When Redis comes back (empty), free leases are claimed again only a lease
/// later, then everything works again across both nodes.
#[tokio::test]
async fn the_cluster_rides_out_redis_going_away() {
    let mut cluster = Cluster::start(2, &[]).await;
    let (token, sid) = cluster.session_owned_by_a("kasper").await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    subscribe(&mut tab_a, sid).await;
    let mut tab_b = cluster.node(1).ws(&token).await;
    subscribe(&mut tab_b, sid).await;

    cluster.redis.stop();
    let stopped = Instant::now();
    let frames = tab_b.recv_until(|f| matches!(f, ServerFrame::Error { id: None, .. })).await;
    assert!(matches!(frames.last(), Some(ServerFrame::Error { session_id: Some(s), .. }) if *s == sid));
    assert!(
        stopped.elapsed() < Duration::from_millis(LEASE_MS / 4),
        "the relayed tab is told at once: {:?}",
        stopped.elapsed()
    );
    let frames = tab_a.recv_until(|f| matches!(f, ServerFrame::Error { id: None, .. })).await;
    assert!(matches!(frames.last(), Some(ServerFrame::Error { session_id: Some(s), .. }) if *s == sid));
    // The last renewal was confirmed at most a quarter lease before the stop.
    let fenced = stopped.elapsed();
    assert!(
        fenced <= Duration::from_millis(LEASE_MS / 2 + LEASE_MS / 10 + 200),
        "the owner stops the session within half a lease of its last renewal: {fenced:?}"
    );
    for node in 0..2 {
        let url = cluster.node(node).url("/readyz");
        common::eventually("a node without Redis is not ready", || async {
            cluster.http.get(&url).send().await.is_ok_and(|r| r.status() == 503)
        })
        .await;
    }
    for (tab, id) in [(&mut tab_a, "lost-a"), (&mut tab_b, "lost-b")] {
        send(tab, sid, id, "anyone there?").await;
        let answered = |f: &ServerFrame| match f {
            ServerFrame::Error { id: Some(i), .. } => i == id,
            ServerFrame::Ack { .. } => true,
            _ => false,
        };
        let frames = tab.recv_until(answered).await;
        flow::assert_error(frames.last().unwrap(), ErrorCode::Unavailable, Some(id), Some(sid));
    }
    tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;

    cluster.redis.resume().await;
    let back = Instant::now();
    // Nobody claims a free lease for a lease after Redis came back empty.
    let mut claimed_at = None;
    while claimed_at.is_none() {
        tab_b.send(json!({"type": "subscribe", "id": "again", "session_id": sid})).await;
        let answer =
            tab_b.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. } | ServerFrame::Error { .. })).await;
        match answer.last() {
            Some(ServerFrame::Subscribed { .. }) => claimed_at = Some(back.elapsed()),
            Some(ServerFrame::Error { error, .. }) => assert_eq!(error.code, ErrorCode::Unavailable),
            _ => unreachable!(),
        }
        assert!(back.elapsed() < Duration::from_secs(15), "the session came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let claimed_at = claimed_at.unwrap();
    assert!(
        claimed_at >= Duration::from_millis(LEASE_MS) - Duration::from_millis(100),
        "not before a lease: {claimed_at:?}"
    );
    for node in 0..2 {
        let url = cluster.node(node).url("/readyz");
        common::eventually("ready again once Redis is back", || async {
            cluster.http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    send(&mut tab_b, sid, "back", "and now? [[mock tokens=3]]").await;
    let frames = replies(&mut tab_b, sid, 1).await;
    assert_eq!(flow::done_of(&frames, started_reply(&frames)), FinishReason::Stop);
    subscribe(&mut tab_a, sid).await;
    send(&mut tab_a, sid, "again", "from a [[mock tokens=3]]").await;
    let frames_a = replies(&mut tab_a, sid, 1).await;
    let frames_b = replies(&mut tab_b, sid, 1).await;
    assert_eq!(events_of(&frames_a, sid), events_of(&frames_b, sid), "one session across both nodes again");
}

/// Redis restarting empty for a moment, under a reply: the session's lease is gone, but no
/// other node may take it until a lease has passed (free leases wait that long after Redis
/// came back), by which time the owner has either taken its lease back (and its reply
/// ends well) or given the session up (its tab told to subscribe again). At no moment do
/// two nodes run the session, and the owner's tab sees a gap-free stream either way.
#[tokio::test]
async fn a_redis_that_restarts_empty_never_lets_a_second_node_take_a_running_session() {
    let mut cluster = Cluster::start(2, &[]).await;
    let (token, sid) = cluster.session_owned_by_a("blink").await;
    let mut tab_a = cluster.node(0).ws(&token).await;
    let seq = subscribe(&mut tab_a, sid).await;
    send(&mut tab_a, sid, "long", "keep going [[mock tokens=150 tps=50 delay_ms=0]]").await;
    let mut frames = until_deltas(&mut tab_a, sid, 3).await;
    cluster.redis.stop();
    cluster.redis.resume().await;
    // Node b tries to run the session all the while.
    let mut tab_b = cluster.node(1).ws(&token).await;
    let actors = |i: usize| {
        let (http, url) = (cluster.http.clone(), cluster.node(i).url("/metrics"));
        async move {
            let text = http.get(url).bearer_auth("scrape").send().await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("relay_session_actors "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        }
    };
    let mut b_claimed = None;
    let back = Instant::now();
    while back.elapsed() < Duration::from_millis(LEASE_MS * 2) {
        tab_b.send(json!({"type": "subscribe", "id": "try", "session_id": sid})).await;
        tab_b.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. } | ServerFrame::Error { .. })).await;
        let (on_a, on_b) = (actors(0).await, actors(1).await);
        assert!(!(on_a == Some(1.0) && on_b == Some(1.0)), "both nodes run the session");
        if on_b == Some(1.0) && b_claimed.is_none() {
            b_claimed = Some(back.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(at) = b_claimed {
        assert!(at >= Duration::from_millis(LEASE_MS - 200), "b took the session before a lease had passed: {at:?}");
    }
    frames.extend(
        tab_a.recv_until(|f| matches!(f, ServerFrame::Done { .. } | ServerFrame::Error { id: None, .. })).await,
    );
    assert_contiguous(&events_of(&frames, sid), sid, seq);
    if let Some(ServerFrame::Done { finish_reason, .. }) = frames.last() {
        assert_eq!(*finish_reason, FinishReason::Stop, "the owner kept the session: its reply ended well");
    }
}

/// A share link's viewer on one node follows a session another node runs; the viewer cap
/// counts every node; revoking the link on the owner's node ends the stream on the other
/// at once.
#[tokio::test]
async fn a_share_links_viewers_on_any_node_watch_live_and_are_ended_everywhere() {
    use common::sse::SseReader;
    let cluster = Cluster::start(2, &[("CHAT_SHARE_MAX_VIEWERS", "1")]).await;
    let (token, sid) = cluster.session_owned_by_a("gwen").await;
    let share =
        cluster.http.post(cluster.node(0).url(&format!("/api/v1/chat/sessions/{sid}/share"))).bearer_auth(&token);
    let share: relay_protocol::ShareCreated = share.send().await.unwrap().json().await.unwrap();
    let mut tab_a = cluster.node(0).ws(&token).await;
    subscribe(&mut tab_a, sid).await;

    let events = |node: usize| cluster.node(node).url(&format!("/api/v1/shared/{}/events", share.token));
    let r = cluster.http.get(events(1)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut viewer = SseReader::new(r);
    assert_eq!(viewer.next_within(WAIT).await.unwrap().event, "snapshot");
    let frames = tab_a.recv_until(|f| matches!(f, ServerFrame::ShareUpdated { share: Some(s), .. } if s.viewers == 1));
    frames.await;
    let r = cluster.http.get(events(0)).send().await.unwrap();
    assert_eq!(r.status(), 403, "the cap counts the viewer on the other node");

    send(&mut tab_a, sid, "q", "stream it [[mock tokens=20 tps=100 delay_ms=0]]").await;
    let seen = viewer.until("done").await;
    assert!(seen.iter().filter(|e| e.event == "delta").count() >= 5, "{seen:?}");

    let r = cluster.http.delete(cluster.node(0).url(&format!("/api/v1/chat/sessions/{sid}/share"))).bearer_auth(&token);
    assert_eq!(r.send().await.unwrap().status(), 204);
    let ended = viewer.next_within(Duration::from_secs(2)).await.expect("ended on the other node");
    assert_eq!((ended.event.as_str(), ended.json()), ("ended", json!({"reason": "revoked"})));
}
