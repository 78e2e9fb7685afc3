//! Moving messages between nodes: one publishing connection and one subscribing
//! connection per node, in order, and what travels on them (what is done with what
//! arrives: [`super::dispatch`]).
//!
//! Redis pub/sub delivers at most once, so every message says who published it, and what
//! travels on a node's channel (requests, answers, snapshots, acks) is numbered per
//! publisher and channel. A receiver that sees a number skipped, a publisher whose publish
//! failed (it then sends a loss notice on the channels it could not reach), and a
//! subscriber whose connection dropped all end the same way: every tab that may have
//! missed something is told to subscribe again, and every request that may have lost its
//! answer fails at once. A session's events are numbered already (`seq`, gap-free per
//! session): a relay checks them (see [`super::relay`]).
//!
//! Messages are framed as a header line, then the payload: `<instance> <n>\n<payload>`, where
//! `n` is the message's number on its channel (`-` on a session's channel), and a loss notice
//! is the header `<instance> - lost` with no payload.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::keys::*;
use super::{Cluster, ClusterError};
use crate::fanout::{Outbound, ReceiverId};

/// How many publishes go out in one pipeline at most.
pub(super) const PUBLISH_BATCH: usize = 256;
/// The longest pause between two attempts to publish while Redis fails.
const PUBLISH_BACKOFF: Duration = Duration::from_secs(1);

/// Messages on a node's channel and on the users channel. Those for one instance name it
/// (`to`): a node id outlives its instances, and a late message for an instance that is gone
/// must not reach whatever the new instance gave the same receiver id.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Envelope {
    /// A request for the instance that owns a session.
    Call { to: String, call: u64, body: serde_json::Value },
    /// The answer to a call.
    Answer { to: String, call: u64, body: serde_json::Value },
    /// A frame for one receiver of the instance; `activates` is set on a snapshot (its
    /// session and `seq`), after which the receiver gets the session's events.
    Direct { to: String, receiver: ReceiverId, activates: Option<(Uuid, u64)>, text: String },
    /// A user event, for every connection of the user on every node.
    User { user: Uuid, text: String },
    /// Which receivers of the publishing instance watch `session` now (sent every
    /// heartbeat for each relayed session): the owner forgets the others it counted, so an
    /// unsubscribe lost with a dropped connection, or overtaken by a later request, is
    /// mended within a beat.
    Watching { to: String, session: Uuid, receivers: Vec<ReceiverId> },
}

/// Subscription changes, applied in order by the subscriber task.
pub(super) enum SubscriberCommand {
    /// Subscribe to a session's channel (no-op when subscribed); answered once confirmed.
    Watch(Uuid, oneshot::Sender<Result<(), ClusterError>>),
    /// Unsubscribe from the channels of sessions nobody here watches any more.
    Sweep,
}

/// A message waiting to be published: its channel and its framed bytes.
pub(super) type Outgoing = (String, Vec<u8>);

/// A received message, unframed.
pub(super) struct Framed<'a> {
    /// The publishing instance.
    pub(super) from: &'a str,
    /// Its number on the channel (`None` on a session's channel).
    pub(super) n: Option<u64>,
    /// A loss notice: messages from `from` on this channel were lost.
    pub(super) lost: bool,
    /// What it carries.
    pub(super) payload: &'a [u8],
}

