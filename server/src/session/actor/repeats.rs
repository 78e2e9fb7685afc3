//! Repeated requests: a send, edit or regenerate that carries an idempotency key used
//! before is answered as the first one was, storing nothing new; and a reply its first
//! request never got (that request timed out while its message was being stored) is
//! generated for the repeat.

use std::collections::{HashMap, VecDeque};

use relay_protocol::{MessageStatus, Role};

use super::*;
use crate::session::{Replay, SendAccepted};
use crate::store::StoredSend;

/// How many idempotency keys an actor remembers (older ones are looked up in the store).
const KEYS_REMEMBERED: usize = 256;

/// Idempotency keys of the last requests this actor took.
#[derive(Default)]
pub(super) struct SentKeys {
    sent: HashMap<String, StoredSend>,
    order: VecDeque<String>,
}

impl SentKeys {
    fn get(&self, key: &str) -> Option<&StoredSend> {
        self.sent.get(key)
    }

    pub(super) fn remember(&mut self, key: String, stored: StoredSend) {
        if self.sent.insert(key.clone(), stored).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > KEYS_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.sent.remove(&old);
            }
        }
    }
}

impl SessionState {
    /// What an earlier request with the same idempotency key stored, if any (this actor
    /// remembers its recent keys; older ones, and those of earlier actors or other nodes,
    /// are in the store).
    pub(super) async fn earlier_send(&mut self, requester: &Requester) -> Result<Option<StoredSend>, SessionError> {
        let Some(key) = &requester.key else { return Ok(None) };
        if let Some(stored) = self.keys.get(key) {
            return Ok(Some(stored.clone()));
        }
        let stored = self.deps.store.find_send_key(requester.user.id, key).await?;
        if let Some(stored) = &stored {
            self.keys.remember(key.clone(), stored.clone());
        }
        Ok(stored)
    }

    /// Answers a repeated request as the first was answered: its `ack` (and the reply's
    /// state, for REST), storing nothing. If the first request's reply was never generated
    /// and its message is still the last word of the conversation, the reply is generated
    /// now, under the id the first request was given.
    pub(super) async fn replay(
        &mut self,
        requester: &Requester,
        stored: StoredSend,
    ) -> Result<SendAccepted, SessionError> {
        if stored.session_id != self.session.id {
            return Err(SessionError::KeyReused);
        }
        let user_message = match self.history.iter().find(|m| m.id == stored.message_id) {
            Some(message) => message.clone(),
            None => self
                .deps
                .store
                .get_message(self.session.id, stored.message_id)
                .await?
                .ok_or(SessionError::Unavailable)?,
        };
        let mut replay = self.reply_state(stored.reply_id).await?;
        if replay == Replay::Missing && self.awaits_reply(&user_message) {
            self.answer_again(requester, &user_message, stored.reply_id);
            replay = Replay::Running { text: String::new(), seq: self.seq };
        }
        self.deps.metrics.repeated_requests.inc();
        self.watch(&requester.origin)?;
        self.ack(&requester.origin, requester.request_id.clone(), &user_message);
        Ok(SendAccepted { user_message, reply_id: stored.reply_id, rate: None, replay: Some(replay) })
    }

    /// Whether `message` is a user message that is the conversation's last live word, with
    /// nothing generating or waiting: a reply to it belongs right after it.
    fn awaits_reply(&self, message: &Message) -> bool {
        let last = self.history.iter().rev().find(|m| !m.superseded);
        message.role == Role::User && last.map(|m| m.id) == Some(message.id) && self.check_settled().is_ok()
    }

    /// Queues the reply to `message` under `reply_id` (the send that stored the message
    /// never got it: it timed out storing, or its reply was dropped before its turn). It
    /// costs nothing more: the first attempt was charged and counted, even when it timed
    /// out (see `settle_failed`).
    fn answer_again(&mut self, requester: &Requester, message: &Message, reply_id: Uuid) {
        tracing::info!(session_id = %self.session.id, message_id = %message.id, %reply_id, "a repeated send gets the reply its first attempt never got");
        let reply_at =
            self.history.back().map_or(message.created_at, |m| m.created_at.max(message.created_at)) + REPLY_SLOT;
        self.queue.push_back(Queued {
            user: requester.user.clone(),
            user_message: message.clone(),
            reply_id,
            reply_at,
            origin: requester.origin.clone(),
            request_id: requester.request_id.clone(),
            prepared: None,
        });
    }

    /// Where a reply stands: running or waiting here, stored, or never generated.
    async fn reply_state(&self, reply_id: Uuid) -> Result<Replay, SessionError> {
        if let Some(running) = self.current.as_ref().filter(|r| r.reply_id == reply_id) {
            return Ok(Replay::Running { text: running.content.clone(), seq: self.seq });
        }
        if self.queue.iter().any(|q| q.reply_id == reply_id) {
            return Ok(Replay::Running { text: String::new(), seq: self.seq });
        }
        if let Some(reply) = self.history.iter().find(|m| m.id == reply_id) {
            return Ok(Replay::Finished(reply.clone()));
        }
        Ok(match self.deps.store.get_message(self.session.id, reply_id).await? {
            Some(reply) if reply.status != MessageStatus::Generating => Replay::Finished(reply),
            _ => Replay::Missing,
        })
    }
}
