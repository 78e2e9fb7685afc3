//! `burst`: many people pressing Enter at the same instant. Every connection is opened and
//! every session created first (`warm`: each also answered once, so its actor runs and
//! holds its history; cold: never used), then every send is released together, and each
//! reply's time to first token is measured from its own send. Rounds alternate (ABBA) with
//! as many simultaneous requests straight to the model, so the TTFT the server adds is
//! measured side by side with the model's own. The direct requests each open their HTTP
//! connection as they start (their TTFT includes a loopback connect, well under a
//! millisecond), while the server's connections are open before the release.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_protocol::{ClientFrame, FinishReason, ServerFrame};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::compare::{Added, Compared, Rounds};
use super::direct::DirectConfig;
use super::{Measured, Replies, Reply, live, secs_since};
use crate::client::{Conn, Endpoint, Error};
use crate::report::{latency_rows, line};
use crate::{Errors, Live, Samples, ServerFigures, Summary, Target};

/// What the `burst` scenario does.
#[derive(Clone, Debug, Serialize)]
pub struct BurstConfig {
    /// Users, one connection each.
    pub users: usize,
    /// Sessions per user: each sends once in the burst (`users × sessions` sends at once).
    pub sessions: usize,
    /// Sessions answered once before the burst (their actors running), or never used.
    pub warm: bool,
    /// Rounds; each runs a direct burst and a server burst (in alternating order), the
    /// server's on new sessions.
    pub rounds: usize,
    /// The message text.
    pub content: String,
    /// Longest silence while a reply is awaited (s).
    pub reply_timeout_secs: u64,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig {
            users: 10,
            sessions: 10,
            warm: false,
            rounds: 2,
            content: super::DEFAULT_CONTENT.into(),
            reply_timeout_secs: 60,
        }
    }
}

/// The figures of a `burst` run.
#[derive(Clone, Debug, Serialize)]
pub struct BurstReport {
    /// What ran.
    pub config: BurstConfig,
    /// The model's base URL used by the direct bursts.
    pub upstream: String,
    /// The model alone, over every direct burst.
    pub direct: Replies,
    /// Through the server, over every server burst.
    pub via_server: Replies,
    /// What the server adds to TTFT.
    pub added_ttft: Added,
    /// From the release to the last send written to its socket, per server burst: how
    /// much at once the sends really left.
    pub release_spread: Summary,
    /// Sends released through the server, over every round.
    pub sends: u64,
    /// Errors by stage and cause (`connect_…`, `create_…`, `warm_…`, `burst_…`), both paths.
    pub errors: Errors,
    /// The server process, when its pid is known.
    pub server: Option<ServerFigures>,
}

impl fmt::Display for BurstReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "burst: {} rounds of {} simultaneous sends ({} users × {} {} sessions), direct vs through the server",
            c.rounds,
            c.users * c.sessions,
            c.users,
            c.sessions,
            if c.warm { "warm" } else { "cold" }
        )?;
        latency_rows(
            f,
            &[
                ("TTFT direct", &self.direct.ttft),
                ("TTFT via server", &self.via_server.ttft),
                ("delivery direct", &self.direct.delivery),
                ("delivery via server", &self.via_server.delivery),
                ("release to last send", &self.release_spread),
            ],
        )?;
        self.added_ttft.write(f)?;
        line(
            f,
            "replies direct / server",
            format!("{} / {} of {} sends", self.direct.completed, self.via_server.completed, self.sends),
        )?;
        line(f, "errors", &self.errors)?;
        if let Some(server) = &self.server {
            server.write(f)?;
        }
        Ok(())
    }
}

