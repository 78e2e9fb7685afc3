//! `idle`: many authenticated connections held open doing nothing (pings are answered as
//! they are read). Measures connect + auth latency and the server's memory per connection.

use std::fmt;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use serde::Serialize;
use tokio::sync::watch;

use super::{chat::write_connect, live, secs_since};
use crate::client::Conn;
use crate::report::line;
use crate::{Endpoint, Errors, Live, Samples, ServerFigures, Summary, Target};

/// What the `idle` scenario does.
#[derive(Clone, Debug, Serialize)]
pub struct IdleConfig {
    /// Connections to open.
    pub connections: usize,
    /// Connections per user (the server allows `WS_MAX_CONNECTIONS_PER_USER`, 32 by default).
    pub per_user: usize,
    /// Seconds to hold them open once all are connected.
    pub hold_secs: f64,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig { connections: 100, per_user: 32, hold_secs: 10.0, connect_concurrency: 64 }
    }
}

/// The figures of an `idle` run.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    /// What ran.
    pub config: IdleConfig,
    /// Connections that reached `ready`.
    pub authenticated: usize,
    /// Authenticated connections that the server closed (or that broke) while held.
    pub dropped: usize,
    /// TCP connect to the `ready` frame.
    pub connect: Summary,
    /// Time to open all connections (s).
    pub connect_secs: f64,
    /// Connections opened per second.
    pub connects_per_sec: f64,
    /// Server memory per connection: RSS with every connection open minus RSS before, per
    /// authenticated connection (bytes).
    pub rss_per_connection_bytes: Option<f64>,
    /// Errors by code.
    pub errors: Errors,
    /// The server process, when its pid is known.
    pub server: Option<ServerFigures>,
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "idle: {} connections ({} per user) held {} s", c.connections, c.per_user, c.hold_secs)?;
        write_connect(f, &self.connect)?;
        line(f, "authenticated", self.authenticated)?;
        line(f, "dropped while held", self.dropped)?;
        line(f, "opening took", format!("{:.2} s ({:.0}/s)", self.connect_secs, self.connects_per_sec))?;
        if let Some(per) = self.rss_per_connection_bytes {
            line(f, "server RSS per connection", format!("{:.1} KiB", per / 1024.0))?;
        }
        line(f, "errors", &self.errors)?;
        if let Some(server) = &self.server {
            server.write(f)?;
        }
        Ok(())
    }
}

/// Opens the connections, holds them, then closes them.
pub async fn run(target: &Target, config: &IdleConfig) -> anyhow::Result<IdleReport> {
    let endpoint = Endpoint::new(target).await?;
    let per_user = config.per_user.max(1);
    let (tokens, mut errors) = endpoint.register_many(config.connections.div_ceil(per_user)).await;
    anyhow::ensure!(!tokens.is_empty() || config.connections == 0, "no user could register: {errors}");
    let monitor = target.monitor();
    let (live, progress) = live(target.progress);
    let (close_tx, close_rx) = watch::channel(false);

    let start = Instant::now();
    let opened: Vec<_> = stream::iter(0..config.connections)
        .map(|i| {
            let (endpoint, token) = (endpoint.clone(), tokens.get(i / per_user).cloned().unwrap_or_default());
            let live = live.clone();
            async move {
                let opened = endpoint.connect(&token).await;
                if opened.is_ok() {
                    Live::add(&live.connections, 1);
                } else {
                    Live::bump(&live.errors);
                }
                opened
            }
        })
        .buffer_unordered(config.connect_concurrency.max(1))
        .collect()
        .await;
    let connect_secs = secs_since(start);
    let mut connect = Samples::default();
    let mut holders = Vec::new();
    for result in opened {
        match result {
            Ok((conn, latency)) => {
                connect.record(latency);
                holders.push(tokio::spawn(hold(conn, close_rx.clone(), live.clone())));
            }
            Err(e) => errors.add(e.key()),
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(config.hold_secs)).await;
    // The "end" reading, with every connection still open.
    if let Some(m) = &monitor {
        m.end_load();
    }
    let _ = close_tx.send(true);
    let mut dropped = 0;
    for holder in holders {
        if let Err(key) = holder.await.unwrap_or_else(|_| Err("panic".into())) {
            dropped += 1;
            errors.add(key);
        }
    }
    drop(progress);
    let server = match monitor {
        Some(m) => Some(m.finish(Duration::from_secs(target.settle_secs)).await),
        None => None,
    };
    let authenticated = connect.len();
    let rss_per_connection_bytes = server
        .as_ref()
        .filter(|_| authenticated > 0)
        .map(|s| (s.rss_end_bytes as f64 - s.rss_before_bytes as f64) / authenticated as f64);
    Ok(IdleReport {
        config: config.clone(),
        authenticated,
        dropped,
        connect: connect.summary(),
        connect_secs,
        connects_per_sec: crate::report::rate(authenticated as u64, connect_secs),
        rss_per_connection_bytes,
        errors,
        server,
    })
}

/// Holds one connection, reading (and so answering pings), until told to close; returns
/// the error that ended it early, if any.
async fn hold(mut conn: Conn, mut close: watch::Receiver<bool>, live: std::sync::Arc<Live>) -> Result<(), String> {
    let result = tokio::select! {
        _ = close.wait_for(|c| *c) => Ok(()),
        e = async { loop { if let Err(e) = conn.recv().await { return e; } } } => Err(e.key()),
    };
    Live::add(&live.connections, -1);
    if result.is_ok() {
        conn.close().await;
    } else {
        Live::bump(&live.errors);
    }
    result
}
