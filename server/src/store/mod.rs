//! Persistence in SurrealDB: users, chat sessions, chat messages and daily usage.
//!
//! The store speaks SurrealQL through the `surrealdb` crate's `any` engine, so one code
//! path serves the embedded on-disk database (`surrealkv://`), the in-memory one (`mem://`)
//! and a remote server (`ws://`). Rows come back as JSON and are decoded into the
//! protocol's types, which keeps the SDK's own value types out of the rest of the server.

mod batch;
mod export;
mod import;
mod migrations;
mod models;
mod ops;
mod prompts;
#[cfg(test)]
mod query_plans;
pub mod search;
mod share;
mod write_behind;

use chrono::{DateTime, NaiveDate, Utc};
use relay_protocol::{Message, Session, UserRole, UserUsage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;
use surrealdb::opt::auth::Root;
use uuid::Uuid;

pub use batch::IDEMPOTENCY_WINDOW;
pub use migrations::{MIGRATIONS, Migration};
pub use models::ModelDay;
pub use ops::{AfterUsage, Fence, Save, Saved, SendKey, Tokens};
pub use share::ShareRecord;
pub use write_behind::{OnFenced, WriteBehind};

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
    db: Arc<Surreal<Any>>,
    timeout: std::time::Duration,
    /// The runtime an embedded database was started on (`None` for a remote server).
    engine: Option<Arc<EngineRuntime>>,
}

/// Threads of their own for an embedded database. The engine's background work (the
/// full-text index's compaction) runs on the runtime it was started on, and SurrealDB runs a
/// query's filter in tasks it spawns on the runtime the query runs on; searches run here
/// too (see [`Store::on_engine`]). So that work competes with the streams only as threads
/// do, for the cores, and never holds a worker of the runtime that serves requests and
/// streams replies (BENCHMARKS.md, "Streams beside searches"). One worker per core, so a
/// search keeps its parallelism. The threads end when the last handle to them is gone.
struct EngineRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl EngineRuntime {
    /// How long the database's tasks get to finish (its own shutdown, once the last
    /// handle is dropped) before its threads end.
    const WIND_DOWN: std::time::Duration = std::time::Duration::from_secs(5);

    async fn start() -> std::io::Result<EngineRuntime> {
        let (started, handle) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The runtime is made and dropped on the keeper thread only: a runtime dropped
        // where async code runs panics.
        std::thread::Builder::new().name("relay-db-keeper".into()).spawn(move || {
            let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("relay-db")
                .enable_all()
                .build();
            let runtime = match built {
                Ok(runtime) => runtime,
                Err(error) => return drop(started.send(Err(error))),
            };
            if started.send(Ok(runtime.handle().clone())).is_err() {
                return;
            }
            runtime.block_on(async {
                let _ = stopped.await;
                // The database shuts itself down in a task once its last handle is gone.
                let deadline = tokio::time::Instant::now() + Self::WIND_DOWN;
                let metrics = tokio::runtime::Handle::current().metrics();
                while metrics.num_alive_tasks() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            });
        })?;
        let handle = handle.await.map_err(std::io::Error::other)??;
        Ok(EngineRuntime { handle, _stop: stop })
    }

    /// Runs `work` on these threads; dropped before it ends, the work is aborted.
    async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let task = tokio_util::task::AbortOnDropHandle::new(self.handle.spawn(work));
        task.await.map_err(|e| StoreError::Engine(std::io::Error::other(e)))?
    }
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

/// Whether an error is a transaction conflict SurrealDB says can be retried.
pub(crate) fn is_retryable(error: &StoreError) -> bool {
    error.to_string().contains("can be retried")
}

