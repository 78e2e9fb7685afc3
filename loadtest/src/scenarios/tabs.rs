//! `tabs`: sessions each watched by several tabs (WebSocket connections of one user). One
//! tab per session sends; every tab receives the reply. Measures delivery across all tabs
//! and the skew between the tabs of a session (per delta, last arrival − first arrival).
//!
//! With a peer (another node of the same cluster), every other tab connects there: the
//! server's tabs subscribe first, so the server owns every session and the peer relays it,
//! and the report gives delivery on each node apart.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use relay_protocol::{ClientFrame, FinishReason, ServerFrame};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use super::{Measured, Replies, Reply, live, ms, secs_since};
use crate::client::{Conn, Endpoint, Error};
use crate::report::line;
use crate::{Errors, Live, Samples, ServerFigures, Summary, Target};

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 64;

/// What the `tabs` scenario does.
#[derive(Clone, Debug, Serialize)]
pub struct TabsConfig {
    /// Sessions (each of its own user).
    pub sessions: usize,
    /// Tabs (connections) watching each session.
    pub tabs: usize,
    /// Messages sent per session.
    pub messages: usize,
    /// Pause between a reply's `done` and the next message (ms).
    pub think_ms: u64,
    /// The message text.
    pub content: String,
    /// Longest silence allowed while replies are awaited (s).
    pub reply_timeout_secs: u64,
    /// Another node of the cluster (`http://host:port`): odd tabs connect there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl Default for TabsConfig {
    fn default() -> Self {
        TabsConfig {
            sessions: 4,
            tabs: 3,
            messages: 3,
            think_ms: 200,
            content: super::DEFAULT_CONTENT.into(),
            reply_timeout_secs: 60,
            peer: None,
        }
    }
}

/// The figures of a `tabs` run.
#[derive(Clone, Debug, Serialize)]
pub struct TabsReport {
    /// What ran.
    pub config: TabsConfig,
    /// From the first send to the last tab's last `done` (s).
    pub duration_secs: f64,
    /// Tabs subscribed.
    pub connections: usize,
    /// TCP connect to the `ready` frame.
    pub connect: Summary,
    /// Replies as every tab received them (TTFT is the sending tab's); `deltas_per_sec`
    /// counts deltas delivered to all tabs.
    pub replies: Replies,
    /// Per delta: its last arrival among the session's tabs minus its first.
    pub skew: Summary,
    /// Errors by code.
    pub errors: Errors,
    /// The server process, when its pid is known.
    pub server: Option<ServerFigures>,
    /// With a peer: the replies as the tabs on each node received them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_node: Option<ByNode>,
}

/// Replies on the node that owns the sessions and on the node that relays them.
#[derive(Clone, Debug, Serialize)]
pub struct ByNode {
    /// Tabs on the server (the sessions' owner).
    pub owner: Replies,
    /// Tabs on the peer (which relays the owner's events).
    pub relay: Replies,
}

impl fmt::Display for TabsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "tabs: {} sessions × {} tabs, {} messages, think {} ms",
            c.sessions, c.tabs, c.messages, c.think_ms
        )?;
        self.replies.write(f, &[("skew between tabs", &self.skew), ("connect + auth", &self.connect)])?;
        if let Some(by_node) = &self.by_node {
            writeln!(f, "tabs on the owner node:")?;
            by_node.owner.write(f, &[])?;
            writeln!(f, "tabs on the relaying node:")?;
            by_node.relay.write(f, &[])?;
        }
        line(f, "tabs subscribed", self.connections)?;
        line(f, "duration", format!("{:.2} s", self.duration_secs))?;
        line(f, "errors", &self.errors)?;
        if let Some(server) = &self.server {
            server.write(f)?;
        }
        Ok(())
    }
}

/// What one tab saw.
#[derive(Default)]
struct Tab {
    m: Measured,
    arrivals: Vec<(u64, Instant)>,
}

