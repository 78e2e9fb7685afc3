//! Several relay-chat nodes as one service, through Redis.
//!
//! Every live session has one owner node, which holds its lease in Redis
//! (`relay:lease:<session>` = the owner instance and a token of the claim, set with `PX` only
//! when free or when its holder's heartbeat is gone, atomically in one script), renews it
//! while the session's actor lives and deletes it when the actor stops ([`lease`]). Only the
//! owner runs the actor and calls the model; every database write of the actor carries the
//! session's epoch, raised at each claim, so an owner that lost its lease writes nothing.
//! Another node that gets a request for the session forwards it to the owner ([`forward`])
//! and relays the session's events to its own watchers ([`relay`]).
//!
//! Messages travel on three kinds of channels ([`transport`]):
//! - `relay:node:<node>`: requests to an instance of that node, their answers, and frames
//!   for one receiver there (a snapshot, an `ack`), each naming the instance it is for;
//! - `relay:session:<id>`: a session's events, published once by its owner as the exact
//!   bytes its own watchers get; every node watching it fans them out locally;
//! - `relay:users`: user events (`session_created/updated/deleted`, `quota`).
//!
//! Order matters (a snapshot before the events after it, an `ack` before its `message`), so
//! each node publishes everything through one connection, in order, and reads everything
//! through one subscriber connection: Redis delivers one publisher's messages to one
//! subscriber in the order they were published, whatever their channels. Pub/sub is at most
//! once: what is lost is noticed (numbers, `seq`, failed publishes, dropped subscriptions)
//! and the tabs concerned are told to subscribe again.
//!
//! Liveness ([`heartbeat`]): each node process (an *instance*: node id and a random
//! incarnation) keeps a heartbeat key alive (three quarters of the lease, renewed every
//! quarter). A peer whose heartbeat expired is gone: its watchers are forgotten by the
//! owners (so the cancel grace counts without them), and the sessions it owned fail over:
//! their watchers elsewhere get `done` `error` and are asked to subscribe again, and the
//! next use claims the session on a live node, which loads it from the database. No
//! consensus of our own: atomic Redis scripts, key expiry and the database's epoch check
//! decide.

mod dispatch;
mod forward;
mod heartbeat;
mod keys;
mod lease;
mod relay;
mod transport;
mod user_limits;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::fanout::{Outbound, Receiver, ReceiverId};
use crate::metrics::Metrics;

pub use forward::Peer;
use forward::PendingCall;
use heartbeat::heartbeat_loop;
pub use lease::Claim;
use lease::{Owned, fence_loop};
use relay::Relays;
use transport::{Numbering, Outgoing, SubscriberCommand, publish_loop, subscribe_loop};
pub use user_limits::UserLock;

/// What a cluster node needs to know to join.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `NODE_ID`.
    pub node_id: String,
    /// `CLUSTER_LEASE_MS`: how long a session lease and a node heartbeat live unrenewed.
    pub lease: Duration,
    /// How long a forwarded request waits for the owner's answer: longer than the owner
    /// may take (starting the session's actor, admitting and storing the send).
    pub request_timeout: Duration,
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
    /// The answer to a request was lost between the nodes.
    #[error("the answer of the session's owner node was lost")]
    Lost,
    /// Redis came back empty less than a lease ago: free leases are not claimed yet, so
    /// owners still running sessions take theirs back first.
    #[error("the cluster is recovering its leases")]
    Recovering,
}

