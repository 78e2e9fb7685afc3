//! One write-behind batch: the queued writes merged, and applied as one transaction that
//! checks every session's fencing token and every send's idempotency key in the same
//! transaction as the writes they guard.
//!
//! The transaction also creates a marker record for the batch. A batch whose commit was
//! not confirmed (the connection broke, the server was killed mid-commit) is retried; the
//! retry first looks for its marker, so a batch that did commit is never applied twice
//! (its counters are additions, not idempotent on their own).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use relay_protocol::Message;
use serde::Deserialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::write_behind::{AfterUsage, Fence, Saved, SendKey};
use super::{Store, StoreError};

/// How long an idempotency key holds: a repeat within it stores nothing new.
pub const IDEMPOTENCY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// One queued write.
pub enum Op {
    /// Create or replace a message (a user message, a checkpoint, a final reply); a user
    /// message may carry its send's idempotency key, stored with it in one transaction.
    Save {
        fence: Fence,
        message: Message,
        key: Option<SendKey>,
        done: Option<oneshot::Sender<Result<Saved, StoreError>>>,
    },
    /// Count messages of a session and move its `updated_at` forward.
    Touch { fence: Fence, at: DateTime<Utc>, messages: i32 },
    /// Set a session's title if it is still `from` (the automatic title of a new chat).
    Retitle { fence: Fence, from: String, to: String },
    /// Add to a user's usage of a day; `then` gets the day's usage once committed. Not
    /// fenced: it counts what was stored and what the provider billed, whichever actor did.
    Usage { user_id: Uuid, day: NaiveDate, messages: u32, prompt: u32, completion: u32, then: Option<AfterUsage> },
    /// Answer once everything queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Write everything queued before it, let go of the store, answer, and stop.
    Stop(oneshot::Sender<()>),
}

/// A fence's index in a batch: writes name the fence they were made under.
type FenceIx = usize;

/// One batch, merged: the last version of each message, one session update per fence, one
/// usage row per user, day and fence.
#[derive(Default)]
pub struct Plan {
    /// Each fence with the session's touch (latest time, messages counted).
    fences: Vec<(Fence, Option<DateTime<Utc>>, i32)>,
    fence_at: HashMap<Fence, FenceIx>,
    messages: Vec<(FenceIx, Message)>,
    message_at: HashMap<Uuid, usize>,
    /// Keys of sends, by the index of their message.
    keys: HashMap<usize, SendKey>,
    /// Keys already in this batch: a second send with one is a repeat of the first.
    key_owner: HashMap<(Uuid, String), usize>,
    retitles: Vec<(FenceIx, String, String)>,
    usage: HashMap<(Uuid, NaiveDate), (u32, u32, u32)>,
    waiting: Vec<(FenceIx, usize, oneshot::Sender<Result<Saved, StoreError>>)>,
    after_usage: Vec<((Uuid, NaiveDate), AfterUsage)>,
    flushes: Vec<oneshot::Sender<()>>,
    ops: usize,
}

/// What a committed batch reports: the fences it found stale (their writes were not
/// applied) and the sends whose key was already used (their messages were not stored).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
pub struct Outcome {
    /// Indexes of stale fences.
    #[serde(default)]
    pub stale: Vec<FenceIx>,
    /// Messages (by index) that repeat an earlier send, with what that send stored.
    #[serde(default)]
    pub repeats: Vec<Repeat>,
}

/// A send that repeats an earlier one with the same key.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct Repeat {
    /// The repeating message's index in the batch.
    pub i: usize,
    /// The earlier send's session.
    pub session_id: Uuid,
    /// The earlier send's user message.
    pub message_id: Uuid,
    /// The earlier send's reply.
    pub reply_id: Uuid,
}

impl Plan {
    fn fence(&mut self, fence: Fence) -> FenceIx {
        if let Some(&i) = self.fence_at.get(&fence) {
            return i;
        }
        self.fences.push((fence, None, 0));
        self.fence_at.insert(fence, self.fences.len() - 1);
        self.fences.len() - 1
    }

