//! Taking a send, an edit or a regenerate in: checks, limits, storing the user message
//! (with what it replaces), and queueing its reply. A repeated request is answered in
//! [`super::repeats`]; the limits are in [`super::admission`].

use std::sync::atomic::Ordering;

use chrono::Utc;
use ractor::ActorRef;
use relay_protocol::{Message, MessageStatus, Role, ServerFrame};
use uuid::Uuid;

use super::admission::{Admission, Storing};
use super::*;
use crate::auth::AuthUser;
use crate::fanout::{Outbound, Receiver, ReceiverKind};
use crate::session::SendAccepted;
use crate::store::{MAX_SUPERSEDED_REPLIES, Save, Saved, SendKey, StoreError, StoredSend, largest_message};

impl SessionState {
    pub(super) async fn send(
        &mut self,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&request.requester.user)?;
        // Bad input is refused as such, also under a key used before.
        validate_content(&request.content, self.deps.settings.max_message_length)?;
        if let Some(stored) = self.earlier_send(&request.requester).await? {
            return self.replay(&request.requester, stored).await;
        }
        self.check_fits(&request.content)?;
        if self.queue.len() >= self.deps.settings.max_queued_sends {
            return Err(SessionError::Busy);
        }
        let admission = self.admit(&request.requester.user, Storing::NewMessage).await?;
        self.accept(admission, request, Vec::new(), myself).await
    }

    /// Refuses a message the model's context cannot hold beside the system prompt (it
    /// could never be answered).
    fn check_fits(&self, content: &str) -> Result<(), SessionError> {
        let (system, budget) = (budget::message_cost(self.system_prompt()), self.context_tokens());
        let cost = budget::message_cost(content);
        if system.saturating_add(cost) > budget {
            return Err(SessionError::InvalidContent(format!(
                "the message is about {cost} tokens; the model's context holds {} beside the system prompt \
                 (CHAT_CONTEXT_TOKENS less CHAT_MAX_TOKENS): shorten it",
                budget.saturating_sub(system)
            )));
        }
        Ok(())
    }

    /// Replaces the last reply with a new one (its user message is answered again), or
    /// answers the last user message if it has no reply; only while nothing is generating
    /// or waiting. The replaced reply is marked superseded in the transaction that stores
    /// the request's idempotency key.
    pub(super) async fn regenerate(&mut self, requester: Requester) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&requester.user)?;
        if let Some(stored) = self.earlier_send(&requester).await? {
            return self.replay(&requester, stored).await;
        }
        self.check_settled()?;
        let mut live = self.history.iter().rev().filter(|m| !m.superseded);
        let (answering, replaced) = match live.next() {
            None => return Err(SessionError::Invalid("there is no message to answer again".into())),
            Some(last) if last.role == Role::User => (last.clone(), Vec::new()),
            Some(last) => match live.find(|m| m.role == Role::User) {
                Some(user) => (user.clone(), vec![last.id]),
                None => return Err(SessionError::Invalid("there is no message to answer again".into())),
            },
        };
        let admission = self.admit(&requester.user, Storing::Stored).await?;
        let reply_id = Uuid::new_v4();
        let key = requester.key.as_ref().map(|key| SendKey { user_id: requester.user.id, key: key.clone(), reply_id });
        if key.is_some() || !replaced.is_empty() {
            // The message answered is stored again as it is, carrying the key and what
            // the regenerate replaces.
            let bytes = self.text_of(&replaced);
            let save = Save::of(answering.clone()).keyed(key).superseding(replaced.clone(), reply_id, bytes);
            match self.store_durably(save).await {
                Ok(Saved::Stored) => {}
                Ok(Saved::Repeat { session_id, message_id, reply_id }) => {
                    admission.give_back(&self.deps).await;
                    return self.replay(&requester, StoredSend { session_id, message_id, reply_id }).await;
                }
                Err(e) => {
                    self.settle_failed(admission, &requester.user, &e).await;
                    return Err(e.into());
                }
            }
        }
        let rate = admission.rate;
        admission.release().await;
        if let Some(key) = &requester.key {
            self.keys
                .remember(key.clone(), StoredSend { session_id: self.session.id, message_id: answering.id, reply_id });
        }
        self.superseded(&replaced, reply_id);
        self.count_usage(&requester.user);
        self.watch(&requester.origin)?;
        self.ack(&requester.origin, requester.request_id.clone(), &answering);
        // The new reply comes after everything, the replaced reply included.
        let reply_at = self.history.back().map_or(answering.created_at, |m| m.created_at) + REPLY_SLOT;
        self.queue.push_back(Queued {
            user: requester.user,
            user_message: answering.clone(),
            reply_id,
            reply_at,
            origin: requester.origin,
            request_id: requester.request_id,
            prepared: None,
        });
        Ok(SendAccepted { user_message: answering, reply_id, rate, replay: None })
    }

    /// Replaces a live user message of the session with new text, and answers it; only
    /// while nothing is generating or waiting. That message and every live message after
    /// it are superseded (the conversation goes on from the new text: the model's context
    /// is what came before the edited message, then the new text). The new message and the
    /// supersede of the old ones are stored in one transaction. Only a message this actor
    /// holds in memory (the session's last [`HISTORY_CAP`] messages) can be edited.
    pub(super) async fn edit(
        &mut self,
        replaced_id: Uuid,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&request.requester.user)?;
        // Bad input is refused as such, also under a key used before.
        validate_content(&request.content, self.deps.settings.max_message_length)?;
        if let Some(stored) = self.earlier_send(&request.requester).await? {
            return self.replay(&request.requester, stored).await;
        }
        self.check_fits(&request.content)?;
        self.check_settled()?;
        let live: Vec<&Message> = self.history.iter().filter(|m| !m.superseded).collect();
        let Some(at) = live.iter().position(|m| m.id == replaced_id) else {
            return Err(self.not_editable(replaced_id).await);
        };
        if live[at].role != Role::User {
            return Err(SessionError::Invalid("only a user message can be edited".into()));
        }
        let replaced: Vec<Uuid> = live[at..].iter().map(|m| m.id).collect();
        let superseded_bytes = self.text_of(&replaced);
        let settings = &self.deps.settings;
        let most = MAX_SUPERSEDED_REPLIES * largest_message(settings.max_reply_bytes, settings.max_message_length);
        if superseded_bytes > most {
            return Err(SessionError::Invalid(format!(
                "editing this message would replace {superseded_bytes} bytes of messages, more than the \
                 {most} one edit may ({MAX_SUPERSEDED_REPLIES} whole replies): edit a later message"
            )));
        }
        let admission = self.admit(&request.requester.user, Storing::NewMessage).await?;
        self.accept(admission, request, replaced, myself).await
    }

    /// Why `id`, not a live message in memory, cannot be edited: it was replaced, it is
    /// older than the messages held in memory (looked up in the store only then), or it is
    /// not in the session at all.
    async fn not_editable(&self, id: Uuid) -> SessionError {
        let superseded = SessionError::Invalid("a replaced message cannot be edited".into());
        if self.history.iter().any(|m| m.id == id) {
            return superseded;
        }
        if self.history_complete {
            return SessionError::NotFound;
        }
        match self.deps.store.get_message(self.session.id, id).await {
            Ok(None) => SessionError::NotFound,
            Ok(Some(message)) if message.superseded => superseded,
            Ok(Some(_)) => SessionError::Invalid(format!(
                "the message is too old to be edited: only the session's last {HISTORY_CAP} messages can be"
            )),
            Err(e) => e.into(),
        }
    }

    /// Refuses new work from someone other than the owner, or once the actor is ending
    /// (or about to reload: see [`SessionState::store_durably`]).
    pub(super) fn check_can_take(&self, user: &AuthUser) -> Result<(), SessionError> {
        self.check_owner(user.id)?;
        if self.ending.is_some() || self.closing.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        if self.out_of_sync {
            return Err(SessionError::Unavailable);
        }
        Ok(())
    }

    /// Regenerating or editing needs a settled conversation: nothing generating or waiting.
    pub(super) fn check_settled(&self) -> Result<(), SessionError> {
        if self.current.is_some() || !self.queue.is_empty() { Err(SessionError::Busy) } else { Ok(()) }
    }

    /// Stores what a request asked for and waits for the commit. A write that is not
    /// confirmed in time may still land, so what this actor holds in memory may no longer
    /// be what is stored: it takes nothing more, and once its running and waiting replies
    /// are done it stops, for a fresh actor to load the session again (its start waits for
    /// this one's writes). A stale fence means another actor runs the session now.
    pub(super) async fn store_durably(&mut self, save: Save) -> Result<Saved, StoreError> {
        let saved = self.deps.writes.save(self.fence, save).await;
        match &saved {
            Err(StoreError::Timeout) => {
                tracing::warn!(session_id = %self.session.id, "a request's write was not confirmed in time; the session will reload once settled");
                self.out_of_sync = true;
            }
            Err(StoreError::Fenced) => self.lost = true,
            _ => {}
        }
        saved
    }

    /// Settles what a request whose save failed took from the user's limits. A save that
    /// timed out is still queued and will be stored (see [`WriteBehind::save`]): the request
    /// stays charged and counted (sent again with its key, its reply is generated at no new
    /// charge), and the storage cap's lock is held until the user's queued writes are stored,
    /// so no other send passes the cap before this message counts. Any other failure
    /// stored nothing: what it took is given back.
    async fn settle_failed(&self, admission: Admission, user: &AuthUser, error: &StoreError) {
        if matches!(error, StoreError::Timeout) {
            self.count_usage(user);
            admission.keep_until_stored(&self.deps, self.owner);
        } else {
            admission.give_back(&self.deps).await;
        }
    }

    /// Marks stored messages superseded by the message `by` in memory and tells every
    /// watcher.
    fn superseded(&mut self, ids: &[Uuid], by: Uuid) {
        if ids.is_empty() {
            return;
        }
        for message in self.history.iter_mut().filter(|m| ids.contains(&m.id)) {
            message.superseded = true;
            message.replaced_by = Some(by);
        }
        let (session_id, message_ids) = (self.session.id, ids.to_vec());
        self.emit(|seq| ServerFrame::Superseded { session_id, seq, message_ids, by: Some(by) });
    }

    /// Takes an admitted user message in: stores it (with the messages it `replaces`, for
    /// an edit), tells everyone, queues its reply. When the reply is next in line, the
    /// model is asked while the message is being stored, so the database's latency is not
    /// added to the time to first token; the `ack` still waits for the message to be
    /// stored, and a failed write cancels the request.
    pub(super) async fn accept(
        &mut self,
        admission: Admission,
        request: SendRequest,
        replaces: Vec<Uuid>,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        let SendRequest { requester, message_id, content } = request;
        self.deps.metrics.session_depth.observe(self.history.len() as f64);
        let message = self.user_message(message_id, content);
        let reply_id = Uuid::new_v4();
        let key = requester.key.as_ref().map(|key| SendKey { user_id: requester.user.id, key: key.clone(), reply_id });
        let runs_next = self.current.is_none() && self.queue.is_empty();
        let prepared = runs_next.then(|| self.spawn_generation(&message, &replaces, myself));
        let bytes = self.text_of(&replaces);
        let save = Save::of(message.clone()).counted().keyed(key).superseding(replaces.clone(), message.id, bytes);
        let saved = match self.store_durably(save).await {
            Ok(saved) => saved,
            Err(e) => {
                if let Some(prepared) = prepared {
                    prepared.task.abort();
                }
                self.settle_failed(admission, &requester.user, &e).await;
                return Err(e.into());
            }
        };
        if let Saved::Repeat { session_id, message_id, reply_id } = saved {
            if let Some(prepared) = prepared {
                prepared.task.abort();
            }
            admission.give_back(&self.deps).await;
            let stored = StoredSend { session_id, message_id, reply_id };
            if let Some(key) = &requester.key {
                self.keys.remember(key.clone(), stored.clone());
            }
            return self.replay(&requester, stored).await;
        }
        let rate = admission.rate;
        admission.release().await;
        self.session.updated_at = self.session.updated_at.max(message.created_at);
        if let Some(key) = &requester.key {
            self.keys
                .remember(key.clone(), StoredSend { session_id: self.session.id, message_id: message.id, reply_id });
        }
        // Subscribed before the message is published, so the sender's snapshot ends just
        // before it and the `message` event that follows is the snapshot's `seq + 1`.
        self.watch(&requester.origin)?;
        self.deps.metrics.user_messages.inc();
        self.name_after_first_message(&message);
        self.count_usage(&requester.user);
        self.ack(&requester.origin, requester.request_id.clone(), &message);
        self.superseded(&replaces, message.id);
        self.publish_message(message.clone());
        self.queue.push_back(Queued {
            user: requester.user,
            user_message: message.clone(),
            reply_id,
            reply_at: message.created_at + REPLY_SLOT,
            origin: requester.origin,
            request_id: requester.request_id,
            prepared,
        });
        Ok(SendAccepted { user_message: message, reply_id, rate, replay: None })
    }

    /// Tells the sending connection its message was taken.
    pub(super) fn ack(&self, origin: &Receiver, request_id: Option<String>, message: &Message) {
        if origin.kind == ReceiverKind::Connection {
            origin.deliver(&Outbound::new(ServerFrame::Ack { id: request_id, message: message.clone() }));
        }
    }

    /// A new user message, timed strictly after every message before it (and after the
    /// reply slot of the one before).
    pub(super) fn user_message(&self, id: Uuid, content: String) -> Message {
        let now = Utc::now();
        let earliest = self.history.back().map(|m| m.created_at + REPLY_SLOT + REPLY_SLOT);
        Message {
            id,
            session_id: self.session.id,
            role: Role::User,
            token_count: Some(estimate_tokens(&content)),
            content,
            status: MessageStatus::Complete,
            created_at: earliest.map_or(now, |e| e.max(now)),
            superseded: false,
            model: None,
            replaced_by: None,
        }
    }
}
