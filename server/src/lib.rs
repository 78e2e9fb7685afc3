//! relay-chat server: a self-hosted, real-time LLM chat backend.
//!
//! Layout, one module per idea: [`config`] (environment), [`accounts`] (accounts the
//! operator creates: `relay-server create-admin`), [`store`] (SurrealDB),
//! [`auth`] (passwords and tokens), [`llm`] (the model client: retries, circuit breaker),
//! [`session`] (one actor per live chat session), [`fanout`] and [`hub`] (delivering
//! frames), [`catalog`] (a user's session list), [`http`] and [`ws`] (the wire), [`limits`]
//! (quotas), [`metrics`] (Prometheus), [`retention`] (archiving and purging deleted sessions), [`error`] (the one mapping to protocol error codes), [`app`] (start and stop).

pub mod accounts;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod error;
pub mod export;
pub mod fanout;
pub mod faults;
#[cfg(feature = "heap-stats")]
pub mod heap_stats;
pub mod http;
pub mod hub;
pub mod idle_memory;
pub mod limits;
pub mod llm;
pub mod metrics;
pub mod retention;
pub mod search;
pub mod session;
pub mod share;
pub mod state;
pub mod store;
pub mod ws;

pub use app::Server;
pub use config::Config;
pub use state::AppState;
