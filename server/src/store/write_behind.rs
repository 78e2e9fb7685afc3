//! Writes batched behind the stream: every message save, checkpoint, session touch and
//! usage count goes into a bounded queue, and a writer applies whatever has gathered as
//! one transaction (one round trip, one fsync), so a thousand concurrent replies cost a
//! handful of commits a second instead of thousands, and database latency stays off the
//! path of the stream. There is one writer per core, each on a thread of its own with its own
//! queue, so batches are applied in parallel with each other and with the streams; a
//! session's writes (and a user's message counts, whose quota frames must not go back)
//! always go to the same one.
//!
//! Durable writes (a user message before its `ack`, a reply's final save before its
//! `done`) wait for the commit that carries them; bookkeeping (checkpoints, session
//! touches, usage counts) waits only for room in the queue. A full queue is back-pressure
//! on the writers, never a dropped write. Writes of one session apply in the order they were queued, and
//! within a batch later versions of a message replace earlier ones, so an old checkpoint
//! can never land over a final save.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use relay_protocol::Message;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{DayUsage, Store, StoreError};
use crate::metrics::Metrics;

/// Most writers (threads applying batches in parallel), whatever the core count.
const MAX_WRITERS: usize = 8;
/// Most operations applied in one transaction.
const MAX_BATCH: usize = 128;
/// Attempts at a batch before its writes are given up (and logged, and counted): about
/// three seconds of retrying, longer than a write conflict lasts, short enough that a
/// send waiting on a dead database hears so.
const ATTEMPTS: u32 = 10;

/// One queued write.
enum Op {
    /// Create or replace a message (a user message, a checkpoint, a final reply).
    Save { message: Message, done: Option<oneshot::Sender<Result<(), StoreError>>> },
    /// Count messages of a session and move its `updated_at` forward.
    Touch { session_id: Uuid, at: DateTime<Utc>, messages: u32 },
    /// Set a session's title if it is still `from` (the automatic title of a new chat).
    Retitle { session_id: Uuid, from: String, to: String },
    /// Add to a user's usage of a day; `then` gets the day's usage once committed.
    Usage { user_id: Uuid, day: NaiveDate, messages: u32, prompt: u32, completion: u32, then: Option<AfterUsage> },
    /// Answer once everything queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Write everything queued before it, let go of the store, answer, and stop.
    Stop(oneshot::Sender<()>),
}

/// What to do with a user's usage of the day once a count is committed (tell their tabs).
pub type AfterUsage = Box<dyn FnOnce(DayUsage) + Send + Sync>;

/// The follow-ups of a committed batch: each user and day whose usage is to be read back,
/// with what to do with it.
type UsageFollowUps = Vec<((Uuid, NaiveDate), AfterUsage)>;

/// The handle on the write queue; cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    /// One queue per writer; a key's writes always go to the same one.
    queues: Arc<[mpsc::Sender<Op>]>,
    metrics: Arc<Metrics>,
}