fn frame(from: &str, n: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let n = n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let mut bytes = Vec::with_capacity(from.len() + n.len() + 2 + payload.len());
    bytes.extend_from_slice(from.as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(n.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(payload);
    bytes
}

fn loss_notice(from: &str) -> Vec<u8> {
    format!("{from} - lost\n").into_bytes()
}

pub(super) fn unframe(bytes: &[u8]) -> Option<Framed<'_>> {
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let mut fields = header.split(' ');
    let from = fields.next().filter(|f| !f.is_empty())?;
    let n = match fields.next()? {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    let lost = fields.next() == Some("lost");
    Some(Framed { from, n, lost, payload: &bytes[newline + 1..] })
}

/// What this node numbers and what it heard: the next number of each channel it publishes
/// on, and the last number heard from each publisher on each channel it reads.
#[derive(Default)]
pub(super) struct Numbering {
    sent: HashMap<String, u64>,
    last_heard: HashMap<(bool, Arc<str>), u64>,
}

impl Numbering {
    /// Forgets what was heard from the publishers `gone` names (instances that left).
    pub(super) fn forget(&mut self, gone: impl Fn(&str) -> bool) {
        self.last_heard.retain(|(_, from), _| !gone(from));
    }

    /// Notes a message numbered `n` from `from` (on the users channel, or this node's);
    /// false when numbers before it were missed.
    pub(super) fn heard(&mut self, users: bool, from: &str, n: Option<u64>) -> bool {
        let Some(n) = n else { return true };
        // The first message heard from a publisher (since this subscription began) sets
        // where its numbers are; every later one must follow on.
        match self.last_heard.insert((users, from.into()), n) {
            Some(last) => n == last + 1,
            None => true,
        }
    }
}

impl Cluster {
    /// Publishes a session's event once, for every other node watching it (the exact bytes
    /// its own watchers get, after a header naming this instance).
    pub fn publish_event(&self, session_id: Uuid, out: &Outbound) {
        let bytes = frame(&self.instance, None, out.text.as_bytes());
        let _ = self.outbox.send((session_channel(session_id), bytes));
    }

    /// Publishes a user event for the user's connections on every other node.
    pub fn publish_user_event(&self, user: Uuid, out: &Outbound) {
        let envelope = Envelope::User { user, text: out.text.as_str().to_owned() };
        self.publish(USERS_CHANNEL.to_owned(), &envelope);
    }

    /// Publishes a message on a node's (or the users') channel, numbered on that channel.
    pub(super) fn publish(&self, channel: String, envelope: &Envelope) {
        let payload = serde_json::to_vec(envelope).expect("envelopes always encode");
        // Numbered and queued under one lock, so numbers go out in order.
        let mut numbering = self.numbering.lock().expect("numbering lock");
        let n = numbering.sent.entry(channel.clone()).or_insert(0);
        *n += 1;
        let bytes = frame(&self.instance, Some(*n), &payload);
        let _ = self.outbox.send((channel, bytes));
    }
}

/// Publishes in order, batching what is waiting into one pipeline. A pipeline that fails
/// may have lost some of its messages: a loss notice goes on each of its channels (ahead of
/// anything later, once Redis takes it), so their readers do not wait for what will never
/// come.
pub(super) async fn publish_loop(
    mut redis: ConnectionManager,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    instance: Arc<str>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PUBLISH_BATCH);
    let mut notices: HashSet<String> = HashSet::new();
    let mut failures: u32 = 0;
    loop {
        if batch.is_empty() && notices.is_empty() {
            if outgoing.recv_many(&mut batch, PUBLISH_BATCH).await == 0 {
                return;
            }
        } else {
            while batch.len() < PUBLISH_BATCH {
                match outgoing.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
        }
        let mut pipe = redis::pipe();
        for channel in &notices {
            pipe.cmd("PUBLISH").arg(channel).arg(loss_notice(&instance)).ignore();
        }
        for (channel, payload) in &batch {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        let sent = if crate::faults::fail_publish(batch.iter().map(|(_, payload)| payload.as_slice())) {
            Err(redis::RedisError::from((redis::ErrorKind::Io, "injected publish failure")))
        } else {
            pipe.query_async::<()>(&mut redis).await
        };
        match sent {
            Ok(()) => {
                notices.clear();
                batch.clear();
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures <= 3 || failures.is_multiple_of(50) {
                    tracing::warn!(error = %e, messages = batch.len(), "could not publish to the cluster; their readers will be told");
                }
                metrics.cluster_gaps.with_label_values(&["publish"]).inc_by(batch.len() as u64);
                notices.extend(batch.drain(..).map(|(channel, _)| channel));
                let backoff = Duration::from_millis(50u64.saturating_mul(1 << failures.min(5)));
                tokio::time::sleep(backoff.min(PUBLISH_BACKOFF)).await;
            }
        }
    }
}

/// Reads every channel this node listens to on one connection (so their messages keep
/// their order), and applies subscription changes in order. When the connection drops,
/// messages may have been missed: every relayed watcher is asked to subscribe again,
/// every request waiting for an answer fails, and the relays are forgotten (the next
/// subscribe starts them afresh).
pub(super) async fn subscribe_loop(
    cluster: Weak<Cluster>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<SubscriberCommand>,
    first: oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let mut first = Some(first);
    loop {
        let Some(me) = cluster.upgrade() else { return };
        let node_channel = node_channel(&me.node_id);
        drop(me);
        let connected = async {
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&[node_channel.as_str(), USERS_CHANNEL]).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        }
        .await;
        let (mut sink, mut stream) = match connected {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to the cluster; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let mut watched: HashSet<Uuid> = HashSet::new();
        if let Some(me) = cluster.upgrade() {
            me.connected.store(true, Ordering::Release);
        }
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let Some(me) = cluster.upgrade() else { return };
                    me.dispatch(message.get_channel_name(), message.get_payload_bytes());
                }
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    match command {
                        SubscriberCommand::Watch(session_id, done) => {
                            let result = if watched.insert(session_id) {
                                sink.subscribe(session_channel(session_id)).await.map_err(ClusterError::from)
                            } else {
                                Ok(())
                            };
                            if result.is_err() {
                                watched.remove(&session_id);
                            }
                            let _ = done.send(result);
                        }
                        SubscriberCommand::Sweep => {
                            let Some(me) = cluster.upgrade() else { return };
                            let idle = me.relays.forget_empty();
                            // A channel subscribed for a relay that never kept a watcher.
                            let orphans: Vec<Uuid> =
                                watched.iter().copied().filter(|s| !me.relays.contains(*s)).collect();
                            drop(me);
                            for session_id in idle.into_iter().chain(orphans) {
                                if watched.remove(&session_id) {
                                    let _ = sink.unsubscribe(session_channel(session_id)).await;
                                }
                            }
                        }
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
        tracing::warn!("lost the cluster subscription; reconnecting");
        if let Some(me) = cluster.upgrade() {
            me.connected.store(false, Ordering::Release);
            // Messages published from now until the reconnect are lost: the watchers of
            // relayed sessions must not wait for them, nor requests for their answers.
            me.metrics.cluster_gaps.with_label_values(&["subscription"]).inc();
            me.relays.fail_owners(|_| true, "the server lost its connection to the cluster");
            me.relays.clear();
            me.fail_calls(|_| true);
            me.numbering.lock().expect("numbering lock").last_heard.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let bytes = frame("node-a#00ff", Some(7), b"{\"t\":\"x\"}\nmore");
        let framed = unframe(&bytes).unwrap();
        assert_eq!((framed.from, framed.n, framed.lost), ("node-a#00ff", Some(7), false));
        assert_eq!(framed.payload, b"{\"t\":\"x\"}\nmore");
        let bytes = frame("b#1", None, b"{}");
        assert_eq!(unframe(&bytes).unwrap().n, None);
        let notice = loss_notice("b#1");
        let framed = unframe(&notice).unwrap();
        assert!(framed.lost && framed.payload.is_empty());
        assert!(unframe(b"no header").is_none());
        assert!(unframe(b" 1\n{}").is_none());
        assert!(unframe(b"a x\n{}").is_none());
    }
}
