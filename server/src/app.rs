//! Assembling and running the server: start-up in the right order, and graceful shutdown
//! in the right order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, PasswordHashing, TokenKeys};
use crate::cluster::{Cluster, ClusterHandler, ClusterSettings};
use crate::config::{Config, ModelBackend};
use crate::http::listener::{GuardedListener, Peer, SocketLimits};
use crate::hub::UserHub;
use crate::limits::{Limiter, UserLocks};
use crate::llm::models::Models;
use crate::metrics::Metrics;
use crate::retention::Retention;
use crate::session::{SessionDeps, SessionRegistry, SessionSettings};
use crate::share::viewers::Viewers;
use crate::state::AppState;
use crate::store::{Store, StoreError, WriteBehind};
use relay_mock_llm::MockLlm;

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (tests inspect it).
    pub state: AppState,
    /// The built-in mock model, when no provider key is configured.
    pub mock: Option<MockLlm>,
    task: JoinHandle<anyhow::Result<()>>,
    /// The retention loop, awaited before the database closes.
    retention: JoinHandle<()>,
}

impl Server {
    /// Connects the database, starts the model client (or the mock), binds the listener
    /// and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let store = Store::connect(&config.store_config()).await.with_context(|| {
            format!("cannot open the database at {}", crate::config::redact_url(&config.database_url))
        })?;
        // Alone, this node ran every session, so whatever it left generating was cut off. In
        // a cluster other nodes may be generating now: a session's leftovers are marked when
        // a node next claims it instead.
        if !config.cluster {
            let interrupted = store.fail_interrupted_replies().await.context("cannot mark interrupted replies")?;
            if interrupted > 0 {
                tracing::warn!(interrupted, "replies left generating by an earlier run are stored as error");
            }
        }

        let secret = match &config.jwt.secret {
            Some(secret) => secret.clone(),
            None => {
                tracing::warn!(
                    "JWT_SECRET is not set: using a generated development secret kept in {} (refused when RELAY_ENV=production)",
                    config.data_dir.display()
                );
                auth::load_or_create_dev_secret(&config.data_dir)?
            }
        };
        let tokens = Arc::new(TokenKeys::new(&config.jwt, &secret, config.admin_users.clone())?);

        let (mock, mock_base) = match &config.model_backend {
            ModelBackend::Remote { .. } => (None, None),
            ModelBackend::Mock(settings) => {
                let mock = MockLlm::start(settings.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .context("cannot start the built-in mock model")?;
                tracing::warn!(
                    "*** NO SAMBANOVA_API_KEY: replies come from the built-in MOCK model at {} — set SAMBANOVA_API_KEY for real answers ***",
                    mock.base_url()
                );
                let base = mock.base_url();
                (Some(mock), Some(base))
            }
        };
        let metrics = Arc::new(Metrics::new());
        let models = Arc::new(Models::build(&config, mock_base.as_deref(), &metrics)?);

        metrics.node_info.with_label_values(&[config.node_id.as_str()]).set(1);
        let shutdown = CancellationToken::new();
        let cluster = match (&config.redis_url, config.cluster) {
            (Some(redis_url), true) => {
                let settings = ClusterSettings {
                    redis_url: redis_url.clone(),
                    node_id: config.node_id.clone(),
                    lease: config.cluster_lease,
                    // The owner may start the session's actor (a lease claim, a flush, two
                    // queries), then check and store the send (two more): each within the
                    // database timeout.
                    request_timeout: config.cluster_lease + 5 * config.database_timeout,
                };
                let cluster = Cluster::join(&settings, metrics.clone(), shutdown.clone())
                    .await
                    .context("cannot join the cluster through REDIS_URL")?;
                tracing::info!(node_id = %config.node_id, instance = %cluster.instance(), lease = ?config.cluster_lease, "joined the cluster");
                Some(cluster)
            }
            _ => None,
        };

        let writes = WriteBehind::start(store.clone(), WRITE_QUEUE, config.database_timeout, metrics.clone());
        let hub = Arc::new(UserHub::default());
        let viewers = Viewers::new(hub.clone());
        if let Some(cluster) = &cluster {
            hub.set_cluster(cluster.clone());
            viewers.set_cluster(cluster.clone());
        }
        {
            let viewers = Arc::downgrade(&viewers);
            hub.set_observer(Box::new(move |_, frame| {
                if let Some(viewers) = viewers.upgrade() {
                    viewers.observe(frame);
                }
            }));
        }
        let limiter = Limiter::new(config.redis_url.as_deref(), metrics.clone())?;
        let user_locks = Arc::new(UserLocks::default());
        let sessions = SessionRegistry::new(SessionDeps {
            store: store.clone(),
            writes: writes.clone(),
            models: models.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            limiter: limiter.clone(),
            user_locks: user_locks.clone(),
            settings: SessionSettings {
                system_prompt: config.system_prompt.clone(),
                max_context_messages: config.max_context_messages,
                max_message_length: config.max_message_length,
                max_reply_bytes: config.max_reply_bytes,
                max_snapshot_bytes: config.ws_outbound_queue_bytes / 2,
                max_queued_sends: config.max_queued_sends,
                cancel_grace: config.cancel_grace,
                idle_timeout: config.session_idle,
                checkpoint_interval: config.checkpoint_interval,
                daily_quota: config.daily_message_quota,
                rate_per_minute: config.rate_limit_per_minute,
                max_stored_messages: config.max_stored_messages_per_user,
            },
            cluster: cluster.clone(),
        });
        if let Some(cluster) = &cluster {
            let handler: Arc<dyn ClusterHandler> = sessions.clone();
            cluster.set_handler(Arc::downgrade(&handler));
        }
        // A batch that finds a session's writes stale stops that session's actor here.
        let fenced = Arc::downgrade(&sessions);
        writes.on_fenced(Arc::new(move |fence| {
            if let Some(sessions) = fenced.upgrade() {
                sessions.fenced(fence);
            }
        }));
        let passwords = Arc::new(PasswordHashing::new(config.auth_hash_concurrency, config.auth_hash_queue));
        let retention = Arc::new(Retention {
            store: store.clone(),
            archive_after: config.archive_after,
            purge_after: config.purge_after,
            every: config.retention_interval,
            metrics: metrics.clone(),
        });
        let config_search_concurrency = config.search_concurrency;
        let state = AppState {
            config: Arc::new(config),
            store,
            writes,
            tokens,
            passwords,
            sessions,
            hub,
            viewers,
            user_locks,
            limiter,
            retention,
            shutdown,
            connections: TaskTracker::new(),
            cluster,
            mock_model: mock.is_some(),
            models,
            searches: Arc::new(tokio::sync::Semaphore::new(config_search_concurrency)),
            metrics,
        };

        state.limiter.spawn_upkeep(state.shutdown.clone());
        let retention = state.retention.clone().spawn(state.shutdown.clone());
        let listener = tokio::net::TcpListener::bind(state.config.bind_addr)
            .await
            .with_context(|| format!("cannot listen on {} (BIND_ADDR)", state.config.bind_addr))?;
        let addr = listener.local_addr()?;
        let config = &state.config;
        let limits = SocketLimits {
            header_timeout: config.http_header_timeout,
            idle_timeout: config.http_idle_timeout,
            max_per_address: config.http_max_connections_per_address,
            trusted_proxies: config.trusted_proxies.clone(),
        };
        let listener = GuardedListener::new(listener, limits, state.metrics.clone());
        let router = crate::http::router(state.clone());
        let shutdown = state.shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .context("HTTP server failed")
        });
        // The url is what a person opens: the browser client is served at `/`.
        tracing::info!(
            %addr, url = %format!("http://{addr}/"), node_id = %state.config.node_id, cluster = state.cluster.is_some(),
            model = %state.config.model, mock = state.mock_model, "relay-chat listening"
        );
        Ok(Server { addr, state, mock, task, retention })
    }

    /// Shuts down gracefully, in an order that loses nothing: first no new work is
    /// accepted (sends answer `unavailable`), then every running reply is stored as it
    /// stands (its watchers get `done` `cancelled`) and everything the sessions queued is
    /// written, then (in a cluster) the leases are given up, then every WebSocket
    /// connection is closed with 1001 and in-flight requests finish, then the last queued
    /// writes are stored and the database closed, and only then does this return.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.state.sessions.shutdown().await;
        // Written before the leases go: a node that takes a session over must find
        // everything this one stored (and this one's writes would be refused after it).
        let flushed = tokio::time::timeout(SHUTDOWN_GRACE, self.state.writes.flush()).await.is_ok();
        match (&self.state.cluster, flushed) {
            (Some(cluster), true) => cluster.leave().await,
            // Given up now, the leases would let another node claim the sessions and
            // refuse what is still queued here; kept, they expire by themselves, and the
            // writes go on until the last moment of shutdown.
            (Some(_), false) => tracing::error!(
                "queued writes were not stored within {SHUTDOWN_GRACE:?}; leaving the sessions' leases to expire"
            ),
            (None, false) => tracing::error!("queued writes were not stored within {SHUTDOWN_GRACE:?}"),
            (None, true) => {}
        }
        self.state.shutdown.cancel();
        let connections = self.state.connections.clone();
        connections.close();
        let drained = async {
            connections.wait().await;
            self.task.await.context("HTTP server task panicked")?
        };
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, drained).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("connections did not finish within {SHUTDOWN_GRACE:?}; closing anyway");
                Ok(())
            }
        };
        // Requests that were finishing may still have queued writes.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.state.writes.close()).await.is_err() {
            tracing::error!("queued writes were not stored within {SHUTDOWN_GRACE:?}");
        }
        // Stopped by the token above; a run under way ends after its current batch.
        let _ = tokio::time::timeout(CLOSE_GRACE, self.retention).await;
        // Last. Whatever still writes after a grace above ran out is refused from here; a
        // close cut short only leaves the next start a log to replay.
        match self.state.store.close_within(CLOSE_GRACE).await {
            Ok(()) => tracing::info!("database closed"),
            Err(StoreError::Timeout) => tracing::error!("the database did not close within {CLOSE_GRACE:?}"),
            Err(error) => tracing::error!(%error, "the database did not close"),
        }
        if let Some(mock) = &self.mock {
            mock.shutdown();
        }
        result
    }
}

/// Writes the write-behind queue holds before writers wait for room (back-pressure).
const WRITE_QUEUE: usize = 16_384;

/// How long shutdown waits for connections to take their close frames and requests to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// How long shutdown waits for the retention loop to stop, then for the database to close
/// (its memtables written to disk).
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
