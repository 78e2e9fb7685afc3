//! Taking a send, an edit or a regenerate in: checks, limits, storing the user message,
//! queueing its reply, and answering a repeated request (same idempotency key) as the
//! first one was answered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use ractor::ActorRef;
use relay_protocol::{Message, MessageStatus, Role, ServerFrame, UserRole};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::*;
use crate::auth::AuthUser;
use crate::cluster::UserLock;
use crate::fanout::{Outbound, Receiver, ReceiverKind};
use crate::limits::{self, Rate, RateDecision};
use crate::session::{Replay, SendAccepted};
use crate::store::{Saved, SendKey, StoreError, StoredSend};

/// How many idempotency keys an actor remembers (older ones are looked up in the store).
const KEYS_REMEMBERED: usize = 256;

/// What letting a send through took from the user's limits.
pub(super) struct Admission {
    /// The daily counter a unit was taken from, to give back if the send fails after all.
    quota_key: Option<String>,
    /// The send rate after this send.
    rate: Option<RateDecision>,
    /// Held from the storage-cap check until the message is stored with its count, so
    /// concurrent sends of one user to many sessions cannot all pass one check.
    storage: Option<StorageLock>,
}

/// The user's lock for the storage cap: this node's, and the cluster's when there is one.
struct StorageLock {
    _local: OwnedMutexGuard<()>,
    cluster: Option<UserLock>,
}

impl Admission {
    /// Gives back what the send took (it failed after all).
    async fn give_back(self, deps: &SessionDeps) {
        if let Some(key) = &self.quota_key {
            deps.limiter.give_back_quota(key).await;
        }
        self.release().await;
    }

    /// Lets the user's next send check the storage cap.
    async fn release(self) {
        if let Some(StorageLock { cluster: Some(lock), .. }) = self.storage {
            lock.release().await;
        }
    }
}

/// Idempotency keys of requests this actor took (the last few), and keys whose first
/// request timed out waiting for its write (which may still land).
#[derive(Default)]
pub(super) struct SentKeys {
    sent: HashMap<String, StoredSend>,
    order: VecDeque<String>,
    pending: HashSet<String>,
}

impl SentKeys {
    fn get(&self, key: &str) -> Option<&StoredSend> {
        self.sent.get(key)
    }

    fn remember(&mut self, key: String, stored: StoredSend) {
        self.pending.remove(&key);
        if self.sent.insert(key.clone(), stored).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > KEYS_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.sent.remove(&old);
            }
        }
    }

    fn is_pending(&self, key: &str) -> bool {
        self.pending.contains(key)
    }

    fn mark_pending(&mut self, key: String) {
        if self.pending.len() < KEYS_REMEMBERED {
            self.pending.insert(key);
        }
    }
}

impl SessionState {
    // ---- sending: each step of a send on its own -----------------------------------------