    /// Adds a write; `Stop` must be handled by the caller.
    pub fn add(&mut self, op: Op) {
        self.ops += 1;
        match op {
            Op::Save { fence, message, key, done } => {
                let f = self.fence(fence);
                let i = match self.message_at.get(&message.id) {
                    Some(&i) => {
                        self.messages[i] = (f, message);
                        i
                    }
                    None => {
                        self.message_at.insert(message.id, self.messages.len());
                        self.messages.push((f, message));
                        self.messages.len() - 1
                    }
                };
                if let Some(key) = key {
                    self.key_owner.entry((key.user_id, key.key.clone())).or_insert(i);
                    self.keys.entry(i).or_insert(key);
                }
                if let Some(done) = done {
                    self.waiting.push((f, i, done));
                }
            }
            Op::Touch { fence, at, messages } => {
                let f = self.fence(fence);
                let entry = &mut self.fences[f];
                entry.1 = Some(entry.1.map_or(at, |a| a.max(at)));
                entry.2 += messages;
            }
            Op::Retitle { fence, from, to } => {
                let f = self.fence(fence);
                self.retitles.push((f, from, to));
            }
            Op::Usage { user_id, day, messages, prompt, completion, then } => {
                let entry = self.usage.entry((user_id, day)).or_default();
                entry.0 += messages;
                entry.1 += prompt;
                entry.2 += completion;
                if let Some(then) = then {
                    self.after_usage.push(((user_id, day), then));
                }
            }
            Op::Flush(done) | Op::Stop(done) => self.flushes.push(done),
        }
    }

    /// How many operations went into the batch.
    pub fn len(&self) -> usize {
        self.ops
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.fences.is_empty() && self.usage.is_empty() && self.retitles.is_empty()
    }

    /// Applies the batch in one transaction, under the marker `batch`, unless a previous
    /// attempt already committed it (`retry`: look for the marker first).
    pub async fn write(&self, store: &Store, batch: &BatchId, retry: bool) -> Result<Outcome, StoreError> {
        if self.is_empty() {
            return Ok(Outcome::default());
        }
        if retry && let Some(outcome) = store.batch_outcome(batch).await? {
            return Ok(outcome);
        }
        let messages: Vec<serde_json::Value> = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, (f, m))| {
                let mut row = serde_json::to_value(m)?;
                row["superseded"] = serde_json::json!(m.superseded);
                row["i"] = serde_json::json!(i);
                row["fence"] = serde_json::json!(f);
                // A missing field reads as NONE, which `option<int>` takes; null it does not.
                if let Some(fields) = row.as_object_mut()
                    && fields.get("token_count").is_some_and(serde_json::Value::is_null)
                {
                    fields.remove("token_count");
                }
                Ok(row)
            })
            .collect::<Result<_, serde_json::Error>>()?;
        let fences: Vec<serde_json::Value> = self
            .fences
            .iter()
            .enumerate()
            .map(|(i, (fence, at, count))| {
                serde_json::json!({"i": i, "session": fence.session_id, "epoch": fence.epoch, "at": at, "count": count})
            })
            .collect();
        // A key used twice in this batch: the later sends repeat the first.
        let in_batch: Vec<serde_json::Value> = self
            .keys
            .iter()
            .filter(|(i, key)| self.key_owner.get(&(key.user_id, key.key.clone())) != Some(i))
            .map(|(i, key)| {
                let first = self.key_owner[&(key.user_id, key.key.clone())];
                let (_, original) = &self.messages[first];
                serde_json::json!({"i": i, "session_id": original.session_id, "message_id": original.id,
                    "reply_id": self.keys[&first].reply_id})
            })
            .collect();
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .filter(|(i, key)| self.key_owner.get(&(key.user_id, key.key.clone())) == Some(i))
            .map(|(i, key)| {
                let (f, message) = &self.messages[*i];
                serde_json::json!({"i": i, "fence": f, "id": [key.user_id, key.key], "session_id": message.session_id,
                    "message_id": message.id, "reply_id": key.reply_id})
            })
            .collect();
        let retitles: Vec<serde_json::Value> = self
            .retitles
            .iter()
            .map(|(f, from, to)| {
                serde_json::json!({"fence": f, "id": self.fences[*f].0.session_id, "from": from, "to": to})
            })
            .collect();
        let usage: Vec<serde_json::Value> = self
            .usage
            .iter()
            .map(|((user_id, day), (messages, prompt, completion))| {
                serde_json::json!({"user_id": user_id, "day": day.to_string(), "messages": messages,
                    "prompt": prompt, "completion": completion})
            })
            .collect();
        let cutoff = Utc::now() - IDEMPOTENCY_WINDOW;
        let bind = serde_json::json!({
            "batch": batch.record(), "previous": batch.previous(), "messages": messages, "fences": fences,
            "keys": keys, "in_batch": in_batch, "retitles": retitles, "usage": usage, "cutoff": cutoff,
        });
        store.apply_batch(BATCH_SQL, bind).await
    }

    /// What the committed batch means for everyone waiting: the answers to durable saves,
    /// the usage follow-ups, the fences found stale, and the flushes.
    pub fn answer(self, outcome: Outcome) -> Answered {
        let stale: HashSet<FenceIx> = outcome.stale.iter().copied().collect();
        let repeats: HashMap<usize, &Repeat> = outcome.repeats.iter().map(|r| (r.i, r)).collect();
        let answers = self
            .waiting
            .into_iter()
            .map(|(f, i, done)| {
                let answer = if stale.contains(&f) {
                    Err(StoreError::Fenced)
                } else if let Some(repeat) = repeats.get(&i) {
                    Ok(Saved::Repeat {
                        session_id: repeat.session_id,
                        message_id: repeat.message_id,
                        reply_id: repeat.reply_id,
                    })
                } else {
                    Ok(Saved::Stored)
                };
                (done, answer)
            })
            .collect();
        let stale = stale.into_iter().map(|f| self.fences[f].0).collect();
        Answered { answers, follow_ups: self.after_usage, stale, flushes: self.flushes }
    }
}

