//! Relays: the sessions this node watches for its receivers while another node owns them.
//!
//! The owner publishes each event once on the session's channel; the relay hands those
//! same bytes to every receiver here that watches the session. A connection starts getting
//! events when its snapshot arrives (the snapshot covers everything before it, and the
//! events after it arrive after it), so its `seq` has no gap and no repeat. The relay also
//! follows whether a reply is running, so that when the owner dies its watchers here still
//! get the `done` `error` that ends the reply, numbered right after the last event they saw.

use std::sync::Arc;

use dashmap::DashMap;
use relay_protocol::{ErrorBody, ErrorCode, FinishReason, ServerFrame};
use uuid::Uuid;

use crate::fanout::{Delivery, Outbound, Receiver, ReceiverId, ReceiverKind};

/// Sessions watched from here, owned elsewhere.
#[derive(Default)]
pub struct Relays {
    sessions: DashMap<Uuid, Relay>,
}

struct Relay {
    owner: Arc<str>,
    watchers: Vec<Watcher>,
    /// The reply running at the owner, as far as its events tell.
    generating: Option<Uuid>,
    last_seq: u64,
}

struct Watcher {
    receiver: Receiver,
    /// Whether it gets events (a connection after its snapshot).
    active: bool,
}

impl Relays {
    /// Adds a receiver to a session's relay (the owner as the lease named it); returns
    /// whether it was not there yet.
    pub fn attach(&self, session_id: Uuid, owner: &Arc<str>, receiver: &Receiver) -> bool {
        let mut relay = self.sessions.entry(session_id).or_insert_with(|| Relay {
            owner: owner.clone(),
            watchers: Vec::new(),
            generating: None,
            last_seq: 0,
        });
        if relay.owner != *owner {
            relay.owner = owner.clone();
            relay.generating = None;
        }
        if relay.watchers.iter().any(|w| w.receiver.id == receiver.id) {
            return false;
        }
        let active = receiver.kind == ReceiverKind::Request;
        relay.watchers.push(Watcher { receiver: receiver.clone(), active });
        true
    }

    /// Takes a receiver out; returns the owner the session was relayed from.
    pub fn detach(&self, session_id: Uuid, receiver: ReceiverId) -> Option<Arc<str>> {
        let mut relay = self.sessions.get_mut(&session_id)?;
        let before = relay.watchers.len();
        relay.watchers.retain(|w| w.receiver.id != receiver);
        (relay.watchers.len() != before).then(|| relay.owner.clone())
    }

    /// The receiver's snapshot arrived: events from now on are its.
    pub fn activate(&self, session_id: Uuid, receiver: ReceiverId) {
        if let Some(mut relay) = self.sessions.get_mut(&session_id)
            && let Some(watcher) = relay.watchers.iter_mut().find(|w| w.receiver.id == receiver)
        {
            watcher.active = true;
        }
    }

    /// An event the owner published: the same bytes go to every active watcher. An
    /// `error` without a request id means the owner stopped running the session; its
    /// watchers subscribe again (to wherever it runs next), so the relay lets them go.
    pub fn on_event(&self, session_id: Uuid, out: Outbound) {
        let Some(mut relay) = self.sessions.get_mut(&session_id) else { return };
        match &*out.frame {
            ServerFrame::GenerationStarted { message_id, .. } => relay.generating = Some(*message_id),
            ServerFrame::Done { .. } => relay.generating = None,
            _ => {}
        }
        if let Some(seq) = out.frame.seq() {
            relay.last_seq = seq;
        }
        relay.watchers.retain(|w| !w.active || w.receiver.deliver(&out) == Delivery::Queued);
        if matches!(&*out.frame, ServerFrame::Error { id: None, session_id: Some(_), .. }) {
            relay.watchers.clear();
            relay.generating = None;
        }
    }

    /// Ends the relays of owners that are gone: a running reply ends with `done` `error`
    /// (numbered after the last event), then every watcher is told to subscribe again.
    pub fn fail_owners(&self, gone: impl Fn(&str) -> bool, why: &str) {
        for mut relay in self.sessions.iter_mut() {
            if relay.watchers.is_empty() || !gone(&relay.owner) {
                continue;
            }
            let session_id = *relay.key();
            let error = ErrorBody::new(ErrorCode::Internal, format!("{why}; subscribe again to continue"));
            let done = relay.generating.take().map(|message_id| {
                Outbound::new(ServerFrame::Done {
                    session_id,
                    seq: relay.last_seq + 1,
                    message_id,
                    finish_reason: FinishReason::Error,
                    usage: None,
                    error: Some(error.clone()),
                })
            });
            let resubscribe = Outbound::new(ServerFrame::Error { id: None, session_id: Some(session_id), error });
            tracing::warn!(%session_id, owner = %relay.owner, watchers = relay.watchers.len(), "session owner gone; failing its relay");
            for watcher in relay.watchers.drain(..) {
                if let Some(done) = &done
                    && watcher.active
                {
                    watcher.receiver.deliver(done);
                }
                watcher.receiver.deliver(&resubscribe);
            }
        }
    }

    /// Takes out the watchers whose connection or request is gone; returns them with
    /// their owners, to unsubscribe there.
    pub fn drop_closed(&self) -> Vec<(Uuid, Arc<str>, ReceiverId)> {
        let mut closed = Vec::new();
        for mut relay in self.sessions.iter_mut() {
            let (session_id, owner) = (*relay.key(), relay.owner.clone());
            relay.watchers.retain(|w| {
                let open = !w.receiver.is_closed();
                if !open {
                    closed.push((session_id, owner.clone(), w.receiver.id));
                }
                open
            });
        }
        closed
    }

    /// Every relayed session with its owner and the receivers here that watch it (an empty
    /// list for a session about to be forgotten, so its owner stops counting them).
    pub fn watch_lists(&self) -> Vec<(Uuid, Arc<str>, Vec<ReceiverId>)> {
        self.sessions
            .iter()
            .map(|r| (*r.key(), r.owner.clone(), r.watchers.iter().map(|w| w.receiver.id).collect()))
            .collect()
    }

    /// Forgets a session nobody here watches any more; returns whether it did.
    pub fn forget_if_empty(&self, session_id: Uuid) -> bool {
        self.sessions.remove_if(&session_id, |_, relay| relay.watchers.is_empty()).is_some()
            || !self.sessions.contains_key(&session_id)
    }

    /// How many sessions are relayed here with at least one watcher.
    pub fn len(&self) -> usize {
        self.sessions.iter().filter(|r| !r.watchers.is_empty()).count()
    }
}