impl WriteBehind {
    /// Starts the writers of `store` (one per core, at least two), holding at most
    /// `capacity` queued writes in all.
    pub fn start(store: Store, capacity: usize, metrics: Arc<Metrics>) -> WriteBehind {
        let writers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, MAX_WRITERS);
        let queues = (0..writers)
            .map(|k| {
                let (queue, ops) = mpsc::channel((capacity / writers).max(1));
                spawn_writer(k, run(store.clone(), ops, metrics.clone()));
                queue
            })
            .collect();
        WriteBehind { queues, metrics }
    }

    /// The queue of the writer that owns `key` (a session, or a user for usage counts), so
    /// one key's writes are applied in the order they were queued.
    fn queue(&self, key: Uuid) -> &mpsc::Sender<Op> {
        &self.queues[(key.as_u128() % self.queues.len() as u128) as usize]
    }

    async fn enqueue(&self, key: Uuid, op: Op) -> Result<(), StoreError> {
        self.metrics.write_queue.inc();
        self.queue(key).send(op).await.map_err(|_| {
            self.metrics.write_queue.dec();
            StoreError::Batch("the writer has stopped".into())
        })
    }

    /// Stores a message and returns once it is committed.
    pub async fn save(&self, message: &Message) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.enqueue(message.session_id, Op::Save { message: message.clone(), done: Some(done) }).await?;
        committed.await.unwrap_or_else(|_| Err(StoreError::Batch("the writer has stopped".into())))
    }

    /// Queues a message save (a checkpoint) without waiting for it.
    pub async fn save_later(&self, message: Message) {
        if let Err(e) = self.enqueue(message.session_id, Op::Save { message, done: None }).await {
            tracing::warn!(error = %e, "checkpoint not queued");
        }
    }

    /// Queues counting `messages` more messages in a session, last active at `at`.
    pub async fn touch_session_later(&self, session_id: Uuid, at: DateTime<Utc>, messages: u32) {
        if let Err(e) = self.enqueue(session_id, Op::Touch { session_id, at, messages }).await {
            tracing::warn!(%session_id, error = %e, "session touch not queued");
        }
    }

    /// Queues naming a session `to` if its title is still `from`: a rename that came first
    /// is never overwritten.
    pub async fn retitle_later(&self, session_id: Uuid, from: &str, to: &str) {
        if let Err(e) = self.enqueue(session_id, Op::Retitle { session_id, from: from.into(), to: to.into() }).await {
            tracing::warn!(%session_id, error = %e, "title not queued");
        }
    }

    /// Queues adding one message to the user's day; once committed, `then` gets the day's
    /// usage (called by the writer, in commit order, so a user's tabs never see it go back).
    pub async fn count_message_later(&self, user_id: Uuid, day: NaiveDate, then: AfterUsage) {
        let op = Op::Usage { user_id, day, messages: 1, prompt: 0, completion: 0, then: Some(then) };
        if let Err(e) = self.enqueue(user_id, op).await {
            tracing::warn!(%user_id, error = %e, "usage count not queued");
        }
    }

    /// Queues adding a reply's tokens to the user's day, on the writer of the reply's
    /// session: queued before the reply's final save, it is committed with or before it.
    /// (Counts are additions, so their order across writers does not matter.)
    pub async fn add_tokens_later(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        day: NaiveDate,
        prompt: u32,
        completion: u32,
    ) {
        let op = Op::Usage { user_id, day, messages: 0, prompt, completion, then: None };
        if let Err(e) = self.enqueue(session_id, op).await {
            tracing::warn!(%user_id, error = %e, "token usage not queued");
        }
    }

    /// Returns once every write queued before it is committed (or given up).
    pub async fn flush(&self) {
        self.to_every_writer(Op::Flush).await;
    }

    /// Writes everything queued, then stops every writer; later writes fail. Called once at
    /// shutdown, so the writers let go of the store before the runtime that runs the
    /// database's own tasks ends (the database then closes cleanly).
    pub async fn close(&self) {
        self.to_every_writer(Op::Stop).await;
    }

    /// Queues `op` (a flush or a stop) on every writer and waits until each has answered.
    async fn to_every_writer(&self, op: fn(oneshot::Sender<()>) -> Op) {
        let answers = self.queues.iter().map(|queue| async move {
            let (done, answered) = oneshot::channel();
            self.metrics.write_queue.inc();
            if queue.send(op(done)).await.is_ok() {
                let _ = answered.await;
            } else {
                self.metrics.write_queue.dec();
            }
        });
        futures::future::join_all(answers).await;
    }
}

/// Runs one writer on a thread of its own. A batch is CPU work in an embedded database
/// (hundreds of statements in one poll): as a task it would hold a worker of the request
/// runtime, which streams replies, for as long, and the writers would take turns. On their
/// own threads, the system shares the cores between them and the streams (measured in
/// BENCHMARKS.md: time to first token at 1,000 streams fell from 390 ms to 120 ms).
fn spawn_writer(k: usize, writer: impl Future<Output = ()> + Send + 'static) {
    let started = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
        std::thread::Builder::new().name(format!("relay-writes-{k}")).spawn(move || runtime.block_on(writer))
    });
    if let Err(e) = started {
        panic!("cannot start a database writer thread: {e}");
    }
}