/// Registers the users, then runs the rounds.
pub async fn run(target: &Target, upstream: &str, config: &BurstConfig) -> anyhow::Result<BurstReport> {
    let endpoint = Endpoint::new(target).await?;
    let (tokens, errors) = endpoint.register_many(config.users).await;
    let monitor = target.monitor();
    let direct_config = DirectConfig {
        streams: config.users * config.sessions,
        requests: 1,
        content: config.content.clone(),
        reply_timeout_secs: config.reply_timeout_secs,
    };
    let rounds = Rounds::run(config.rounds, upstream, &direct_config, target.progress, || async {
        let burst = server_burst(&endpoint, &tokens, config, target.progress).await;
        (burst.measured, burst.secs, (burst.sends, burst.spread))
    })
    .await?;
    let (mut spread, mut sends) = (Samples::default(), 0);
    for &(n, s) in &rounds.extras {
        sends += n;
        if let Some(s) = s {
            spread.record(s);
        }
    }
    let Compared { direct, via_server, added_ttft, errors, server } = rounds.compare(errors, monitor, target).await;
    Ok(BurstReport {
        config: config.clone(),
        upstream: upstream.into(),
        added_ttft,
        direct,
        via_server,
        release_spread: spread.summary(),
        sends,
        errors,
        server,
    })
}

/// What one server burst measured.
struct Burst {
    measured: Measured,
    /// From the release to the last reply (s).
    secs: f64,
    /// Sends released.
    sends: u64,
    /// From the release to the last send written.
    spread: Option<Duration>,
}

/// One burst through the server: every user connects and prepares its sessions, says so,
/// and waits; once all have (or failed), all are released at once.
async fn server_burst(endpoint: &Arc<Endpoint>, tokens: &[String], config: &BurstConfig, progress: bool) -> Burst {
    let (live, _progress) = live(progress);
    let (prepared_tx, mut prepared_rx) = mpsc::channel::<usize>(tokens.len().max(1));
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let config = Arc::new(config.clone());
    let users: Vec<_> = tokens
        .iter()
        .map(|token| {
            let (endpoint, config, live) = (endpoint.clone(), config.clone(), live.clone());
            tokio::spawn(user(endpoint, token.clone(), config, prepared_tx.clone(), go_rx.clone(), live))
        })
        .collect();
    // Every user reports once, with the sessions it will send on (none if it failed); a
    // user that panicked drops its sender without reporting.
    drop(prepared_tx);
    let mut sends = 0;
    while let Some(n) = prepared_rx.recv().await {
        sends += n as u64;
    }
    let released = Instant::now();
    let _ = go_tx.send(Some(released));
    let mut results = Vec::with_capacity(users.len());
    for user in users {
        results.push(user.await);
    }
    let secs = secs_since(released);
    let (mut measured, mut last_sent) = (Measured::default(), None::<Instant>);
    for result in results {
        match result {
            Ok((m, sent)) => {
                measured.merge(m);
                last_sent = last_sent.max(sent);
            }
            Err(_) => measured.errors.add("panic"),
        }
    }
    Burst { measured, secs, sends, spread: last_sent.map(|at| at.saturating_duration_since(released)) }
}

/// One user of a burst: connects, creates its sessions (warms them), reports how many it
/// will send on, waits for the release, sends on every session at once and reads every
/// reply to its end. Returns its measurements and when its last send was written.
async fn user(
    endpoint: Arc<Endpoint>,
    token: String,
    config: Arc<BurstConfig>,
    prepared: mpsc::Sender<usize>,
    mut go: watch::Receiver<Option<Instant>>,
    live: Arc<Live>,
) -> (Measured, Option<Instant>) {
    let mut m = Measured::default();
    let timeout = Duration::from_secs(config.reply_timeout_secs);
    let ready = prepare(&endpoint, &token, &config, &live, &mut m, timeout).await;
    let _ = prepared.send(ready.as_ref().map_or(0, |(_, ids)| ids.len())).await;
    drop(prepared);
    let Some((mut conn, ids)) = ready else { return (m, None) };
    if go.wait_for(Option::is_some).await.is_err() {
        return (m, None);
    }
    let mut replies: HashMap<Uuid, Reply> = HashMap::with_capacity(ids.len());
    let sending = send_to_each(&mut conn, &ids, "b", &config.content, |id| {
        replies.insert(id, Reply::new());
        Live::add(&live.streams, 1);
    });
    if let Err(e) = sending.await {
        m.error(format!("burst_{}", e.key()), &live);
        return (m, None);
    }
    let sent = Instant::now();
    if let Err(e) = read_replies(&mut conn, &ids, Some(&mut replies), &mut m, &live, timeout).await {
        m.error(format!("burst_{}", e.key()), &live);
    }
    Live::add(&live.connections, -1);
    conn.close().await;
    (m, Some(sent))
}

