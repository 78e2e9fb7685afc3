//! Persistence in SurrealDB: users, chat sessions, chat messages and daily usage.
//!
//! The store speaks SurrealQL to a [`Database`]: the embedded on-disk database
//! (`surrealkv://`), the in-memory one (`mem://`) or a remote server (`ws://`), through one
//! code path. Rows come back as JSON and are decoded into the
//! protocol's types, which keeps the SDK's own value types out of the rest of the server.

mod batch;
mod database;
mod engine_runtime;
mod export;
mod import;
mod messages;
mod migrations;
mod models;
mod ops;
mod prompts;
#[cfg(test)]
mod query_plans;
pub mod search;
mod sessions;
mod share;
mod usage;
mod users;
mod write_behind;

use relay_protocol::{Session, UserRole};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use surrealdb::opt::auth::Root;
use uuid::Uuid;

pub use batch::{IDEMPOTENCY_WINDOW, MAX_BATCH_TEXT_BYTES, MAX_SUPERSEDED_REPLIES, largest_message, memtable_needed};
pub use database::EmbeddedSizes;
pub use migrations::{MIGRATIONS, Migration};
pub use models::ModelDay;
pub use ops::{AfterUsage, Fence, Save, Saved, SendKey, Tokens};
pub use share::ShareRecord;
pub use usage::DayUsage;
pub use write_behind::{OnFenced, WriteBehind};

use database::Database;
use engine_runtime::EngineRuntime;

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database rejected a query or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] surrealdb::Error),
    /// A row did not have the shape the server expects.
    #[error("unexpected row shape: {0}")]
    Decode(#[from] serde_json::Error),
    /// A unique index refused the write (a taken username).
    #[error("already exists")]
    Conflict,
    /// A batched write failed (the message is the database's), or the writer stopped.
    #[error("batched write failed: {0}")]
    Batch(String),
    /// The database did not answer within `DATABASE_TIMEOUT_MS` (a write stays queued).
    #[error("the database did not answer in time")]
    Timeout,
    /// The write was made under a session epoch that is no longer the session's: another
    /// actor (on this node or another) has taken the session over. Nothing was written.
    #[error("the session is run by another actor now")]
    Fenced,
    /// The embedded database's own threads could not be started, or its work was lost.
    #[error("embedded database threads: {0}")]
    Engine(std::io::Error),
    /// The embedded database could not be opened (its files, its version).
    #[error("cannot open the embedded database: {0}")]
    Open(String),
    /// A write alone is larger than the embedded database's memtable can take
    /// (`DATABASE_MEMTABLE_BYTES`): retrying would never store it.
    #[error("the write is too large for the database's memtable (DATABASE_MEMTABLE_BYTES)")]
    TooLarge,
    /// The database holds a schema newer than this server knows.
    #[error("database schema version {found} is newer than this server knows ({known}); upgrade the server")]
    SchemaTooNew {
        /// The newest migration recorded in the database.
        found: u32,
        /// The newest migration this build carries.
        known: u32,
    },
}

/// Connection settings for [`Store::connect`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `surrealkv://path`, `mem://` or `ws://host:port`.
    pub url: String,
    /// Root user and password for a remote server.
    pub credentials: Option<(String, String)>,
    /// Namespace to use.
    pub namespace: String,
    /// Database to use.
    pub database: String,
    /// How long a query may take before it answers [`StoreError::Timeout`].
    pub timeout: std::time::Duration,
    /// The embedded SurrealKV's memory (`DATABASE_CACHE_BYTES`, `DATABASE_MEMTABLE_BYTES`).
    pub embedded: EmbeddedSizes,
}

/// A stored user with the password hash (never sent to clients).
#[derive(Clone, Debug, Deserialize)]
pub struct UserRecord {
    /// The user id.
    pub id: Uuid,
    /// The login name.
    pub username: String,
    /// The argon2id PHC string.
    pub password_hash: String,
    /// Stored role.
    pub role: UserRole,
}

