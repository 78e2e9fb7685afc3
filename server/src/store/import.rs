//! Bulk import of whole conversations, straight into the tables: how the load generator's
//! `search` scenario fills a database with a million messages in minutes (through the
//! server's API each would be a send and a reply). Nothing else uses it.

use relay_protocol::{Message, Session};
use uuid::Uuid;

use super::{Store, StoreError};

/// Inserts sessions (with their owner) and messages as they are, in one statement each;
/// the session rows' message counts are set from `messages`.
const IMPORT_SQL: &str = "
INSERT INTO chat_session $sessions.map(|$s| {
    id: type::record('chat_session', $s.session.id), user_id: $s.user_id, title: $s.session.title,
    created_at: <datetime>$s.session.created_at, updated_at: <datetime>$s.session.updated_at,
    message_count: $s.count, epoch: 0 });
INSERT INTO chat_message $messages.map(|$m| {
    id: type::record('chat_message', $m.id), session_id: $m.session_id, role: $m.role, content: $m.content,
    token_count: $m.token_count, status: $m.status, created_at: <datetime>$m.created_at, superseded: false });
RETURN true;";

impl Store {
    /// Stores `sessions` of their users and `messages` of those sessions, as given.
    pub async fn import(&self, sessions: &[(Uuid, Session)], messages: &[Message]) -> Result<(), StoreError> {
        let sessions: Vec<serde_json::Value> = sessions
            .iter()
            .map(|(user_id, session)| {
                let count = messages.iter().filter(|m| m.session_id == session.id).count();
                serde_json::json!({"user_id": user_id, "session": session, "count": count})
            })
            .collect();
        let bind = serde_json::json!({"sessions": sessions, "messages": messages});
        let mut response = self.db.query(IMPORT_SQL, Some(bind)).await?;
        match super::cause_of(response.take_errors()) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
