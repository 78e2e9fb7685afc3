//! Relays: the sessions this node watches for its receivers while another node owns them.
//!
//! The owner publishes each event once on the session's channel; the relay hands those
//! same bytes to every receiver here that watches the session. A connection starts getting
//! events when its snapshot arrives (the snapshot covers everything before it, and the
//! events after it arrive after it), so its `seq` has no gap and no repeat. The relay checks
//! that too: it follows the `seq` of the events it passes on, and a number skipped (a
//! message lost between the nodes), or a snapshot that does not follow on from the events
//! already passed on, ends the relay: its watchers are told to subscribe again. Messages
//! from any instance but the session's owner (an owner that lost the session) are dropped.
//! The relay also follows whether a reply is running, so that when the owner dies its
//! watchers here still get the `done` `error` that ends the reply, numbered right after
//! the last event they saw.

use std::sync::Arc;

use dashmap::DashMap;
use relay_protocol::{ErrorBody, ErrorCode, FinishReason, ServerFrame};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::transport::SubscriberCommand;
use super::{Cluster, ClusterError};
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
    /// The `seq` of the last event passed on, once a watcher is active.
    last_seq: Option<u64>,
}

struct Watcher {
    receiver: Receiver,
    /// Whether it gets events (a connection after its snapshot).
    active: bool,
}

/// What a receiver's snapshot from another node does to its relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The receiver gets the session's events from now on.
    Active,
    /// Watchers already active missed events: the relay ends, its watchers are told.
    Gap,
    /// The session is not relayed here from the snapshot's sender: the snapshot is stale.
    Stale,
}