/// A stored session with its owner, as the session actor needs it.
#[derive(Clone, Debug, Deserialize)]
pub struct SessionRecord {
    /// The session as the API shows it.
    #[serde(flatten)]
    pub session: Session,
    /// The owner's user id.
    pub user_id: Uuid,
}

/// What a `PATCH` of a session changes (each `None` leaves its field as it is).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionChange {
    /// A new title (checked).
    pub title: Option<String>,
    /// A new system prompt (checked), or `Some(None)` to go back to the server's (kept
    /// apart from "unchanged" when forwarded to another node as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "cleared_or_set")]
    pub system_prompt: Option<Option<String>>,
    /// A new model (one the server offers).
    pub model: Option<String>,
}

/// A field that is absent (unchanged), `null` (cleared) or a value, as JSON.
mod cleared_or_set {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// A session taken over for a new actor ([`Store::claim_session`]).
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The session and its owner.
    pub record: SessionRecord,
    /// The epoch the new actor holds: its writes carry it.
    pub epoch: u64,
    /// Replies left `generating` by whatever ran the session before, now marked `error`.
    pub failed: usize,
}

/// What an earlier send with an idempotency key stored.
#[derive(Clone, Debug, Deserialize)]
pub struct StoredSend {
    /// Its session.
    pub session_id: Uuid,
    /// Its user message.
    pub message_id: Uuid,
    /// Its reply.
    pub reply_id: Uuid,
}

/// The marker of a fenced write that finds its session claimed by another actor.
const FENCED: &str = "relay:fenced";

/// Handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    // Shared, not cloned: cloning a `Surreal` handle opens a new database session (its own
    // maps and a message to the router each way), which cost about 35 KiB of memory per
    // WebSocket connection and work on every request before (see BENCHMARKS.md).
    db: Arc<Database>,
    timeout: std::time::Duration,
    /// The runtime an embedded database was started on (`None` for a remote server).
    engine: Option<Arc<EngineRuntime>>,
}

const SESSION_FIELDS: &str = "record::id(id) AS id, user_id, title, created_at, updated_at, system_prompt, model";
const MESSAGE_FIELDS: &str = "record::id(id) AS id, session_id, role, content, token_count, status, created_at, superseded ?? false AS superseded, model, replaced_by";
/// A user's live sessions, as a `FROM` clause. The index is named because SurrealDB 3.3's
/// planner, left to choose, intersects `chat_session_user` with `chat_session_deleted`,
/// whose `NONE` entry lists every live session of every user: each read then grew with the
/// whole table (15-20 ms at 20,000 sessions, against 0.6 ms through the user's index).
const LIVE_SESSIONS_OF_USER: &str =
    "chat_session WITH INDEX chat_session_user WHERE user_id = $user_id AND deleted_at = NONE";
/// A page of a user's live sessions, newest activity first: the same, read backwards
/// through `chat_session_user_updated` so the page stops at its limit.
const LIVE_SESSIONS_OF_USER_NEWEST_FIRST: &str = "chat_session WITH INDEX chat_session_user_updated \
     WHERE user_id = $user_id AND deleted_at = NONE ORDER BY updated_at DESC";
/// The replies of session `$id` left `generating`, as record ids. The index is named
/// because the planner otherwise walks `chat_message_status`, every reply being generated
/// in the database, for each claim (25 µs a row: half a second with 20,000 of them).
const LEFTOVERS_OF_SESSION: &str = "SELECT VALUE id FROM chat_message WITH INDEX chat_message_session \
     WHERE session_id = $id AND status = 'generating'";

/// Attempts at a direct query whose transaction conflicted with another.
const CONFLICT_ATTEMPTS: u32 = 8;

