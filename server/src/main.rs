//! The `relay-server` binary: loads the configuration, serves until Ctrl-C or SIGTERM,
//! then shuts down gracefully.

use relay_server::{Config, Server, app};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,relay_server=info")))
        .with_writer(std::io::stderr)
        .init();
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
