//! Chat sessions: creating, reading, listing, renaming and deleting them, writes fenced by a
//! session's epoch, and retention (archiving, then purging, deleted ones).

use chrono::{DateTime, Utc};
use relay_protocol::Session;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{
    FENCED, Fence, LIVE_SESSIONS_OF_USER, LIVE_SESSIONS_OF_USER_NEWEST_FIRST, SESSION_FIELDS, SessionChange,
    SessionRecord, Store, StoreError, cause_of, retry_conflicts, transaction_result,
};

impl Store {
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
                    .query(
                        format!(
                        "SELECT {SESSION_FIELDS} FROM {LIVE_SESSIONS_OF_USER_NEWEST_FIRST} LIMIT $limit START $start;
                 SELECT count() AS total FROM {LIVE_SESSIONS_OF_USER} GROUP ALL;"
                    ),
                        Some(serde_json::json!({"user_id": user_id, "limit": per_page, "start": start})),
                    )
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
                let mut response = self.db.query(sql.as_str(), Some(bind.clone())).await?;
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
                self.db.query(sql.as_str(), Some(serde_json::json!({"cutoff": cutoff, "batch": batch}))).await?;
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
        self.total(
            "SELECT count() AS total FROM chat_message_archive WHERE session_id = $id GROUP ALL",
            serde_json::json!({"id": session_id}),
        )
        .await
    }
}
