//! The database a store speaks SurrealQL to: one embedded in this process, or a SurrealDB
//! server reached over WebSocket.
//!
//! The embedded one is built here rather than by the SDK's `connect`, because `connect`
//! hands SurrealKV an empty configuration: its block cache would take half the machine's
//! memory less 1 GiB (11 GiB on a 24 GiB host) and its memtable up to 1 GiB, whatever the
//! operator wants. Built by hand, both come from [`EmbeddedSizes`] (`DATABASE_CACHE_BYTES`,
//! `DATABASE_MEMTABLE_BYTES`). This leans on two of SurrealDB 3.3.5's hidden functions
//! (`unstable_from_datastore`, `__into_endpoint`) and on `surrealdb-engine-local`: the
//! versions are pinned (`=3.3.5`) and move together.

use std::sync::Arc;

use surrealdb::engine::any::Any;
use surrealdb::engine::local::Db;
use surrealdb::opt::auth::Root;
use surrealdb::{IndexedResults, Surreal};

use super::StoreError;

/// How much memory the embedded SurrealKV may keep (ignored by `mem://` and a server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedSizes {
    /// The block cache: data read back from disk, kept for the next read.
    pub cache_bytes: u64,
    /// The memtable: writes not yet flushed to disk. A single transaction larger than this
    /// fails, so it must hold the largest batch of writes (see the config's checks).
    pub memtable_bytes: u64,
}

impl EmbeddedSizes {
    /// 256 MiB of cache and a 128 MiB memtable: a node stays well under 1 GiB (docs/SIZING.md).
    pub const DEFAULT: EmbeddedSizes = EmbeddedSizes { cache_bytes: 256 << 20, memtable_bytes: 128 << 20 };
}

/// A connection to the database; the store shares one (cloning a `Surreal` handle opens a
/// new database session).
pub(super) enum Database {
    /// SurrealKV or the in-memory engine, in this process, and the datastore under it (kept
    /// to close it).
    Embedded(Surreal<Db>, Arc<surrealdb_engine_local::Datastore>),
    /// A SurrealDB server (`ws://`, `wss://`).
    Server(Surreal<Any>),
}

impl Database {
    /// Opens the embedded database at `url` (`surrealkv://path`, `mem://`, `memory`) as the
    /// SDK's `connect` would (its path handling, its default capabilities, no credentials,
    /// no timeouts), but with `sizes`, and without live-query notifications, which this
    /// server does not use. Runs on the runtime the database's own tasks are to live on.
    pub(super) async fn open_embedded(url: &str, sizes: EmbeddedSizes) -> Result<Database, StoreError> {
        // The SDK's own reading of the path: `~/` expanded, `..` and `.` cleaned.
        let path = surrealdb::engine::any::__into_endpoint(url)?.path;
        let config = surrealdb_cnf::ConfigMap::empty()
            .with_key_value("surrealkv_block_cache_capacity", sizes.cache_bytes.to_string())
            .with_key_value("surrealkv_max_memtable_size", sizes.memtable_bytes.to_string());
        let capabilities = surrealdb::opt::capabilities::Capabilities::default();
        // A log written under a larger memtable is replayed into this one at open.
        let open = |e: anyhow::Error| {
            let e = format!("{e:#}");
            let hint = if e.contains("memtable") { " (raise DATABASE_MEMTABLE_BYTES)" } else { "" };
            StoreError::Open(format!("{e}{hint}"))
        };
        // The order `surrealdb-engine-local`'s `connect` keeps: maintenance tasks write, and
        // must not run before the version check has seen (or written) the version key.
        let datastore = surrealdb_engine_local::Datastore::builder()
            .with_config(config)
            .with_capabilities(capabilities.into())
            .without_maintenance_tasks()
            .build_with_path(&path)
            .await
            .map_err(open)?;
        datastore.check_version().await.map_err(open)?;
        datastore.bootstrap().await.map_err(open)?;
        datastore.start_maintenance_tasks();
        tracing::info!(
            cache_bytes = sizes.cache_bytes,
            memtable_bytes = sizes.memtable_bytes,
            "embedded database open"
        );
        let db = Surreal::<Db>::unstable_from_datastore(Arc::clone(&datastore), None).await?;
        Ok(Database::Embedded(db, datastore))
    }

