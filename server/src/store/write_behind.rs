//! Writes batched behind the stream: every message save, checkpoint, title and usage count
//! goes into a bounded queue, and a writer applies whatever has gathered as one
//! transaction (one round trip, one fsync), so a thousand concurrent replies cost a handful
//! of commits a second instead of thousands, and database latency stays off the path of
//! the stream. There is one writer per core, each on a thread of its own with its own
//! queue, so batches are applied in parallel with each other and with the streams; every
//! write of a user (their sessions' messages, counts and titles, their usage, whose quota
//! frames must not go back) goes to the same one, so two writers never write the same
//! rows at once (a conflict retries a whole batch). One user's writes thus take at most
//! one writer, and fill one writer's share of the queue.
//!
//! Nothing queued is ever given up: a batch the database refuses or cannot take is retried
//! until it is stored (a retry never applies a batch twice, see [`super::batch`]). Durable
//! writes (a user message before its `ack`, a reply's final save before its `done`) wait
//! for the commit that carries them, but no longer than the write deadline: past it the
//! caller hears [`StoreError::Timeout`] and decides what its clients are told, while the
//! write stays queued. Bookkeeping never holds up the session that makes it, even while
//! the database is down and the queue full: titles, usage counts and a failed reply's
//! last version are queued at once, beyond the queue's room if need be; a checkpoint that
//! finds no room is left out (the final save replaces it). What goes with a message (its session's count, the
//! tokens it cost, its idempotency key, the messages it replaces) travels in its save, so
//! it lands with it or not at all. Writes of one session apply in the order they were
//! queued, and within a batch later versions of a message replace earlier ones, so an old
//! checkpoint can never land over a final save.
//!
//! Every write carries its session's [`Fence`]: the epoch the session's actor claimed.
//! The batch checks it in the transaction that applies the write, so an actor that lost
//! its session (a paused node, a replaced actor) writes nothing more; the fences found
//! stale are reported to [`WriteBehind::on_fenced`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::NaiveDate;
use relay_protocol::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::batch::{BatchId, Plan};
use super::ops::{AfterUsage, Fence, Op, Save, Saved};
use super::{Store, StoreError};
use crate::metrics::Metrics;

/// Most writers (threads applying batches in parallel), whatever the core count.
const MAX_WRITERS: usize = 8;
/// Most operations applied in one transaction.
const MAX_BATCH: usize = 128;
/// The longest pause between two attempts at a batch the database refused.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Told of every fence a batch found stale.
pub type OnFenced = Arc<dyn Fn(Fence) + Send + Sync>;

/// The handle on the write queue; cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    /// One queue per writer; a user's writes always go to the same one.
    queues: Arc<[Lane]>,
    /// How long a durable write is waited for.
    deadline: Duration,
    on_fenced: Arc<OnceLock<OnFenced>>,
    metrics: Arc<Metrics>,
}

/// One writer's queue. The channel itself is unbounded so that everything sent on it keeps
/// the order it was sent in; room is a count of permits: a write that may wait takes one
/// first (so a full queue holds its sender up), bookkeeping that must neither wait nor be
/// lost goes in without one, and a checkpoint goes in only if it gets one. The writer
/// gives the permit back as it takes the write.
struct Lane {
    ops: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
}

/// A write in a queue, with the room it takes, if any.
struct Queued {
    op: Op,
    _room: Option<OwnedSemaphorePermit>,
}