/// The writer: takes what has gathered, writes it as one transaction, repeats.
async fn run(store: Store, mut ops: mpsc::Receiver<Op>, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while ops.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics.write_queue.sub(batch.len() as i64);
        metrics.write_batch.observe(batch.len() as f64);
        let mut plan = Plan::default();
        let mut stop = None;
        for op in batch.drain(..) {
            match op {
                Op::Stop(done) => {
                    stop = Some(done);
                    break;
                }
                op => plan.add(op),
            }
        }
        let result = write_with_retries(&store, &plan).await;
        if let Err(e) = &result {
            metrics.write_failures.inc_by(plan.len() as u64);
            tracing::error!(error = %e, writes = plan.len(), "batched writes failed; given up");
        }
        let committed = result.is_ok();
        let (usage_read, flushes) = plan.answer(result.map_err(|e| e.to_string()));
        if committed {
            for ((user_id, day), then) in usage_read {
                match store.usage_on(user_id, day).await {
                    Ok(usage) => then(usage),
                    Err(e) => tracing::warn!(%user_id, error = %e, "could not read usage back"),
                }
            }
        }
        for flushed in flushes {
            let _ = flushed.send(());
        }
        if let Some(done) = stop {
            drop(store);
            let _ = done.send(());
            return;
        }
    }
}

