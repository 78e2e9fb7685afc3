//! Several relay-chat nodes as one service, through Redis.
//!
//! Every live session has one owner node, which holds its lease in Redis
//! (`relay:lease:<session>` = the owner instance, set with `PX` only when free or when its
//! holder's heartbeat is gone, atomically in one script), renews it while the session's
//! actor lives and deletes it when the actor stops. Only the owner runs the actor and calls the model.
//! Another node that gets a request for the session forwards it to the owner over Redis
//! pub/sub and relays the session's events to its own watchers ([`relay`]).
//!
//! Messages travel on three kinds of channels:
//! - `relay:node:<node>`: requests to a node, their answers, and frames for one receiver
//!   there (a snapshot, an `ack`);
//! - `relay:session:<id>`: a session's events, published once by its owner as the exact
//!   bytes its own watchers get; every node watching it fans them out locally;
//! - `relay:users`: user events (`session_created/updated/deleted`, `quota`).
//!
//! Order matters (a snapshot before the events after it, an `ack` before its `message`), so
//! each node publishes everything through one connection, in order, and reads everything
//! through one subscriber connection: Redis delivers one publisher's messages to one
//! subscriber in the order they were published, whatever their channels.
//!
//! Liveness: each node process (an *instance*: node id and a random incarnation) keeps a
//! heartbeat key alive (three quarters of the lease, renewed every quarter). A peer whose heartbeat expired is gone: its
//! watchers are forgotten by the owners (so the cancel grace counts without them), and the
//! sessions it owned fail over: their watchers elsewhere get `done` `error` and are asked to
//! subscribe again, and the next use claims the session on a live node, which loads it from
//! the database. No consensus of our own: atomic Redis scripts and key expiry decide.

mod relay;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::StreamExt;
use futures::future::BoxFuture;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::fanout::{Outbound, Receiver, ReceiverId, RemoteSink};
use crate::metrics::Metrics;

use relay::Relays;

/// Every key and channel starts with this, so relay-chat can share a Redis.
const PREFIX: &str = "relay:";
/// The channel of user events, read by every node.
const USERS_CHANNEL: &str = "relay:users";
/// Channels of sessions' events: this, then the session id.
const SESSION_CHANNEL_PREFIX: &str = "relay:session:";
/// Heartbeat keys: this, then the node id; the value is the live instance.
const ALIVE_PREFIX: &str = "relay:alive:";
/// How many publishes go out in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// How many leases one renewal script handles.
const RENEW_CHUNK: usize = 500;

/// Renews the leases this instance holds. KEYS: lease keys; ARGV[1] instance; ARGV[2] ttl
/// (ms). A lease that is missing (Redis restarted empty) is taken again: nobody else holds
/// it. Returns the 1-based indexes of the keys another instance holds now.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local lost = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] or not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"#,
    )
});

/// Deletes every given lease this instance holds. KEYS: lease keys; ARGV[1] instance.
static RELEASE_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"#,
    )
});

/// Claims a session's lease. KEYS[1] lease key; ARGV[1] this instance; ARGV[2] ttl (ms);
/// ARGV[3] the prefix of heartbeat keys. The lease is taken when free, or when its holder's
/// heartbeat is gone (the holder died, or restarted as a new instance): a holder stops
/// its sessions before its heartbeat can expire (see `heartbeat_loop`). Returns the
/// holder after the claim.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local node = string.match(holder, '^(.*)#') or holder
  if redis.call('GET', ARGV[3] .. node) == holder then
    return holder
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"#,
    )
});

/// Deletes a lease if this instance holds it. KEYS[1] key; ARGV[1] instance.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Counts a WebSocket connection of a user against the cluster-wide cap, unless the user
/// already holds that many on live instances. KEYS[1] the user's count hash (a field per
/// instance); ARGV[1] instance; ARGV[2] cap; ARGV[3] prefix of heartbeat keys. Fields of
/// instances that are gone are dropped (their connections went with them). Returns 1 when
/// counted, 0 when the cap is reached.
static TAKE_CONNECTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local instance = fields[i]
  local node = string.match(instance, '^(.*)#') or instance
  if redis.call('GET', ARGV[3] .. node) == instance then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], instance)
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], 86400)
return 1
"#,
    )
});