    /// Connects to a SurrealDB server.
    pub(super) async fn connect_server(url: &str) -> Result<Database, StoreError> {
        Ok(Database::Server(surrealdb::engine::any::connect(url).await?))
    }

    /// Closes an embedded database for good: its maintenance stopped, its memtables written
    /// to disk and its log closed, so the next start has nothing to replay. Called
    /// explicitly: the process exits before the last handle's drop would run it. SurrealKV
    /// logs its own failures here and answers `Ok` all the same, and it warns "No runtime
    /// available for closing the store correctly" on the way (its commit thread drops its
    /// handle on the store outside any runtime; the store is closed regardless). `mem://`
    /// closes nothing; a server's connection just closes when dropped.
    pub(super) async fn close(&self) -> Result<(), StoreError> {
        match self {
            Database::Embedded(_, datastore) => {
                datastore.shutdown().await.map_err(|e| StoreError::Engine(std::io::Error::other(format!("{e:#}"))))
            }
            Database::Server(_) => Ok(()),
        }
    }

    /// Runs `sql` with the parameters of `bind` (a JSON object), if any.
    pub(super) async fn query(
        &self,
        sql: impl Into<String>,
        bind: Option<serde_json::Value>,
    ) -> surrealdb::Result<IndexedResults> {
        let sql = sql.into();
        match (self, bind) {
            (Database::Embedded(db, _), Some(bind)) => db.query(sql).bind(bind).await,
            (Database::Embedded(db, _), None) => db.query(sql).await,
            (Database::Server(db), Some(bind)) => db.query(sql).bind(bind).await,
            (Database::Server(db), None) => db.query(sql).await,
        }
    }

    /// Signs in as a root user.
    pub(super) async fn signin(&self, root: Root) -> surrealdb::Result<()> {
        match self {
            Database::Embedded(db, _) => db.signin(root).await.map(drop),
            Database::Server(db) => db.signin(root).await.map(drop),
        }
    }

    /// Selects the namespace and database every later query runs in.
    pub(super) async fn use_ns_db(&self, namespace: &str, database: &str) -> surrealdb::Result<()> {
        match self {
            Database::Embedded(db, _) => db.use_ns(namespace).use_db(database).await.map(drop),
            Database::Server(db) => db.use_ns(namespace).use_db(database).await.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` of text in one transaction to a fresh on-disk database whose memtable
    /// holds `memtable_bytes`.
    async fn write_in_one_transaction(memtable_bytes: u64, bytes: usize) -> surrealdb::Result<IndexedResults> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("surrealkv://{}", dir.path().join("db").display());
        let sizes = EmbeddedSizes { cache_bytes: 16 << 20, memtable_bytes };
        let db = Database::open_embedded(&url, sizes).await.expect("opens");
        db.use_ns_db("t", "t").await.unwrap();
        db.query("CREATE blob:one SET v = $v", Some(serde_json::json!({"v": "x".repeat(bytes)}))).await?.check()
    }

    /// The memtable's size is what SurrealKV gets: a transaction larger than it is refused,
    /// one that fits is stored (with SurrealDB's own default, both would be).
    #[tokio::test]
    async fn the_memtable_size_reaches_the_engine() {
        let refused = write_in_one_transaction(1 << 20, 3 << 20).await.map(drop).unwrap_err();
        assert!(refused.to_string().contains("Memtable arena is full"), "{refused}");
        write_in_one_transaction(16 << 20, 3 << 20).await.expect("fits a 16 MiB memtable");
    }
}