async fn write_with_retries(store: &Store, plan: &Plan) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        match plan.write(store).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < ATTEMPTS => {
                // Write conflicts with a direct write (a rename, a delete) are expected now
                // and then; anything else is worth a line in the log.
                if !super::is_retryable(&e) {
                    tracing::warn!(error = %e, attempt, "batched writes failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis((10u64 << attempt).min(1000))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One batch, merged: the last version of each message, one touch per session, one
/// usage row per user and day.
#[derive(Default)]
struct Plan {
    messages: Vec<Message>,
    message_at: HashMap<Uuid, usize>,
    touches: HashMap<Uuid, (DateTime<Utc>, u32)>,
    retitles: Vec<(Uuid, String, String)>,
    usage: HashMap<(Uuid, NaiveDate), (u32, u32, u32)>,
    waiting: Vec<oneshot::Sender<Result<(), StoreError>>>,
    after_usage: Vec<((Uuid, NaiveDate), AfterUsage)>,
    flushes: Vec<oneshot::Sender<()>>,
    ops: usize,
}

impl Plan {
    fn add(&mut self, op: Op) {
        self.ops += 1;
        match op {
            Op::Save { message, done } => {
                match self.message_at.get(&message.id) {
                    Some(&i) => self.messages[i] = message,
                    None => {
                        self.message_at.insert(message.id, self.messages.len());
                        self.messages.push(message);
                    }
                }
                self.waiting.extend(done);
            }
            Op::Touch { session_id, at, messages } => {
                let entry = self.touches.entry(session_id).or_insert((at, 0));
                entry.0 = entry.0.max(at);
                entry.1 += messages;
            }
            Op::Retitle { session_id, from, to } => self.retitles.push((session_id, from, to)),
            Op::Usage { user_id, day, messages, prompt, completion, then } => {
                let entry = self.usage.entry((user_id, day)).or_default();
                entry.0 += messages;
                entry.1 += prompt;
                entry.2 += completion;
                if let Some(then) = then {
                    self.after_usage.push(((user_id, day), then));
                }
            }
            Op::Flush(done) => self.flushes.push(done),
            // Handled by the writer loop before it gets here.
            Op::Stop(done) => self.flushes.push(done),
        }
    }

    fn len(&self) -> usize {
        self.ops
    }

    async fn write(&self, store: &Store) -> Result<(), StoreError> {
        if self.messages.is_empty() && self.touches.is_empty() && self.usage.is_empty() && self.retitles.is_empty() {
            return Ok(());
        }
        let messages: Vec<serde_json::Value> = self
            .messages
            .iter()
            .map(|m| {
                let mut row = serde_json::to_value(m)?;
                row["superseded"] = serde_json::json!(m.superseded);
                // A missing field reads as NONE, which `option<int>` takes; null it does not.
                if let Some(fields) = row.as_object_mut()
                    && fields.get("token_count").is_some_and(serde_json::Value::is_null)
                {
                    fields.remove("token_count");
                }
                Ok(row)
            })
            .collect::<Result<_, serde_json::Error>>()?;
        let touches: Vec<serde_json::Value> = self
            .touches
            .iter()
            .map(|(id, (at, count))| serde_json::json!({"id": id, "at": at, "count": count}))
            .collect();
        let retitles: Vec<serde_json::Value> =
            self.retitles.iter().map(|(id, from, to)| serde_json::json!({"id": id, "from": from, "to": to})).collect();
        let usage: Vec<serde_json::Value> = self
            .usage
            .iter()
            .map(|((user_id, day), (messages, prompt, completion))| {
                serde_json::json!({"user_id": user_id, "day": day.to_string(), "messages": messages,
                    "prompt": prompt, "completion": completion})
            })
            .collect();
        store
            .execute_all(
                "BEGIN TRANSACTION;
                 FOR $m IN $messages {
                     UPSERT type::record('chat_message', $m.id) CONTENT { session_id: $m.session_id, role: $m.role,
                         content: $m.content, token_count: $m.token_count, status: $m.status,
                         created_at: <datetime>$m.created_at, superseded: $m.superseded };
                 };
                 FOR $r IN $retitles {
                     UPDATE type::record('chat_session', $r.id) SET title = $r.to, updated_at = time::now()
                         WHERE title = $r.from AND deleted_at = NONE;
                 };
                 FOR $t IN $touches {
                     UPDATE type::record('chat_session', $t.id)
                         SET updated_at = <datetime>$t.at, message_count += $t.count;
                 };
                 FOR $u IN $usage {
                     UPSERT type::record('daily_usage', [$u.user_id, $u.day]) SET user_id = $u.user_id, day = $u.day,
                         messages += $u.messages, prompt_tokens += $u.prompt, completion_tokens += $u.completion,
                         tokens += $u.prompt + $u.completion;
                 };
                 COMMIT TRANSACTION;",
                serde_json::json!({"messages": messages, "retitles": retitles, "touches": touches, "usage": usage}),
            )
            .await
    }

    /// Tells everyone waiting how the batch went; returns the usage follow-ups (to run
    /// after a commit) and the flushes (answered when dropped, after the follow-ups).
    fn answer(self, result: Result<(), String>) -> (UsageFollowUps, Vec<oneshot::Sender<()>>) {
        for done in self.waiting {
            let _ = done.send(result.clone().map_err(StoreError::Batch));
        }
        (self.after_usage, self.flushes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use relay_protocol::{MessageStatus, Role};

    use super::*;
    use crate::store::StoreConfig;

    async fn store() -> Store {
        let config =
            StoreConfig { url: "mem://".into(), credentials: None, namespace: "test".into(), database: "test".into() };
        Store::connect(&config).await.expect("in-memory store")
    }

    fn reply(session_id: Uuid, id: Uuid, content: &str, status: MessageStatus) -> Message {
        Message {
            id,
            session_id,
            role: Role::Assistant,
            content: content.into(),
            token_count: (status != MessageStatus::Generating).then_some(3),
            status,
            created_at: Utc::now(),
            superseded: false,
        }
    }

    /// A direct write (a rename) racing the writers' batches on the same session never
    /// fails: a transaction conflict is retried, on both sides, and nothing is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_racing_the_writers_are_retried() {
        let store = store().await;
        let writes = WriteBehind::start(store.clone(), 64, Arc::new(Metrics::new()));
        let user = Uuid::new_v4();
        let session = store.create_session(user, "t").await.unwrap();
        let touches = tokio::spawn({
            let writes = writes.clone();
            async move {
                // One transaction per touch: as many chances to collide as there are renames.
                for _ in 0..300 {
                    writes.touch_session_later(session.id, Utc::now(), 1).await;
                    writes.flush().await;
                }
            }
        });
        let renames: Vec<_> = (0..3)
            .map(|k| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        let renamed = store.rename_session(user, session.id, &format!("title {k}.{i}")).await;
                        assert!(matches!(renamed, Ok(Some(_))), "rename {k}.{i}: {renamed:?}");
                    }
                })
            })
            .collect();
        touches.await.unwrap();
        for rename in renames {
            rename.await.unwrap();
        }
        let stored = store.stored_messages(user).await.unwrap();
        assert_eq!(stored, 300, "every touch counted");
    }

    /// Checkpoints queued before a final save never land over it, whether they share its
    /// batch or not; counters add up; the title is set once, only while still the default;
    /// usage follow-ups run in commit order; a queue of one still takes every write.
    #[tokio::test]
    async fn writes_land_in_order_merged_and_none_is_lost() {
        let store = store().await;
        let metrics = Arc::new(Metrics::new());
        let writes = WriteBehind::start(store.clone(), 1, metrics.clone());
        let user = Uuid::new_v4();
        let session = store.create_session(user, "New chat").await.unwrap();
        let id = Uuid::new_v4();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50 {
            writes.save_later(reply(session.id, id, &"x".repeat(i), MessageStatus::Generating)).await;
            writes.touch_session_later(session.id, Utc::now(), 1).await;
            let seen = seen.clone();
            let then: AfterUsage = Box::new(move |usage| seen.lock().unwrap().push(usage.messages));
            writes.count_message_later(user, Utc::now().date_naive(), then).await;
        }
        writes.retitle_later(session.id, "New chat", "First").await;
        writes.retitle_later(session.id, "New chat", "Second").await;
        writes.add_tokens_later(Uuid::new_v4(), user, Utc::now().date_naive(), 7, 11).await;
        writes.save(&reply(session.id, id, "final", MessageStatus::Complete)).await.unwrap();
        writes.flush().await;

        let stored = store.recent_messages(session.id, 10).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!((stored[0].content.as_str(), stored[0].status), ("final", MessageStatus::Complete));
        let sessions = store.list_sessions(user, 1, 10).await.unwrap();
        assert_eq!(sessions.0[0].title, "First");
        assert_eq!(store.stored_messages(user).await.unwrap(), 50);
        let usage = store.usage_on(user, Utc::now().date_naive()).await.unwrap();
        assert_eq!((usage.messages, usage.prompt_tokens, usage.completion_tokens), (50, 7, 11));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 50);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "usage never goes back: {seen:?}");
        assert_eq!(seen.last(), Some(&50));
        assert_eq!(metrics.write_queue.get(), 0);
        assert_eq!(metrics.write_failures.get(), 0);
    }

    /// Many writers at once share transactions (group commit) and every durable save
    /// returns only once it can be read back.
    #[tokio::test]
    async fn concurrent_saves_share_commits_and_are_readable_when_they_return() {
        let store = store().await;
        let metrics = Arc::new(Metrics::new());
        let writes = WriteBehind::start(store.clone(), 1024, metrics.clone());
        let session = store.create_session(Uuid::new_v4(), "t").await.unwrap();
        let saves = (0..200).map(|i| {
            let (writes, store) = (writes.clone(), store.clone());
            tokio::spawn(async move {
                let message = reply(session.id, Uuid::new_v4(), &format!("m{i}"), MessageStatus::Complete);
                writes.save(&message).await.unwrap();
                let page = store.messages_before(session.id, None, 200).await.unwrap().unwrap().0;
                assert!(page.iter().any(|m| m.id == message.id), "saved but not readable: {} rows", page.len());
            })
        });
        for save in saves.collect::<Vec<_>>() {
            save.await.unwrap();
        }
        let batches = metrics.write_batch.get_sample_count();
        assert!(batches < 200, "200 saves took {batches} transactions");
    }
}