/// Gives a counted connection back. KEYS[1] the user's count hash; ARGV[1] instance.
static GIVE_CONNECTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"#,
    )
});

/// How long a per-user cluster lock lives if its holder dies holding it.
const USER_LOCK_TTL: Duration = Duration::from_secs(5);
/// How long taking a per-user cluster lock waits for it.
const USER_LOCK_WAIT: Duration = Duration::from_secs(3);

/// What a cluster node needs to know to join.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `NODE_ID`.
    pub node_id: String,
    /// `CLUSTER_LEASE_MS`: how long a session lease and a node heartbeat live unrenewed.
    pub lease: Duration,
}

/// Errors of the cluster transport.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The owner did not answer in time (it may have died; its lease will expire).
    #[error("the session's owner node did not answer")]
    Timeout,
    /// The subscriber connection is down.
    #[error("not connected to the cluster")]
    Disconnected,
}

/// Who holds a session's lease after a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This instance: it runs the session.
    Mine,
    /// Another instance runs it.
    Held(Arc<str>),
}

/// What the cluster hands to the rest of the node.
pub trait ClusterHandler: Send + Sync + 'static {
    /// A session request another node forwarded; answers with the encoded result.
    fn request(&self, from: Peer, body: serde_json::Value) -> BoxFuture<'static, serde_json::Value>;
    /// A node instance left or died: forget the receivers it had.
    fn instance_gone(&self, instance: &str);
    /// This instance no longer holds the lease of a session it runs: stop its actor.
    fn lease_lost(&self, session_id: Uuid);
    /// A user event another node published.
    fn user_event(&self, user_id: Uuid, out: Outbound);
    /// A receiver here that watched a session owned by `owner` went away without
    /// unsubscribing: tell the owner.
    fn receiver_closed(&self, session_id: Uuid, owner: Arc<str>, receiver: ReceiverId);
    /// These receivers of `instance` watch a session that runs here, no others (handled
    /// at once, in the order messages arrive, ahead of requests still being answered).
    fn watching(&self, instance: Arc<str>, session_id: Uuid, receivers: Vec<ReceiverId>);
}

/// A node instance that sent a request, and the way back to its receivers.
#[derive(Clone, Debug)]
pub struct Peer {
    cluster: Weak<Cluster>,
    node: Arc<str>,
    instance: Arc<str>,
}

impl RemoteSink for Peer {
    fn deliver(&self, receiver: ReceiverId, out: &Outbound) {
        if let Some(cluster) = self.cluster.upgrade() {
            let activates = match &*out.frame {
                relay_protocol::ServerFrame::Subscribed { session, .. } => Some(session.id),
                _ => None,
            };
            let envelope = Envelope::Direct { receiver, activates, text: out.text.as_str().to_owned() };
            cluster.publish(node_channel(&self.node), &envelope);
        }
    }

    fn instance(&self) -> &Arc<str> {
        &self.instance
    }
}

/// Messages on a node's channel and on the users channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Envelope {
    /// A request for the node that owns a session.
    Call { node: String, instance: String, call: u64, body: serde_json::Value },
    /// The answer to a call.
    Answer { call: u64, body: serde_json::Value },
    /// A frame for one receiver of the node; `activates` is set on a snapshot, after which
    /// the receiver gets the session's events.
    Direct { receiver: ReceiverId, activates: Option<Uuid>, text: String },
    /// A user event, for every connection of the user on every node.
    User { instance: String, user: Uuid, text: String },
    /// Which receivers of `instance` watch `session` now (sent every heartbeat for each
    /// relayed session): the owner replaces what it counted, so an unsubscribe lost with a
    /// dropped connection, or overtaken by a later request, is mended within a beat.
    Watching { instance: String, session: Uuid, receivers: Vec<ReceiverId> },
}

/// Subscription changes, applied in order by the subscriber task.
enum SubscriberCommand {
    /// Subscribe to a session's channel (no-op when subscribed); answered once confirmed.
    Watch(Uuid, oneshot::Sender<Result<(), ClusterError>>),
    /// Unsubscribe from the channels of sessions nobody here watches any more.
    Sweep,
}