/// Runs `query` again while SurrealDB answers that its transaction conflicted with another
/// and can be retried (none of it was applied): the batched writers commit concurrently with
/// direct writes (a delete, a rename), and two may touch one record at once.
async fn retry_conflicts<T, F, Fut>(query: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match query().await {
            Err(e) if attempt < CONFLICT_ATTEMPTS && is_retryable(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(5u64 << attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether an error is SurrealKV refusing a transaction larger than its whole memtable:
/// the same transaction is refused every time.
pub(crate) fn is_too_large(error: &StoreError) -> bool {
    matches!(error, StoreError::TooLarge) || error.to_string().contains("Memtable arena is full")
}

/// Whether an error is a transaction conflict SurrealDB says can be retried.
pub(crate) fn is_retryable(error: &StoreError) -> bool {
    error.to_string().contains("can be retried")
}

impl Store {
    /// Connects, selects namespace and database, and applies pending migrations.
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        let url = embedded_path_ready(&config.url).to_owned();
        let engine = if is_server(&url) {
            None
        } else {
            Some(Arc::new(EngineRuntime::start().await.map_err(StoreError::Engine)?))
        };
        let db = match &engine {
            Some(engine) => {
                let sizes = config.embedded;
                engine.run(async move { Database::open_embedded(&url, sizes).await }).await?
            }
            None => Database::connect_server(&url).await?,
        };
        if let Some((username, password)) = &config.credentials {
            db.signin(Root { username: username.clone(), password: password.clone() }).await?;
        }
        let db = Arc::new(db);
        // Nodes of a cluster starting together define the namespace and apply migrations at
        // the same moment; SurrealDB answers the losers of a race "can be retried".
        retry_conflicts(|| async {
            if is_server(&config.url) {
                // A remote server may not have them yet; defining is idempotent.
                db.query(
                    format!(
                        "DEFINE NAMESPACE IF NOT EXISTS `{ns}`; USE NS `{ns}`; DEFINE DATABASE IF NOT EXISTS `{db}`;",
                        ns = config.namespace,
                        db = config.database
                    ),
                    None,
                )
                .await?
                .check()?;
            }
            db.use_ns_db(&config.namespace, &config.database).await?;
            migrations::apply(&db, MIGRATIONS).await
        })
        .await?;
        Ok(Store { db, timeout: config.timeout, engine })
    }

    /// Runs `work` on the embedded database's own threads (see [`EngineRuntime`]), or here
    /// for a remote server. Dropped before it ends (a timeout), the caller stops waiting at
    /// once and the work stops at its next await (a poll already running finishes there).
    async fn on_engine<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.engine {
            Some(engine) => engine.run(work).await,
            None => work.await,
        }
    }

    /// Closes the database for good, at the end of a graceful shutdown (see
    /// [`Database::close`]). On SurrealKV every commit after this is refused; `mem://`
    /// closes nothing and keeps answering (a test's server can still be read after its
    /// shutdown); a server's connection stays as it is.
    pub async fn close(&self) -> Result<(), StoreError> {
        let db = Arc::clone(&self.db);
        self.on_engine(async move { db.close().await }).await
    }

    /// [`Store::close`], given up after `grace` as [`StoreError::Timeout`] (a close cut
    /// short only leaves the next start a log to replay).
    pub async fn close_within(&self, grace: std::time::Duration) -> Result<(), StoreError> {
        tokio::time::timeout(grace, self.close()).await.unwrap_or(Err(StoreError::Timeout))
    }

    /// Runs a query future within the query timeout: a database that does not answer (a
    /// paused or partitioned server) makes a request fail instead of hang.
    async fn timed<T>(&self, query: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, query).await.unwrap_or(Err(StoreError::Timeout))
    }

    /// Applies a given list of migrations (for tests of the migration runner).
    pub async fn apply_migrations(&self, migrations: &[Migration]) -> Result<u32, StoreError> {
        migrations::apply(&self.db, migrations).await
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed(async { Ok(self.db.query("RETURN 1", None).await?.check().map(|_| ())?) }).await
    }

    async fn rows<T: DeserializeOwned>(&self, sql: &str, bind: serde_json::Value) -> Result<Vec<T>, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .timed(retry_conflicts(|| async {
                let mut response = self.db.query(sql, Some(bind.clone())).await?.check()?;
                Ok(response.take(response.num_statements() - 1)?)
            }))
            .await?;
        rows.into_iter().map(|r| serde_json::from_value(r).map_err(StoreError::from)).collect()
    }

    /// The `total` of a counting query's first row (0 when it has none: nothing counted).
    async fn total(&self, sql: &str, bind: serde_json::Value) -> Result<u64, StoreError> {
        let rows: Vec<serde_json::Value> = self.rows(sql, bind).await?;
        Ok(rows.first().and_then(|r| r.get("total")).and_then(|v| v.as_u64()).unwrap_or(0))
    }

    async fn execute(&self, sql: &str, bind: serde_json::Value) -> Result<(), StoreError> {
        self.timed(retry_conflicts(|| async {
            match self.db.query(sql, Some(bind.clone())).await?.check() {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict),
                Err(e) => Err(e.into()),
            }
        }))
        .await
    }
}

