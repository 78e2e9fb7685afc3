//! The state every handler and connection shares.
//!
//! It sits below the HTTP handlers, the WebSocket connections and the catalog, which all
//! take it as an argument; it depends only on the parts it holds, so imports flow one way.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{PasswordHashing, TokenKeys};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::UserHub;
use crate::limits::{Limiter, UserLocks};
use crate::llm::models::Models;
use crate::metrics::Metrics;
use crate::retention::Retention;
use crate::session::SessionRegistry;
use crate::share::viewers::Viewers;
use crate::store::{Store, WriteBehind};

/// Everything a request handler or connection needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// The batched writer in front of the database (flushed at shutdown).
    pub writes: WriteBehind,
    /// Token issue and verification.
    pub tokens: Arc<TokenKeys>,
    /// Password hashing on a bounded number of threads.
    pub passwords: Arc<PasswordHashing>,
    /// Session actors.
    pub sessions: Arc<SessionRegistry>,
    /// Per-user connection hub.
    pub hub: Arc<UserHub>,
    /// Live viewers of share links on this node.
    pub viewers: Arc<Viewers>,
    /// Serialises per-user cap checks (such as sessions per user) with the writes they guard.
    pub user_locks: Arc<UserLocks>,
    /// Rate limits and quotas, in Redis or in process.
    pub limiter: Arc<Limiter>,
    /// The retention job (also runnable on demand).
    pub retention: Arc<Retention>,
    /// Cancelled when the server closes its connections (after running replies are stored).
    pub shutdown: CancellationToken,
    /// Every upgraded WebSocket connection, so shutdown can wait for their close frames.
    pub connections: TaskTracker,
    /// Whether replies come from the built-in mock model.
    pub mock_model: bool,
    /// The models users may choose.
    pub models: Arc<Models>,
    /// Turns for searches running at once on this node (`CHAT_SEARCH_CONCURRENCY`).
    pub searches: Arc<tokio::sync::Semaphore>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The cluster this node belongs to (`None` when it runs alone).
    pub cluster: Option<Arc<Cluster>>,
}