impl Store {
    /// Connects, selects namespace and database, and applies pending migrations.
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        let url = embedded_path_ready(&config.url).to_owned();
        let remote = ["ws://", "wss://", "http://", "https://"].iter().any(|p| url.starts_with(p));
        let engine =
            if remote { None } else { Some(Arc::new(EngineRuntime::start().await.map_err(StoreError::Engine)?)) };
        let connecting = async move { Ok(surrealdb::engine::any::connect(url).await?) };
        let db = match &engine {
            Some(engine) => engine.run(connecting).await?,
            None => connecting.await?,
        };
        if let Some((username, password)) = &config.credentials {
            db.signin(Root { username: username.clone(), password: password.clone() }).await?;
        }
        let db = Arc::new(db);
        // Nodes of a cluster starting together define the namespace and apply migrations at
        // the same moment; SurrealDB answers the losers of a race "can be retried".
        retry_conflicts(|| async {
            if config.url.starts_with("ws") {
                // A remote server may not have them yet; defining is idempotent.
                db.query(format!(
                    "DEFINE NAMESPACE IF NOT EXISTS `{ns}`; USE NS `{ns}`; DEFINE DATABASE IF NOT EXISTS `{db}`;",
                    ns = config.namespace,
                    db = config.database
                ))
                .await?
                .check()?;
            }
            db.use_ns(config.namespace.clone()).use_db(config.database.clone()).await?;
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
        self.timed(async { Ok(self.db.query("RETURN 1").await?.check().map(|_| ())?) }).await
    }

    async fn rows<T: DeserializeOwned>(&self, sql: &str, bind: serde_json::Value) -> Result<Vec<T>, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .timed(retry_conflicts(|| async {
                let mut response = self.db.query(sql).bind(bind.clone()).await?.check()?;
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
            match self.db.query(sql).bind(bind.clone()).await?.check() {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict),
                Err(e) => Err(e.into()),
            }
        }))
        .await
    }

    // ---- users -------------------------------------------------------------------------

    /// Stores a new user; [`StoreError::Conflict`] when the username is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: UserRole,
    ) -> Result<UserRecord, StoreError> {
        let id = Uuid::new_v4();
        self.execute(
            "CREATE type::record('user', $id) CONTENT { username: $username, password_hash: $hash, role: $role, created_at: time::now() }",
            serde_json::json!({"id": id, "username": username, "hash": password_hash, "role": role}),
        )
        .await?;
        Ok(UserRecord { id, username: username.to_string(), password_hash: password_hash.to_string(), role })
    }

    /// Finds a user by login name.
    pub async fn find_user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let rows = self
            .rows(
                "SELECT record::id(id) AS id, username, password_hash, role FROM user WHERE username = $username LIMIT 1",
                serde_json::json!({"username": username}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Finds a user by id.
    pub async fn find_user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        let rows = self
            .rows(
                "SELECT record::id(id) AS id, username, password_hash, role FROM type::record('user', $id)",
                serde_json::json!({"id": id}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    // ---- sessions ----------------------------------------------------------------------

    /// Creates a session owned by `user_id`.
    pub async fn create_session(
        &self,
        user_id: Uuid,
        title: &str,
        system_prompt: Option<String>,
        model: Option<String>,
    ) -> Result<Session, StoreError> {
        let now = Utc::now();
        let session = Session { system_prompt, model, ..Session::new(Uuid::new_v4(), title.to_string(), now) };
        self.execute(
            "CREATE type::record('chat_session', $id) CONTENT { user_id: $user_id, title: $title, \
             created_at: <datetime>$now, updated_at: <datetime>$now, \
             system_prompt: IF $system_prompt = NULL { NONE } ELSE { $system_prompt }, \
             model: IF $model = NULL { NONE } ELSE { $model } }",
            serde_json::json!({"id": session.id, "user_id": user_id, "title": title, "now": now,
                "system_prompt": session.system_prompt, "model": session.model}),
        )
        .await?;
        Ok(session)
    }

    /// Loads a session that exists and is not deleted, whoever owns it.
    pub async fn get_session(&self, session_id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let rows = self
            .rows(
                &format!("SELECT {SESSION_FIELDS} FROM type::record('chat_session', $id) WHERE deleted_at = NONE"),
                serde_json::json!({"id": session_id}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Loads a session only if `user_id` owns it and it is not deleted.
    pub async fn get_owned_session(&self, user_id: Uuid, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        Ok(self.get_session(session_id).await?.filter(|r| r.user_id == user_id).map(|r| r.session))
    }

    /// One page of a user's live sessions, most recently active first, with the total.
    pub async fn list_sessions(
        &self,
        user_id: Uuid,
        page: u32,
        per_page: u32,
    ) -> Result<(Vec<Session>, u64), StoreError> {
        let start = u64::from(page.saturating_sub(1)) * u64::from(per_page);
        let mut response = self
            .timed(async {
                Ok(self
                    .db
                    .query(format!(
                        "SELECT {SESSION_FIELDS} FROM {LIVE_SESSIONS_OF_USER_NEWEST_FIRST} LIMIT $limit START $start;
                 SELECT count() AS total FROM {LIVE_SESSIONS_OF_USER} GROUP ALL;"
                    ))
                    .bind(serde_json::json!({"user_id": user_id, "limit": per_page, "start": start}))
                    .await?
                    .check()?)
            })
            .await?;
        let rows: Vec<serde_json::Value> = response.take(0)?;
        let totals: Vec<serde_json::Value> = response.take(1)?;
        let sessions = rows
            .into_iter()
            .map(|r| serde_json::from_value::<SessionRecord>(r).map(|r| r.session))
            .collect::<Result<Vec<_>, _>>()?;
        let total = totals.first().and_then(|t| t.get("total")).and_then(|t| t.as_u64()).unwrap_or(0);
        Ok((sessions, total))
    }

    /// Changes a session the user owns (title, system prompt, model), under its actor's
    /// fence; `None` when it is not theirs or is deleted.
    pub async fn update_session(
        &self,
        fence: Fence,
        user_id: Uuid,
        change: &SessionChange,
    ) -> Result<Option<Session>, StoreError> {
        let mut set = vec!["updated_at = time::now()"];
        if change.title.is_some() {
            set.push("title = $title");
        }
        match &change.system_prompt {
            Some(Some(_)) => set.push("system_prompt = $system_prompt"),
            Some(None) => set.push("system_prompt = NONE"),
            None => {}
        }
        if change.model.is_some() {
            set.push("model = $model");
        }
        let rows: Vec<SessionRecord> = self
            .fenced_rows(
                fence,
                &format!(
                    "UPDATE type::record('chat_session', $fence_session) SET {} \
                     WHERE user_id = $user_id AND deleted_at = NONE RETURN {SESSION_FIELDS}",
                    set.join(", ")
                ),
                serde_json::json!({"user_id": user_id, "title": change.title, "model": change.model,
                    "system_prompt": change.system_prompt.clone().flatten()}),
            )
            .await?;
        Ok(rows.into_iter().next().map(|r| r.session))
    }

    /// Runs writes of a session in one transaction, only if `fence` is still the session's
    /// epoch (else [`StoreError::Fenced`], and nothing is written); returns the rows of the
    /// last statement. The fence is written too, so a claim racing it conflicts with it.
    async fn fenced_rows<T: DeserializeOwned>(
        &self,
        fence: Fence,
        sql: &str,
        mut bind: serde_json::Value,
    ) -> Result<Vec<T>, StoreError> {
        bind["fence_session"] = serde_json::json!(fence.session_id);
        bind["fence_epoch"] = serde_json::json!(fence.epoch);
        let sql = format!(
            "BEGIN TRANSACTION;
             IF type::record('chat_session', $fence_session).epoch != $fence_epoch {{ THROW '{FENCED}' }};
             UPDATE type::record('chat_session', $fence_session) SET epoch = $fence_epoch;
             {sql};
             COMMIT TRANSACTION;"
        );
        let rows: Vec<serde_json::Value> = self
            .timed(retry_conflicts(|| async {
                let mut response = self.db.query(sql.as_str()).bind(bind.clone()).await?;
                if let Some(e) = cause_of(response.take_errors()) {
                    return Err(if e.to_string().contains(FENCED) { StoreError::Fenced } else { e.into() });
                }
                Ok(response.take(response.num_statements() - 2)?)
            }))
            .await?;
        rows.into_iter().map(|r| serde_json::from_value(r).map_err(StoreError::from)).collect()
    }

    /// How many live (not deleted) sessions a user has.
    pub async fn count_sessions(&self, user_id: Uuid) -> Result<u64, StoreError> {
        self.total(
            &format!("SELECT count() AS total FROM {LIVE_SESSIONS_OF_USER} GROUP ALL"),
            serde_json::json!({"user_id": user_id}),
        )
        .await
    }

    /// Marks a session the user owns as deleted, under its actor's fence; false when it is
    /// not theirs or already gone.
    pub async fn soft_delete_session(&self, fence: Fence, user_id: Uuid) -> Result<bool, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .fenced_rows(
                fence,
                // The share link goes with the session (its viewers' streams end with the actor).
                "IF type::record('chat_session', $fence_session).user_id = $user_id { \
                     DELETE type::record('chat_share', $fence_session) };
                 UPDATE type::record('chat_session', $fence_session) SET deleted_at = time::now() \
                 WHERE user_id = $user_id AND deleted_at = NONE RETURN record::id(id) AS id",
                serde_json::json!({"user_id": user_id}),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// How many messages a user's live (not deleted) sessions hold.
    pub async fn stored_messages(&self, user_id: Uuid) -> Result<u64, StoreError> {
        self.total(
            &format!("SELECT math::sum(message_count) AS total FROM {LIVE_SESSIONS_OF_USER} GROUP ALL"),
            serde_json::json!({"user_id": user_id}),
        )
        .await
    }

    /// Archives up to `batch` sessions deleted before `cutoff`: their messages move out of
    /// the live table into `chat_message_archive`. Returns (sessions, messages) archived.
    pub async fn archive_deleted_before(&self, cutoff: DateTime<Utc>, batch: usize) -> Result<(u64, u64), StoreError> {
        self.retention_step(
            "LET $ids = SELECT VALUE record::id(id) FROM chat_session \
                 WHERE deleted_at != NONE AND deleted_at < <datetime>$cutoff AND archived_at = NONE LIMIT $batch;
             LET $moved = INSERT INTO chat_message_archive (SELECT *, type::record('chat_message_archive', \
                 record::id(id)) AS id FROM chat_message WHERE session_id IN $ids);
             DELETE chat_message WHERE session_id IN $ids;
             UPDATE chat_session SET archived_at = time::now() WHERE record::id(id) IN $ids;
             RETURN { sessions: array::len($ids), messages: array::len($moved) };",
            cutoff,
            batch,
        )
        .await
    }

    /// Deletes for good up to `batch` sessions deleted before `cutoff`, with their messages
    /// (live or archived). Returns (sessions, messages) purged.
    pub async fn purge_deleted_before(&self, cutoff: DateTime<Utc>, batch: usize) -> Result<(u64, u64), StoreError> {
        self.retention_step(
            "LET $ids = SELECT VALUE record::id(id) FROM chat_session \
                 WHERE deleted_at != NONE AND deleted_at < <datetime>$cutoff LIMIT $batch;
             LET $archived = DELETE chat_message_archive WHERE session_id IN $ids RETURN BEFORE;
             LET $live = DELETE chat_message WHERE session_id IN $ids RETURN BEFORE;
             DELETE chat_session WHERE record::id(id) IN $ids;
             DELETE chat_share WHERE session_id IN $ids;
             DELETE message_feedback WHERE session_id IN $ids;
             RETURN { sessions: array::len($ids), messages: array::len($archived) + array::len($live) };",
            cutoff,
            batch,
        )
        .await
    }

    /// Runs one retention statement list in a transaction; it returns `{sessions, messages}`.
    async fn retention_step(&self, sql: &str, cutoff: DateTime<Utc>, batch: usize) -> Result<(u64, u64), StoreError> {
        let sql = format!("BEGIN TRANSACTION;\n{sql}\nCOMMIT TRANSACTION;");
        let mut response = retry_conflicts(|| async {
            let mut response =
                self.db.query(sql.as_str()).bind(serde_json::json!({"cutoff": cutoff, "batch": batch})).await?;
            transaction_result(&mut response)?;
            Ok(response)
        })
        .await?;
        // The `RETURN` is the statement before `COMMIT`.
        let rows: Vec<serde_json::Value> = response.take(response.num_statements() - 2)?;
        let field = |name: &str| rows.first().and_then(|r| r.get(name)).and_then(|v| v.as_u64()).unwrap_or(0);
        Ok((field("sessions"), field("messages")))
    }

    /// How many archived messages a session has (they leave the live table when archived).
    pub async fn archived_messages(&self, session_id: Uuid) -> Result<u64, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .rows(
                "SELECT count() AS n FROM chat_message_archive WHERE session_id = $id GROUP ALL",
                serde_json::json!({"id": session_id}),
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get("n")).and_then(|v| v.as_u64()).unwrap_or(0))
    }

    // ---- messages ----------------------------------------------------------------------

    /// Marks replies left `generating` by a server that stopped without storing them (a
    /// crash, a kill) as `error`; returns how many. Run at start-up, before any actor runs.
    pub async fn fail_interrupted_replies(&self) -> Result<usize, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .rows(
                "UPDATE chat_message SET status = 'error' WHERE status = 'generating' RETURN record::id(id) AS id",
                serde_json::json!({}),
            )
            .await?;
        Ok(rows.len())
    }

    /// Takes a session over for a new actor: raises its epoch (the fencing token every
    /// write of the actor carries, so whatever ran the session before writes nothing more),
    /// counts its messages again (a count lost with an earlier owner is mended here), and
    /// marks replies left `generating` by whatever ran it before as `error`, all in one
    /// transaction. `None` when the session does not exist or is deleted.
    pub async fn claim_session(&self, session_id: Uuid) -> Result<Option<Claimed>, StoreError> {
        let sql = format!(
            "BEGIN TRANSACTION;
             LET $s = (UPDATE type::record('chat_session', $id) SET epoch = (epoch ?? 0) + 1,
                 message_count = (SELECT count() AS n FROM chat_message WHERE session_id = $id GROUP ALL)[0].n ?? 0
                 WHERE deleted_at = NONE RETURN {SESSION_FIELDS}, epoch)[0];
             LET $failed = IF $s != NONE {{
                 (UPDATE ({LEFTOVERS_OF_SESSION}) SET status = 'error' RETURN VALUE record::id(id))
             }} ELSE {{ [] }};
             RETURN IF $s != NONE {{ {{ session: $s, failed: array::len($failed) }} }} ELSE {{ NONE }};
             COMMIT TRANSACTION;"
        );
        let claimed: Option<serde_json::Value> = self
            .timed(retry_conflicts(|| async {
                let mut response = self.db.query(sql.as_str()).bind(serde_json::json!({"id": session_id})).await?;
                transaction_result(&mut response)?;
                Ok(response.take(response.num_statements() - 2)?)
            }))
            .await?;
        let Some(claimed) = claimed.filter(|c| !c.is_null()) else { return Ok(None) };
        #[derive(Deserialize)]
        struct Row {
            session: SessionRecordWithEpoch,
            failed: usize,
        }
        #[derive(Deserialize)]
        struct SessionRecordWithEpoch {
            #[serde(flatten)]
            record: SessionRecord,
            epoch: u64,
        }
        let row: Row = serde_json::from_value(claimed)?;
        Ok(Some(Claimed { record: row.session.record, epoch: row.session.epoch, failed: row.failed }))
    }

    /// The outcome a committed write-behind batch recorded under its marker, if it did commit.
    async fn batch_outcome(&self, batch: &batch::BatchId) -> Result<Option<batch::Outcome>, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .rows(
                "SELECT VALUE outcome FROM type::record('write_batch', $batch)",
                serde_json::json!({"batch": batch.record()}),
            )
            .await?;
        Ok(rows.into_iter().next().filter(|v| !v.is_null()).map(serde_json::from_value).transpose()?)
    }

    /// Runs a write-behind batch's transaction; returns what its `RETURN` reported.
    /// Within the query timeout, like every query: a connection that hangs fails the
    /// attempt, and the writer tries again (its marker keeps a retry from applying twice).
    async fn apply_batch(&self, sql: &str, bind: serde_json::Value) -> Result<batch::Outcome, StoreError> {
        self.timed(async {
            let mut response = self.db.query(sql).bind(bind).await?;
            if let Some(e) = cause_of(response.take_errors()) {
                return Err(StoreError::Batch(e.to_string()));
            }
            let outcome: Option<serde_json::Value> = response.take(response.num_statements() - 2)?;
            Ok(outcome.map(serde_json::from_value).transpose()?.unwrap_or_default())
        })
        .await
    }

    /// What an earlier send with this idempotency key stored, if it was within 24 hours.
    pub async fn find_send_key(&self, user_id: Uuid, key: &str) -> Result<Option<StoredSend>, StoreError> {
        let rows: Vec<StoredSend> = self
            .rows(
                "SELECT session_id, message_id, reply_id FROM type::record('idempotency', [$user_id, $key]) \
                 WHERE at > <datetime>$cutoff",
                serde_json::json!({"user_id": user_id, "key": key, "cutoff": Utc::now() - IDEMPOTENCY_WINDOW}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// How many idempotency keys a user's sends stored (for tests of clients that key them).
    #[cfg(any(test, feature = "fault-injection"))]
    pub async fn count_send_keys(&self, user_id: Uuid) -> Result<u64, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .rows(
                "SELECT count() AS n FROM idempotency WHERE record::id(id)[0] = $user_id GROUP ALL",
                serde_json::json!({"user_id": user_id}),
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get("n")).and_then(|v| v.as_u64()).unwrap_or(0))
    }

    /// Makes an idempotency key look `age` old (for tests of its expiry).
    #[cfg(any(test, feature = "fault-injection"))]
    pub async fn age_send_key(&self, user_id: Uuid, key: &str, age: chrono::TimeDelta) -> Result<(), StoreError> {
        self.execute(
            "UPDATE type::record('idempotency', [$user_id, $key]) SET at = <datetime>$at",
            serde_json::json!({"user_id": user_id, "key": key, "at": Utc::now() - age}),
        )
        .await
    }

    /// One message of a session, by id.
    pub async fn get_message(&self, session_id: Uuid, message_id: Uuid) -> Result<Option<Message>, StoreError> {
        let rows: Vec<Message> = self
            .rows(
                &format!(
                    "SELECT {MESSAGE_FIELDS} FROM type::record('chat_message', $id) WHERE session_id = $session_id"
                ),
                serde_json::json!({"id": message_id, "session_id": session_id}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Deletes up to `batch` idempotency keys past their 24 hours and up to `batch`
    /// write-batch markers older than an hour (left by writers that stopped), each in a
    /// transaction of its own size; returns how many of each.
    pub async fn expire_keys_and_markers(&self, batch: usize) -> Result<(u64, u64), StoreError> {
        let rows: Vec<serde_json::Value> = self
            .rows(
                "LET $keys = SELECT VALUE id FROM idempotency WHERE at < <datetime>$cutoff LIMIT $batch;
                 DELETE $keys;
                 LET $markers = SELECT VALUE id FROM write_batch WHERE at < time::now() - 1h LIMIT $batch;
                 DELETE $markers;
                 RETURN [{ keys: array::len($keys), markers: array::len($markers) }];",
                serde_json::json!({"cutoff": Utc::now() - IDEMPOTENCY_WINDOW, "batch": batch}),
            )
            .await?;
        let field = |name: &str| rows.first().and_then(|r| r.get(name)).and_then(|v| v.as_u64()).unwrap_or(0);
        Ok((field("keys"), field("markers")))
    }

    /// Up to `limit` messages of a session older than message `before` (the newest without
    /// it), oldest first, and whether more exist before them. `None` when `before` is not
    /// a message of this session.
    pub async fn messages_before(
        &self,
        session_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Option<(Vec<Message>, bool)>, StoreError> {
        // The newest page: read as the actor reads its history (forwards when it can).
        let Some(before) = before else {
            let mut newest = self.recent_messages(session_id, limit + 1).await?;
            let has_more = newest.len() > limit;
            newest.drain(..newest.len().saturating_sub(limit));
            return Ok(Some((newest, has_more)));
        };
        let sql = format!(
            "LET $at = (SELECT VALUE created_at FROM type::record('chat_message', $before) \
                 WHERE session_id = $session_id)[0];
             SELECT {MESSAGE_FIELDS} FROM chat_message WHERE session_id = $session_id \
                 AND created_at < $at ORDER BY created_at DESC LIMIT $limit;
             RETURN $at;"
        );
        let bind = serde_json::json!({"session_id": session_id, "before": before, "limit": limit + 1});
        let mut response = self.timed(async { Ok(self.db.query(sql).bind(bind).await?.check()?) }).await?;
        let at: Option<serde_json::Value> = response.take(2)?;
        if at.is_none_or(|v| v.is_null()) {
            return Ok(None);
        }
        let rows: Vec<serde_json::Value> = response.take(1)?;
        let mut messages = rows.into_iter().map(serde_json::from_value::<Message>).collect::<Result<Vec<_>, _>>()?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(Some((messages, has_more)))
    }

    /// The last `limit` messages of a session, oldest first.
    ///
    /// Read forwards first: SurrealKV's reverse index scans (`ORDER BY … DESC`) cost far
    /// more than forward ones (in a burst of cold sessions on disk, both runtime workers were
    /// found inside them, and the burst's p90 went from 28 s to 2.7 s without them;
    /// BENCHMARKS.md). Most sessions hold fewer than `limit` messages, so one forward read of
    /// at most `limit + 1` answers; only a longer session is read backwards.
    pub async fn recent_messages(&self, session_id: Uuid, limit: usize) -> Result<Vec<Message>, StoreError> {
        let sql = |order: &str| {
            format!(
                "SELECT {MESSAGE_FIELDS} FROM chat_message WHERE session_id = $session_id \
                 ORDER BY created_at {order} LIMIT $limit"
            )
        };
        let bind = |limit: usize| serde_json::json!({"session_id": session_id, "limit": limit});
        let first: Vec<Message> = self.rows(&sql("ASC"), bind(limit + 1)).await?;
        if first.len() <= limit {
            return Ok(first);
        }
        let mut rows: Vec<Message> = self.rows(&sql("DESC"), bind(limit)).await?;
        rows.reverse();
        Ok(rows)
    }

    // ---- usage -------------------------------------------------------------------------

    /// A user's usage on `day` (zeros for a day without any).
    pub async fn usage_on(&self, user_id: Uuid, day: NaiveDate) -> Result<DayUsage, StoreError> {
        let rows: Vec<DayUsage> = self
            .rows(
                "SELECT messages, prompt_tokens, completion_tokens FROM type::record('daily_usage', [$user_id, $day])",
                serde_json::json!({"user_id": user_id, "day": day.to_string()}),
            )
            .await?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    /// How many messages the user sent on `day`.
    pub async fn messages_on(&self, user_id: Uuid, day: NaiveDate) -> Result<u32, StoreError> {
        Ok(self.usage_on(user_id, day).await?.messages)
    }

    /// Every user's usage on `day` (or one user's), the most tokens first.
    pub async fn usage_report(&self, day: NaiveDate, user: Option<Uuid>) -> Result<Vec<UserUsage>, StoreError> {
        let filter = if user.is_some() { "AND user_id = $user_id" } else { "" };
        self.rows(
            &format!(
                "SELECT user_id, messages, prompt_tokens, completion_tokens, \
                 (prompt_tokens ?? 0) + (completion_tokens ?? 0) AS total FROM daily_usage \
                 WHERE day = $day {filter} ORDER BY total DESC LIMIT 10000"
            ),
            serde_json::json!({"day": day.to_string(), "user_id": user}),
        )
        .await
    }
}

/// One user's usage on one day, from the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct DayUsage {
    /// Messages sent.
    #[serde(default, deserialize_with = "zero_if_none")]
    pub messages: u32,
    /// Tokens sent to the model.
    #[serde(default, deserialize_with = "zero_if_none")]
    pub prompt_tokens: u64,
    /// Tokens the model wrote.
    #[serde(default, deserialize_with = "zero_if_none")]
    pub completion_tokens: u64,
}

/// Reads a counter that older rows may not have (`null`) as zero.
fn zero_if_none<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
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