/// Fails with the error that made a transaction fail, if it failed.
fn transaction_result(response: &mut surrealdb::IndexedResults) -> Result<(), StoreError> {
    match cause_of(response.take_errors()) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The error that made a transaction fail, among the errors of its statements: the others
/// only say they were not executed because of it.
pub(super) fn cause_of(errors: std::collections::HashMap<usize, surrealdb::Error>) -> Option<surrealdb::Error> {
    let mut errors: Vec<(usize, surrealdb::Error)> = errors.into_iter().collect();
    errors.sort_by_key(|(i, _)| *i);
    let consequence = |e: &surrealdb::Error| {
        let text = e.to_string();
        text.contains("was not executed") || text.contains("aborted due to a prior error")
    };
    let cause = errors.iter().position(|(_, e)| !consequence(e)).unwrap_or(0);
    (!errors.is_empty()).then(|| errors.swap_remove(cause).1)
}

/// Whether a write was refused by a unique index. SurrealDB 3.3 reports that as a query
/// error ("Database index `...` already contains ..."), not with its `AlreadyExists` kind,
/// so the message is what tells.
fn is_unique_violation(e: &surrealdb::Error) -> bool {
    let text = e.to_string();
    text.contains("already contains") || text.contains("already exists")
}

/// Whether `url` names a SurrealDB server (`ws://`, `wss://`) rather than a database this
/// process embeds (`surrealkv://`, `mem://`, `memory`); `DATABASE_URL` accepts no other
/// scheme.
pub fn is_server(url: &str) -> bool {
    url.starts_with("ws://") || url.starts_with("wss://")
}

/// Creates the parent directory of an embedded database so a fresh machine just works.
fn embedded_path_ready(url: &str) -> &str {
    if let Some(path) = url.strip_prefix("surrealkv://") {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(parent) = std::path::Path::new(path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
    }
    url
}

#[cfg(test)]
mod session_change_tests {
    use super::SessionChange;

    #[test]
    fn a_cleared_system_prompt_survives_json() {
        for change in [
            SessionChange { system_prompt: Some(None), ..SessionChange::default() },
            SessionChange { system_prompt: Some(Some("be brief".into())), ..SessionChange::default() },
            SessionChange { title: Some("t".into()), ..SessionChange::default() },
        ] {
            let json = serde_json::to_string(&change).unwrap();
            assert_eq!(serde_json::from_str::<SessionChange>(&json).unwrap(), change, "{json}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// Work given to an embedded database runs on its threads, and those threads end with
    /// the last handle on the store.
    #[tokio::test]
    async fn an_embedded_database_works_on_threads_of_its_own_that_end_with_it() {
        let store = super::write_behind::tests::store().await;
        let (name, task) = store
            .on_engine(async {
                let task = std::fs::read_link("/proc/thread-self").expect("a thread's own /proc entry");
                Ok((std::thread::current().name().map(str::to_owned), task))
            })
            .await
            .expect("the work ran");
        assert_eq!(name.as_deref(), Some("relay-db"));
        let entry = std::path::Path::new("/proc").join(task);
        assert!(entry.exists(), "{} is not there while the store is", entry.display());
        drop(store);
        let deadline = Instant::now() + Duration::from_secs(10);
        while entry.exists() {
            assert!(Instant::now() < deadline, "{} is still there after the store was dropped", entry.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
