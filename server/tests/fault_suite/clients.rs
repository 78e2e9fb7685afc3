//! The clients of a schedule, behaving as real ones would: users with sessions, tabs on
//! different nodes that subscribe, read everything, subscribe again when told to (or after
//! a reconnect) and move to another node when theirs goes away; and a sender per session
//! that sends, edits, regenerates and stops, each keyed, retrying after errors with the
//! same key. Everything is written down (see `history`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_protocol::{AuthResponse, ErrorCode, ServerFrame, Session};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::history::{OpKind, OpRecord, SharedTranscript, TabEvent, Transcript, now};

/// A user of the schedule.
#[derive(Clone, Debug)]
pub struct User {
    pub token: String,
}

/// A session of the schedule, with the marker its messages carry (so the mock's journal
/// tells which session a model request was for).
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: Uuid,
    pub user: usize,
    pub marker: String,
}

/// How an operation sent through a tab ended.
#[derive(Debug)]
enum Answer {
    Acked(relay_protocol::Message),
    Refused(ErrorCode),
    Lost,
}

/// A request a sender asks its tab to send.
struct Command {
    frame: Value,
    request_id: String,
    answer: oneshot::Sender<Answer>,
}

/// Registers the users and creates their sessions through `node` (the first that answers).
pub async fn setup(
    http: &reqwest::Client,
    nodes: &[String],
    users: usize,
    sessions_per_user: usize,
) -> (Vec<User>, Vec<SessionInfo>) {
    let mut all_users = Vec::new();
    let mut sessions = Vec::new();
    for u in 0..users {
        let addr = &nodes[u % nodes.len()];
        let auth: AuthResponse = http
            .post(format!("http://{addr}/api/v1/auth/register"))
            .json(&json!({"username": format!("user{u}"), "password": "password123"}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("register answer");
        for _ in 0..sessions_per_user {
            let session: Session = http
                .post(format!("http://{addr}/api/v1/chat/sessions"))
                .bearer_auth(&auth.token)
                .json(&json!({}))
                .send()
                .await
                .expect("create session")
                .json()
                .await
                .expect("session");
            let marker = format!("S{}", sessions.len());
            sessions.push(SessionInfo { id: session.id, user: u, marker });
        }
        all_users.push(User { token: auth.token });
    }
    (all_users, sessions)
}

/// A tab: one WebSocket at a time to some node, watching one session, until `stop`.
pub struct Tab {
    pub transcript: SharedTranscript,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Tab {
    pub fn start(
        nodes: Arc<Vec<String>>,
        first_node: usize,
        user_index: usize,
        user: User,
        session_index: usize,
        session: Uuid,
        stop: CancellationToken,
    ) -> Tab {
        let transcript =
            Arc::new(Mutex::new(Transcript { user: user_index, session: session_index, events: Vec::new() }));
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_tab(nodes, first_node, user, session, transcript.clone(), receiver, stop));
        Tab { transcript, commands, task }
    }

    /// Sends a request through the tab and waits (a while) for its `ack` or `error`.
    async fn ask(&self, frame: Value, request_id: &str, wait: Duration) -> Answer {
        let (answer, answered) = oneshot::channel();
        if self.commands.send(Command { frame, request_id: request_id.to_owned(), answer }).is_err() {
            return Answer::Lost;
        }
        match tokio::time::timeout(wait, answered).await {
            Ok(Ok(answer)) => answer,
            _ => Answer::Lost,
        }
    }

    pub async fn join(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn record(transcript: &SharedTranscript, event: TabEvent) {
    transcript.lock().unwrap().events.push((now(), event));
}

async fn run_tab(
    nodes: Arc<Vec<String>>,
    mut node: usize,
    user: User,
    session: Uuid,
    transcript: SharedTranscript,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stop: CancellationToken,
) {
    let mut subscribes = 0u64;
    'connection: while !stop.is_cancelled() {
        let mut request = format!("ws://{}/api/v1/ws", nodes[node]).into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {}", user.token).parse().unwrap());
        let connected = tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(request)).await;
        let Ok(Ok((mut ws, _))) = connected else {
            record(&transcript, TabEvent::Disconnected);
            node = (node + 1) % nodes.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        record(&transcript, TabEvent::Connected(node));
        let mut pending: HashMap<String, oneshot::Sender<Answer>> = HashMap::new();
        let mut last_heard = tokio::time::Instant::now();
        let mut pinger = tokio::time::interval(Duration::from_millis(1500));
        subscribes += 1;
        let subscribe = |ws_id: u64| {
            let id = format!("sub-{ws_id}");
            record(&transcript, TabEvent::Subscribing(id.clone()));
            json!({"type": "subscribe", "id": id, "session_id": session})
        };
        let frame = subscribe(subscribes);
        if ws.send(WsMessage::Text(frame.to_string().into())).await.is_err() {
            record(&transcript, TabEvent::Disconnected);
            continue;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    break 'connection;
                }
                command = commands.recv() => {
                    let Some(command) = command else { break 'connection };
                    if ws.send(WsMessage::Text(command.frame.to_string().into())).await.is_err() {
                        let _ = command.answer.send(Answer::Lost);
                        break;
                    }
                    pending.insert(command.request_id, command.answer);
                }
                _ = pinger.tick() => {
                    // A node cut off or paused says nothing: a tab that hears nothing for a
                    // while goes elsewhere, as a browser's socket would time out.
                    if last_heard.elapsed() > Duration::from_secs(4) {
                        break;
                    }
                    if ws.send(WsMessage::Text(json!({"type": "ping", "id": "ping"}).to_string().into())).await.is_err() {
                        break;
                    }
                }
                message = ws.next() => {
                    let text = match message {
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    last_heard = tokio::time::Instant::now();
                    let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else { continue };
                    if matches!(frame, ServerFrame::Pong { .. }) {
                        continue;
                    }
                    record(&transcript, TabEvent::Frame(frame.clone()));
                    match &frame {
                        ServerFrame::Ack { id: Some(id), message } => {
                            if let Some(answer) = pending.remove(id) {
                                let _ = answer.send(Answer::Acked(message.clone()));
                            }
                        }
                        ServerFrame::Error { id: Some(id), error, .. } => {
                            if let Some(answer) = pending.remove(id) {
                                let _ = answer.send(Answer::Refused(error.code));
                            }
                        }
                        ServerFrame::Error { id: None, session_id: Some(s), .. } if *s == session => {
                            subscribes += 1;
                            let frame = subscribe(subscribes);
                            if ws.send(WsMessage::Text(frame.to_string().into())).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        record(&transcript, TabEvent::Disconnected);
        for (_, answer) in pending.drain() {
            let _ = answer.send(Answer::Lost);
        }
        node = (node + 1) % nodes.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends operations to one session through `tab` until `until`, recording each.
pub async fn run_sender(
    tab: Arc<Tab>,
    session_index: usize,
    session: SessionInfo,
    seed: u64,
    until: tokio::time::Instant,
    ops: Arc<Mutex<Vec<OpRecord>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (session_index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n = 0u64;
    let mut last_user: Option<Uuid> = None;
    while tokio::time::Instant::now() < until {
        n += 1;
        let roll: u32 = rng.gen_range(0..100);
        let tokens: u32 = rng.gen_range(5..40);
        let directive = format!("[[mock tokens={tokens} tps=50 delay_ms=0]]");
        let (kind, frame, key, content) = if roll < 8 {
            (OpKind::Stop, json!({"type": "stop", "session_id": session.id}), None, None)
        } else if roll < 15 {
            let key = format!("g-{}-{n}", session.marker);
            let frame = json!({"type": "regenerate", "session_id": session.id, "client_message_id": key});
            (OpKind::Regenerate, frame, Some(key), None)
        } else if let Some(message_id) = last_user.filter(|_| roll < 20) {
            let key = format!("e-{}-{n}", session.marker);
            let content = format!("{} edit{n} {directive}", session.marker);
            let frame = json!({"type": "edit", "session_id": session.id, "message_id": message_id,
                "content": content, "client_message_id": key});
            (OpKind::Edit, frame, Some(key), Some(content))
        } else {
            let key = format!("s-{}-{n}", session.marker);
            let content = format!("{} op{n} {directive}", session.marker);
            let frame = json!({"type": "send", "session_id": session.id, "content": content, "client_message_id": key});
            (OpKind::Send, frame, Some(key), Some(content))
        };
        let mut op = OpRecord {
            session: session_index,
            kind,
            key,
            content,
            invoked: now(),
            acked: None,
            attempts: 0,
            errors: Vec::new(),
        };
        if kind == OpKind::Stop {
            op.attempts = 1;
            let mut frame = frame;
            frame["id"] = json!(format!("op{n}"));
            let _ = tab.ask(frame, &format!("op{n}"), Duration::from_millis(300)).await;
        } else {
            // A real client tries again (with the same key) until it hears back, a while.
            let give_up = tokio::time::Instant::now() + Duration::from_secs(12);
            while tokio::time::Instant::now() < give_up {
                op.attempts += 1;
                let request_id = format!("op{n}-{}", op.attempts);
                let mut frame = frame.clone();
                frame["id"] = json!(request_id);
                match tab.ask(frame, &request_id, Duration::from_secs(6)).await {
                    Answer::Acked(message) => {
                        if kind != OpKind::Regenerate {
                            last_user = Some(message.id);
                        }
                        op.acked = Some((message, now()));
                        break;
                    }
                    Answer::Refused(code) => {
                        op.errors.push(format!("{code:?}"));
                        // Refusals that retrying cannot fix end the operation.
                        if matches!(code, ErrorCode::BadRequest | ErrorCode::NotFound | ErrorCode::InvalidContent) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..500))).await;
                    }
                    Answer::Lost => {
                        op.errors.push("lost".into());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        ops.lock().unwrap().push(op);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..900))).await;
    }
}

/// After the faults: a fresh connection per session sends one more message; it must be
/// answered in full (the cluster recovered). Returns a description of each failure.
pub async fn probe(nodes: &[String], users: &[User], sessions: &[SessionInfo]) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, session) in sessions.iter().enumerate() {
        let addr = &nodes[i % nodes.len()];
        let mut request = format!("ws://{addr}/api/v1/ws").into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {}", users[session.user].token).parse().unwrap());
        let outcome = tokio::time::timeout(Duration::from_secs(40), async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
            let mut last_error = "no answer".to_string();
            while tokio::time::Instant::now() < deadline {
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request.clone()).await else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                };
                let content = format!("{} probe [[mock tokens=5 tps=100 delay_ms=0]]", session.marker);
                // A fresh key each try: this checks that the session answers, not idempotency.
                let frame = json!({"type": "send", "id": "probe", "session_id": session.id, "content": content,
                    "client_message_id": Uuid::new_v4().to_string()});
                if ws.send(WsMessage::Text(frame.to_string().into())).await.is_err() {
                    continue;
                }
                let mut reply = None;
                while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    let WsMessage::Text(text) = message else { continue };
                    let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else { continue };
                    match frame {
                        ServerFrame::Error { id: Some(_), error, .. } => {
                            last_error = format!("{:?}", error.code);
                            break;
                        }
                        ServerFrame::GenerationStarted { message_id, .. } if reply.is_none() => {
                            reply = Some(message_id)
                        }
                        ServerFrame::Done { message_id, finish_reason, .. } if reply == Some(message_id) => {
                            if finish_reason == relay_protocol::FinishReason::Stop {
                                return Ok(());
                            }
                            last_error = format!("ended {finish_reason:?}");
                            break;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(last_error)
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failures.push(format!("session {}: the probe failed: {why}", session.marker)),
            Err(_) => failures.push(format!("session {}: the probe got no answer", session.marker)),
        }
    }
    failures
}
