//! Writes batched behind the stream: every message save, checkpoint, session touch and
//! usage count goes into a bounded queue, and a writer applies whatever has gathered as
//! one transaction (one round trip, one fsync), so a thousand concurrent replies cost a
//! handful of commits a second instead of thousands, and database latency stays off the
//! path of the stream. There is one writer per core, each on a thread of its own with its own
//! queue, so batches are applied in parallel with each other and with the streams; a
//! session's writes (and a user's message counts, whose quota frames must not go back)
//! always go to the same one.
//!
//! Nothing queued is ever given up: a batch the database refuses or cannot take is retried
//! until it is stored (a retry never applies a batch twice, see [`super::batch`]). Durable
//! writes (a user message before its `ack`, a reply's final save before its `done`) wait
//! for the commit that carries them, but no longer than the write deadline: past it the
//! caller hears [`StoreError::Timeout`] and decides what its clients are told, while the
//! write stays queued. Bookkeeping (checkpoints, session touches, usage counts) waits only
//! for room in the queue. A full queue is back-pressure on the writers, never a dropped
//! write. Writes of one session apply in the order they were queued, and within a batch
//! later versions of a message replace earlier ones, so an old checkpoint can never land
//! over a final save.
//!
//! Every write carries its session's [`Fence`]: the epoch the session's actor claimed.
//! The batch checks it in the transaction that applies the write, so an actor that lost
//! its session (a paused node, a replaced actor) writes nothing more; the fences found
//! stale are reported to [`WriteBehind::on_fenced`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use relay_protocol::Message;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::batch::{BatchId, Op, Plan};
use super::{DayUsage, Store, StoreError};
use crate::metrics::Metrics;

/// Most writers (threads applying batches in parallel), whatever the core count.
const MAX_WRITERS: usize = 8;
/// Most operations applied in one transaction.
const MAX_BATCH: usize = 128;
/// The longest pause between two attempts at a batch the database refused.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A session's fencing token: the epoch its actor claimed. A write made under an epoch
/// that is no longer the session's is not applied (another actor took the session over).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The session.
    pub session_id: Uuid,
    /// The epoch its actor holds.
    pub epoch: u64,
}

/// A send's idempotency key, stored with its user message: a repeat of the key by the same
/// user within 24 hours stores nothing new.
#[derive(Clone, Debug)]
pub struct SendKey {
    /// The sender.
    pub user_id: Uuid,
    /// The client's key (`client_message_id`, `Idempotency-Key`).
    pub key: String,
    /// The reply the send asked for.
    pub reply_id: Uuid,
}

/// What became of a durable save.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Saved {
    /// Committed.
    Stored,
    /// Not stored: its key was used by an earlier send, which stored these.
    Repeat {
        /// The earlier send's session.
        session_id: Uuid,
        /// The earlier send's user message.
        message_id: Uuid,
        /// The earlier send's reply.
        reply_id: Uuid,
    },
}

/// What to do with a user's usage of the day once a count is committed (tell their tabs).
pub type AfterUsage = Box<dyn FnOnce(DayUsage) + Send + Sync>;

/// Told of every fence a batch found stale.
pub type OnFenced = Arc<dyn Fn(Fence) + Send + Sync>;

/// The handle on the write queue; cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    /// One queue per writer; a key's writes always go to the same one.
    queues: Arc<[mpsc::Sender<Op>]>,
    /// How long a durable write is waited for.
    deadline: Duration,
    on_fenced: Arc<OnceLock<OnFenced>>,
    metrics: Arc<Metrics>,
}