impl Relays {
    /// Adds a receiver to a session's relay (the owner as the lease named it); returns
    /// whether it was not there yet. A relay whose owner changed starts afresh: its old
    /// watchers are told to subscribe again (to the new owner).
    pub fn attach(&self, session_id: Uuid, owner: &Arc<str>, receiver: &Receiver) -> bool {
        let mut relay = self.sessions.entry(session_id).or_insert_with(|| Relay {
            owner: owner.clone(),
            watchers: Vec::new(),
            generating: None,
            last_seq: None,
        });
        if relay.owner != *owner {
            fail(session_id, &mut relay, "the session moved to another server");
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

    /// The receiver's snapshot (numbered `seq`, from `from`) arrived: events from now on are
    /// its. [`Activation::Gap`] when the snapshot shows that watchers already active
    /// missed events (the relay then ends); [`Activation::Stale`] when the session is not
    /// relayed from `from` (a late snapshot of an earlier owner: not to be delivered).
    pub fn activate(&self, session_id: Uuid, receiver: ReceiverId, from: &str, seq: u64) -> Activation {
        let Some(mut relay) = self.sessions.get_mut(&session_id) else { return Activation::Stale };
        if *relay.owner != *from {
            return Activation::Stale;
        }
        let others_active = relay.watchers.iter().any(|w| w.active && w.receiver.kind == ReceiverKind::Connection);
        if others_active && relay.last_seq.is_some_and(|last| last != seq) {
            fail(session_id, &mut relay, "events of this session were lost between servers");
            return Activation::Gap;
        }
        relay.last_seq = Some(seq);
        if let Some(watcher) = relay.watchers.iter_mut().find(|w| w.receiver.id == receiver) {
            watcher.active = true;
        }
        Activation::Active
    }

    /// An event published on the session's channel by `from`: from the owner, the same
    /// bytes go to every active watcher. An `error` without a request id means the owner
    /// stopped running the session; its watchers subscribe again (to wherever it runs
    /// next), so the relay lets them go. Returns false when the event shows a gap (the
    /// relay then ends).
    pub fn on_event(&self, session_id: Uuid, from: &str, out: Outbound) -> bool {
        let Some(mut relay) = self.sessions.get_mut(&session_id) else { return true };
        if *relay.owner != *from {
            return true;
        }
        if let Some(seq) = out.frame.seq() {
            if relay.last_seq.is_some_and(|last| seq != last + 1) {
                fail(session_id, &mut relay, "events of this session were lost between servers");
                return false;
            }
            if relay.last_seq.is_some() {
                relay.last_seq = Some(seq);
            }
        }
        match &*out.frame {
            ServerFrame::GenerationStarted { message_id, .. } => relay.generating = Some(*message_id),
            ServerFrame::Done { .. } => relay.generating = None,
            _ => {}
        }
        relay.watchers.retain(|w| !w.active || w.receiver.deliver(&out) == Delivery::Queued);
        if matches!(&*out.frame, ServerFrame::Error { id: None, session_id: Some(_), .. }) {
            relay.watchers.clear();
            relay.generating = None;
            relay.last_seq = None;
        }
        true
    }

    /// Ends the relay of a session if `from` owns it (its events were lost).
    pub fn fail_from(&self, session_id: Uuid, from: &str, why: &str) {
        if let Some(mut relay) = self.sessions.get_mut(&session_id)
            && *relay.owner == *from
        {
            fail(session_id, &mut relay, why);
        }
    }

    /// Ends the relays of owners that are gone (or whose messages were lost): a running
    /// reply ends with `done` `error` (numbered after the last event), then every watcher
    /// is told to subscribe again.
    pub fn fail_owners(&self, gone: impl Fn(&str) -> bool, why: &str) {
        for mut relay in self.sessions.iter_mut() {
            if relay.watchers.is_empty() || !gone(&relay.owner) {
                continue;
            }
            let session_id = *relay.key();
            fail(session_id, &mut relay, why);
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

    /// Forgets the sessions nobody here watches any more; returns them.
    pub fn forget_empty(&self) -> Vec<Uuid> {
        let empty: Vec<Uuid> = self.sessions.iter().filter(|r| r.watchers.is_empty()).map(|r| *r.key()).collect();
        empty
            .into_iter()
            .filter(|s| self.sessions.remove_if(s, |_, relay| relay.watchers.is_empty()).is_some())
            .collect()
    }

    /// Whether a session is relayed here.
    pub fn contains(&self, session_id: Uuid) -> bool {
        self.sessions.contains_key(&session_id)
    }

    /// Forgets every relay (their watchers were told to subscribe again).
    pub fn clear(&self) {
        self.sessions.clear();
    }

    /// How many sessions have a relay entry, watched or not (for leak checks).
    pub fn entries(&self) -> usize {
        self.sessions.len()
    }
}

/// Ends a relay: a running reply ends with `done` `error` for the active watchers
/// (numbered after the last event they saw), then every watcher is told to subscribe again.
fn fail(session_id: Uuid, relay: &mut Relay, why: &str) {
    let error = ErrorBody::new(ErrorCode::Internal, format!("{why}; subscribe again to continue"));
    let done = match (relay.generating.take(), relay.last_seq) {
        (Some(message_id), Some(last)) => Some(Outbound::new(ServerFrame::Done {
            session_id,
            seq: last + 1,
            message_id,
            finish_reason: FinishReason::Error,
            usage: None,
            error: Some(error.clone()),
        })),
        _ => None,
    };
    let resubscribe = Outbound::new(ServerFrame::Error { id: None, session_id: Some(session_id), error });
    tracing::warn!(%session_id, owner = %relay.owner, watchers = relay.watchers.len(), why, "ending a relayed session");
    for watcher in relay.watchers.drain(..) {
        if let Some(done) = &done
            && watcher.active
        {
            watcher.receiver.deliver(done);
        }
        watcher.receiver.deliver(&resubscribe);
    }
    relay.last_seq = None;
}

impl Cluster {
    // ---- relaying ------------------------------------------------------------------------

    /// Makes `receiver` watch a session owned by `owner` from here: the session's channel
    /// is subscribed (confirmed before this returns, so no event published after it is
    /// missed) and the receiver is added to the session's relay. A connection gets events
    /// once its snapshot arrives; a request at once. Returns whether the receiver is new
    /// there (so a refused request can take it out again). A subscription Redis does not
    /// confirm within a lease fails the attach (and a fresh receiver is taken out again).
    pub async fn attach(&self, session_id: Uuid, owner: &Arc<str>, receiver: &Receiver) -> Result<bool, ClusterError> {
        self.direct.insert(receiver.id, receiver.clone());
        let fresh = self.relays.attach(session_id, owner, receiver);
        let (tx, rx) = oneshot::channel();
        let subscribed = match self.subscriber.send(SubscriberCommand::Watch(session_id, tx)) {
            Err(_) => Err(ClusterError::Disconnected),
            Ok(()) => match tokio::time::timeout(self.lease, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ClusterError::Disconnected),
                Err(_) => Err(ClusterError::Timeout),
            },
        };
        if subscribed.is_err() && fresh {
            self.relays.detach(session_id, receiver.id);
        }
        subscribed.map(|()| fresh)
    }

    /// Takes a receiver out of a session's relay; returns the owner it was relayed from.
    pub fn detach(&self, session_id: Uuid, receiver: ReceiverId) -> Option<Arc<str>> {
        self.relays.detach(session_id, receiver)
    }
}