/// This node's membership of the cluster.
pub struct Cluster {
    node_id: Arc<str>,
    instance: Arc<str>,
    lease: Duration,
    redis: ConnectionManager,
    outbox: mpsc::UnboundedSender<(String, Vec<u8>)>,
    subscriber: mpsc::UnboundedSender<SubscriberCommand>,
    calls: DashMap<u64, oneshot::Sender<serde_json::Value>>,
    next_call: AtomicU64,
    /// Receivers of this node that a remote owner may send frames to, by id.
    direct: DashMap<ReceiverId, Receiver>,
    /// Sessions owned elsewhere that receivers here watch.
    relays: Relays,
    /// Sessions whose lease this instance holds, with when the lease was last confirmed
    /// (the moment the claim or renewal was sent: Redis counts its time from later).
    owned: DashMap<Uuid, Instant>,
    live: RwLock<HashSet<String>>,
    connected: AtomicBool,
    /// Whether the last heartbeat reached Redis.
    beating: AtomicBool,
    handler: OnceLock<Weak<dyn ClusterHandler>>,
    metrics: Arc<Metrics>,
    me: Weak<Cluster>,
}

impl Cluster {
    /// Joins the cluster: connects to Redis, subscribes to this node's channels, and
    /// starts the heartbeat. Fails when Redis cannot be reached.
    pub async fn join(
        settings: &ClusterSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let redis = ConnectionManager::new_with_config(client.clone(), config).await?;
        let publisher = redis.clone();
        let incarnation: u64 = rand::random();
        let instance: Arc<str> = format!("{}#{:016x}", settings.node_id, incarnation).into();
        let (outbox, outgoing) = mpsc::unbounded_channel();
        let (subscriber, commands) = mpsc::unbounded_channel();
        let cluster = Arc::new_cyclic(|me| Cluster {
            node_id: settings.node_id.clone().into(),
            instance,
            lease: settings.lease,
            redis,
            outbox,
            subscriber,
            calls: DashMap::new(),
            next_call: AtomicU64::new(rand::random::<u32>() as u64),
            direct: DashMap::new(),
            relays: Relays::default(),
            owned: DashMap::new(),
            live: RwLock::new(HashSet::new()),
            connected: AtomicBool::new(false),
            beating: AtomicBool::new(true),
            handler: OnceLock::new(),
            metrics,
            me: me.clone(),
        });
        // The cluster's own tasks log with the node's id.
        let span = tracing::info_span!("cluster", node_id = %settings.node_id);
        tokio::spawn(publish_loop(publisher, outgoing).instrument(span.clone()));
        let (subscribed, first) = oneshot::channel();
        tokio::spawn(
            subscribe_loop(Arc::downgrade(&cluster), client, commands, subscribed, shutdown.clone())
                .instrument(span.clone()),
        );
        match tokio::time::timeout(Duration::from_secs(5), first).await {
            Ok(Ok(())) => {}
            _ => return Err(ClusterError::Disconnected),
        }
        cluster.heartbeat().await?;
        tokio::spawn(heartbeat_loop(Arc::downgrade(&cluster), shutdown).instrument(span));
        Ok(cluster)
    }

    /// Sets who handles requests and events from other nodes (once, at start-up).
    pub fn set_handler(&self, handler: Weak<dyn ClusterHandler>) {
        let _ = self.handler.set(handler);
    }

    fn handler(&self) -> Option<Arc<dyn ClusterHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    /// This process: the node id and its incarnation.
    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    /// Whether the subscriber connection to Redis is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether this node is a working member: subscribed, and its last heartbeat (which
    /// renews its leases) reached Redis.
    pub fn is_healthy(&self) -> bool {
        self.is_connected() && self.beating.load(Ordering::Acquire)
    }

    /// How many node instances are alive, this one included (as of the last heartbeat).
    pub fn live_instances(&self) -> usize {
        self.live.read().map_or(0, |l| l.len())
    }

    // ---- leases ----------------------------------------------------------------------------

    /// Claims a session's lease, or says who holds it.
    pub async fn claim(&self, session_id: Uuid) -> Result<Claim, ClusterError> {
        let sent = Instant::now();
        let mut redis = self.redis.clone();
        let holder: String = CLAIM
            .key(lease_key(session_id))
            .arg(&*self.instance)
            .arg(self.lease.as_millis() as u64)
            .arg(ALIVE_PREFIX)
            .invoke_async(&mut redis)
            .await?;
        match holder {
            holder if holder != *self.instance => Ok(Claim::Held(holder.into())),
            _ => {
                self.owned.insert(session_id, sent);
                self.metrics.cluster_owned_sessions.set(self.owned.len() as i64);
                Ok(Claim::Mine)
            }
        }
    }

