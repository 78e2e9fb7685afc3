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
use serde::Deserialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::ops::{AfterUsage, Fence, Op, Save, SaveAnswer, Saved};
use super::{DayUsage, Store, StoreError};

/// How long an idempotency key holds: a repeat within it stores nothing new.
pub const IDEMPOTENCY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A fence's index in a batch: writes name the fence they were made under.
type FenceIx = usize;

/// The text a batch takes (see [`Save::text_bytes`]) before it refuses further saves; a
/// save of any size is taken alone. A transaction must fit the database's memtable
/// (`DATABASE_MEMTABLE_BYTES` for the embedded one), or it fails each time it is retried.
/// The full-text index makes a new message cost the memtable 6 (prose) to 64 (distinct
/// numbers) times its text, and replacing a stored version (a checkpoint, the final
/// reply) also removes the old entries; marking one superseded costs 1 to 1.25 times its
/// text (measured with `write_behind::tests::memtable_needs`). So a batch of several
/// stays far inside [`memtable_needed`], and only a lone save can be too large (it is
/// then given up). Short replies still share batches of up to 128.
pub const MAX_BATCH_TEXT_BYTES: usize = 512 << 10;

/// The most text an edit may supersede (the edited message and every later one), in
/// replies of `CHAT_MAX_REPLY_BYTES` (or messages of `CHAT_MAX_MESSAGE_LENGTH`, if
/// longer): marking them rewrites their records in the edit's transaction (40 × that
/// size at most, within [`memtable_needed`] of it).
pub const MAX_SUPERSEDED_REPLIES: usize = 32;

/// The most text one message may hold, in bytes: a whole reply (`CHAT_MAX_REPLY_BYTES`),
/// or a user message of `CHAT_MAX_MESSAGE_LENGTH` characters at 4 bytes each.
pub fn largest_message(max_reply_bytes: usize, max_message_chars: usize) -> usize {
    max_reply_bytes.max(max_message_chars.saturating_mul(4))
}

/// What the memtable must hold, at least: twice the worst measured cost (64×) of a batch's
/// text or of the [`largest_message`], `largest_message` bytes.
pub fn memtable_needed(largest_message: usize) -> u64 {
    ((1usize << 20).max(largest_message) as u64).saturating_mul(128)
}

/// One batch, merged: the last version of each message, one fence check per session
/// epoch, one usage row per user and day.
#[derive(Default)]
pub struct Plan {
    /// The fences the batch's writes were made under.
    fences: Vec<Fence>,
    fence_at: HashMap<Fence, FenceIx>,
    /// The last version of each message (with what goes with it), under its fence.
    messages: Vec<(FenceIx, Save)>,
    message_at: HashMap<Uuid, usize>,
    /// The idempotency keys the batch's saves carry (user, key): one use of each per batch.
    keys: HashSet<(Uuid, String)>,
    /// Titles to set: (fence, from, to).
    retitles: Vec<(FenceIx, String, String)>,
    /// Additions to users' days: (messages, prompt tokens, completion tokens).
    usage: HashMap<(Uuid, NaiveDate), (u32, u32, u32)>,
    /// Durable saves waiting for the commit: (fence, message index, answer).
    waiting: Vec<(FenceIx, usize, SaveAnswer)>,
    /// What to do with a user's day once committed.
    after_usage: Vec<((Uuid, NaiveDate), AfterUsage)>,
    flushes: Vec<oneshot::Sender<()>>,
    ops: usize,
    /// The text of the saves taken ([`Save::text_bytes`]; an earlier version of a message
    /// still counts, which only errs on the safe side).
    text_bytes: usize,
}

/// What a committed batch reports: the fences it found stale (their writes were not
/// applied), the sends whose key was already used (their messages were not stored), and
/// the usage of the days it counted on that someone waits for.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Outcome {
    /// Indexes of stale fences.
    #[serde(default)]
    pub stale: Vec<FenceIx>,
    /// Messages (by index) that repeat an earlier send, with what that send stored.
    #[serde(default)]
    pub repeats: Vec<Repeat>,
    /// Users' days after the batch's counts.
    #[serde(default)]
    pub days: Vec<Day>,
}

