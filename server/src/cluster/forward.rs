//! Forwarding session requests to the instance that owns the session, and the way back to
//! the asking instance's receivers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use relay_protocol::ServerFrame;
use tokio::sync::oneshot;

use super::keys::*;
use super::transport::Envelope;
use super::{Cluster, ClusterError};
use crate::fanout::{Outbound, ReceiverId, RemoteSink};

/// A node instance that sent a request, and the way back to its receivers.
#[derive(Clone, Debug)]
pub struct Peer {
    cluster: Weak<Cluster>,
    node: Arc<str>,
    instance: Arc<str>,
}

impl RemoteSink for Peer {
    fn deliver(&self, receiver: ReceiverId, out: &Outbound) {
        if let Some(cluster) = self.cluster.upgrade() {
            let activates = match &*out.frame {
                ServerFrame::Subscribed { session, seq, .. } => Some((session.id, *seq)),
                _ => None,
            };
            let envelope = Envelope::Direct {
                to: self.instance.to_string(),
                receiver,
                activates,
                text: out.text.as_str().to_owned(),
            };
            cluster.publish(node_channel(&self.node), &envelope);
        }
    }

    fn instance(&self) -> &Arc<str> {
        &self.instance
    }
}

/// A forwarded request waiting for its answer: the instance asked, and where the answer goes.
pub(super) type PendingCall = (Arc<str>, oneshot::Sender<Result<serde_json::Value, ClusterError>>);

impl Cluster {
    // ---- requests --------------------------------------------------------------------------

    /// Sends a request to the instance that owns a session and waits for its answer (at
    /// most the request timeout, longer than a live owner takes: one that does not answer
    /// by then may be dead; sooner when the answer is known to be lost).
    pub async fn request(&self, owner: &str, body: serde_json::Value) -> Result<serde_json::Value, ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Disconnected);
        }
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls.insert(call, (owner.into(), tx));
        let envelope = Envelope::Call { to: owner.to_owned(), call, body };
        self.publish(node_channel(node_of(owner)), &envelope);
        self.metrics.cluster_forwarded.inc();
        let answer = tokio::time::timeout(self.request_timeout, rx).await;
        self.calls.remove(&call);
        match answer {
            Ok(Ok(answer)) => answer,
            _ => Err(ClusterError::Timeout),
        }
    }

    /// Fails at once every request waiting for an answer from an instance `lost` names
    /// (its answer may have been lost).
    pub(super) fn fail_calls(&self, lost: impl Fn(&str) -> bool) {
        let failed: Vec<u64> = self.calls.iter().filter(|c| lost(&c.value().0)).map(|c| *c.key()).collect();
        for call in failed {
            if let Some((_, (_, waiting))) = self.calls.remove(&call) {
                let _ = waiting.send(Err(ClusterError::Lost));
            }
        }
    }

    pub(super) fn peer(&self, node: &str, instance: &str) -> Peer {
        Peer { cluster: self.me.clone(), node: node.into(), instance: instance.into() }
    }
}