    /// Gives a session's lease up (its actor stopped), if this instance still holds it.
    pub async fn release(&self, session_id: Uuid) {
        self.owned.remove(&session_id);
        self.metrics.cluster_owned_sessions.set(self.owned.len() as i64);
        let mut redis = self.redis.clone();
        let released: Result<i64, _> =
            RELEASE.key(lease_key(session_id)).arg(&*self.instance).invoke_async(&mut redis).await;
        if let Err(e) = released {
            tracing::warn!(%session_id, error = %e, "could not release a session lease; it expires by itself");
        }
    }

    // ---- per-user limits across nodes ----------------------------------------------------

    /// Counts a connection of `user` against `max` across the cluster; false when the user
    /// already holds `max` on live nodes.
    pub async fn take_connection(&self, user: Uuid, max: usize) -> Result<bool, ClusterError> {
        let mut redis = self.redis.clone();
        let taken: i64 = TAKE_CONNECTION
            .key(connections_key(user))
            .arg(&*self.instance)
            .arg(max)
            .arg(ALIVE_PREFIX)
            .invoke_async(&mut redis)
            .await?;
        Ok(taken == 1)
    }

    /// Gives back a connection counted by [`Cluster::take_connection`] (in the background).
    pub fn give_connection(&self, user: Uuid) {
        let (mut redis, instance) = (self.redis.clone(), self.instance.clone());
        tokio::spawn(async move {
            let given: Result<i64, _> =
                GIVE_CONNECTION.key(connections_key(user)).arg(&*instance).invoke_async(&mut redis).await;
            if let Err(e) = given {
                tracing::warn!(user_id = %user, error = %e, "could not give a connection back to the cluster count");
            }
        });
    }