/// A send that repeats an earlier one with the same key.
#[derive(Clone, Debug, Deserialize)]
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

/// A user's day as the batch left it.
#[derive(Clone, Debug, Deserialize)]
pub struct Day {
    /// The user.
    pub user_id: Uuid,
    /// The day.
    pub day: NaiveDate,
    /// Its counts.
    #[serde(default)]
    pub usage: Option<DayUsage>,
}

impl Plan {
    fn fence(&mut self, fence: Fence) -> FenceIx {
        if let Some(&i) = self.fence_at.get(&fence) {
            return i;
        }
        self.fences.push(fence);
        self.fence_at.insert(fence, self.fences.len() - 1);
        self.fences.len() - 1
    }

    /// Whether `op` can join this batch. A save with a key or with messages to replace
    /// cannot share a batch with another use of its key or another version of its message,
    /// nor can a version of a message saved under another fence (each fence's writes are
    /// answered by that fence's check): it waits for the next batch, where what this one
    /// stores decides it. Nor does a save join a batch it would take past
    /// [`MAX_BATCH_TEXT_BYTES`].
    pub fn takes(&self, op: &Op) -> bool {
        // A save too large to share a batch is alone in it: if even that does not fit, it
        // is given up, which only a batch of one may be.
        if self.text_bytes > MAX_BATCH_TEXT_BYTES {
            return false;
        }
        let Op::Save { fence, save, .. } = op else { return true };
        if self.ops > 0 && self.text_bytes + save.text_bytes() > MAX_BATCH_TEXT_BYTES {
            return false;
        }
        let other_fence =
            self.message_at.get(&save.message.id).is_some_and(|&i| self.fences[self.messages[i].0] != *fence);
        if other_fence {
            return false;
        }
        if save.key.is_none() && save.supersedes.is_empty() {
            return true;
        }
        let key_used = save.key.as_ref().is_some_and(|k| self.keys.contains(&(k.user_id, k.key.clone())));
        !key_used && !self.message_at.contains_key(&save.message.id)
    }

