//! Reads for exports: a session's messages, or everything a user has, whole (the API's
//! other reads are paged).

use chrono::{DateTime, Utc};
use relay_protocol::{DayUsageExport, Message, Session};
use serde::Deserialize;
use uuid::Uuid;

use super::{MESSAGE_FIELDS, SESSION_FIELDS, SessionRecord, Store, StoreError};

/// A session of the user, deleted or not.
#[derive(Debug, Deserialize)]
struct SessionRow {
    #[serde(flatten)]
    record: SessionRecord,
    deleted_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Every message of a session, oldest first, superseded ones included.
    pub async fn all_messages(&self, session_id: Uuid) -> Result<Vec<Message>, StoreError> {
        self.rows(
            &format!("SELECT {MESSAGE_FIELDS} FROM chat_message WHERE session_id = $session_id ORDER BY created_at"),
            serde_json::json!({"session_id": session_id}),
        )
        .await
    }

    /// Every session of a user not yet purged, oldest first, with when it was deleted.
    pub async fn all_sessions(&self, user_id: Uuid) -> Result<Vec<(Session, Option<DateTime<Utc>>)>, StoreError> {
        let rows: Vec<SessionRow> = self
            .rows(
                &format!(
                    "SELECT {SESSION_FIELDS}, deleted_at FROM chat_session WHERE user_id = $user_id ORDER BY created_at"
                ),
                serde_json::json!({"user_id": user_id}),
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.record.session, r.deleted_at)).collect())
    }

    /// A user's usage by day, oldest first.
    pub async fn all_usage(&self, user_id: Uuid) -> Result<Vec<DayUsageExport>, StoreError> {
        self.rows(
            "SELECT day, messages ?? 0 AS messages, prompt_tokens ?? 0 AS prompt_tokens, \
             completion_tokens ?? 0 AS completion_tokens FROM daily_usage WHERE user_id = $user_id ORDER BY day",
            serde_json::json!({"user_id": user_id}),
        )
        .await
    }
}
