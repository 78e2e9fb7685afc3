//! The `relay-server` binary: sets up logging, loads the configuration, serves until
//! Ctrl-C or SIGTERM, then shuts down gracefully.

use std::io::IsTerminal;

use relay_server::{Config, Server, app};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,relay_server=info"));
    // Logs go to stderr: as text (colored on a terminal), or with `LOG_FORMAT=json` one JSON
    // object per line, spans (session and user ids) included, for log collectors.
    match std::env::var("LOG_FORMAT").unwrap_or_default().trim() {
        "" | "text" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        "json" => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        other => {
            eprintln!("relay-server: invalid configuration: LOG_FORMAT: expected text or json, got {other:?}");
            std::process::exit(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relay-server: {e}");
            std::process::exit(2);
        }
    };
    let server = Server::start(config).await?;
    app::shutdown_signal().await;
    server.shutdown().await
}
