//! Chat messages and sends: failing replies left `generating` (at start, and a claimed
//! session's), claiming a session, the
//! write-behind batches' transactions and markers, idempotency keys, and a session's
//! history.

use chrono::Utc;
use relay_protocol::Message;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    Claimed, IDEMPOTENCY_WINDOW, LEFTOVERS_OF_SESSION, MESSAGE_FIELDS, SESSION_FIELDS, SessionRecord, Store,
    StoreError, StoredSend, batch, cause_of, retry_conflicts, transaction_result,
};

impl Store {
    /// Marks replies left `generating` by a server that stopped without storing them (a
    /// crash, a kill) as `error`; returns how many. Run at start-up, before any actor runs.
    pub async fn fail_interrupted_replies(&self) -> Result<usize, StoreError> {
        // A few at a time: each rewrites its reply's record, up to `CHAT_MAX_REPLY_BYTES` of
        // text, and a crash in the middle of many long replies must not leave more than one
        // transaction can take (the embedded database's memtable).
        const AT_ONCE: usize = 16;
        let mut failed = 0;
        loop {
            let rows: Vec<serde_json::Value> = self
                .rows(
                    "UPDATE (SELECT VALUE id FROM chat_message WHERE status = 'generating' LIMIT $n) \
                     SET status = 'error' RETURN record::id(id) AS id",
                    serde_json::json!({"n": AT_ONCE}),
                )
                .await?;
            failed += rows.len();
            if rows.len() < AT_ONCE {
                return Ok(failed);
            }
        }
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
                let mut response = self.db.query(sql.as_str(), Some(serde_json::json!({"id": session_id}))).await?;
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
    pub(super) async fn batch_outcome(&self, batch: &batch::BatchId) -> Result<Option<batch::Outcome>, StoreError> {
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
    pub(super) async fn apply_batch(&self, sql: &str, bind: serde_json::Value) -> Result<batch::Outcome, StoreError> {
        self.timed(async {
            let mut response = self.db.query(sql, Some(bind)).await?;
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
        self.total(
            "SELECT count() AS total FROM idempotency WHERE record::id(id)[0] = $user_id GROUP ALL",
            serde_json::json!({"user_id": user_id}),
        )
        .await
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
        let mut response = self.timed(async { Ok(self.db.query(sql, Some(bind)).await?.check()?) }).await?;
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
}
