//! Assembling and running the server: state shared by every handler, start-up in the
//! right order, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, TokenKeys};
use crate::config::{Config, ModelBackend};
use crate::hub::UserHub;
use crate::llm::mock::MockLlm;
use crate::llm::{LlmClient, LlmSettings};
use crate::metrics::Metrics;
use crate::session::{SessionDeps, SessionRegistry, SessionSettings};
use crate::store::{Store, StoreConfig};

/// Everything a request handler or connection needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// Token issue and verification.
    pub tokens: Arc<TokenKeys>,
    /// Session actors.
    pub sessions: Arc<SessionRegistry>,
    /// Per-user connection hub.
    pub hub: Arc<UserHub>,
    /// Cancelled when the server begins shutting down.
    pub shutdown: CancellationToken,
    /// Whether replies come from the built-in mock model.
    pub mock_model: bool,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (tests inspect it).
    pub state: AppState,
    /// The built-in mock model, when no provider key is configured.
    pub mock: Option<MockLlm>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Connects the database, starts the model client (or the mock), binds the listener
    /// and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let store = Store::connect(&StoreConfig {
            url: config.database_url.clone(),
            credentials: config.database_credentials.clone(),
            namespace: config.database_ns.clone(),
            database: config.database_db.clone(),
        })
        .await
        .with_context(|| format!("cannot open the database at {}", config.database_url))?;

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

        let (mock, api_base, api_key) = match &config.model_backend {
            ModelBackend::Remote { api_key, api_base } => (None, api_base.clone(), Some(api_key.clone())),
            ModelBackend::Mock(settings) => {
                let mock = MockLlm::start(settings.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .context("cannot start the built-in mock model")?;
                tracing::warn!(
                    "*** NO SAMBANOVA_API_KEY: replies come from the built-in MOCK model at {} — set SAMBANOVA_API_KEY for real answers ***",
                    mock.base_url()
                );
                let base = mock.base_url();
                (Some(mock), base, None)
            }
        };
        let llm = LlmClient::new(LlmSettings {
            api_base,
            api_key,
            model: config.model.clone(),
            max_tokens: config.max_tokens,
            timeout: config.llm_timeout,
        })?;

        let hub = Arc::new(UserHub::default());
        let metrics = Arc::new(Metrics::new());
        let sessions = SessionRegistry::new(SessionDeps {
            store: store.clone(),
            llm,
            hub: hub.clone(),
            metrics: metrics.clone(),
            settings: SessionSettings {
                system_prompt: config.system_prompt.clone(),
                max_context_messages: config.max_context_messages,
                max_message_length: config.max_message_length,
                max_queued_sends: config.max_queued_sends,
                cancel_grace: config.cancel_grace,
                idle_timeout: config.session_idle,
                checkpoint_interval: config.checkpoint_interval,
                daily_quota: config.daily_message_quota,
            },
        });
        let state = AppState {
            config: Arc::new(config),
            store,
            tokens,
            sessions,
            hub,
            shutdown: CancellationToken::new(),
            mock_model: mock.is_some(),
            metrics,
        };

        let listener = tokio::net::TcpListener::bind(state.config.bind_addr)
            .await
            .with_context(|| format!("cannot listen on {} (BIND_ADDR)", state.config.bind_addr))?;
        let addr = listener.local_addr()?;
        let router = crate::http::router(state.clone());
        let shutdown = state.shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .context("HTTP server failed")
        });
        tracing::info!(%addr, model = %state.config.model, mock = state.mock_model, "relay-chat listening");
        Ok(Server { addr, state, mock, task })
    }

    /// Shuts down gracefully: running replies are stored as they stand (their watchers get
    /// `done` with `cancelled`), then connections are closed with 1001 and in-flight
    /// requests get a few seconds to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.state.sessions.shutdown().await;
        self.state.shutdown.cancel();
        let result = match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(joined) => joined.context("HTTP server task panicked")?,
            Err(_) => {
                tracing::warn!("connections did not finish within 10 s; closing anyway");
                Ok(())
            }
        };
        if let Some(mock) = &self.mock {
            mock.shutdown();
        }
        result
    }
}

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