/// Sends `content` once to each session (request ids `{prefix}0`, `{prefix}1`, …), calling
/// `sent` after each send leaves; stops at the first that fails.
async fn send_to_each(
    conn: &mut Conn,
    ids: &[Uuid],
    prefix: &str,
    content: &str,
    mut sent: impl FnMut(Uuid),
) -> Result<(), Error> {
    for (k, id) in ids.iter().enumerate() {
        let frame = ClientFrame::Send {
            id: Some(format!("{prefix}{k}")),
            session_id: *id,
            content: content.to_owned(),
            client_message_id: None,
        };
        conn.send(&frame).await?;
        sent(*id);
    }
    Ok(())
}

/// Connects and creates the sessions, each answered once if warm; errors are counted under
/// their stage.
async fn prepare(
    endpoint: &Endpoint,
    token: &str,
    config: &BurstConfig,
    live: &Live,
    m: &mut Measured,
    timeout: Duration,
) -> Option<(Conn, Vec<Uuid>)> {
    let mut conn = match endpoint.connect(token).await {
        Ok((conn, _)) => conn,
        Err(e) => {
            m.error(format!("connect_{}", e.key()), live);
            return None;
        }
    };
    Live::add(&live.connections, 1);
    let ids = match super::chat::create_sessions(&mut conn, config.sessions, timeout).await {
        Ok(ids) => ids,
        Err(e) => {
            m.error(format!("create_{}", e.key()), live);
            return None;
        }
    };
    if config.warm {
        if let Err(e) = send_to_each(&mut conn, &ids, "w", &config.content, |_| {}).await {
            m.error(format!("warm_{}", e.key()), live);
            return None;
        }
        // The warm-up replies are read to their end but not measured.
        let mut warm = Measured::default();
        let failed = match read_replies(&mut conn, &ids, None, &mut warm, live, timeout).await {
            Err(e) => Some(e.key()),
            Ok(()) => warm.errors.0.keys().next().cloned(),
        };
        if let Some(cause) = failed {
            m.error(format!("warm_{cause}"), live);
            return None;
        }
    }
    Some((conn, ids))
}

/// Reads frames until every session of `ids` has its `done` (or its send was refused),
/// recording each reply's deltas when `replies` is given.
async fn read_replies(
    conn: &mut Conn,
    ids: &[Uuid],
    mut replies: Option<&mut HashMap<Uuid, Reply>>,
    m: &mut Measured,
    live: &Live,
    timeout: Duration,
) -> Result<(), Error> {
    let mut open: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
    while !open.is_empty() {
        let frame = conn.recv_timeout(timeout).await?;
        let at = Instant::now();
        match frame {
            ServerFrame::Delta { session_id, text, .. } if open.contains(&session_id) => {
                let reply = replies.as_deref_mut().and_then(|r| r.get_mut(&session_id));
                m.delta(reply, at, &text, live);
            }
            ServerFrame::Done { session_id, finish_reason, error, .. } if open.remove(&session_id) => {
                if replies.is_some() {
                    Live::add(&live.streams, -1);
                }
                match finish_reason {
                    FinishReason::Stop | FinishReason::Length => m.completed += 1,
                    FinishReason::Cancelled => m.error("done_cancelled", live),
                    FinishReason::Error => {
                        let code = error.map_or_else(|| "unknown".into(), |e| e.code.to_string());
                        m.error(format!("done_error_{code}"), live);
                    }
                }
            }
            ServerFrame::Error { session_id: Some(session_id), error, .. } if open.remove(&session_id) => {
                // A refused send: no reply will come.
                if replies.is_some() {
                    Live::add(&live.streams, -1);
                }
                m.error(format!("refused_{}", error.code), live);
            }
            _ => {}
        }
    }
    Ok(())
}