    /// Takes a user's cluster-wide lock (for a check and the write it guards, such as the
    /// sessions-per-user cap); waits up to a few seconds for another node to release it.
    pub async fn lock_user(&self, user: Uuid, what: &str) -> Result<UserLock, ClusterError> {
        let key = format!("{PREFIX}lock:{what}:{user}");
        let token = format!("{}:{}", self.instance, rand::random::<u64>());
        let deadline = Instant::now() + USER_LOCK_WAIT;
        let mut redis = self.redis.clone();
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(USER_LOCK_TTL.as_millis() as u64)
                .query_async(&mut redis)
                .await?;
            if taken.is_some() {
                return Ok(UserLock { redis, key, token });
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- requests --------------------------------------------------------------------------

    /// Sends a request to the instance that owns a session and waits for its answer (at
    /// most the lease time: an owner that does not answer by then may be dead).
    pub async fn request(&self, owner: &str, body: serde_json::Value) -> Result<serde_json::Value, ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Disconnected);
        }
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls.insert(call, tx);
        let envelope =
            Envelope::Call { node: self.node_id.to_string(), instance: self.instance.to_string(), call, body };
        self.publish(node_channel(node_of(owner)), &envelope);
        self.metrics.cluster_forwarded.inc();
        let answer = tokio::time::timeout(self.lease, rx).await;
        self.calls.remove(&call);
        match answer {
            Ok(Ok(body)) => Ok(body),
            _ => Err(ClusterError::Timeout),
        }
    }

    /// Publishes a session's event once, for every other node watching it.
    pub fn publish_event(&self, session_id: Uuid, out: &Outbound) {
        let _ = self.outbox.send((session_channel(session_id), out.text.as_bytes().to_vec()));
    }

    /// Publishes a user event for the user's connections on every other node.
    pub fn publish_user_event(&self, user: Uuid, out: &Outbound) {
        let envelope = Envelope::User { instance: self.instance.to_string(), user, text: out.text.as_str().to_owned() };
        self.publish(USERS_CHANNEL.to_owned(), &envelope);
    }

    fn publish(&self, channel: String, envelope: &Envelope) {
        let bytes = serde_json::to_vec(envelope).expect("envelopes always encode");
        let _ = self.outbox.send((channel, bytes));
    }

    fn peer(&self, node: &str, instance: &str) -> Peer {
        Peer { cluster: self.me.clone(), node: node.into(), instance: instance.into() }
    }

    // ---- relaying ------------------------------------------------------------------------

    /// Makes `receiver` watch a session owned by `owner` from here: the session's channel
    /// is subscribed (confirmed before this returns, so no event published after it is
    /// missed) and the receiver is added to the session's relay. A connection gets events
    /// once its snapshot arrives; a request at once. Returns whether the receiver is new
    /// there (so a refused request can take it out again).
    pub async fn attach(&self, session_id: Uuid, owner: &Arc<str>, receiver: &Receiver) -> Result<bool, ClusterError> {
        self.direct.insert(receiver.id, receiver.clone());
        let fresh = self.relays.attach(session_id, owner, receiver);
        let (tx, rx) = oneshot::channel();
        if self.subscriber.send(SubscriberCommand::Watch(session_id, tx)).is_err() {
            return Err(ClusterError::Disconnected);
        }
        match rx.await {
            Ok(Ok(())) => Ok(fresh),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClusterError::Disconnected),
        }
    }

    /// Takes a receiver out of a session's relay; returns the owner it was relayed from.
    pub fn detach(&self, session_id: Uuid, receiver: ReceiverId) -> Option<Arc<str>> {
        self.relays.detach(session_id, receiver)
    }

    // ---- incoming --------------------------------------------------------------------------

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        if let Some(session) = channel.strip_prefix(SESSION_CHANNEL_PREFIX) {
            if let Ok(session_id) = session.parse::<Uuid>() {
                match Outbound::decode(payload) {
                    Ok(out) => self.relays.on_event(session_id, out),
                    Err(e) => tracing::warn!(%session_id, error = %e, "undecodable session event from the cluster"),
                }
            }
            return;
        }
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(channel, error = %e, "undecodable cluster message");
                return;
            }
        };
        match envelope {
            Envelope::Call { node, instance, call, body } => {
                let Some(handler) = self.handler() else { return };
                let (peer, me) = (self.peer(&node, &instance), self.me.clone());
                tokio::spawn(async move {
                    let body = handler.request(peer, body).await;
                    if let Some(cluster) = me.upgrade() {
                        cluster.publish(node_channel(&node), &Envelope::Answer { call, body });
                    }
                });
            }
            Envelope::Answer { call, body } => {
                if let Some((_, waiting)) = self.calls.remove(&call) {
                    let _ = waiting.send(body);
                }
            }
            Envelope::Direct { receiver, activates, text } => {
                let Some(target) = self.direct.get(&receiver).map(|r| r.clone()) else { return };
                match Outbound::decode(text.as_bytes()) {
                    Ok(out) => {
                        if let Some(session_id) = activates {
                            self.relays.activate(session_id, receiver);
                        }
                        target.deliver(&out);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable frame from the cluster"),
                }
            }
            Envelope::Watching { instance, session, receivers } => {
                if let Some(handler) = self.handler() {
                    handler.watching(instance.into(), session, receivers);
                }
            }
            Envelope::User { instance, user, text } => {
                if instance == *self.instance {
                    return;
                }
                if let (Some(handler), Ok(out)) = (self.handler(), Outbound::decode(text.as_bytes())) {
                    handler.user_event(user, out);
                }
            }
        }
    }

    // ---- heartbeat -------------------------------------------------------------------------

    /// Keeps this instance alive, renews its leases, and notices peers that went away.
    async fn heartbeat(&self) -> Result<(), ClusterError> {
        let mut redis = self.redis.clone();
        // Three quarters of the lease: beating every quarter, a peer notices this node gone
        // within the lease time after its last beat.
        let ttl = (self.lease * 3 / 4).as_millis() as u64;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (previous, members): (Option<String>, Vec<String>) = redis::pipe()
            .cmd("SET")
            .arg(alive_key(&self.node_id))
            .arg(&*self.instance)
            .arg("PX")
            .arg(ttl)
            .arg("GET")
            .cmd("ZADD")
            .arg(NODES_KEY)
            .arg(now_ms)
            .arg(&*self.node_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(NODES_KEY)
            .arg("-inf")
            .arg(now_ms - MEMBER_MEMORY_MS)
            .ignore()
            .cmd("ZRANGE")
            .arg(NODES_KEY)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        let alive: Vec<Option<String>> = if members.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET")
                .arg(members.iter().map(|m| alive_key(m)).collect::<Vec<_>>())
                .query_async(&mut redis)
                .await?
        };
        let live: HashSet<String> = alive.into_iter().flatten().collect();
        // This node's own heartbeat was missing: Redis lost its keys (restarted empty, or
        // this node could not beat for long). The peers' heartbeats are missing too until
        // each beats again (within a quarter of the lease), so nobody counts as gone now.
        let redis_forgot = previous.as_deref() != Some(&*self.instance);
        let gone: Vec<String> = {
            let mut known = self.live.write().expect("live set lock");
            let gone =
                if redis_forgot && !known.is_empty() { Vec::new() } else { known.difference(&live).cloned().collect() };
            *known = if redis_forgot { known.union(&live).cloned().collect() } else { live.clone() };
            gone
        };
        self.metrics.cluster_nodes.set(live.len() as i64);
        let handler = self.handler();
        for instance in &gone {
            tracing::warn!(node_id = %self.node_id, gone = %instance, "a node left the cluster");
            if let Some(handler) = &handler {
                handler.instance_gone(instance);
            }
        }
        // Only owners seen alive before: an owner that joined after the list was read is not gone.
        self.relays.fail_owners(|owner| gone.iter().any(|g| g == owner), "the node running this session went away");
        self.renew().await?;
        Ok(())
    }

    async fn renew(&self) -> Result<(), ClusterError> {
        let owned: Vec<Uuid> = self.owned.iter().map(|e| *e.key()).collect();
        let mut redis = self.redis.clone();
        for chunk in owned.chunks(RENEW_CHUNK) {
            let mut script = self.on_leases(&RENEW, chunk);
            script.arg(self.lease.as_millis() as u64);
            let sent = Instant::now();
            let lost: Vec<usize> = script.invoke_async(&mut redis).await?;
            for session_id in chunk {
                if let Some(mut confirmed) = self.owned.get_mut(session_id) {
                    *confirmed = sent;
                }
            }
            for i in lost {
                let session_id = chunk[i - 1];
                self.lose(session_id);
            }
        }
        Ok(())
    }

    /// Stops the sessions whose lease was last confirmed half a lease ago or more (Redis
    /// cannot be reached to renew them): they stop before another node may take them.
    fn fence(&self) {
        let stale: Vec<Uuid> =
            self.owned.iter().filter(|e| e.value().elapsed() >= self.lease / 2).map(|e| *e.key()).collect();
        for session_id in stale {
            self.lose(session_id);
        }
    }

    /// A lease script over some sessions' leases: their keys, then this instance.
    fn on_leases<'a>(&self, script: &'a Script, sessions: &[Uuid]) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for session_id in sessions {
            invocation.key(lease_key(*session_id));
        }
        invocation.arg(&*self.instance);
        invocation
    }

    /// Stops running a session whose lease this instance can no longer vouch for.
    fn lose(&self, session_id: Uuid) {
        self.owned.remove(&session_id);
        tracing::warn!(%session_id, instance = %self.instance, "lost a session lease; stopping its actor");
        if let Some(handler) = self.handler() {
            handler.lease_lost(session_id);
        }
    }

    /// Leaves the cluster at shutdown (after the sessions stopped): the leases still held
    /// are given up and the heartbeat deleted, so peers take over at once instead of after
    /// the lease.
    pub async fn leave(&self) {
        let owned: Vec<Uuid> = self.owned.iter().map(|e| *e.key()).collect();
        let mut redis = self.redis.clone();
        for chunk in owned.chunks(RENEW_CHUNK) {
            let released: Result<i64, _> = self.on_leases(&RELEASE_ALL, chunk).invoke_async(&mut redis).await;
            if let Err(e) = released {
                tracing::warn!(error = %e, "could not give leases up; they expire by themselves");
            }
        }
        self.owned.clear();
        let _: Result<(), _> = redis::cmd("DEL").arg(alive_key(&self.node_id)).query_async(&mut redis).await;
    }

    fn sweep(&self) {
        self.direct.retain(|_, r| !r.is_closed());
        let closed = self.relays.drop_closed();
        if let Some(handler) = self.handler() {
            for (session_id, owner, receiver) in closed {
                handler.receiver_closed(session_id, owner, receiver);
            }
        }
        for (session, owner, receivers) in self.relays.watch_lists() {
            let envelope = Envelope::Watching { instance: self.instance.to_string(), session, receivers };
            self.publish(node_channel(node_of(&owner)), &envelope);
        }
        let _ = self.subscriber.send(SubscriberCommand::Sweep);
        self.metrics.cluster_relayed_sessions.set(self.relays.len() as i64);
    }
}