    /// Adds a write (one [`Plan::takes`]); `Stop` must be handled by the caller.
    pub fn add(&mut self, op: Op) {
        self.ops += 1;
        match op {
            Op::Save { fence, save, done } => {
                self.text_bytes += save.text_bytes();
                let f = self.fence(fence);
                if let Some(tokens) = save.tokens {
                    let entry = self.usage.entry((tokens.user_id, tokens.day)).or_default();
                    entry.1 += tokens.prompt;
                    entry.2 += tokens.completion;
                }
                if let Some(key) = &save.key {
                    self.keys.insert((key.user_id, key.key.clone()));
                }
                let i = match self.message_at.get(&save.message.id) {
                    Some(&i) => {
                        // Under the same fence ([`Plan::takes`]): a newer version, with the
                        // latest text, every count, the first's key.
                        let (_, earlier) = &mut self.messages[i];
                        earlier.counts += save.counts;
                        earlier.at = earlier.at.max(save.at);
                        earlier.message = save.message;
                        i
                    }
                    None => {
                        self.message_at.insert(save.message.id, self.messages.len());
                        self.messages.push((f, *save));
                        self.messages.len() - 1
                    }
                };
                if let Some(done) = done {
                    self.waiting.push((f, i, done));
                }
            }
            Op::Retitle { fence, from, to } => {
                let f = self.fence(fence);
                self.retitles.push((f, from, to));
            }
            Op::CountMessage { user_id, day, then } => {
                self.usage.entry((user_id, day)).or_default().0 += 1;
                self.after_usage.push(((user_id, day), then));
            }
            Op::Flush(done) => self.flushes.push(done),
            Op::Stop(_) => unreachable!("a writer stops on `Stop` before it reaches a batch"),
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
            .map(|(i, (f, save))| {
                let mut row = serde_json::to_value(&save.message)?;
                row["superseded"] = serde_json::json!(save.message.superseded);
                row["i"] = serde_json::json!(i);
                row["fence"] = serde_json::json!(f);
                // A message without a key cannot be a repeat: its count goes with its fence's
                // write (see `BatchSql`).
                row["counts"] = serde_json::json!(if save.key.is_some() { save.counts } else { 0 });
                row["at"] = serde_json::json!(save.at);
                row["supersedes"] = serde_json::json!(save.supersedes);
                if let Some(by) = save.replaced_by {
                    row["replacer"] = serde_json::json!(by);
                }
                // A missing field reads as NONE, which `option<int>` takes; null it does not.
                if let Some(fields) = row.as_object_mut() {
                    for field in ["token_count", "model"] {
                        if fields.get(field).is_some_and(serde_json::Value::is_null) {
                            fields.remove(field);
                        }
                    }
                }
                Ok(row)
            })
            .collect::<Result<_, serde_json::Error>>()?;
        // What each fence's write adds: the counts of its messages that carry no key.
        let mut counted: HashMap<FenceIx, (i64, DateTime<Utc>)> = HashMap::new();
        for (f, save) in self.messages.iter().filter(|(_, save)| save.key.is_none() && save.counts != 0) {
            let entry = counted.entry(*f).or_insert((0, save.at));
            entry.0 += i64::from(save.counts);
            entry.1 = entry.1.max(save.at);
        }
        let fences: Vec<serde_json::Value> = self
            .fences
            .iter()
            .enumerate()
            .map(|(i, fence)| {
                let mut row = serde_json::json!({"i": i, "session": fence.session_id, "epoch": fence.epoch});
                if let Some((counts, at)) = counted.get(&i) {
                    row["counts"] = serde_json::json!(counts);
                    row["at"] = serde_json::json!(at);
                }
                row
            })
            .collect();
        let keys: Vec<serde_json::Value> = self
            .messages
            .iter()
            .enumerate()
            .filter_map(|(i, (f, save))| {
                let key = save.key.as_ref()?;
                Some(serde_json::json!({"i": i, "fence": f, "id": [key.user_id, key.key],
                    "session_id": save.message.session_id, "message_id": save.message.id, "reply_id": key.reply_id}))
            })
            .collect();
        let retitles: Vec<serde_json::Value> = self
            .retitles
            .iter()
            .map(|(f, from, to)| serde_json::json!({"fence": f, "id": self.fences[*f].session_id, "from": from, "to": to}))
            .collect();
        let usage: Vec<serde_json::Value> = self
            .usage
            .iter()
            .map(|((user_id, day), (messages, prompt, completion))| {
                serde_json::json!({"user_id": user_id, "day": day.to_string(), "messages": messages,
                    "prompt": prompt, "completion": completion})
            })
            .collect();
        let wanted: HashSet<&(Uuid, NaiveDate)> = self.after_usage.iter().map(|(day, _)| day).collect();
        let wanted: Vec<serde_json::Value> = wanted
            .into_iter()
            .map(|(user_id, day)| serde_json::json!({"user_id": user_id, "day": day.to_string()}))
            .collect();
        let cutoff = chrono::Utc::now() - IDEMPOTENCY_WINDOW;
        let bind = serde_json::json!({
            "batch": batch.record(), "previous": batch.previous(), "messages": messages, "fences": fences,
            "keys": keys, "retitles": retitles, "usage": usage, "wanted": wanted, "cutoff": cutoff,
        });
        let sql = BatchSql {
            keyed: !keys.is_empty(),
            keyed_counts: self.messages.iter().any(|(_, save)| save.key.is_some() && save.counts != 0),
            supersedes: self.messages.iter().any(|(_, save)| !save.supersedes.is_empty()),
            retitles: !self.retitles.is_empty(),
            usage: !usage.is_empty(),
            wanted: !wanted.is_empty(),
        };
        store.apply_batch(&sql.text(), bind).await
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
        let days: HashMap<(Uuid, NaiveDate), DayUsage> =
            outcome.days.iter().map(|d| ((d.user_id, d.day), d.usage.unwrap_or_default())).collect();
        let follow_ups = self
            .after_usage
            .into_iter()
            .filter_map(|(day, then)| match days.get(&day) {
                Some(usage) => Some((then, *usage)),
                None => {
                    tracing::warn!(user_id = %day.0, "a committed batch did not report the day it counted on");
                    None
                }
            })
            .collect();
        let stale = stale.into_iter().map(|f| self.fences[f]).collect();
        Answered { answers, follow_ups, stale, flushes: self.flushes }
    }

    /// Answers every durable save of a batch given up as too large for the memtable with
    /// [`StoreError::TooLarge`]; nothing of it was stored, so no usage is reported.
    /// Flushes waiting on it are let go.
    pub fn refuse_too_large(self) -> Answered {
        let answers = self.waiting.into_iter().map(|(_, _, done)| (done, Err(StoreError::TooLarge))).collect();
        Answered { answers, follow_ups: Vec::new(), stale: Vec::new(), flushes: self.flushes }
    }
}

/// What answering a batch leaves to do.
pub struct Answered {
    /// Each durable save's waiter, with its answer.
    pub answers: Vec<(SaveAnswer, Result<Saved, StoreError>)>,
    /// What to do with users' days, and each day's usage after the batch.
    pub follow_ups: Vec<(AfterUsage, DayUsage)>,
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

/// The batch transaction, of the parts a batch needs (a statement costs its parsing and
/// running even over an empty list). Fences are checked first: a session whose epoch in
/// the database is not the fence's (another actor claimed it since) gets none of its
/// writes. Then keys: a send whose key holds a send from the last 24 hours is a repeat, and
/// nothing of it is stored (its message, its count, what it replaces). Each session's fence
/// is written too (its epoch, unchanged), so a claim that raises the epoch at the same
/// moment conflicts with this transaction instead of slipping past it; the same write adds
/// the session's counted messages that carry no key (they cannot be repeats), while a keyed
/// message adds its own after its key is checked. A message once superseded stays so,
/// whatever later version of it lands. Usage is not fenced (it counts what was stored and
/// billed); the days someone waits for are read back in the same transaction. The marker
/// is created last, with the outcome: it exists exactly when the batch committed.
struct BatchSql {
    /// Some save carries an idempotency key (its repeats are looked for and recorded).
    keyed: bool,
    /// Some keyed save adds to its session's message count (after its key is checked).
    keyed_counts: bool,
    /// Some save supersedes messages.
    supersedes: bool,
    /// Some session is renamed.
    retitles: bool,
    /// Some user's day is added to.
    usage: bool,
    /// Someone waits for a day's usage after the batch.
    wanted: bool,
}

impl BatchSql {
    fn text(&self) -> String {
        let mut sql = String::from(
            "BEGIN TRANSACTION;
DELETE type::record('write_batch', $previous);
LET $stale = SELECT VALUE i FROM $fences WHERE type::record('chat_session', session).epoch != epoch;
",
        );
        sql.push_str(if self.keyed {
            "LET $repeats = SELECT VALUE { i: i, session_id: type::record('idempotency', id).session_id,
    message_id: type::record('idempotency', id).message_id, reply_id: type::record('idempotency', id).reply_id }
    FROM $keys WHERE fence NOTINSIDE $stale AND type::record('idempotency', id).at > <datetime>$cutoff;
LET $skip = $repeats.map(|$r| $r.i);
"
        } else {
            "LET $repeats = [];
LET $skip = [];
"
        });
        sql.push_str(
            "FOR $f IN $fences {
    IF $f.i NOTINSIDE $stale {
        IF $f.counts != NONE {
            UPDATE type::record('chat_session', $f.session) SET epoch = $f.epoch, message_count += $f.counts,
                updated_at = time::max([updated_at, <datetime>$f.at]);
        } ELSE {
            UPDATE type::record('chat_session', $f.session) SET epoch = $f.epoch;
        };
    };
};
",
        );
        if self.keyed {
            sql.push_str(
                "FOR $k IN $keys {
    IF $k.fence NOTINSIDE $stale AND $k.i NOTINSIDE $skip {
        UPSERT type::record('idempotency', $k.id) CONTENT { session_id: $k.session_id, message_id: $k.message_id,
            reply_id: $k.reply_id, at: time::now() };
    };
};
",
            );
        }
        sql.push_str(
            "FOR $m IN $messages {
    IF $m.fence NOTINSIDE $stale AND $m.i NOTINSIDE $skip {
        UPSERT type::record('chat_message', $m.id) SET session_id = $m.session_id, role = $m.role,
            content = $m.content, token_count = $m.token_count, status = $m.status, model = $m.model,
            created_at = <datetime>$m.created_at, superseded = (superseded ?? false) OR $m.superseded;
",
        );
        if self.keyed_counts {
            sql.push_str(
                "        IF $m.counts != 0 {
            UPDATE type::record('chat_session', $m.session_id) SET message_count += $m.counts,
                updated_at = time::max([updated_at, <datetime>$m.at]);
        };
",
            );
        }
        sql.push_str("    };\n};\n");
        if self.supersedes {
            sql.push_str(
                "FOR $m IN $messages {
    IF $m.fence NOTINSIDE $stale AND $m.i NOTINSIDE $skip {
        FOR $id IN $m.supersedes {
            UPDATE type::record('chat_message', $id) SET superseded = true, replaced_by = replaced_by ?? $m.replacer
                WHERE session_id = $m.session_id;
        };
    };
};
",
            );
        }
        if self.retitles {
            sql.push_str(
                "FOR $r IN $retitles {
    IF $r.fence NOTINSIDE $stale {
        UPDATE type::record('chat_session', $r.id) SET title = $r.to, updated_at = time::now()
            WHERE title = $r.from AND deleted_at = NONE;
    };
};
",
            );
        }
        if self.usage {
            sql.push_str(
                "FOR $u IN $usage {
    UPSERT type::record('daily_usage', [$u.user_id, $u.day]) SET user_id = $u.user_id, day = $u.day,
        messages += $u.messages, prompt_tokens += $u.prompt, completion_tokens += $u.completion,
        tokens += $u.prompt + $u.completion;
};
",
            );
        }
        sql.push_str(if self.wanted {
            "LET $days = $wanted.map(|$w| { user_id: $w.user_id, day: $w.day,
    usage: (SELECT messages, prompt_tokens, completion_tokens FROM type::record('daily_usage', [$w.user_id, $w.day]))[0] });