/// What the cluster hands to the rest of the node.
pub trait ClusterHandler: Send + Sync + 'static {
    /// A session request another node forwarded; answers with the encoded result.
    fn request(&self, from: Peer, body: serde_json::Value) -> BoxFuture<'static, serde_json::Value>;
    /// A node instance left or died: forget the receivers it had.
    fn instance_gone(&self, instance: &str);
    /// This instance no longer holds the lease it claimed under `token` for a session it
    /// runs: stop that session's actor (not a newer one).
    fn lease_lost(&self, session_id: Uuid, token: u64);
    /// A user event another node published.
    fn user_event(&self, user_id: Uuid, out: Outbound);
    /// A receiver here that watched a session owned by `owner` went away without
    /// unsubscribing: tell the owner.
    fn receiver_closed(&self, session_id: Uuid, owner: Arc<str>, receiver: ReceiverId);
    /// These receivers of `instance` watch a session that runs here, no others (handled
    /// at once, in the order messages arrive, ahead of requests still being answered).
    fn watching(&self, instance: Arc<str>, session_id: Uuid, receivers: Vec<ReceiverId>);
}

/// This node's membership of the cluster.
pub struct Cluster {
    node_id: Arc<str>,
    instance: Arc<str>,
    lease: Duration,
    request_timeout: Duration,
    redis: ConnectionManager,
    outbox: mpsc::UnboundedSender<Outgoing>,
    subscriber: mpsc::UnboundedSender<SubscriberCommand>,
    /// Numbers of what this node publishes and of what it heard.
    numbering: Mutex<Numbering>,
    calls: DashMap<u64, PendingCall>,
    next_call: AtomicU64,
    /// Receivers of this node that a remote owner may send frames to, by id.
    direct: DashMap<ReceiverId, Receiver>,
    /// Sessions owned elsewhere that receivers here watch.
    relays: Relays,
    /// Sessions whose lease this instance holds: the claim's token, and when the lease was
    /// last confirmed.
    owned: DashMap<Uuid, Owned>,
    next_token: AtomicU64,
    /// When the last heartbeat that reached Redis was sent (this instance's heartbeat key
    /// lives three quarters of a lease from about then).
    last_beat: RwLock<Instant>,
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
            request_timeout: settings.request_timeout,
            redis,
            outbox,
            subscriber,
            numbering: Mutex::new(Numbering::default()),
            calls: DashMap::new(),
            next_call: AtomicU64::new(rand::random::<u32>() as u64),
            direct: DashMap::new(),
            relays: Relays::default(),
            owned: DashMap::new(),
            next_token: AtomicU64::new(1),
            last_beat: RwLock::new(Instant::now()),
            live: RwLock::new(HashSet::new()),
            connected: AtomicBool::new(false),
            beating: AtomicBool::new(true),
            handler: OnceLock::new(),
            metrics,
            me: me.clone(),
        });
        // The cluster's own tasks log with the node's id.
        let span = tracing::info_span!("cluster", node_id = %settings.node_id);
        tokio::spawn(
            publish_loop(publisher, outgoing, cluster.instance.clone(), cluster.metrics.clone())
                .instrument(span.clone()),
        );
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
        tokio::spawn(heartbeat_loop(Arc::downgrade(&cluster), shutdown.clone()).instrument(span.clone()));
        tokio::spawn(fence_loop(Arc::downgrade(&cluster), shutdown).instrument(span));
        // Claims wait until Redis has held its data for a lease (at most a lease, on a
        // Redis that started or restarted empty just now): the node joins once they may.
        let deadline = Instant::now() + settings.lease * 2;
        while !cluster.open_gate().await? && Instant::now() < deadline {
            tokio::time::sleep(settings.lease / 10).await;
        }
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

    /// How long a session lease and a node heartbeat live unrenewed (`CLUSTER_LEASE_MS`).
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Sets the gauges of what this node holds for the cluster (read by `/metrics`, and by
    /// the leak checks of the tests).
    pub fn observe(&self) {
        self.metrics.cluster_pending_calls.set(self.calls.len() as i64);
        self.metrics.cluster_direct_receivers.set(self.direct.len() as i64);
        self.metrics.cluster_owned_sessions.set(self.owned.len() as i64);
        self.metrics.cluster_relayed_sessions.set(self.relays.entries() as i64);
    }
}
