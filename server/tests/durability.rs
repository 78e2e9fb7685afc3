//! What the server confirms is stored, whatever the database does: the real binary on a
//! real SurrealDB server (on disk) that is paused and killed under it.
//!
//! The SurrealDB server is the `surreal` binary built from `tools/surreal` (see cluster.rs).

mod common;

use std::time::{Duration, Instant};

use common::flow::{subscribe, until_deltas, until_dones};
use common::{Process, SECRET, SurrealServer, Ws, eventually};
use relay_protocol::{ErrorCode, FinishReason, MessageStatus, ServerFrame, SessionWithMessages};
use serde_json::json;
use uuid::Uuid;

/// How long the server waits for the database in these tests.
const DATABASE_TIMEOUT_MS: u64 = 1000;

/// A server on a SurrealDB server of its own.
struct Rig {
    surreal: SurrealServer,
    node: Process,
    http: reqwest::Client,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Rig {
    async fn start(extra: &[(&str, &str)]) -> Rig {
        let (db_dir, data_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let surreal = SurrealServer::start_on_disk(db_dir.path()).await;
        let url = format!("ws://127.0.0.1:{}", surreal.port);
        let timeout = DATABASE_TIMEOUT_MS.to_string();
        let mut vars = vec![
            ("DATABASE_URL", url.as_str()),
            ("DATABASE_USER", "root"),
            ("DATABASE_PASS", "root-pass"),
            ("DATABASE_TIMEOUT_MS", timeout.as_str()),
            ("JWT_SECRET", SECRET),
            ("CHAT_CHECKPOINT_MS", "60000"),
        ];
        vars.extend_from_slice(extra);
        let node = Process::start_with(data_dir.path(), &vars, std::process::Stdio::inherit());
        let http = reqwest::Client::new();
        node.ready(&http).await;
        Rig { surreal, node, http, _dirs: (db_dir, data_dir) }
    }

    /// The session as REST reads it from the store (once the database answers again).
    async fn stored(&self, token: &str, sid: Uuid) -> SessionWithMessages {
        let mut last = None;
        for _ in 0..100 {
            let response =
                self.http.get(self.node.url(&format!("/api/v1/chat/sessions/{sid}"))).bearer_auth(token).send().await;
            if let Ok(response) = response
                && response.status() == 200
            {
                return response.json().await.unwrap();
            }
            last = Some(());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the session could not be read back ({last:?})");
    }

    /// The session's message count as stored, and how many messages it really has.
    async fn counts(&self, sid: Uuid) -> (u64, u64) {
        let answer = self
            .surreal
            .sql_in(
                "relay",
                "chat",
                &format!(
                    "SELECT VALUE message_count FROM type::record('chat_session', '{sid}');
                     SELECT count() AS n FROM chat_message WHERE session_id = '{sid}' GROUP ALL;"
                ),
            )
            .await;
        (answer[0]["result"][0].as_u64().unwrap_or(0), answer[1]["result"][0]["n"].as_u64().unwrap_or(0))
    }
}

/// The `done` of a reply, from frames read up to it.
fn done_of(frames: &[ServerFrame]) -> (FinishReason, Option<ErrorCode>, u64) {
    match frames.last() {
        Some(ServerFrame::Done { finish_reason, error, seq, .. }) => {
            (*finish_reason, error.as_ref().map(|e| e.code), *seq)
        }
        other => panic!("expected done, got {other:?}"),
    }
}

fn text_of(frames: &[ServerFrame]) -> String {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Delta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Sends a message whose reply takes about `secs`, and reads up to its first text.
async fn send_slow(ws: &mut Ws, sid: Uuid, id: &str, secs: u32) -> Vec<ServerFrame> {
    let tokens = secs * 10;
    let content = format!("question {id} [[mock tokens={tokens} tps=10 delay_ms=0]]");
    ws.send(json!({"type": "send", "id": id, "session_id": sid, "content": content})).await;
    until_deltas(ws, sid, 1).await
}

/// A reply that ends while the database cannot take it is not shown as finished well: its
/// tabs get `done` `error` within the database timeout, never `stop`; and once the database
/// is back the reply is stored as `error`, with all of its text, and the session's message
/// count is right. Tried with the database paused (every query hangs) and killed (every
/// query fails) for longer than it takes an unconfirmed write to be given up on, and a send
/// meanwhile is refused `unavailable` instead of acknowledged.
#[tokio::test]
async fn a_reply_the_database_cannot_take_ends_as_error_and_is_stored_as_such() {
    let mut rig = Rig::start(&[]).await;
    let auth = rig.node.register(&rig.http, "durable").await;
    let token = auth.token;
    let sid = rig.node.create_session(&rig.http, &token, None).await.id;
    let mut ws = rig.node.ws(&token).await;
    subscribe(&mut ws, sid).await;

    for outage in ["pause", "kill"] {
        let mut frames = send_slow(&mut ws, sid, outage, 2).await;
        let reply_id = match frames.iter().find(|f| matches!(f, ServerFrame::GenerationStarted { .. })) {
            Some(ServerFrame::GenerationStarted { message_id, .. }) => *message_id,
            _ => panic!("the reply started"),
        };
        match outage {
            "pause" => rig.surreal.pause(),
            _ => rig.surreal.kill(),
        }
        let down = Instant::now();
        frames.extend(until_dones(&mut ws, sid, 1).await);
        let (finish, code, _) = done_of(&frames);
        assert_eq!(
            (finish, code),
            (FinishReason::Error, Some(ErrorCode::Unavailable)),
            "{outage}: a reply that could not be stored is not confirmed"
        );
        assert!(down.elapsed() < Duration::from_secs(2 + 3), "{outage}: the tabs heard within the timeout");
        let shown = text_of(&frames);
        assert!(!shown.is_empty());

        // A send while the database is away is refused, not acknowledged.
        let started = Instant::now();
        ws.send(json!({"type": "send", "id": "meanwhile", "session_id": sid, "content": "hello?"})).await;
        let answer = ws
            .recv_until(|f| match f {
                ServerFrame::Ack { id, .. } | ServerFrame::Error { id, .. } => id.as_deref() == Some("meanwhile"),
                _ => false,
            })
            .await;
        match answer.last() {
            Some(ServerFrame::Error { error, .. }) => assert_eq!(error.code, ErrorCode::Unavailable, "{outage}"),
            other => panic!("{outage}: a send the database cannot take is refused: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(DATABASE_TIMEOUT_MS * 3), "{outage}: refused in time");

        // Down for longer than an unconfirmed write was ever retried for.
        tokio::time::sleep(Duration::from_secs(6)).await;
        match outage {
            "pause" => rig.surreal.resume(),
            _ => rig.surreal.restart().await,
        }
        let mut stored = rig.stored(&token, sid).await;
        // The version the tabs were told of is queued after the one that timed out.
        for _ in 0..50 {
            if stored.messages.iter().any(|m| m.id == reply_id && m.status == MessageStatus::Error) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            stored = rig.stored(&token, sid).await;
        }
        let reply =
            stored.messages.iter().find(|m| m.id == reply_id).expect("the reply is stored once the database is back");
        assert_eq!(reply.status, MessageStatus::Error, "{outage}: stored as its tabs were told");
        assert_eq!(reply.content, shown, "{outage}: with the text the tabs saw");
        let rig_ref = &rig;
        eventually("the message count matches the messages", || async move {
            let (counted, actual) = rig_ref.counts(sid).await;
            counted == actual && actual > 0
        })
        .await;
        // Tabs that read events from here on see the session as stored.
        let mut next = send_slow(&mut ws, sid, &format!("after-{outage}"), 1).await;
        next.extend(until_dones(&mut ws, sid, 1).await);
        assert_eq!(done_of(&next).0, FinishReason::Stop, "{outage}: the session works once the database is back");
    }
}
