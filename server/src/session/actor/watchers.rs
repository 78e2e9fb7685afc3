//! Who watches a session: subscribing, snapshots, and every event numbered and delivered
//! once to every receiver (and published once for other nodes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_protocol::{ErrorBody, ErrorCode, Generating, ServerFrame};
use uuid::Uuid;

use super::*;
use crate::fanout::{Delivery, Outbound, Receiver, ReceiverId, ReceiverKind};

/// Receivers on other nodes that watch the session, each with when its node last said so.
/// A node that relays the session confirms its watchers every heartbeat; one not confirmed
/// for a lease is forgotten, so a watcher whose unsubscribe was lost, or overtaken by its
/// own send, cannot keep a reply billing or the actor alive.
#[derive(Default)]
pub(super) struct RemoteWatchers {
    confirmed: HashMap<(Arc<str>, ReceiverId), Instant>,
}

impl RemoteWatchers {
    pub(super) fn add(&mut self, instance: &Arc<str>, receiver: ReceiverId) {
        self.confirmed.insert((instance.clone(), receiver), Instant::now());
    }

    pub(super) fn remove(&mut self, instance: &Arc<str>, receiver: ReceiverId) {
        self.confirmed.remove(&(instance.clone(), receiver));
    }

    pub(super) fn contains(&self, instance: &Arc<str>, receiver: ReceiverId) -> bool {
        self.confirmed.contains_key(&(instance.clone(), receiver))
    }

    /// `instance` says these of its receivers watch, and no others: the others are
    /// forgotten, these confirmed (one not known here is not added: it watches only once
    /// its own subscribe or send arrives, with its snapshot).
    pub(super) fn confirm(&mut self, instance: Arc<str>, receivers: Vec<ReceiverId>) {
        let now = Instant::now();
        self.confirmed.retain(|(i, r), at| {
            if *i != instance {
                return true;
            }
            let listed = receivers.contains(r);
            if listed {
                *at = now;
            }
            listed
        });
    }

    pub(super) fn forget_instance(&mut self, instance: &Arc<str>) {
        self.confirmed.retain(|(i, _), _| i != instance);
    }

    /// Forgets the watchers not confirmed within `horizon`; returns how many.
    pub(super) fn expire(&mut self, horizon: Duration) -> usize {
        let before = self.confirmed.len();
        self.confirmed.retain(|_, at| at.elapsed() < horizon);
        before - self.confirmed.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.confirmed.is_empty()
    }
}

impl SessionState {
    // ---- watchers ------------------------------------------------------------------------

    pub(super) fn subscribe(
        &mut self,
        user_id: Uuid,
        receiver: Receiver,
        request_id: Option<String>,
    ) -> Result<(), SessionError> {
        self.check_owner(user_id)?;
        if let Some(instance) = receiver.remote_instance() {
            if receiver.kind == ReceiverKind::Connection {
                receiver.deliver(&Outbound::new(self.snapshot(request_id)));
            }
            self.remote_watchers.add(instance, receiver.id);
            return Ok(());
        }
        self.receivers.retain(|r| r.id != receiver.id);
        if receiver.kind == ReceiverKind::Connection {
            let snapshot = Outbound::new(self.snapshot(request_id));
            if receiver.deliver(&snapshot) != Delivery::Queued {
                return Ok(());
            }
        }
        self.receivers.push(receiver);
        Ok(())
    }