/// Sets up the users, sessions and tabs, then runs the messages.
pub async fn run(target: &Target, config: &TabsConfig) -> anyhow::Result<TabsReport> {
    let endpoint = Endpoint::new(target).await?;
    let (tokens, mut errors) = endpoint.register_many(config.sessions).await;
    let mut sessions = Vec::new();
    for token in &tokens {
        match endpoint.create_session(token).await {
            Ok(s) => sessions.push((token.clone(), s.id)),
            Err(e) => errors.add(format!("create_session_{}", e.key())),
        }
    }
    let monitor = target.monitor();
    let (live, progress) = live(target.progress);

    // Open and subscribe every tab first, so every tab sees every reply whole. With a peer,
    // the server's tabs (even) first, so the server owns the sessions; then the peer's (odd).
    let peer = match &config.peer {
        Some(url) => Some(Endpoint::new(&Target { server: url.clone(), ..target.clone() }).await?),
        None => None,
    };
    let on_peer = |t: usize| peer.is_some() && t % 2 == 1;
    let mut connect = Samples::default();
    let mut tabs = Vec::new();
    for phase in [false, true] {
        let opened: Vec<_> = stream::iter(sessions.iter().enumerate().flat_map(|(s, (token, id))| {
            (0..config.tabs).filter(move |t| on_peer(*t) == phase).map(move |t| (s, t, token.clone(), *id))
        }))
        .map(|(s, t, token, id)| {
            let endpoint = if phase { peer.clone().expect("peer tabs need a peer") } else { endpoint.clone() };
            async move {
                let (mut conn, latency) = endpoint.connect(&token).await?;
                conn.subscribe(id).await?;
                Ok::<_, Error>((s, t, id, conn, latency))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
        for result in opened {
            match result {
                Ok((s, t, id, conn, latency)) => {
                    connect.record(latency);
                    tabs.push((s, t, id, conn));
                }
                Err(e) => errors.add(e.key()),
            }
        }
    }
    Live::add(&live.connections, tabs.len() as i64);

    // How many replies each session's tabs wait for; the sender lowers it for a refused send.
    let expected: Vec<watch::Sender<usize>> = sessions.iter().map(|_| watch::Sender::new(config.messages)).collect();
    let start = Instant::now();
    let config = Arc::new(config.clone());
    let handles: Vec<_> = tabs
        .into_iter()
        .map(|(s, t, id, conn)| {
            let (expected_tx, live, config) = (expected[s].clone(), live.clone(), config.clone());
            let sender = t == 0;
            (s, on_peer(t), tokio::spawn(async move { tab(conn, id, sender, expected_tx, &config, &live).await }))
        })
        .collect();
    let mut per_session: HashMap<usize, Vec<Vec<(u64, Instant)>>> = HashMap::new();
    let (mut owner, mut relay) = (Measured::default(), Measured::default());
    for (s, relayed, handle) in handles {
        let node = if relayed { &mut relay } else { &mut owner };
        match handle.await {
            Ok(tab) => {
                per_session.entry(s).or_default().push(tab.arrivals);
                node.merge(tab.m);
            }
            Err(_) => node.errors.add("panic"),
        }
    }
    let duration = secs_since(start);
    let by_node = peer.is_some().then(|| ByNode { owner: owner.replies(duration), relay: relay.replies(duration) });
    let mut all = owner;
    all.merge(relay);
    drop(progress);
    let server = match monitor {
        Some(m) => Some(m.finish(Duration::from_secs(target.settle_secs)).await),
        None => None,
    };
    let mut skew = Samples::default();
    for tabs in per_session.values() {
        let mut by_seq: HashMap<u64, (Instant, Instant, usize)> = HashMap::new();
        for &(seq, at) in tabs.iter().flatten() {
            let e = by_seq.entry(seq).or_insert((at, at, 0));
            *e = (e.0.min(at), e.1.max(at), e.2 + 1);
        }
        for (first, last, n) in by_seq.into_values() {
            if n == tabs.len() && n > 1 {
                skew.record(last.duration_since(first));
            }
        }
    }
    errors.merge(all.errors.clone());
    Ok(TabsReport {
        config: (*config).clone(),
        duration_secs: duration,
        connections: connect.len(),
        connect: connect.summary(),
        replies: all.replies(duration),
        skew: skew.summary(),
        errors,
        server,
        by_node,
    })
}

/// One tab: receives every reply of its session; the sending tab also sends the messages.
async fn tab(
    mut conn: Conn,
    session_id: Uuid,
    sender: bool,
    expected: watch::Sender<usize>,
    config: &TabsConfig,
    live: &Live,
) -> Tab {
    let mut out = Tab::default();
    let mut watch = expected.subscribe();
    let timeout = Duration::from_secs(config.reply_timeout_secs);
    let mut reply: Option<Reply> = None;
    let (mut sent, mut dones) = (0, 0);
    let mut next_send = sender.then(Instant::now);
    let result: Result<(), Error> = async {
        while dones < *watch.borrow_and_update() {
            let due = next_send;
            tokio::select! {
                frame = conn.recv_timeout(timeout) => {
                    let at = Instant::now();
                    match frame? {
                        ServerFrame::Delta { session_id: sid, seq, text, .. } if sid == session_id => {
                            out.arrivals.push((seq, at));
                            out.m.delta(reply.as_mut(), at, &text, live);
                        }
                        ServerFrame::Done { session_id: sid, finish_reason, error, .. } if sid == session_id => {
                            dones += 1;
                            match finish_reason {
                                FinishReason::Stop | FinishReason::Length => out.m.completed += 1,
                                FinishReason::Cancelled => out.m.error("done_cancelled", live),
                                FinishReason::Error => {
                                    let code = error.map_or_else(|| "unknown".into(), |e| e.code.to_string());
                                    out.m.error(format!("done_error_{code}"), live);
                                }
                            }
                            if reply.take().is_some() {
                                Live::add(&live.streams, -1);
                                next_send = (sent < config.messages).then(|| at + ms(config.think_ms));
                            }
                        }
                        ServerFrame::Error { id, error, .. } => {
                            out.m.error(error.code.to_string(), live);
                            if sender && id.as_deref() == Some("send") && reply.take().is_some() {
                                Live::add(&live.streams, -1);
                                expected.send_modify(|n| *n = n.saturating_sub(1));
                                next_send = (sent < config.messages).then(|| at + ms(config.think_ms));
                            }
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                    let frame = ClientFrame::Send {
                        id: Some("send".into()),
                        session_id,
                        content: config.content.clone(),
                        client_message_id: None,
                    };
                    conn.send(&frame).await?;
                    sent += 1;
                    next_send = None;
                    reply = Some(Reply::new());
                    Live::add(&live.streams, 1);
                }
                _ = watch.changed() => {}
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        out.m.error(e.key(), live);
    }
    Live::add(&live.connections, -1);
    conn.close().await;
    out
}
