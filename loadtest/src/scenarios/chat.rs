//! `chat`: users chatting. Each user has one WebSocket carrying several sessions and sends
//! a few messages in each, one at a time, with a think time between a reply's end and the
//! next message; users start spread over a ramp-up.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_protocol::{ClientFrame, FinishReason, ServerFrame};
use serde::Serialize;
use uuid::Uuid;

use super::{Measured, Replies, Reply, join_all, live, ms, secs_since};
use crate::client::{Conn, Endpoint, Error};
use crate::report::{latency_rows, line};
use crate::{Errors, Live, Samples, ServerFigures, Summary, Target};

/// What the `chat` scenario does.
#[derive(Clone, Debug, Serialize)]
pub struct ChatConfig {
    /// Users, each with one connection.
    pub users: usize,
    /// Sessions per user (on its one connection).
    pub sessions: usize,
    /// Messages sent per session.
    pub messages: usize,
    /// Pause between a reply's `done` and the next message of that session (ms).
    pub think_ms: u64,
    /// Users start spread evenly over this many seconds.
    pub ramp_secs: f64,
    /// The message text (may carry a mock directive such as `[[mock tokens=200]]`).
    pub content: String,
    /// Longest silence allowed while a reply is awaited (s); then the connection counts a `timeout`.
    pub reply_timeout_secs: u64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            users: 10,
            sessions: 1,
            messages: 3,
            think_ms: 500,
            ramp_secs: 0.0,
            content: super::DEFAULT_CONTENT.into(),
            reply_timeout_secs: 60,
        }
    }
}

/// The figures of a `chat` run.
#[derive(Clone, Debug, Serialize)]
pub struct ChatReport {
    /// What ran.
    pub config: ChatConfig,
    /// From the first connect to the last reply (s).
    pub duration_secs: f64,
    /// Connections that reached `ready`.
    pub connections: usize,
    /// TCP connect to the `ready` frame.
    pub connect: Summary,
    /// The replies.
    pub replies: Replies,
    /// Replies asked for in all (users × sessions × messages).
    pub replies_expected: u64,
    /// Errors by code.
    pub errors: Errors,
    /// The server process, when its pid is known.
    pub server: Option<ServerFigures>,
}

impl fmt::Display for ChatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "chat: {} users × {} sessions × {} messages, think {} ms, ramp {} s",
            c.users, c.sessions, c.messages, c.think_ms, c.ramp_secs
        )?;
        self.replies.write(f, &[("connect + auth", &self.connect)])?;
        line(f, "replies expected", self.replies_expected)?;
        line(f, "connections", self.connections)?;
        line(f, "duration", format!("{:.2} s", self.duration_secs))?;
        if self.duration_secs > 0.0 {
            line(
                f,
                "replies completed per second",
                format!("{:.0}", self.replies.completed as f64 / self.duration_secs),
            )?;
        }
        line(f, "errors", &self.errors)?;
        if let Some(server) = &self.server {
            server.write(f)?;
            if self.replies.completed > 0 {
                let per_reply = server.cpu_secs * 1000.0 / self.replies.completed as f64;
                line(f, "server CPU per reply", format!("{per_reply:.2} ms"))?;
            }
        }
        Ok(())
    }
}

/// Registers the users and runs the scenario.
pub async fn run(target: &Target, config: &ChatConfig) -> anyhow::Result<ChatReport> {
    let endpoint = Endpoint::new(target).await?;
    let (tokens, mut errors) = endpoint.register_many(config.users).await;
    let monitor = target.monitor();
    let (load, connect, connections, duration) = drive(&endpoint, &tokens, config, target.progress).await;
    let server = match monitor {
        Some(m) => Some(m.finish(Duration::from_secs(target.settle_secs)).await),
        None => None,
    };
    errors.merge(load.errors.clone());
    Ok(ChatReport {
        config: config.clone(),
        duration_secs: duration,
        connections,
        connect: connect.summary(),
        replies: load.replies(duration),
        replies_expected: (config.users * config.sessions * config.messages) as u64,
        errors,
        server,
    })
}

/// Runs the load for already registered users (one per token): the measurements, connect
/// latencies, connections that reached `ready`, and the run's length in seconds.
pub(crate) async fn drive(
    endpoint: &Arc<Endpoint>,
    tokens: &[String],
    config: &ChatConfig,
    progress: bool,
) -> (Measured, Samples, usize, f64) {
    let (live, _progress) = live(progress);
    let start = Instant::now();
    let n = tokens.len();
    let config = Arc::new(config.clone());
    let results = join_all(n, |i| {
        let at = start + Duration::from_secs_f64(config.ramp_secs * i as f64 / n.max(1) as f64);
        user(endpoint.clone(), tokens[i].clone(), config.clone(), at, live.clone())
    })
    .await;
    let duration = secs_since(start);
    let (mut all, mut connect, mut connections) = (Measured::default(), Samples::default(), 0);
    for result in results {
        match result {
            Ok((m, latency)) => {
                if let Some(latency) = latency {
                    connect.record(latency);
                    connections += 1;
                }
                all.merge(m);
            }
            Err(_) => all.errors.add("panic"),
        }
    }
    (all, connect, connections, duration)
}

/// One user: connect at `at`, create the sessions, chat, close.
async fn user(
    endpoint: Arc<Endpoint>,
    token: String,
    config: Arc<ChatConfig>,
    at: Instant,
    live: Arc<Live>,
) -> (Measured, Option<Duration>) {
    tokio::time::sleep_until(at.into()).await;
    let mut m = Measured::default();
    let (mut conn, latency) = match endpoint.connect(&token).await {
        Ok(ok) => ok,
        Err(e) => {
            m.error(e.key(), &live);
            return (m, None);
        }
    };
    Live::add(&live.connections, 1);
    if let Err(e) = chat(&mut conn, &config, &live, &mut m).await {
        m.error(e.key(), &live);
    }
    Live::add(&live.connections, -1);
    conn.close().await;
    (m, Some(latency))
}

