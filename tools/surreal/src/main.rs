//! The SurrealDB server, as `surreal start …`: what a multi-node relay-chat deployment
//! points `DATABASE_URL=ws://…` at, built from the crate registry.
#![recursion_limit = "256"]

fn main() -> std::process::ExitCode {
    surrealdb_server::init(surrealdb_server::core::CommunityComposer())
}