/// A per-user lock held across the cluster; [`UserLock::release`] gives it back (it also
/// expires by itself if its holder dies).
pub struct UserLock {
    redis: ConnectionManager,
    key: String,
    token: String,
}

impl UserLock {
    /// Gives the lock back, if it is still this holder's.
    pub async fn release(mut self) {
        let released: Result<i64, _> = RELEASE.key(&self.key).arg(&self.token).invoke_async(&mut self.redis).await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release a user lock; it expires by itself");
        }
    }
}

/// The sorted set of node ids (scored by their last heartbeat).
const NODES_KEY: &str = "relay:nodes";
/// How long a silent node id stays in [`NODES_KEY`] (a day).
const MEMBER_MEMORY_MS: i64 = 24 * 3600 * 1000;

fn lease_key(session_id: Uuid) -> String {
    format!("{PREFIX}lease:{session_id}")
}

fn connections_key(user: Uuid) -> String {
    format!("{PREFIX}connections:{user}")
}

fn alive_key(node: &str) -> String {
    format!("{ALIVE_PREFIX}{node}")
}

fn node_channel(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

fn session_channel(session_id: Uuid) -> String {
    format!("{SESSION_CHANNEL_PREFIX}{session_id}")
}

/// The node id of an instance (`node#incarnation`).
fn node_of(instance: &str) -> &str {
    instance.rsplit_once('#').map_or(instance, |(node, _)| node)
}

/// Publishes in order, batching what is waiting into one pipeline.
async fn publish_loop(mut redis: ConnectionManager, mut outgoing: mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while outgoing.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (channel, payload) in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::warn!(error = %e, "could not publish to the cluster");
        }
    }
}