    /// The `subscribed` frame: the most recent messages (at most [`SNAPSHOT_MESSAGES`], and
    /// only as many as fit in `max_snapshot_bytes`, so a snapshot always fits a reading
    /// client's queue; older ones are a REST call away), and the reply in progress.
    pub(super) fn snapshot(&self, request_id: Option<String>) -> ServerFrame {
        let generating =
            self.current.as_ref().map(|r| Generating { message_id: r.reply_id, content: r.content.clone() });
        let mut budget =
            self.deps.settings.max_snapshot_bytes.saturating_sub(generating.as_ref().map_or(0, |g| g.content.len()));
        let mut keep = 0;
        for message in self.history.iter().rev().take(SNAPSHOT_MESSAGES) {
            let size = message.content.len() + MESSAGE_OVERHEAD_BYTES;
            if size > budget {
                break;
            }
            budget -= size;
            keep += 1;
        }
        ServerFrame::Subscribed {
            id: request_id,
            session: self.session.clone(),
            messages: self.history.iter().skip(self.history.len() - keep).cloned().collect(),
            seq: self.seq,
            generating,
            has_older: keep < self.history.len() || !self.history_complete,
        }
    }

    pub(super) fn unsubscribe(&mut self, receiver: ReceiverId, notify: Option<(Receiver, Option<String>)>) {
        self.receivers.retain(|r| r.id != receiver);
        // Answered here, behind every event already queued, even if the receiver had been
        // dropped for another reason meanwhile.
        if let Some((receiver, id)) = notify {
            receiver.deliver(&Outbound::new(ServerFrame::Unsubscribed { id, session_id: self.session.id }));
        }
    }

    /// Numbers a session event, encodes it once, and queues it for every receiver (and
    /// publishes it once for the nodes that relay it to theirs).
    /// An actor that finds it no longer holds its session emits nothing (and stops after
    /// the message at hand): another node may be running the session now.
    pub(super) fn emit(&mut self, make: impl FnOnce(u64) -> ServerFrame) {
        if self.lost || !self.holds_session() {
            self.lost = true;
            return;
        }
        self.seq += 1;
        let out = Outbound::new(make(self.seq));
        let session_id = self.session.id;
        if !self.remote_watchers.is_empty()
            && let Some(cluster) = &self.deps.cluster
        {
            cluster.publish_event(session_id, &out);
        }
        self.receivers.retain(|r| match r.deliver(&out) {
            Delivery::Queued => true,
            Delivery::Gone => false,
            Delivery::Overflowed => {
                tracing::warn!(%session_id, receiver = r.id, "receiver too slow; dropping it");
                false
            }
        });
    }

    /// Subscribes the sender if it is not watching yet (`send` subscribes its connection).
    pub(super) fn watch(&mut self, origin: &Receiver) -> Result<(), SessionError> {
        let watching = match origin.remote_instance() {
            Some(instance) => self.remote_watchers.contains(instance, origin.id),
            None => self.receivers.iter().any(|r| r.id == origin.id),
        };
        if watching {
            return Ok(());
        }
        self.subscribe(self.owner, origin.clone(), None)
    }

    /// Whether this actor still holds its session: alone, always; in a cluster, while
    /// its lease is one this node can vouch for (see `Cluster::holds`).
    pub(super) fn holds_session(&self) -> bool {
        match (&self.deps.cluster, self.lease) {
            (Some(cluster), Some(token)) => cluster.holds(self.session.id, token),
            _ => true,
        }
    }

    /// Whether anyone watches, here or on another node.
    pub(super) fn watched(&self) -> bool {
        !self.receivers.is_empty() || !self.remote_watchers.is_empty()
    }

    /// Tells every watcher here that this actor's live state is gone (`error` without a
    /// request id): they subscribe again, to wherever the session runs next.
    pub(super) fn send_watchers_away(&mut self, error: ErrorBody) {
        let out = Outbound::new(ServerFrame::Error { id: None, session_id: Some(self.session.id), error });
        for receiver in self.receivers.drain(..) {
            receiver.deliver(&out);
        }
    }
}

/// What watchers hear when this node stops running a session that goes on elsewhere.
pub(super) fn moved() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "the session moved; subscribe again to continue")
}

/// What watchers hear when this actor stops so that a fresh one loads the session again.
pub(super) fn reloading() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "the session is reloading; subscribe again to continue")
}