/// One session of a user's connection.
struct Run {
    id: Uuid,
    sent: usize,
    reply: Option<Reply>,
    next_send: Option<Instant>,
}

/// What woke the connection's loop.
enum Event {
    Frame(Box<Result<ServerFrame, Error>>, Instant),
    SendDue,
    Silent,
}

/// Creates `n` sessions over the connection, all asked at once; their ids in order.
pub(crate) async fn create_sessions(conn: &mut Conn, n: usize, timeout: Duration) -> Result<Vec<Uuid>, Error> {
    for k in 0..n {
        conn.send(&ClientFrame::CreateSession { id: Some(format!("c{k}")), title: Some(format!("loadtest {k}")) })
            .await?;
    }
    let mut ids: Vec<Option<Uuid>> = vec![None; n];
    while ids.iter().any(Option::is_none) {
        match conn.recv_timeout(timeout).await? {
            ServerFrame::SessionCreated { id: Some(id), session } => {
                if let Some(slot) =
                    id.strip_prefix('c').and_then(|k| k.parse::<usize>().ok()).and_then(|k| ids.get_mut(k))
                {
                    *slot = Some(session.id);
                }
            }
            ServerFrame::Error { id: Some(id), error, .. } if id.starts_with('c') => {
                return Err(Error::Frame(error.code));
            }
            _ => {}
        }
    }
    Ok(ids.into_iter().flatten().collect())
}

/// Creates the sessions over the connection, then runs them to the end.
async fn chat(conn: &mut Conn, config: &ChatConfig, live: &Live, m: &mut Measured) -> Result<(), Error> {
    let timeout = Duration::from_secs(config.reply_timeout_secs);
    let ids = create_sessions(conn, config.sessions, timeout).await?;
    let now = Instant::now();
    let mut runs: Vec<Run> = ids.into_iter().map(|id| Run { id, sent: 0, reply: None, next_send: Some(now) }).collect();
    let index: HashMap<Uuid, usize> = runs.iter().enumerate().map(|(k, r)| (r.id, k)).collect();
    let mut last_frame = Instant::now();
    let think = ms(config.think_ms);

    // A reply ended (or was refused): schedule the session's next message, or finish it.
    let ended = |run: &mut Run, at: Instant| {
        Live::add(&live.streams, -1);
        run.reply = None;
        run.next_send = (run.sent < config.messages).then_some(at + think);
    };

    while runs.iter().any(|r| r.reply.is_some() || r.next_send.is_some()) {
        let due = runs.iter().filter_map(|r| r.next_send).min();
        let waiting = runs.iter().any(|r| r.reply.is_some());
        let event = tokio::select! {
            frame = conn.recv() => Event::Frame(Box::new(frame), Instant::now()),
            _ = tokio::time::sleep_until(due.unwrap_or(now).into()), if due.is_some() => Event::SendDue,
            _ = tokio::time::sleep_until((last_frame + timeout).into()), if waiting => Event::Silent,
        };
        match event {
            Event::Silent => return Err(Error::Timeout),
            Event::SendDue => {
                let now = Instant::now();
                for (k, run) in runs.iter_mut().enumerate() {
                    if run.next_send.is_some_and(|t| t <= now) {
                        let frame = ClientFrame::Send {
                            id: Some(format!("m{k}")),
                            session_id: run.id,
                            content: config.content.clone(),
                            client_message_id: None,
                        };
                        conn.send(&frame).await?;
                        run.sent += 1;
                        run.next_send = None;
                        run.reply = Some(Reply::new());
                        Live::add(&live.streams, 1);
                        if !waiting {
                            last_frame = Instant::now();
                        }
                    }
                }
            }
            Event::Frame(frame, at) => {
                last_frame = at;
                match (*frame)? {
                    ServerFrame::Delta { session_id, text, .. } => {
                        let run = index.get(&session_id).map(|&k| &mut runs[k]);
                        m.delta(run.and_then(|r| r.reply.as_mut()), at, &text, live);
                    }
                    ServerFrame::Done { session_id, finish_reason, error, .. } => {
                        match finish_reason {
                            FinishReason::Stop | FinishReason::Length => m.completed += 1,
                            FinishReason::Cancelled => m.error("done_cancelled", live),
                            FinishReason::Error => {
                                let code = error.map_or_else(|| "unknown".into(), |e| e.code.to_string());
                                m.error(format!("done_error_{code}"), live);
                            }
                        }
                        if let Some(run) = index.get(&session_id).map(|&k| &mut runs[k])
                            && run.reply.is_some()
                        {
                            ended(run, at);
                        }
                    }
                    ServerFrame::Error { id, error, .. } => {
                        m.error(error.code.to_string(), live);
                        // A refused send: no reply will come.
                        let k = id.as_deref().and_then(|id| id.strip_prefix('m')).and_then(|k| k.parse::<usize>().ok());
                        if let Some(run) = k.and_then(|k| runs.get_mut(k))
                            && run.reply.is_some_and(|r| r.last_delta.is_none())
                        {
                            ended(run, at);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Writes the connect latency row alone (for scenarios that only connect).
pub(crate) fn write_connect(f: &mut fmt::Formatter<'_>, connect: &Summary) -> fmt::Result {
    latency_rows(f, &[("connect + auth", connect)])
}