impl WriteBehind {
    /// Starts the writers of `store` (one per core, at least two), holding at most
    /// `capacity` queued writes in all; durable writes are waited for up to `deadline`.
    pub fn start(store: Store, capacity: usize, deadline: Duration, metrics: Arc<Metrics>) -> WriteBehind {
        let writers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, MAX_WRITERS);
        let run: u64 = rand::random();
        let on_fenced: Arc<OnceLock<OnFenced>> = Arc::new(OnceLock::new());
        let queues = (0..writers)
            .map(|k| {
                let (queue, ops) = mpsc::channel((capacity / writers).max(1));
                let writer =
                    Writer { store: store.clone(), metrics: metrics.clone(), on_fenced: on_fenced.clone(), run, k };
                spawn_writer(k, writer.run(ops));
                queue
            })
            .collect();
        WriteBehind { queues, deadline, on_fenced, metrics }
    }

    /// Sets who hears of stale fences (once, at start-up).
    pub fn on_fenced(&self, listener: OnFenced) {
        let _ = self.on_fenced.set(listener);
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

    /// Stores a message and returns once it is committed ([`Saved::Repeat`] when its key
    /// was used before), or fails with [`StoreError::Timeout`] after the write deadline
    /// (the write stays queued and is stored when the database takes it).
    pub async fn save(&self, fence: Fence, message: &Message, key: Option<SendKey>) -> Result<Saved, StoreError> {
        let (done, committed) = oneshot::channel();
        let op = Op::Save { fence, message: message.clone(), key, done: Some(done) };
        let queued = tokio::time::timeout(self.deadline, self.enqueue(fence.session_id, op)).await;
        queued.map_err(|_| StoreError::Timeout)??;
        match tokio::time::timeout(self.deadline, committed).await {
            Ok(answer) => answer.unwrap_or_else(|_| Err(StoreError::Batch("the writer has stopped".into()))),
            Err(_) => {
                self.metrics.write_timeouts.inc();
                Err(StoreError::Timeout)
            }
        }
    }

    /// Queues a message save (a checkpoint) without waiting for it.
    pub async fn save_later(&self, fence: Fence, message: Message) {
        if let Err(e) = self.enqueue(fence.session_id, Op::Save { fence, message, key: None, done: None }).await {
            tracing::warn!(error = %e, "checkpoint not queued");
        }
    }

    /// Queues counting `messages` more messages in a session, last active at `at`.
    pub async fn touch_session_later(&self, fence: Fence, at: DateTime<Utc>, messages: i32) {
        if let Err(e) = self.enqueue(fence.session_id, Op::Touch { fence, at, messages }).await {
            tracing::warn!(session_id = %fence.session_id, error = %e, "session touch not queued");
        }
    }

    /// Queues naming a session `to` if its title is still `from`: a rename that came first
    /// is never overwritten.
    pub async fn retitle_later(&self, fence: Fence, from: &str, to: &str) {
        let op = Op::Retitle { fence, from: from.into(), to: to.into() };
        if let Err(e) = self.enqueue(fence.session_id, op).await {
            tracing::warn!(session_id = %fence.session_id, error = %e, "title not queued");
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

    /// Returns once every write of a session (its writer's queue) queued before it is
    /// committed.
    pub async fn flush_session(&self, session_id: Uuid) {
        let (done, answered) = oneshot::channel();
        if self.enqueue(session_id, Op::Flush(done)).await.is_ok() {
            let _ = answered.await;
        }
    }

    /// Returns once every write queued before it is committed.
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

/// One writer: its queue's batches, in order.
struct Writer {
    store: Store,
    metrics: Arc<Metrics>,
    on_fenced: Arc<OnceLock<OnFenced>>,
    run: u64,
    k: usize,
}

impl Writer {
    /// Takes what has gathered, writes it as one transaction (until it is stored), repeats.
    async fn run(self, mut ops: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let next = AtomicU64::new(1);
        while ops.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.metrics.write_queue.sub(batch.len() as i64);
            self.metrics.write_batch.observe(batch.len() as f64);
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
            let id = BatchId { run: self.run, writer: self.k, n: next.fetch_add(1, Ordering::Relaxed) };
            let outcome = self.write_until_stored(&plan, &id).await;
            let answered = plan.answer(outcome);
            // Usage first: a user's quota frame goes out before the `done` of a reply stored
            // in the same batch.
            for ((user_id, day), then) in answered.follow_ups {
                match self.store.usage_on(user_id, day).await {
                    Ok(usage) => then(usage),
                    Err(e) => tracing::warn!(%user_id, error = %e, "could not read usage back"),
                }
            }
            for (waiting, answer) in answered.answers {
                let _ = waiting.send(answer);
            }
            if !answered.stale.is_empty() {
                self.metrics.write_fenced.inc_by(answered.stale.len() as u64);
                if let Some(listener) = self.on_fenced.get() {
                    for fence in answered.stale {
                        tracing::warn!(session_id = %fence.session_id, epoch = fence.epoch, "writes of a session that runs elsewhere now were refused");
                        listener(fence);
                    }
                }
            }
            for flushed in answered.flushes {
                let _ = flushed.send(());
            }
            if let Some(done) = stop {
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies a batch, retrying for as long as it takes: the database may be down or
    /// restarting, and what is queued is never given up. A retry never applies a batch
    /// twice (its marker tells an attempt that did commit).
    async fn write_until_stored(&self, plan: &Plan, id: &BatchId) -> super::batch::Outcome {
        let mut attempt: u32 = 1;
        if let Some(delay) = crate::faults::write_delay() {
            tokio::time::sleep(delay).await;
        }
        crate::faults::write_stall().await;
        loop {
            match plan.write(&self.store, id, attempt > 1).await {
                Ok(outcome) => {
                    if attempt > 1 {
                        if attempt > 3 {
                            self.metrics.write_stalled.dec();
                        }
                        tracing::info!(attempt, writes = plan.len(), "batched writes stored after retrying");
                    }
                    return outcome;
                }
                Err(e) => {
                    self.metrics.write_failures.inc();
                    // Conflicts with a direct write (a rename, a delete) are expected now
                    // and then; anything else is worth a line in the log, once in a while.
                    if !super::is_retryable(&e) && (attempt <= 3 || attempt.is_multiple_of(30)) {
                        tracing::warn!(error = %e, attempt, writes = plan.len(), "batched writes failed; retrying until stored");
                    }
                    if attempt == 3 {
                        self.metrics.write_stalled.inc();
                    }
                    let backoff = Duration::from_millis(10u64.saturating_mul(1 << attempt.min(10)));
                    tokio::time::sleep(backoff.min(MAX_BACKOFF)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use relay_protocol::{MessageStatus, Role};

    use super::*;
    use crate::store::StoreConfig;

    pub(crate) async fn store() -> Store {
        let config = StoreConfig {
            url: "mem://".into(),
            credentials: None,
            namespace: "test".into(),
            database: "test".into(),
            timeout: Duration::from_secs(5),
        };
        Store::connect(&config).await.expect("in-memory store")
    }

    fn writes(store: &Store, capacity: usize, metrics: Arc<Metrics>) -> WriteBehind {
        WriteBehind::start(store.clone(), capacity, Duration::from_secs(5), metrics)
    }

    /// A session claimed for an actor, as the registry does: its fence.
    async fn claimed(store: &Store, user: Uuid, title: &str) -> Fence {
        let session = store.create_session(user, title).await.unwrap();
        let claimed = store.claim_session(session.id).await.unwrap().unwrap();
        Fence { session_id: session.id, epoch: claimed.epoch }
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
        let writes = writes(&store, 64, Arc::new(Metrics::new()));
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "t").await;
        let touches = tokio::spawn({
            let writes = writes.clone();
            async move {
                // One transaction per touch: as many chances to collide as there are renames.
                for _ in 0..300 {
                    writes.touch_session_later(fence, Utc::now(), 1).await;
                    writes.flush().await;
                }
            }
        });
        let renames: Vec<_> = (0..3)
            .map(|k| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        let renamed = store.rename_session(fence, user, &format!("title {k}.{i}")).await;
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
        let writes = writes(&store, 1, metrics.clone());
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "New chat").await;
        let id = Uuid::new_v4();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50 {
            writes.save_later(fence, reply(fence.session_id, id, &"x".repeat(i), MessageStatus::Generating)).await;
            writes.touch_session_later(fence, Utc::now(), 1).await;
            let seen = seen.clone();
            let then: AfterUsage = Box::new(move |usage| seen.lock().unwrap().push(usage.messages));
            writes.count_message_later(user, Utc::now().date_naive(), then).await;
        }
        writes.retitle_later(fence, "New chat", "First").await;
        writes.retitle_later(fence, "New chat", "Second").await;
        writes.add_tokens_later(fence.session_id, user, Utc::now().date_naive(), 7, 11).await;
        let saved = writes.save(fence, &reply(fence.session_id, id, "final", MessageStatus::Complete), None).await;
        assert_eq!(saved.unwrap(), Saved::Stored);
        writes.flush().await;

        let stored = store.recent_messages(fence.session_id, 10).await.unwrap();
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
        let writes = writes(&store, 1024, metrics.clone());
        let fence = claimed(&store, Uuid::new_v4(), "t").await;
        let saves = (0..200).map(|i| {
            let (writes, store) = (writes.clone(), store.clone());
            tokio::spawn(async move {
                let message = reply(fence.session_id, Uuid::new_v4(), &format!("m{i}"), MessageStatus::Complete);
                writes.save(fence, &message, None).await.unwrap();
                let page = store.messages_before(fence.session_id, None, 200).await.unwrap().unwrap().0;
                assert!(page.iter().any(|m| m.id == message.id), "saved but not readable: {} rows", page.len());
            })
        });
        for save in saves.collect::<Vec<_>>() {
            save.await.unwrap();
        }
        let batches = metrics.write_batch.get_sample_count();
        assert!(batches < 200, "200 saves took {batches} transactions");
    }

    /// Once a session is claimed again (a new actor, here or on another node), every write
    /// made under the old epoch is refused in the transaction that would apply it: the
    /// message, its checkpoint, the session's count and title. The writer says so
    /// to whoever listens; the new epoch's writes go through.
    #[tokio::test]
    async fn writes_under_a_stale_epoch_store_nothing() {
        let store = store().await;
        let metrics = Arc::new(Metrics::new());
        let writes = writes(&store, 64, metrics.clone());
        let fenced: Arc<Mutex<Vec<Fence>>> = Arc::default();
        writes.on_fenced({
            let fenced = fenced.clone();
            Arc::new(move |fence| fenced.lock().unwrap().push(fence))
        });
        let user = Uuid::new_v4();
        let old = claimed(&store, user, "New chat").await;
        let new = Fence {
            session_id: old.session_id,
            epoch: store.claim_session(old.session_id).await.unwrap().unwrap().epoch,
        };
        assert_eq!(new.epoch, old.epoch + 1, "each claim raises the epoch");

        let (stale, fresh) = (Uuid::new_v4(), Uuid::new_v4());
        writes.save_later(old, reply(old.session_id, stale, "checkpoint", MessageStatus::Generating)).await;
        writes.touch_session_later(old, Utc::now(), 5).await;
        writes.retitle_later(old, "New chat", "Stale title").await;

        let refused = writes.save(old, &reply(old.session_id, stale, "final", MessageStatus::Complete), None).await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        let saved = writes.save(new, &reply(new.session_id, fresh, "new owner", MessageStatus::Complete), None).await;
        assert_eq!(saved.unwrap(), Saved::Stored);
        writes.flush().await;

        let stored = store.recent_messages(old.session_id, 10).await.unwrap();
        assert_eq!(stored.iter().map(|m| m.id).collect::<Vec<_>>(), vec![fresh], "only the new epoch's message");
        assert_eq!(store.stored_messages(user).await.unwrap(), 0, "the stale count was not applied");
        assert_eq!(store.list_sessions(user, 1, 10).await.unwrap().0[0].title, "New chat");
        assert!(fenced.lock().unwrap().contains(&old), "the writer told of the stale fence");
        assert!(!fenced.lock().unwrap().contains(&new));
        assert!(metrics.write_fenced.get() >= 1);
        // Direct writes are fenced too.
        assert!(matches!(store.rename_session(old, user, "x").await, Err(StoreError::Fenced)));
        assert!(matches!(store.mark_superseded(old, &[fresh], None).await, Err(StoreError::Fenced)));
        assert!(matches!(store.soft_delete_session(old, user).await, Err(StoreError::Fenced)));
        assert!(store.get_session(old.session_id).await.unwrap().is_some(), "not deleted by the stale actor");
    }

    /// A send's idempotency key is stored with its message; a later send with the same key
    /// (in the same batch or not) stores nothing and names what the first stored.
    #[tokio::test]
    async fn a_repeated_key_stores_nothing_new() {
        let store = store().await;
        let writes = writes(&store, 64, Arc::new(Metrics::new()));
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "t").await;
        let key = |reply_id| Some(SendKey { user_id: user, key: "k-1".into(), reply_id });
        let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (reply_1, reply_2) = (Uuid::new_v4(), Uuid::new_v4());
        let saved =
            writes.save(fence, &reply(fence.session_id, first, "one", MessageStatus::Complete), key(reply_1)).await;
        assert_eq!(saved.unwrap(), Saved::Stored);
        let repeat =
            writes.save(fence, &reply(fence.session_id, second, "two", MessageStatus::Complete), key(reply_2)).await;
        assert_eq!(
            repeat.unwrap(),
            Saved::Repeat { session_id: fence.session_id, message_id: first, reply_id: reply_1 }
        );
        // Another user's identical key is theirs alone.
        let other = SendKey { user_id: Uuid::new_v4(), key: "k-1".into(), reply_id: reply_2 };
        let saved =
            writes.save(fence, &reply(fence.session_id, third, "three", MessageStatus::Complete), Some(other)).await;
        assert_eq!(saved.unwrap(), Saved::Stored);
        let ids: Vec<Uuid> = store.recent_messages(fence.session_id, 10).await.unwrap().iter().map(|m| m.id).collect();
        assert!(ids.contains(&first) && ids.contains(&third) && !ids.contains(&second), "{ids:?}");
        let found = store.find_send_key(user, "k-1").await.unwrap().expect("the key is stored");
        assert_eq!((found.message_id, found.reply_id), (first, reply_1));
        assert!(store.find_send_key(user, "k-2").await.unwrap().is_none());
    }

    /// A key holds for 24 hours: an older one no longer makes a send a repeat (and is
    /// taken by the new send).
    #[tokio::test]
    async fn a_key_older_than_a_day_is_free_again() {
        let store = store().await;
        let writes = writes(&store, 64, Arc::new(Metrics::new()));
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "t").await;
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let key = Some(SendKey { user_id: user, key: "old".into(), reply_id: Uuid::new_v4() });
        writes.save(fence, &reply(fence.session_id, first, "one", MessageStatus::Complete), key.clone()).await.unwrap();
        store.age_send_key(user, "old", chrono::TimeDelta::hours(25)).await.unwrap();
        assert!(store.find_send_key(user, "old").await.unwrap().is_none(), "expired");
        let saved = writes.save(fence, &reply(fence.session_id, second, "two", MessageStatus::Complete), key).await;
        assert_eq!(saved.unwrap(), Saved::Stored, "not a repeat any more");
        assert_eq!(store.find_send_key(user, "old").await.unwrap().unwrap().message_id, second);
        assert_eq!(store.expire_keys_and_markers().await.unwrap().0, 0, "the new key is fresh");
        store.age_send_key(user, "old", chrono::TimeDelta::hours(25)).await.unwrap();
        assert_eq!(store.expire_keys_and_markers().await.unwrap().0, 1, "retention deletes expired keys");
    }
}
