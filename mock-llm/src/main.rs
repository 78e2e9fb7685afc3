//! Standalone OpenAI-compatible mock chat model for dev mode and load tests.
//!
//! Configured by `MOCK_BIND` (default `127.0.0.1:8090`) and the `MOCK_*`
//! variables read by `MockSettings::from_env` (lorem ipsum replies unless `MOCK_DEMO=1`
//! asks for the markdown demo the server's built-in mock shows); prints the base URL on stdout
//! so scripts can capture it, then serves until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use relay_mock_llm::{MockLlm, MockSettings};
use tracing_subscriber::EnvFilter;

/// Address used when `MOCK_BIND` is unset; loopback so a dev machine does not expose it.
const DEFAULT_BIND: &str = "127.0.0.1:8090";

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr so stdout carries only the base URL, which scripts capture.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();

    let bind_text =
        std::env::var("MOCK_BIND").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| DEFAULT_BIND.to_owned());
    let bind: SocketAddr = match bind_text.trim().parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("MOCK_BIND: invalid value {bind_text:?}: {err}");
            return ExitCode::from(2);
        }
    };
    let settings = match MockSettings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };

    tracing::info!(?settings, "starting mock llm");
    let mock = match MockLlm::start(settings, bind).await {
        Ok(mock) => mock,
        Err(err) => {
            eprintln!("cannot bind {bind}: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", mock.base_url());

    shutdown_signal().await;
    tracing::info!("shutting down mock llm");
    mock.shutdown();
    ExitCode::SUCCESS
}

/// Resolves on Ctrl-C or SIGTERM, so both an interactive user and a process supervisor can stop it.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