"
        } else {
            "LET $days = [];
"
        });
        sql.push_str(
            "LET $outcome = { stale: $stale, repeats: $repeats, days: $days };
CREATE type::record('write_batch', $batch) SET at = time::now(), outcome = $outcome;
RETURN $outcome;
COMMIT TRANSACTION;",
        );
        sql
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use relay_protocol::{Message, MessageStatus, Role};

    use super::*;
    use crate::store::ops::{SendKey, Tokens};
    use crate::store::write_behind::tests::{claimed, store};

    fn message(session_id: Uuid, role: Role, content: &str) -> Message {
        Message {
            id: Uuid::new_v4(),
            session_id,
            role,
            content: content.into(),
            token_count: Some(1),
            status: MessageStatus::Complete,
            created_at: Utc::now(),
            superseded: false,
            model: None,
            replaced_by: None,
        }
    }

    fn save(fence: Fence, save: Save) -> Op {
        Op::Save { fence, save: Box::new(save), done: None }
    }

    /// A batch whose commit was not confirmed is tried again: the retry finds the marker
    /// of the attempt that did commit and applies nothing twice (counters are additions).
    #[tokio::test]
    async fn a_retried_batch_is_applied_once() {
        let store = store().await;
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "t").await;
        let day = Utc::now().date_naive();
        let mut plan = Plan::default();
        for _ in 0..3 {
            plan.add(save(fence, Save::of(message(fence.session_id, Role::User, "hi")).counted()));
        }
        let tokens = Tokens { user_id: user, day, prompt: 5, completion: 7 };
        plan.add(save(fence, Save::of(message(fence.session_id, Role::Assistant, "a")).with_tokens(Some(tokens))));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for _ in 0..2 {
            let seen = seen.clone();
            let then: AfterUsage = Box::new(move |usage| seen.lock().unwrap().push(usage));
            plan.add(Op::CountMessage { user_id: user, day, then });
        }
        let id = BatchId { run: 42, writer: 0, n: 1 };
        plan.write(&store, &id, false).await.unwrap();
        // The answer was lost; the writer tries again, twice.
        plan.write(&store, &id, true).await.unwrap();
        let outcome = plan.write(&store, &id, true).await.unwrap();
        assert_eq!(store.stored_messages(user).await.unwrap(), 3, "the count added once");
        let usage = store.usage_on(user, day).await.unwrap();
        assert_eq!((usage.messages, usage.prompt_tokens, usage.completion_tokens), (2, 5, 7));
        // The retry's outcome still carries the day, read in the transaction that counted.
        let answered = plan.answer(outcome);
        for (then, usage) in answered.follow_ups {
            then(usage);
        }
        assert_eq!(*seen.lock().unwrap(), vec![usage, usage]);
        // The next batch of the writer takes the marker away.
        let mut next = Plan::default();
        next.add(save(fence, Save::of(message(fence.session_id, Role::User, "again")).counted()));
        next.write(&store, &BatchId { run: 42, writer: 0, n: 2 }, false).await.unwrap();
        assert!(store.batch_outcome(&id).await.unwrap().is_none(), "one marker per writer is left");
        assert!(store.batch_outcome(&BatchId { run: 42, writer: 0, n: 2 }).await.unwrap().is_some());
    }

    /// What a save replaces is marked superseded only if the save is stored: a repeated key
    /// stores neither the message, nor its count, nor the supersede. A later version of a
    /// superseded message (a checkpoint landing late) never makes it live again.
    #[tokio::test]
    async fn a_save_and_what_it_replaces_land_together() {
        let store = store().await;
        let user = Uuid::new_v4();
        let fence = claimed(&store, user, "t").await;
        let question = message(fence.session_id, Role::User, "q");
        let answer = message(fence.session_id, Role::Assistant, "a");
        let mut plan = Plan::default();
        plan.add(save(fence, Save::of(question.clone()).counted()));
        plan.add(save(fence, Save::of(answer.clone()).counted()));
        plan.write(&store, &BatchId { run: 7, writer: 0, n: 1 }, false).await.unwrap();

        let key = |key: &str| Some(SendKey { user_id: user, key: key.into(), reply_id: Uuid::new_v4() });
        let new_reply = Uuid::new_v4();
        let regenerate = || {
            save(
                fence,
                Save::of(question.clone()).keyed(key("r-1")).superseding(
                    vec![answer.id],
                    new_reply,
                    answer.content.len(),
                ),
            )
        };
        let mut plan = Plan::default();
        plan.add(regenerate());
        assert!(!plan.takes(&regenerate()), "a second use of a key waits for the next batch");
        plan.write(&store, &BatchId { run: 7, writer: 0, n: 2 }, false).await.unwrap();
        let stored = store.get_message(fence.session_id, answer.id).await.unwrap().unwrap();
        assert!(stored.superseded, "the regenerate superseded the reply");
        assert_eq!(stored.replaced_by, Some(new_reply), "and names the reply that took its place");

        // A late version of the superseded reply keeps it superseded.
        let mut plan = Plan::default();
        plan.add(save(fence, Save::of(Message { content: "late".into(), ..answer.clone() })));
        // A repeat of the key supersedes nothing, counts nothing.
        let other = message(fence.session_id, Role::User, "other");
        plan.add(save(
            fence,
            Save::of(other.clone()).counted().keyed(key("r-1")).superseding(
                vec![question.id],
                Uuid::new_v4(),
                question.content.len(),
            ),
        ));
        let outcome = plan.write(&store, &BatchId { run: 7, writer: 0, n: 3 }, false).await.unwrap();
        assert_eq!(outcome.repeats.len(), 1, "{outcome:?}");
        let stored = store.get_message(fence.session_id, answer.id).await.unwrap().unwrap();
        assert!(stored.superseded && stored.content == "late", "{stored:?}");
        assert_eq!(stored.replaced_by, Some(new_reply), "a late version keeps what replaced it");
        assert!(store.get_message(fence.session_id, other.id).await.unwrap().is_none());
        assert!(!store.get_message(fence.session_id, question.id).await.unwrap().unwrap().superseded);
        assert_eq!(store.stored_messages(user).await.unwrap(), 2, "the repeat was not counted");

        // Under a stale fence (another actor claimed the session), an edit stores neither
        // its message nor the supersede of the old one.
        store.claim_session(fence.session_id).await.unwrap().unwrap();
        let edit = message(fence.session_id, Role::User, "edited");
        let mut plan = Plan::default();
        plan.add(save(
            fence,
            Save::of(edit.clone()).counted().superseding(vec![question.id], Uuid::new_v4(), question.content.len()),
        ));
        let outcome = plan.write(&store, &BatchId { run: 7, writer: 0, n: 4 }, false).await.unwrap();
        assert_eq!(outcome.stale, vec![0]);
        assert!(store.get_message(fence.session_id, edit.id).await.unwrap().is_none());
        assert!(!store.get_message(fence.session_id, question.id).await.unwrap().unwrap().superseded);
    }
    /// A version of a message saved under another fence (the actor that replaced a stale
    /// one) never merges with the batch's version: each waits for its own fence's check, so
    /// the current actor is never told `Stored` for a write the stale fence kept out.
    #[tokio::test]
    async fn versions_under_two_fences_never_share_a_batch() {
        let store = store().await;
        let old = claimed(&store, Uuid::new_v4(), "t").await;
        let new = Fence { epoch: store.claim_session(old.session_id).await.unwrap().unwrap().epoch, ..old };
        let reply = message(old.session_id, Role::Assistant, "current");
        let (done, answered) = oneshot::channel();
        let mut plan = Plan::default();
        plan.add(Op::Save { fence: new, save: Box::new(Save::of(reply.clone())), done: Some(done) });
        let stale = save(old, Save::of(Message { content: "stale".into(), ..reply.clone() }));
        assert!(!plan.takes(&stale), "a stale version waits for the next batch");
        let outcome = plan.write(&store, &BatchId { run: 8, writer: 0, n: 1 }, false).await.unwrap();
        for (waiting, answer) in plan.answer(outcome).answers {
            let _ = waiting.send(answer);
        }
        assert_eq!(answered.await.unwrap().unwrap(), Saved::Stored);
        let mut next = Plan::default();
        next.add(stale);
        let outcome = next.write(&store, &BatchId { run: 8, writer: 0, n: 2 }, false).await.unwrap();
        assert_eq!(outcome.stale, vec![0]);
        let stored = store.get_message(old.session_id, reply.id).await.unwrap().unwrap();
        assert_eq!(stored.content, "current");
    }
}