/// Reads every channel this node listens to on one connection (so their messages keep
/// their order), and applies subscription changes in order. When the connection drops,
/// messages may have been missed: every relayed watcher is asked to subscribe again.
async fn subscribe_loop(
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
                            let idle: Vec<Uuid> = watched.iter().copied().filter(|s| me.relays.forget_if_empty(*s)).collect();
                            drop(me);
                            for session_id in idle {
                                watched.remove(&session_id);
                                let _ = sink.unsubscribe(session_channel(session_id)).await;
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
            // Events published from now until the reconnect are lost: the watchers of
            // relayed sessions must not wait for them.
            me.relays.fail_owners(|_| true, "the node lost its connection to the cluster");
        }
    }
}

/// Beats every quarter of the lease; the heartbeat key lives three quarters, so a peer
/// notices this node gone within the lease time of its last beat. A session whose lease
/// could not be renewed for half the lease is stopped (see [`Cluster::fence`]) before its
/// lease or this node's heartbeat can expire and another node may take it over.
async fn heartbeat_loop(cluster: Weak<Cluster>, shutdown: CancellationToken) {
    let Some(every) = cluster.upgrade().map(|c| c.lease / 4) else { return };
    // A steady beat whatever each one took (a late beat is not made up with a burst).
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(me) = cluster.upgrade() else { return };
        // A Redis that hangs must not hold the fence back: a beat gets a quarter of the lease.
        let beat = tokio::time::timeout(every, me.heartbeat()).await.unwrap_or(Err(ClusterError::Timeout));
        me.beating.store(beat.is_ok(), Ordering::Release);
        if let Err(e) = beat {
            tracing::warn!(error = %e, "cluster heartbeat failed");
            me.fence();
        }
        me.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_name_their_node() {
        assert_eq!(node_of("node-a#00000000000000ff"), "node-a");
        assert_eq!(node_of("plain"), "plain");
    }
}
