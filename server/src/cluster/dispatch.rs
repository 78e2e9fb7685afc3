//! What arrives from other nodes, handed to where it goes: a session's events to its
//! relay, requests to this node's handler (answered on the asker's channel), answers to
//! the calls waiting for them, snapshots and user events to receivers here. A message
//! that shows others were lost ends whatever depended on them.

use uuid::Uuid;

use super::Cluster;
use super::keys::*;
use super::relay::Activation;
use super::transport::{Envelope, unframe};
use crate::fanout::Outbound;

/// What an instance answers a request that was meant for an earlier instance of its node:
/// the registry's "not the owner" (ask the lease again).
fn not_owner() -> serde_json::Value {
    serde_json::json!({"Err": {"error": "not_owner"}})
}

impl Cluster {
    /// Hands a message read from `channel` to where it goes.
    pub(super) fn dispatch(&self, channel: &str, bytes: &[u8]) {
        let Some(framed) = unframe(bytes) else {
            tracing::warn!(channel, "unframed cluster message");
            return;
        };
        if let Some(session) = channel.strip_prefix(SESSION_CHANNEL_PREFIX) {
            let Ok(session_id) = session.parse::<Uuid>() else { return };
            if framed.lost {
                self.metrics.cluster_gaps.with_label_values(&["session"]).inc();
                self.relays.fail_from(session_id, framed.from, "events of this session were lost between servers");
                return;
            }
            match Outbound::decode(framed.payload) {
                Ok(out) => {
                    if !self.relays.on_event(session_id, framed.from, out) {
                        self.metrics.cluster_gaps.with_label_values(&["session"]).inc();
                    }
                }
                Err(e) => tracing::warn!(%session_id, error = %e, "undecodable session event from the cluster"),
            }
            return;
        }
        let users = channel == USERS_CHANNEL;
        if framed.from == &*self.instance {
            return;
        }
        if framed.lost || !self.numbering.lock().expect("numbering lock").heard(users, framed.from, framed.n) {
            self.metrics.cluster_gaps.with_label_values(&[if users { "users" } else { "node" }]).inc();
            if !users {
                self.peer_lost(framed.from);
            }
            if framed.lost {
                return;
            }
        }
        let envelope: Envelope = match serde_json::from_slice(framed.payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(channel, error = %e, "undecodable cluster message");
                return;
            }
        };
        self.deliver_envelope(framed.from, envelope);
    }

    /// Messages from `instance` to this node were lost: whatever may have depended on them
    /// ends now (its relayed sessions' tabs subscribe again; requests to it fail).
    fn peer_lost(&self, instance: &str) {
        tracing::warn!(peer = instance, "messages from a node were lost; its relayed sessions and requests to it end");
        self.relays.fail_owners(|owner| owner == instance, "messages between servers were lost");
        self.fail_calls(|to| to == instance);
    }

    fn deliver_envelope(&self, from: &str, envelope: Envelope) {
        match envelope {
            Envelope::Call { to, call, body } => {
                let (node, me) = (node_of(from).to_owned(), self.me.clone());
                if to != *self.instance {
                    // Meant for an earlier instance of this node: the session is not here.
                    let answer = Envelope::Answer { to: from.to_owned(), call, body: not_owner() };
                    self.publish(node_channel(&node), &answer);
                    return;
                }
                let Some(handler) = self.handler() else { return };
                let peer = self.peer(&node, from);
                let to = from.to_owned();
                tokio::spawn(async move {
                    let body = handler.request(peer, body).await;
                    if let Some(cluster) = me.upgrade() {
                        cluster.publish(node_channel(&node), &Envelope::Answer { to, call, body });
                    }
                });
            }
            Envelope::Answer { to, call, body } => {
                if to == *self.instance
                    && let Some((_, (_, waiting))) = self.calls.remove(&call)
                {
                    let _ = waiting.send(Ok(body));
                }
            }
            Envelope::Direct { to, receiver, activates, text } => {
                if to != *self.instance {
                    return;
                }
                let Some(target) = self.direct.get(&receiver).map(|r| r.clone()) else { return };
                match Outbound::decode(text.as_bytes()) {
                    Ok(out) => {
                        if let Some((session_id, seq)) = activates {
                            match self.relays.activate(session_id, receiver, from, seq) {
                                Activation::Active => {}
                                Activation::Gap => self.metrics.cluster_gaps.with_label_values(&["session"]).inc(),
                                // A snapshot from an instance this node no longer relays the
                                // session from: its events would not follow it.
                                Activation::Stale => return,
                            }
                        }
                        target.deliver(&out);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable frame from the cluster"),
                }
            }
            Envelope::Watching { to, session, receivers } => {
                if to == *self.instance
                    && let Some(handler) = self.handler()
                {
                    handler.watching(from.into(), session, receivers);
                }
            }
            Envelope::User { user, text } => {
                if let (Some(handler), Ok(out)) = (self.handler(), Outbound::decode(text.as_bytes())) {
                    handler.user_event(user, out);
                }
            }
        }
    }
}