/// What answering a batch leaves to do.
pub struct Answered {
    /// Each durable save's waiter, with its answer.
    pub answers: Vec<(oneshot::Sender<Result<Saved, StoreError>>, Result<Saved, StoreError>)>,
    /// Each user and day whose usage is to be read back, with what to do with it.
    pub follow_ups: Vec<((Uuid, NaiveDate), AfterUsage)>,
    /// Fences the batch found stale: those sessions run elsewhere now.
    pub stale: Vec<Fence>,
    /// Flushes to answer.
    pub flushes: Vec<oneshot::Sender<()>>,
}

/// A batch's marker: the writer's run (random per process), the writer, and the batch's
/// number there. The marker of the batch before is deleted with each batch, so a writer
/// leaves at most one behind.
#[derive(Clone, Copy, Debug)]
pub struct BatchId {
    /// This process's writers.
    pub run: u64,
    /// Which writer.
    pub writer: usize,
    /// Which batch of that writer.
    pub n: u64,
}

impl BatchId {
    pub(super) fn record(&self) -> serde_json::Value {
        serde_json::json!([self.run.to_string(), self.writer, self.n])
    }

    fn previous(&self) -> serde_json::Value {
        serde_json::json!([self.run.to_string(), self.writer, self.n.wrapping_sub(1)])
    }
}

/// The batch transaction. Fences are checked first: a session whose epoch in the database
/// is not the fence's (another actor claimed it since) gets none of its writes. Then keys:
/// a send whose key holds a send from the last 24 hours is a repeat and is not stored.
/// Each session's fence is written too (its epoch, unchanged), so a claim that raises the
/// epoch at the same moment conflicts with this transaction instead of slipping past it.
/// Usage is not fenced (it counts what was stored and billed).
const BATCH_SQL: &str = "BEGIN TRANSACTION;
CREATE type::record('write_batch', $batch) SET at = time::now();
DELETE type::record('write_batch', $previous);
LET $stale = SELECT VALUE i FROM $fences WHERE type::record('chat_session', session).epoch != epoch;
LET $used = SELECT VALUE { i: i, session_id: type::record('idempotency', id).session_id,
    message_id: type::record('idempotency', id).message_id, reply_id: type::record('idempotency', id).reply_id }
    FROM $keys WHERE fence NOTINSIDE $stale AND type::record('idempotency', id).at > <datetime>$cutoff;
