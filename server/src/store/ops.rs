//! The writes the write-behind queue takes ([`Op`]), what each carries, and what a durable
//! one answers. Shared by the queue ([`super::write_behind`]) and the batch that applies
//! them ([`super::batch`]).

use chrono::{DateTime, NaiveDate, Utc};
use relay_protocol::Message;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{DayUsage, StoreError};

/// A session's fencing token: the epoch its actor claimed. A write made under an epoch
/// that is no longer the session's is not applied (another actor took the session over).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The session.
    pub session_id: Uuid,
    /// The epoch its actor holds.
    pub epoch: u64,
    /// The session's owner: every write of a user goes to one writer, so two writers'
    /// transactions never write the same user's rows (the day's usage, send keys) at once,
    /// which conflicted, and a conflict retries a whole batch after a wait.
    pub owner: Uuid,
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

/// Tokens a reply cost, added to its user's day.
#[derive(Clone, Copy, Debug)]
pub struct Tokens {
    /// Who asked.
    pub user_id: Uuid,
    /// The day they count on.
    pub day: NaiveDate,
    /// Tokens sent to the model.
    pub prompt: u32,
    /// Tokens the model wrote.
    pub completion: u32,
}

/// A message to store, with what goes with it in the same transaction: everything here
/// is applied together or not at all (a stale fence, a repeated key).
#[derive(Clone, Debug)]
pub struct Save {
    /// The message (a new one, or a newer version of one).
    pub message: Message,
    /// The send's idempotency key: when it was used before, nothing here is stored.
    pub key: Option<SendKey>,
    /// Messages this one replaces (an edit's old message and reply, a regenerated reply):
    /// marked superseded once this is stored.
    pub supersedes: Vec<Uuid>,
    /// The message that takes their place (an edit's new message, a regenerate's new
    /// reply), stored as their `replaced_by`.
    pub replaced_by: Option<Uuid>,
    /// The text of the messages it supersedes: marking them rewrites their records.
    pub superseded_bytes: usize,
    /// How many messages the session's count grows by (1 for a new message, 0 for a
    /// checkpoint or another version), moving its `updated_at` to `at`.
    pub counts: i32,
    /// When the session was last active, if this counts.
    pub at: DateTime<Utc>,
    /// Tokens to add to a user's day (counted even if the session has moved on: the
    /// provider billed them).
    pub tokens: Option<Tokens>,
}

impl Save {
    /// A save of `message` alone: nothing counted, keyed or replaced.
    pub fn of(message: Message) -> Save {
        Save {
            message,
            key: None,
            supersedes: Vec::new(),
            replaced_by: None,
            superseded_bytes: 0,
            counts: 0,
            at: Utc::now(),
            tokens: None,
        }
    }

    /// Counts the message as a new one of its session, active now.
    pub fn counted(mut self) -> Save {
        self.counts = 1;
        self.at = Utc::now();
        self
    }

    /// Stores `key` with the message (a repeat of it stores nothing).
    pub fn keyed(mut self, key: Option<SendKey>) -> Save {
        self.key = key;
        self
    }

    /// Marks `ids` superseded with the message, replaced by the message `by`; `bytes` is
    /// their text.
    pub fn superseding(mut self, ids: Vec<Uuid>, by: Uuid, bytes: usize) -> Save {
        self.supersedes = ids;
        self.replaced_by = Some(by);
        self.superseded_bytes = bytes;
        self
    }

    /// The text this save writes: its message's and that of the records it marks
    /// superseded (what [`MAX_BATCH_TEXT_BYTES`](super::MAX_BATCH_TEXT_BYTES) bounds).
    pub fn text_bytes(&self) -> usize {
        self.message.content.len() + self.superseded_bytes
    }

    /// Adds the reply's tokens to its user's day.
    pub fn with_tokens(mut self, tokens: Option<Tokens>) -> Save {
        self.tokens = tokens;
        self
    }
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

/// Where the answer to a durable save goes.
pub type SaveAnswer = oneshot::Sender<Result<Saved, StoreError>>;

/// One queued write.
pub enum Op {
    /// Store a message with what goes with it; `done` hears the outcome once committed.
    Save { fence: Fence, save: Box<Save>, done: Option<SaveAnswer> },
    /// Set a session's title if it is still `from` (the automatic title of a new chat).
    Retitle { fence: Fence, from: String, to: String },
    /// Add a message to a user's usage of a day; `then` gets the day's usage once
    /// committed. Not fenced: it counts what was stored, whichever actor stored it.
    CountMessage { user_id: Uuid, day: NaiveDate, then: AfterUsage },
    /// Answer once everything queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Write everything queued before it, let go of the store, answer, and stop.
    Stop(oneshot::Sender<()>),
}