    pub(super) async fn send(
        &mut self,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&request.requester.user)?;
        if let Some(stored) = self.earlier_send(&request.requester).await? {
            return self.replay(&request.requester, stored).await;
        }
        validate_content(&request.content, self.deps.settings.max_message_length)?;
        if self.queue.len() >= self.deps.settings.max_queued_sends {
            return Err(SessionError::Busy);
        }
        let admission = self.admit(&request.requester.user).await?;
        self.accept(admission, request, myself).await
    }

    /// Replaces the last reply with a new one (its user message is answered again), or
    /// answers the last user message if it has no reply; only while nothing is generating
    /// or waiting.
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
        let admission = self.admit(&requester.user).await?;
        let reply_id = Uuid::new_v4();
        let key = requester.key.as_ref().map(|key| SendKey { user_id: requester.user.id, key: key.clone(), reply_id });
        if let Err(e) = self.supersede(&replaced, key.as_ref().map(|k| (k, answering.id))).await {
            admission.give_back(&self.deps).await;
            return Err(e);
        }
        let rate = admission.rate;
        admission.release().await;
        if let Some(key) = key {
            self.keys.remember(key.key, StoredSend { session_id: self.session.id, message_id: answering.id, reply_id });
        }
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

    /// Replaces the last user message (and its reply) with new text, and answers it; only
    /// while nothing is generating or waiting.
    pub(super) async fn edit(
        &mut self,
        replaced_id: Uuid,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        self.check_can_take(&request.requester.user)?;
        if let Some(stored) = self.earlier_send(&request.requester).await? {
            return self.replay(&request.requester, stored).await;
        }
        validate_content(&request.content, self.deps.settings.max_message_length)?;
        self.check_settled()?;
        let live: Vec<&Message> = self.history.iter().filter(|m| !m.superseded).collect();
        let Some(at) = live.iter().rposition(|m| m.role == Role::User) else {
            return Err(SessionError::NotFound);
        };
        if live[at].id != replaced_id {
            return Err(if live.iter().any(|m| m.id == replaced_id) {
                SessionError::Invalid("only the last message of a session can be edited".into())
            } else {
                SessionError::NotFound
            });
        }
        let replaced: Vec<Uuid> = live[at..].iter().map(|m| m.id).collect();
        let admission = self.admit(&request.requester.user).await?;
        if let Err(e) = self.supersede(&replaced, None).await {
            admission.give_back(&self.deps).await;
            return Err(e);
        }
        self.accept(admission, request, myself).await
    }

    /// Refuses new work from someone other than the owner, or once the actor is ending.
    pub(super) fn check_can_take(&self, user: &AuthUser) -> Result<(), SessionError> {
        self.check_owner(user.id)?;
        if self.ending.is_some() || self.closing.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        Ok(())
    }

    /// Regenerating or editing needs a settled conversation: nothing generating or waiting.
    pub(super) fn check_settled(&self) -> Result<(), SessionError> {
        if self.current.is_some() || !self.queue.is_empty() { Err(SessionError::Busy) } else { Ok(()) }
    }

    /// Marks messages superseded, in the store, in memory and for every watcher (with a
    /// regenerate's idempotency key, stored in the same transaction).
    pub(super) async fn supersede(&mut self, ids: &[Uuid], key: Option<(&SendKey, Uuid)>) -> Result<(), SessionError> {
        if ids.is_empty() && key.is_none() {
            return Ok(());
        }
        if let Err(e) = self.deps.store.mark_superseded(self.fence, ids, key).await {
            if matches!(e, StoreError::Fenced) {
                self.lost = true;
            }
            return Err(e.into());
        }
        if ids.is_empty() {
            return Ok(());
        }
        for message in self.history.iter_mut().filter(|m| ids.contains(&m.id)) {
            message.superseded = true;
        }
        let (session_id, message_ids) = (self.session.id, ids.to_vec());
        self.emit(|seq| ServerFrame::Superseded { session_id, seq, message_ids });
        Ok(())
    }

    /// Takes an admitted user message in: stores it, tells everyone, queues its reply.
    /// When the reply is next in line, the model is asked while the message is being
    /// stored, so the database's latency is not added to the time to first token; the
    /// `ack` still waits for the message to be stored, and a failed write cancels the
    /// request. (Not for a keyed send whose first attempt may still be stored: that one
    /// asks the model only once its write is known not to repeat the first.)
    pub(super) async fn accept(
        &mut self,
        admission: Admission,
        request: SendRequest,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<SendAccepted, SessionError> {
        let SendRequest { requester, message_id, content } = request;
        self.deps.metrics.session_depth.observe(self.history.len() as f64);
        let message = self.user_message(message_id, content);
        let reply_id = Uuid::new_v4();
        let key = requester.key.as_ref().map(|key| SendKey { user_id: requester.user.id, key: key.clone(), reply_id });
        let maybe_repeat = requester.key.as_deref().is_some_and(|k| self.keys.is_pending(k));
        let runs_next = self.current.is_none() && self.queue.is_empty() && !maybe_repeat;
        let prepared = runs_next.then(|| self.spawn_generation(&message, myself));
        // Queued before the message on the session's writer, so the message's count is
        // committed with it (the storage cap's next check sees it).
        self.touch(message.created_at, 1).await;
        let saved = self.deps.writes.save(self.fence, &message, key).await;
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                if let Some(prepared) = prepared {
                    prepared.task.abort();
                }
                admission.give_back(&self.deps).await;
                match &e {
                    StoreError::Timeout => {
                        if let Some(key) = requester.key {
                            self.keys.mark_pending(key);
                        }
                    }
                    StoreError::Fenced => self.lost = true,
                    _ => {}
                }
                return Err(e.into());
            }
        };
        if let Saved::Repeat { session_id, message_id, reply_id } = saved {
            if let Some(prepared) = prepared {
                prepared.task.abort();
            }
            admission.give_back(&self.deps).await;
            // The message was not stored: its count comes back off.
            self.touch(message.created_at, -1).await;
            let stored = StoredSend { session_id, message_id, reply_id };
            if let Some(key) = &requester.key {
                self.keys.remember(key.clone(), stored.clone());
            }
            return self.replay(&requester, stored).await;
        }
        let rate = admission.rate;
        admission.release().await;
        if let Some(key) = &requester.key {
            self.keys
                .remember(key.clone(), StoredSend { session_id: self.session.id, message_id: message.id, reply_id });
        }
        // Subscribed before the message is published, so the sender's snapshot ends just
        // before it and the `message` event that follows is the snapshot's `seq + 1`.
        self.watch(&requester.origin)?;
        self.deps.metrics.user_messages.inc();
        self.name_after_first_message(&message).await;
        self.count_usage(&requester.user).await;
        self.ack(&requester.origin, requester.request_id.clone(), &message);
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

    /// What an earlier request with the same idempotency key stored, if any (this actor
    /// remembers its recent keys; older ones, and those of earlier actors or other nodes,
    /// are in the store).
    async fn earlier_send(&mut self, requester: &Requester) -> Result<Option<StoredSend>, SessionError> {
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
    /// state, for REST), starting nothing and storing nothing.
    async fn replay(&mut self, requester: &Requester, stored: StoredSend) -> Result<SendAccepted, SessionError> {
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
        let replay = self.reply_state(stored.reply_id).await?;
        self.deps.metrics.repeated_requests.inc();
        self.watch(&requester.origin)?;
        self.ack(&requester.origin, requester.request_id.clone(), &user_message);
        Ok(SendAccepted { user_message, reply_id: stored.reply_id, rate: None, replay: Some(replay) })
    }

    /// Where a reply stands: running or waiting here, stored, or never generated.
    async fn reply_state(&self, reply_id: Uuid) -> Result<Replay, SessionError> {
        if let Some(running) = self.current.as_ref().filter(|r| r.reply_id == reply_id) {
            return Ok(Replay::Running { text: running.content.clone() });
        }
        if self.queue.iter().any(|q| q.reply_id == reply_id) {
            return Ok(Replay::Running { text: String::new() });
        }
        if let Some(reply) = self.history.iter().find(|m| m.id == reply_id) {
            return Ok(Replay::Finished(reply.clone()));
        }
        Ok(match self.deps.store.get_message(self.session.id, reply_id).await? {
            Some(reply) if reply.status != MessageStatus::Generating => Replay::Finished(reply),
            _ => Replay::Missing,
        })
    }

    /// Tells the sending connection its message was taken.
    pub(super) fn ack(&self, origin: &Receiver, request_id: Option<String>, message: &Message) {
        if origin.kind == ReceiverKind::Connection {
            origin.deliver(&Outbound::new(ServerFrame::Ack { id: request_id, message: message.clone() }));
        }
    }

    /// Lets a send through the user's storage cap, daily quota and send rate (admins have
    /// none of them), or refuses it before anything is stored or billed. The quota is taken
    /// first and given back if the rate refuses, so a refused send costs nothing. The
    /// storage cap is checked under the user's lock, held until the message is stored.
    pub(super) async fn admit(&self, user: &AuthUser) -> Result<Admission, SessionError> {
        let mut admission = Admission { quota_key: None, rate: None, storage: None };
        if user.role == UserRole::Admin {
            return Ok(admission);
        }
        let (settings, limiter) = (&self.deps.settings, &self.deps.limiter);
        if let Some(max) = settings.max_stored_messages {
            let storage = self.storage_lock(user.id).await;
            let stored = self.deps.store.stored_messages(user.id).await;
            let stored = match stored {
                Ok(stored) => stored,
                Err(e) => {
                    Admission { quota_key: None, rate: None, storage: Some(storage) }.release().await;
                    return Err(e.into());
                }
            };
            admission.storage = Some(storage);
            if stored >= max {
                admission.release().await;
                self.deps.metrics.limit_refused("stored_messages");
                return Err(SessionError::StorageFull(max));
            }
        }
        if let Some(limit) = settings.daily_quota {
            let day = Utc::now().date_naive();
            let key = limits::quota_key(user.id, day);
            let taken = limiter.take_quota(&key, limit, self.deps.store.messages_on(user.id, day)).await;
            let (taken, used) = match taken {
                Ok(taken) => taken,
                Err(e) => {
                    admission.release().await;
                    return Err(e.into());
                }
            };
            if !taken {
                admission.release().await;
                self.deps.metrics.limit_refused("daily_quota");
                let wait = limits::until_midnight();
                return Err(SessionError::QuotaExceeded(RateDecision {
                    allowed: false,
                    limit,
                    remaining: limit.saturating_sub(used),
                    retry_after: wait,
                    reset_after: wait,
                }));
            }
            admission.quota_key = Some(key);
        }
        if let Some(per_minute) = settings.rate_per_minute {
            let rate = Rate { limit: per_minute, period: Duration::from_secs(60) };
            let decision = limiter.rate(&limits::send_rate_key(user.id), rate).await;
            if !decision.allowed {
                admission.give_back(&self.deps).await;
                self.deps.metrics.limit_refused("send_rate");
                return Err(SessionError::RateLimited(decision));
            }
            admission.rate = Some(decision);
        }
        Ok(admission)
    }

    /// The user's storage-cap lock: this node's, then (in a cluster) the cluster's; without
    /// Redis answering, the node's alone (logged).
    async fn storage_lock(&self, user: Uuid) -> StorageLock {
        let local = self.deps.user_locks.lock_owned(user).await;
        let cluster = match &self.deps.cluster {
            Some(cluster) => match cluster.lock_user(user, "stored").await {
                Ok(lock) => Some(lock),
                Err(e) => {
                    tracing::warn!(user_id = %user, error = %e, "no cluster lock for the storage cap; checking on this node only");
                    None
                }
            },
            None => None,
        };
        StorageLock { _local: local, cluster }
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
        }
    }
}