LET $repeats = array::concat($used, $in_batch);
LET $skip = $repeats.map(|$r| $r.i);
FOR $f IN $fences {
    IF $f.i NOTINSIDE $stale {
        IF $f.at {
            UPDATE type::record('chat_session', $f.session)
                SET epoch = $f.epoch, updated_at = <datetime>$f.at, message_count += $f.count;
        } ELSE {
            UPDATE type::record('chat_session', $f.session) SET epoch = $f.epoch;
        };
    };
};
FOR $k IN $keys {
    IF $k.fence NOTINSIDE $stale AND $k.i NOTINSIDE $skip {
        UPSERT type::record('idempotency', $k.id) CONTENT { session_id: $k.session_id, message_id: $k.message_id,
            reply_id: $k.reply_id, at: time::now() };
    };
};
FOR $m IN $messages {
    IF $m.fence NOTINSIDE $stale AND $m.i NOTINSIDE $skip {
        UPSERT type::record('chat_message', $m.id) CONTENT { session_id: $m.session_id, role: $m.role,
            content: $m.content, token_count: $m.token_count, status: $m.status,
            created_at: <datetime>$m.created_at, superseded: $m.superseded };
    };
};
FOR $r IN $retitles {
    IF $r.fence NOTINSIDE $stale {
        UPDATE type::record('chat_session', $r.id) SET title = $r.to, updated_at = time::now()
            WHERE title = $r.from AND deleted_at = NONE;
    };
};
FOR $u IN $usage {
    UPSERT type::record('daily_usage', [$u.user_id, $u.day]) SET user_id = $u.user_id, day = $u.day,
        messages += $u.messages, prompt_tokens += $u.prompt, completion_tokens += $u.completion,
        tokens += $u.prompt + $u.completion;
};
UPDATE type::record('write_batch', $batch) SET outcome = { stale: $stale, repeats: $repeats };
RETURN { stale: $stale, repeats: $repeats };
COMMIT TRANSACTION;";

#[cfg(test)]
mod tests {
    use relay_protocol::{MessageStatus, Role};

    use super::*;
    use crate::store::write_behind::tests::store;

    /// A batch whose commit was not confirmed is tried again: the retry finds the marker
    /// of the attempt that did commit and applies nothing twice (counters are additions).
    #[tokio::test]
    async fn a_retried_batch_is_applied_once() {
        let store = store().await;
        let user = Uuid::new_v4();
        let session = store.create_session(user, "t").await.unwrap();
        let epoch = store.claim_session(session.id).await.unwrap().unwrap().epoch;
        let fence = Fence { session_id: session.id, epoch };
        let mut plan = Plan::default();
        plan.add(Op::Touch { fence, at: Utc::now(), messages: 3 });
        let day = Utc::now().date_naive();
        plan.add(Op::Usage { user_id: user, day, messages: 2, prompt: 5, completion: 7, then: None });
        let message = Message {
            id: Uuid::new_v4(),
            session_id: session.id,
            role: Role::User,
            content: "hi".into(),
            token_count: Some(1),
            status: MessageStatus::Complete,
            created_at: Utc::now(),
            superseded: false,
        };
        plan.add(Op::Save { fence, message, key: None, done: None });
        let id = BatchId { run: 42, writer: 0, n: 1 };
        plan.write(&store, &id, false).await.unwrap();
        // The answer was lost; the writer tries again, twice.
        plan.write(&store, &id, true).await.unwrap();
        plan.write(&store, &id, true).await.unwrap();
        assert_eq!(store.stored_messages(user).await.unwrap(), 3, "the count added once");
        let usage = store.usage_on(user, day).await.unwrap();
        assert_eq!((usage.messages, usage.prompt_tokens, usage.completion_tokens), (2, 5, 7));
        // The next batch of the writer takes the marker away.
        let mut next = Plan::default();
        next.add(Op::Touch { fence, at: Utc::now(), messages: 1 });
        next.write(&store, &BatchId { run: 42, writer: 0, n: 2 }, false).await.unwrap();
        assert!(store.batch_outcome(&id).await.unwrap().is_none(), "one marker per writer is left");
        assert!(store.batch_outcome(&BatchId { run: 42, writer: 0, n: 2 }).await.unwrap().is_some());
    }
}
