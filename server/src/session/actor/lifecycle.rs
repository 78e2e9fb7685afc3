//! How a session actor ends: renames and deletes, timers (the cancel grace, the idle
//! stop), failures, losing the session to another actor, and stopping.

use ractor::ActorRef;
use relay_protocol::{ErrorBody, ErrorCode, FinishReason, ServerFrame, Session};
use uuid::Uuid;

use super::*;
use crate::fanout::Outbound;
use crate::store::{SessionChange, StoreError};

impl SessionState {
    // ---- renaming and deleting ------------------------------------------------------------

    pub(super) async fn update(&mut self, user_id: Uuid, change: &SessionChange) -> Result<Session, SessionError> {
        self.check_owner(user_id)?;
        let changed = self.deps.store.update_session(self.fence, self.owner, change).await;
        let stored = self.fenced(changed)?.ok_or(SessionError::NotFound)?;
        // Only what changed: a title derived from the first message may still be on its way
        // to the store (queued), and this actor's copy already has it.
        if let Some(title) = &change.title {
            self.session.title = title.clone();
        }
        if let Some(prompt) = &change.system_prompt {
            self.session.system_prompt = prompt.clone();
        }
        if let Some(model) = &change.model {
            self.session.model = Some(model.clone());
        }
        self.session.updated_at = stored.updated_at;
        Ok(self.session.clone())
    }

    pub(super) async fn delete(&mut self, user_id: Uuid) -> Result<(), SessionError> {
        self.check_owner(user_id)?;
        let deleted = self.deps.store.soft_delete_session(self.fence, self.owner).await;
        if !self.fenced(deleted)? {
            return Err(SessionError::NotFound);
        }
        let gone = AppError::NotFound.to_body();
        self.end(Ending::Deleted, &gone).await;
        Ok(())
    }

    /// Takes no more sends: answers every queued send with `error`, then stores the
    /// running reply as it stands (its watchers get `done` `cancelled`).
    pub(super) async fn end(&mut self, ending: Ending, error: &ErrorBody) {
        self.ending = Some(ending);
        self.drop_queue(error);
        self.cancel_running().await;
    }

    /// Drops every queued send, telling each sender why: a REST or SSE request waiting for
    /// that reply ends with this error instead of waiting for nothing.
    pub(super) fn drop_queue(&mut self, error: &ErrorBody) {
        let session_id = self.session.id;
        for queued in self.queue.drain(..) {
            queued.origin.deliver(&Outbound::new(ServerFrame::Error {
                id: queued.request_id,
                session_id: Some(session_id),
                error: error.clone(),
            }));
        }
    }

    /// A write's result, noting a refusal as stale (this actor lost the session).
    fn fenced<T>(&mut self, result: Result<T, StoreError>) -> Result<T, SessionError> {
        if matches!(result, Err(StoreError::Fenced)) {
            self.lost = true;
        }
        Ok(result?)
    }

    // ---- timers, failure and stopping ------------------------------------------------------

    pub(super) fn is_idle(&self) -> bool {
        !self.watched() && self.current.is_none() && self.queue.is_empty()
    }

    /// Brings the timers in line with the state after every message: nobody watching a
    /// running reply arms the grace period (or cancels at once when it is zero); nothing
    /// going on arms the idle stop; anyone watching disarms both.
    pub(super) async fn reconcile(&mut self, myself: &ActorRef<SessionMsg>) {
        self.receivers.retain(|r| !r.is_closed());
        if let Some(cluster) = &self.deps.cluster {
            let expired = self.remote_watchers.expire(cluster.lease());
            if expired > 0 {
                tracing::info!(session_id = %self.session.id, expired, "forgot watchers on other nodes that no node confirms");
            }
            // Remote watchers are forgotten when unconfirmed, which takes a look now and
            // then even when nothing else happens here.
            if !self.remote_watchers.is_empty() && !self.check_armed {
                self.check_armed = true;
                myself.send_after(cluster.lease() / 2, || SessionMsg::CheckWatchers);
            }
        }
        if self.watched() {
            self.grace_armed = None;
            self.idle_armed = None;
            return;
        }
        let deps = self.deps.clone();
        let settings = &deps.settings;
        if self.current.is_some() || !self.queue.is_empty() {
            self.idle_armed = None;
            if settings.cancel_grace.is_zero() {
                self.abandon().await;
            } else if self.grace_armed.is_none() {
                self.arming += 1;
                let arming = self.arming;
                self.grace_armed = Some(arming);
                myself.send_after(settings.cancel_grace, move || SessionMsg::GraceExpired { arming });
                return;
            } else {
                return;
            }
        }
        if self.is_idle() && self.idle_armed.is_none() {
            self.arming += 1;
            let arming = self.arming;
            self.idle_armed = Some(arming);
            myself.send_after(settings.idle_timeout, move || SessionMsg::IdleExpired { arming });
        }
    }

    /// The actor panicked: whatever state the panic left, store the running reply as
    /// `error`, tell every watcher, and stop so the next use starts a fresh actor.
    pub(super) async fn fail(&mut self, myself: &ActorRef<SessionMsg>, why: &str) {
        tracing::error!(session_id = %self.session.id, panic = why, "session actor failed; restarting it on next use");
        let error = ErrorBody::new(ErrorCode::Internal, "the session failed; subscribe again to continue");
        self.ending = Some(Ending::Stopping);
        self.drop_queue(&error);
        if self.current.is_some() {
            self.finish_running(FinishReason::Error, Some(error.clone())).await;
        }
        self.send_watchers_away(error);
        self.stop(myself);
    }

    /// This actor no longer holds its session (its lease lapsed, or its writes were refused
    /// as stale): another actor may be running it now. Nothing more is written or emitted:
    /// the running reply's model request is dropped (the new owner finds its checkpoint
    /// and marks it `error`), queued senders and every watcher are told to try again, and
    /// the actor stops.
    pub(super) fn lose(&mut self, myself: &ActorRef<SessionMsg>) {
        tracing::warn!(session_id = %self.session.id, epoch = self.fence.epoch, "this node no longer holds the session; stopping its actor");
        self.lost = true;
        if let Some(running) = self.current.take() {
            running.task.abort();
            self.deps.metrics.generations_active.dec();
        }
        for queued in &mut self.queue {
            if let Some(prepared) = queued.prepared.take() {
                prepared.task.abort();
            }
        }
        self.drop_queue(&moved());
        self.send_watchers_away(moved());
        self.stop(myself);
    }

    /// What this actor holds may differ from what is stored (a write was not confirmed in
    /// time): every watcher is told to subscribe again, and the actor stops, so the next
    /// use starts a fresh one that loads the session as stored.
    pub(super) fn reload(&mut self, myself: &ActorRef<SessionMsg>) {
        tracing::warn!(session_id = %self.session.id, "reloading the session from the database");
        self.send_watchers_away(reloading());
        self.stop(myself);
    }

    pub(super) fn stop(&mut self, myself: &ActorRef<SessionMsg>) {
        let ending = *self.ending.get_or_insert(Ending::Stopping);
        // Watchers on other nodes keep their connections: tell them to subscribe again
        // (to wherever the session runs next).
        if ending == Ending::Stopping
            && !self.remote_watchers.is_empty()
            && let Some(cluster) = &self.deps.cluster
        {
            let out = Outbound::new(ServerFrame::Error { id: None, session_id: Some(self.session.id), error: moved() });
            cluster.publish_event(self.session.id, &out);
        }
        if let Some(registry) = self.registry.upgrade() {
            registry.stopping(self.session.id, self.owner, myself);
        }
        myself.stop(None);
    }
}