/// The error a write gets once the writers have stopped (the server is shutting down).
fn writer_stopped() -> StoreError {
    StoreError::Batch("the writer has stopped".into())
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
                let (queue, ops) = mpsc::unbounded_channel();
                let writer =
                    Writer { store: store.clone(), metrics: metrics.clone(), on_fenced: on_fenced.clone(), run, k };
                spawn_writer(k, writer.run(ops));
                Lane { ops: queue, room: Arc::new(Semaphore::new((capacity / writers).max(1))) }
            })
            .collect();
        WriteBehind { queues, deadline, on_fenced, metrics }
    }

    /// Sets who hears of stale fences (once, at start-up).
    pub fn on_fenced(&self, listener: OnFenced) {
        let _ = self.on_fenced.set(listener);
    }

    /// How long a durable write is waited for (`DATABASE_TIMEOUT_MS`).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The queue of the writer that owns `user` (every write of theirs: sessions and
    /// usage alike), so one user's writes are applied in the order they were queued.
    fn lane(&self, user: Uuid) -> &Lane {
        &self.queues[(user.as_u128() % self.queues.len() as u128) as usize]
    }

    /// Puts `op` in `lane`, holding `room` (if any) until the writer takes it.
    fn put(&self, lane: &Lane, op: Op, room: Option<OwnedSemaphorePermit>) -> Result<(), StoreError> {
        lane.ops.send(Queued { op, _room: room }).map_err(|_| writer_stopped())?;
        self.metrics.write_queue.inc();
        Ok(())
    }

    /// Queues `op` at once, with room or beyond it: bookkeeping that must not be lost, and
    /// must not hold up the session that made it while the database is down. It keeps its
    /// place after everything its caller queued before.
    fn enqueue_soon(&self, user: Uuid, op: Op) {
        let lane = self.lane(user);
        let room = lane.room.clone().try_acquire_owned().ok();
        if self.put(lane, op, room).is_err() {
            tracing::warn!("a write was not queued: the writers have stopped");
        }
    }

    /// Stores a message (with what goes with it) and returns once it is committed
    /// ([`Saved::Repeat`] when its key was used before), or fails with
    /// [`StoreError::Timeout`] after the write deadline. It waits for room in the queue
    /// within that deadline, and past it is queued all the same: a save is never dropped, so
    /// one that timed out is stored when the database takes it (with its counts and tokens).
    pub async fn save(&self, fence: Fence, save: Save) -> Result<Saved, StoreError> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let (done, committed) = oneshot::channel();
        let op = Op::Save { fence, save: Box::new(save), done: Some(done) };
        let lane = self.lane(fence.owner);
        let room = tokio::time::timeout_at(deadline, lane.room.clone().acquire_owned()).await.ok().and_then(Result::ok);
        self.put(lane, op, room)?;
        match tokio::time::timeout_at(deadline, committed).await {
            Ok(answer) => answer.unwrap_or_else(|_| Err(writer_stopped())),
            Err(_) => {
                self.metrics.write_timeouts.inc();
                Err(StoreError::Timeout)
            }
        }
    }

    /// Queues a save without waiting for it; never dropped.
    pub fn save_soon(&self, fence: Fence, save: Save) {
        self.enqueue_soon(fence.owner, Op::Save { fence, save: Box::new(save), done: None });
    }

    /// Queues a checkpoint of a reply in progress, if there is room: a checkpoint only
    /// narrows what a crash can lose, and the reply's final save replaces it anyway.
    pub fn checkpoint(&self, fence: Fence, message: Message) {
        let lane = self.lane(fence.owner);
        let Ok(room) = lane.room.clone().try_acquire_owned() else {
            self.metrics.checkpoints_skipped.inc();
            return;
        };
        let op = Op::Save { fence, save: Box::new(Save::of(message)), done: None };
        let _ = self.put(lane, op, Some(room));
    }

    /// Queues naming a session `to` if its title is still `from`: a rename that came first
    /// is never overwritten.
    pub fn retitle_soon(&self, fence: Fence, from: &str, to: &str) {
        self.enqueue_soon(fence.owner, Op::Retitle { fence, from: from.into(), to: to.into() });
    }

    /// Queues adding one message to the user's day; once committed, `then` gets the day's
    /// usage (called by the writer, in commit order, so a user's tabs never see it go back).
    pub fn count_message_soon(&self, user_id: Uuid, day: NaiveDate, then: AfterUsage) {
        self.enqueue_soon(user_id, Op::CountMessage { user_id, day, then });
    }

    /// Returns once every write of user `owner` (their writer's queue) queued before it is
    /// committed.
    pub async fn flush_user(&self, owner: Uuid) {
        let (done, answered) = oneshot::channel();
        if self.put(self.lane(owner), Op::Flush(done), None).is_ok() {
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
        let answers = self.queues.iter().map(|lane| async move {
            let (done, answered) = oneshot::channel();
            if self.put(lane, op(done), None).is_ok() {
                let _ = answered.await;
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
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::idle_memory::thread_going_idle)
        .build()
        .and_then(|runtime| {
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
    /// An op that cannot join the batch at hand (see [`Plan::takes`]) starts the next one,
    /// and so does everything after it: a session's writes keep their order.
    async fn run(self, mut ops: mpsc::UnboundedReceiver<Queued>) {
        let mut received = Vec::with_capacity(MAX_BATCH);
        let mut waiting: VecDeque<Op> = VecDeque::with_capacity(MAX_BATCH);
        let next = AtomicU64::new(1);
        loop {
            if waiting.is_empty() {
                if ops.recv_many(&mut received, MAX_BATCH).await == 0 {
                    return;
                }
            } else {
                while waiting.len() + received.len() < MAX_BATCH
                    && let Ok(op) = ops.try_recv()
                {
                    received.push(op);
                }
            }
            self.metrics.write_queue.sub(received.len() as i64);
            // Taken: the room each held is free again.
            waiting.extend(received.drain(..).map(|queued| queued.op));
            let mut plan = Plan::default();
            let mut stop = None;
            while let Some(op) = waiting.pop_front() {
                match op {
                    Op::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                    op if !plan.takes(&op) => {
                        waiting.push_front(op);
                        break;
                    }
                    op => plan.add(op),
                }
            }
            self.metrics.write_batch.observe(plan.len() as f64);
            let id = BatchId { run: self.run, writer: self.k, n: next.fetch_add(1, Ordering::Relaxed) };
            let answered = match self.write_until_stored(&plan, &id).await {
                Some(outcome) => plan.answer(outcome),
                None => plan.refuse_too_large(),
            };
            // Usage first: a user's quota frame goes out before the `done` of a reply stored
            // in the same batch.
            for (then, usage) in answered.follow_ups {
                then(usage);
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
                // Closed before the answer, so no write sent after it waits in vain (each
                // hears that the writer has stopped as its answer is dropped).
                ops.close();
                while ops.try_recv().is_ok() {
                    self.metrics.write_queue.dec();
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Applies a batch, retrying for as long as it takes: the database may be down or
    /// restarting, and what is queued is never given up, with one exception. A retry never
    /// applies a batch twice (its marker tells an attempt that did commit). The exception is
    /// a lone write larger than the whole memtable: it is refused each time, so it is given
    /// up (`None`: its saves are answered [`StoreError::TooLarge`]) rather than hold up every
    /// write after it. Batches of several are bounded (see [`Plan::takes`]) to fit.
    async fn write_until_stored(&self, plan: &Plan, id: &BatchId) -> Option<super::batch::Outcome> {
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
                    return Some(outcome);
                }
                Err(e) if plan.len() == 1 && super::is_too_large(&e) => {
                    self.metrics.write_failures.inc();
                    self.metrics.write_too_large.inc();
                    if attempt > 3 {
                        self.metrics.write_stalled.dec();
                    }
                    tracing::error!(error = %e, "a write larger than the database's memtable was given up");
                    return None;
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

    use chrono::Utc;
    use relay_protocol::{MessageStatus, Role};

    use super::*;
    use crate::store::StoreConfig;
    use crate::store::ops::{SendKey, Tokens};

    pub(crate) async fn store() -> Store {
        let config = StoreConfig {
            url: "mem://".into(),
            credentials: None,
            namespace: "test".into(),
            database: "test".into(),
            timeout: Duration::from_secs(5),
            embedded: crate::store::EmbeddedSizes::DEFAULT,
        };
        Store::connect(&config).await.expect("in-memory store")
    }

    fn writes(store: &Store, capacity: usize, metrics: Arc<Metrics>) -> WriteBehind {
        WriteBehind::start(store.clone(), capacity, Duration::from_secs(5), metrics)
    }

    /// A session claimed for an actor, as the registry does: its fence.
    pub(crate) async fn claimed(store: &Store, user: Uuid, title: &str) -> Fence {
        let session = store.create_session(user, title, None, None).await.unwrap();
        let claimed = store.claim_session(session.id).await.unwrap().unwrap();
        Fence { session_id: session.id, epoch: claimed.epoch, owner: user }
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
            model: None,
            replaced_by: None,
        }
    }

    fn user_message(session_id: Uuid, content: &str) -> Message {
        Message { role: Role::User, ..reply(session_id, Uuid::new_v4(), content, MessageStatus::Complete) }
    }

    /// A session's recent messages are its newest, oldest first, whether the session holds
    /// fewer than asked (read forwards, once) or more (read backwards).
    #[tokio::test]
    async fn recent_messages_are_the_newest_in_order_however_many_there_are() {
        let store = store().await;
        let writes = writes(&store, 64, Arc::new(Metrics::new()));
        let fence = claimed(&store, Uuid::new_v4(), "t").await;
        let mut sent = Vec::new();
        for i in 0..7 {
            let mut message = user_message(fence.session_id, &format!("m{i}"));
            message.created_at = Utc::now() + chrono::Duration::milliseconds(i);
            sent.push(message.id);
            writes.save(fence, Save::of(message)).await.unwrap();
        }
        let ids = |messages: Vec<Message>| messages.into_iter().map(|m| m.id).collect::<Vec<_>>();
        for limit in [3, 6, 7, 8, 50] {
            let newest = sent[sent.len().saturating_sub(limit)..].to_vec();
            assert_eq!(ids(store.recent_messages(fence.session_id, limit).await.unwrap()), newest, "limit {limit}");
        }
        writes.close().await;
    }

    /// A direct write (a rename) racing the writers' batches on the same session never
    /// fails: a transaction conflict is retried, on both sides, and nothing is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_racing_the_writers_are_retried() {
        let store = store().await;
        let writes = writes(&store, 64, Arc::new(Metrics::new()));
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "t").await;
        let saves = tokio::spawn({
            let writes = writes.clone();
            async move {
                // One transaction per save: as many chances to collide as there are renames.
                for i in 0..300 {
                    let message = user_message(fence.session_id, &format!("m{i}"));
                    writes.save(fence, Save::of(message).counted()).await.unwrap();
                }
            }
        });
        let renames: Vec<_> = (0..3)
            .map(|k| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        let renamed = store
                            .update_session(
                                fence,
                                user,
                                &crate::store::SessionChange {
                                    title: Some(format!("title {k}.{i}")),
                                    ..Default::default()
                                },
                            )
                            .await;
                        assert!(matches!(renamed, Ok(Some(_))), "rename {k}.{i}: {renamed:?}");
                    }
                })
            })
            .collect();
        saves.await.unwrap();
        for rename in renames {
            rename.await.unwrap();
        }
        let stored = store.stored_messages(user).await.unwrap();
        assert_eq!(stored, 300, "every save counted");
    }

    /// Checkpoints queued before a final save never land over it, whether they share its
    /// batch or not; counters add up; the title is set once, only while still the default;
    /// usage follow-ups run in commit order; a queue of one still takes every write that
    /// must not be lost (checkpoints that find it full are left out and counted).
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
            writes.checkpoint(fence, reply(fence.session_id, id, &"x".repeat(i), MessageStatus::Generating));
            writes.save_soon(fence, Save::of(user_message(fence.session_id, "q")).counted());
            let seen = seen.clone();
            let then: AfterUsage = Box::new(move |usage| seen.lock().unwrap().push(usage.messages));
            writes.count_message_soon(user, Utc::now().date_naive(), then);
        }
        writes.retitle_soon(fence, "New chat", "First");
        writes.retitle_soon(fence, "New chat", "Second");
        let tokens = Tokens { user_id: user, day: Utc::now().date_naive(), prompt: 7, completion: 11 };
        let last = reply(fence.session_id, id, "final", MessageStatus::Complete);
        let saved = writes.save(fence, Save::of(last).counted().with_tokens(Some(tokens))).await;
        assert_eq!(saved.unwrap(), Saved::Stored);
        writes.flush().await;

        let stored = store.recent_messages(fence.session_id, 100).await.unwrap();
        assert_eq!(stored.len(), 51);
        let final_reply = stored.iter().find(|m| m.id == id).unwrap();
        assert_eq!((final_reply.content.as_str(), final_reply.status), ("final", MessageStatus::Complete));
        let sessions = store.list_sessions(user, 1, 10).await.unwrap();
        assert_eq!(sessions.0[0].title, "First");
        assert_eq!(store.stored_messages(user).await.unwrap(), 51);
        let usage = store.usage_on(user, Utc::now().date_naive()).await.unwrap();
        assert_eq!((usage.messages, usage.prompt_tokens, usage.completion_tokens), (50, 7, 11));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 50);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "usage never goes back: {seen:?}");
        assert_eq!(seen.last(), Some(&50));
        assert_eq!(metrics.write_queue.get(), 0);
        assert_eq!(metrics.write_failures.get(), 0);
        assert!(metrics.checkpoints_skipped.get() > 0, "a queue of one had no room for some checkpoints");
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
                writes.save(fence, Save::of(message.clone())).await.unwrap();
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

    /// `bytes` of the mock model's markdown demo, as a model writes it: prose, lists, code.
    fn prose(bytes: usize) -> String {
        let mut text = relay_mock_llm::demo_reply_text(bytes / 2);
        let mut cut = bytes.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text
    }

    /// An on-disk store whose memtable holds `memtable_bytes`.
    async fn store_on_disk(dir: &std::path::Path, memtable_bytes: u64) -> Store {
        let config = StoreConfig {
            url: format!("surrealkv://{}", dir.join("db").display()),
            credentials: None,
            namespace: "test".into(),
            database: "test".into(),
            timeout: Duration::from_secs(30),
            embedded: crate::store::EmbeddedSizes { cache_bytes: 16 << 20, memtable_bytes },
        };
        Store::connect(&config).await.expect("on-disk store")
    }

    /// Whole replies of 1 MiB of real text saved at once into an on-disk database whose
    /// memtable is the smallest the configuration allows are all stored: batches stop
    /// taking text at [`MAX_BATCH_TEXT_BYTES`]. In one transaction, their full-text index
    /// entries (about 6 bytes per byte of prose) would not fit the memtable: it would fail,
    /// and be retried for ever.
    #[tokio::test]
    async fn large_replies_saved_at_once_fit_the_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_on_disk(dir.path(), crate::store::memtable_needed(1 << 20)).await;
        let metrics = Arc::new(Metrics::new());
        let writes = WriteBehind::start(store.clone(), 1024, Duration::from_secs(150), metrics.clone());
        let fence = claimed(&store, Uuid::new_v4(), "t").await;
        let text = prose(1 << 20);
        let saves: Vec<_> = (0..32)
            .map(|_| {
                let (writes, text) = (writes.clone(), text.clone());
                tokio::spawn(async move {
                    let message = reply(fence.session_id, Uuid::new_v4(), &text, MessageStatus::Complete);
                    writes.save(fence, Save::of(message)).await
                })
            })
            .collect();
        let all = tokio::time::timeout(Duration::from_secs(180), futures::future::join_all(saves))
            .await
            .expect("every save is stored within three minutes");
        let failed: Vec<_> = all.iter().filter(|saved| !matches!(saved, Ok(Ok(_)))).collect();
        assert!(failed.is_empty(), "{} saves failed: {:?}", failed.len(), failed.first());
        let page = store.messages_before(fence.session_id, None, 100).await.unwrap().unwrap().0;
        assert_eq!(page.len(), 32);
        assert_eq!(metrics.write_failures.get(), 0, "no batch was refused");
    }

    /// A lone write larger than the whole memtable (here, a memtable smaller than the
    /// configuration allows) is given up as `TooLarge` at once, not retried for ever, and
    /// the writes after it go on being stored. Writes queued right behind it (a count of
    /// the same writer's users) wait for the next batch: with it, the batch would not be
    /// one write that can be given up, and would be retried for ever.
    #[tokio::test]
    async fn a_write_too_large_for_the_memtable_is_given_up_and_the_rest_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_on_disk(dir.path(), 3 << 20).await;
        let metrics = Arc::new(Metrics::new());
        let writes = WriteBehind::start(store.clone(), 1024, Duration::from_secs(30), metrics.clone());
        let fence = claimed(&store, Uuid::new_v4(), "t").await;
        // Keeps the writer busy while the large write and the count behind it queue up.
        let first = reply(fence.session_id, Uuid::new_v4(), &prose(256 << 10), MessageStatus::Complete);
        let first = tokio::spawn({
            let writes = writes.clone();
            async move { writes.save(fence, Save::of(first)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let big = reply(fence.session_id, Uuid::new_v4(), &prose(1 << 20), MessageStatus::Complete);
        let refused = tokio::spawn({
            let (writes, big) = (writes.clone(), big.clone());
            async move { writes.save(fence, Save::of(big)).await }
        });
        tokio::task::yield_now().await;
        writes.count_message_soon(fence.owner, Utc::now().date_naive(), Box::new(|_| {}));
        first.await.unwrap().expect("the first write is stored");
        let refused = tokio::time::timeout(Duration::from_secs(20), refused)
            .await
            .expect("answered, not retried for ever")
            .unwrap();
        assert!(matches!(refused, Err(StoreError::TooLarge)), "{refused:?}");
        assert_eq!(metrics.write_too_large.get(), 1);
        let small = reply(fence.session_id, Uuid::new_v4(), "fits", MessageStatus::Complete);
        writes.save(fence, Save::of(small.clone())).await.expect("the next write is stored");
        let page = store.messages_before(fence.session_id, None, 10).await.unwrap().unwrap().0;
        assert!(page.iter().all(|m| m.id != big.id), "the large one was not stored");
        assert!(page.iter().any(|m| m.id == small.id));
    }

    /// Replies left `generating` by a server that stopped are all marked `error` at start,
    /// a few per transaction: marking 40 long ones in one transaction (rewriting 20 MiB of
    /// records) would not fit this 16 MiB memtable.
    #[tokio::test]
    async fn interrupted_replies_are_failed_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_on_disk(dir.path(), 16 << 20).await;
        let writes = writes(&store, 1024, Arc::new(Metrics::new()));
        let fence = claimed(&store, Uuid::new_v4(), "t").await;
        let text = prose(512 << 10);
        for _ in 0..40 {
            let message = reply(fence.session_id, Uuid::new_v4(), &text, MessageStatus::Generating);
            writes.save(fence, Save::of(message)).await.unwrap();
        }
        assert_eq!(store.fail_interrupted_replies().await.unwrap(), 40);
        let page = store.messages_before(fence.session_id, None, 100).await.unwrap().unwrap().0;
        assert!(page.iter().all(|m| m.status == MessageStatus::Error), "every one is marked");
        assert_eq!(store.fail_interrupted_replies().await.unwrap(), 0);
    }

    /// Prints the memtable a 1 MiB reply needs, and an edit superseding 8 of them, for
    /// [`MAX_BATCH_TEXT_BYTES`] and [`crate::store::memtable_needed`]. Run by hand:
    /// `MEASURE_TEXT=prose|commas|digits MEASURE_MIB=6,8,12 cargo test -p relay-server --lib
    /// memtable_needs -- --ignored --nocapture` (a size too small shows as `false`).
    #[tokio::test]
    #[ignore]
    async fn memtable_needs() {
        let text = match std::env::var("MEASURE_TEXT").as_deref() {
            Ok("commas") => "a,".repeat(1 << 19),
            Ok("digits") => (0..200_000).map(|i| format!("{i} ")).collect::<String>()[..1 << 20].to_string(),
            _ => prose(1 << 20),
        };
        let sizes = std::env::var("MEASURE_MIB").unwrap_or("6,8,12,16,24,32,48,64".into());
        for mib in sizes.split(',').map(|m| m.parse::<u64>().unwrap()) {
            let dir = tempfile::tempdir().unwrap();
            let store = store_on_disk(dir.path(), mib << 20).await;
            let writes = WriteBehind::start(store.clone(), 1024, Duration::from_secs(60), Arc::new(Metrics::new()));
            let fence = claimed(&store, Uuid::new_v4(), "t").await;
            let mut ids = Vec::new();
            let mut one = true;
            for _ in 0..8 {
                let message = reply(fence.session_id, Uuid::new_v4(), &text, MessageStatus::Complete);
                ids.push(message.id);
                one &= writes.save(fence, Save::of(message)).await.is_ok();
                if !one {
                    break;
                }
            }
            let edit = user_message(fence.session_id, "edited");
            let (by, bytes) = (edit.id, 8 * text.len());
            let superseded = one && writes.save(fence, Save::of(edit).superseding(ids, by, bytes)).await.is_ok();
            println!("memtable {mib} MiB: 1 MiB reply stored: {one}; edit superseding 8 of them: {superseded}");
        }
    }

    /// The sessions of one user, saved at once with their replies' tokens, never make the
    /// writers' transactions conflict: a user's writes (and so their day of usage) are all
    /// on one writer. Spread by session, both writers wrote the same usage row at once.
    #[tokio::test]
    async fn one_users_sessions_saving_at_once_never_conflict() {
        let store = store().await;
        let metrics = Arc::new(Metrics::new());
        let writes = WriteBehind::start(store.clone(), 4096, Duration::from_secs(5), metrics.clone());
        let user = Uuid::new_v4();
        let mut fences = Vec::new();
        for _ in 0..40 {
            fences.push(claimed(&store, user, "t").await);
        }
        let day = Utc::now().date_naive();
        for round in 0..5 {
            let saves = fences.iter().map(|&fence| {
                let writes = writes.clone();
                tokio::spawn(async move {
                    let message =
                        reply(fence.session_id, Uuid::new_v4(), &format!("r{round}"), MessageStatus::Complete);
                    let tokens = Tokens { user_id: user, day, prompt: 1, completion: 1 };
                    writes.save(fence, Save::of(message).counted().with_tokens(Some(tokens))).await.unwrap();
                })
            });
            for save in saves.collect::<Vec<_>>() {
                save.await.unwrap();
            }
        }
        assert_eq!(metrics.write_failures.get(), 0, "no batch was tried twice");
        assert_eq!(store.usage_on(user, day).await.unwrap().completion_tokens, 200);
    }

    /// A durable save that finds no room in the queue in time answers `Timeout` and is
    /// queued all the same, so it is stored (with its count) once the writer takes it; the
    /// queue gauge counts what is queued; once the writers have stopped, a save fails at
    /// once, counting nothing.
    #[tokio::test]
    async fn a_save_past_its_deadline_times_out_and_is_stored_later() {
        let store = store().await;
        let metrics = Arc::new(Metrics::new());
        let writes = WriteBehind::start(store.clone(), 1, Duration::from_millis(100), metrics.clone());
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "t").await;
        // A follow-up runs on its writer's thread: one that sleeps holds the writer. The
        // user's counts go to the writer of the user's sessions.
        let day = Utc::now().date_naive();
        writes.count_message_soon(user, day, Box::new(|_| std::thread::sleep(Duration::from_millis(600))));
        tokio::time::sleep(Duration::from_millis(100)).await;
        writes.count_message_soon(user, day, Box::new(|_| ()));
        let question = user_message(fence.session_id, "q");
        let saved = writes.save(fence, Save::of(question.clone()).counted()).await;
        assert!(matches!(saved, Err(StoreError::Timeout)), "{saved:?}");
        assert_eq!(metrics.write_queue.get(), 2, "the count, and the save that found no room in time, are queued");
        writes.flush().await;
        assert_eq!(metrics.write_queue.get(), 0);
        let stored = store.recent_messages(fence.session_id, 10).await.unwrap();
        assert_eq!(
            stored.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![question.id],
            "stored once the writer takes it"
        );
        assert_eq!(store.stored_messages(user).await.unwrap(), 1, "with its count");
        writes.close().await;
        let saved = writes.save(fence, Save::of(user_message(fence.session_id, "q"))).await;
        assert!(matches!(saved, Err(StoreError::Batch(_))), "{saved:?}");
        assert_eq!(metrics.write_queue.get(), 0, "a refused enqueue is not counted");
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
        let new = Fence { epoch: store.claim_session(old.session_id).await.unwrap().unwrap().epoch, ..old };
        assert_eq!(new.epoch, old.epoch + 1, "each claim raises the epoch");

        let (stale, fresh) = (Uuid::new_v4(), Uuid::new_v4());
        writes.checkpoint(old, reply(old.session_id, stale, "checkpoint", MessageStatus::Generating));
        writes.save_soon(old, Save::of(user_message(old.session_id, "q")).counted());
        writes.retitle_soon(old, "New chat", "Stale title");

        let refused = writes.save(old, Save::of(reply(old.session_id, stale, "final", MessageStatus::Complete))).await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        let saved =
            writes.save(new, Save::of(reply(new.session_id, fresh, "new owner", MessageStatus::Complete))).await;
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
        assert!(matches!(
            store
                .update_session(
                    old,
                    user,
                    &crate::store::SessionChange { title: Some("x".into()), ..Default::default() }
                )
                .await,
            Err(StoreError::Fenced)
        ));
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
        let save = |id, content: &str, key| {
            Save::of(reply(fence.session_id, id, content, MessageStatus::Complete)).counted().keyed(key)
        };
        // Both in one batch, most likely: the second waits for the next and is a repeat there.
        let (saved, repeat) = tokio::join!(writes.save(fence, save(first, "one", key(reply_1))), async {
            tokio::task::yield_now().await;
            writes.save(fence, save(second, "two", key(reply_2))).await
        });
        assert_eq!(saved.unwrap(), Saved::Stored);
        assert_eq!(
            repeat.unwrap(),
            Saved::Repeat { session_id: fence.session_id, message_id: first, reply_id: reply_1 }
        );
        // Another user's identical key is theirs alone.
        let other = SendKey { user_id: Uuid::new_v4(), key: "k-1".into(), reply_id: reply_2 };
        let saved = writes.save(fence, save(third, "three", Some(other))).await;
        assert_eq!(saved.unwrap(), Saved::Stored);
        let ids: Vec<Uuid> = store.recent_messages(fence.session_id, 10).await.unwrap().iter().map(|m| m.id).collect();
        assert!(ids.contains(&first) && ids.contains(&third) && !ids.contains(&second), "{ids:?}");
        assert_eq!(store.stored_messages(user).await.unwrap(), 2, "the repeat is not counted");
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
        let save = |id, content: &str| {
            Save::of(reply(fence.session_id, id, content, MessageStatus::Complete)).keyed(key.clone())
        };
        writes.save(fence, save(first, "one")).await.unwrap();
        store.age_send_key(user, "old", chrono::TimeDelta::hours(25)).await.unwrap();
        assert!(store.find_send_key(user, "old").await.unwrap().is_none(), "expired");
        let saved = writes.save(fence, save(second, "two")).await;
        assert_eq!(saved.unwrap(), Saved::Stored, "not a repeat any more");
        assert_eq!(store.find_send_key(user, "old").await.unwrap().unwrap().message_id, second);
        assert_eq!(store.expire_keys_and_markers(100).await.unwrap().0, 0, "the new key is fresh");
        store.age_send_key(user, "old", chrono::TimeDelta::hours(25)).await.unwrap();
        assert_eq!(store.expire_keys_and_markers(100).await.unwrap().0, 1, "retention deletes expired keys");
    }
}
