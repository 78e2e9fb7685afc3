//! The per-user hub: every WebSocket connection of a user registers here, so changes to
//! the user's sessions (from any connection or from REST) reach all of their tabs, on this
//! node and, in a cluster, on every other (published once through the cluster). It also
//! caps how many connections one user may hold open on this node.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use relay_protocol::ServerFrame;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::fanout::{Delivery, Outbound, Receiver, ReceiverId};

/// Connections by user.
#[derive(Default)]
pub struct UserHub {
    users: DashMap<Uuid, UserConnections>,
    cluster: OnceLock<Arc<Cluster>>,
    observer: OnceLock<Observer>,
}

/// Sees every user event this node publishes or hears from another node (live share
/// streams end on `share_updated` and `session_deleted` this way, wherever those happen).
pub type Observer = Box<dyn Fn(Uuid, &ServerFrame) + Send + Sync>;

#[derive(Default)]
struct UserConnections {
    /// Places taken, including connections still authenticating their `ready`.
    places: usize,
    /// Connections that receive the user's events.
    receivers: Vec<Receiver>,
}

/// A connection's place in the hub, taken before it is announced `ready`; dropping it
/// gives the place back and stops delivery to its receiver.
pub struct Membership {
    hub: Arc<UserHub>,
    user: Uuid,
    receiver: Option<ReceiverId>,
    /// Counted in the cluster-wide count too (given back there on drop).
    counted_in_cluster: bool,
}

impl Membership {
    /// Counts this connection against the user's cap across the cluster as well (no-op
    /// alone); false when the user already holds `max` connections on the live nodes. A
    /// Redis that does not answer leaves the cap to this node (logged).
    pub async fn count_in_cluster(&mut self, max: usize) -> bool {
        let Some(cluster) = self.hub.cluster.get() else { return true };
        match cluster.take_connection(self.user, max).await {
            Ok(taken) => {
                self.counted_in_cluster = taken;
                taken
            }
            Err(e) => {
                tracing::warn!(user_id = %self.user, error = %e, "cannot count the connection in the cluster; capped per node");
                true
            }
        }
    }

    /// Starts delivering the user's events to this connection.
    pub fn join(&mut self, receiver: Receiver) {
        self.receiver = Some(receiver.id);
        if let Some(mut entry) = self.hub.users.get_mut(&self.user) {
            entry.receivers.push(receiver);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.counted_in_cluster
            && let Some(cluster) = self.hub.cluster.get()
        {
            cluster.give_connection(self.user);
        }
        if let dashmap::Entry::Occupied(mut entry) = self.hub.users.entry(self.user) {
            let user = entry.get_mut();
            user.places = user.places.saturating_sub(1);
            if let Some(id) = self.receiver {
                user.receivers.retain(|r| r.id != id);
            }
            if user.places == 0 {
                entry.remove();
            }
        }
    }
}

impl UserHub {
    /// Takes a connection place for a user, unless the user already holds `max`.
    pub fn reserve(self: &Arc<Self>, user: Uuid, max: usize) -> Option<Membership> {
        let mut entry = self.users.entry(user).or_default();
        if entry.places >= max {
            return None;
        }
        entry.places += 1;
        Some(Membership { hub: self.clone(), user, receiver: None, counted_in_cluster: false })
    }

    /// How many users hold at least one connection.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// How many connection places a user holds.
    pub fn connections_of(&self, user: Uuid) -> usize {
        self.users.get(&user).map_or(0, |u| u.places)
    }

    /// Sends user events to the user's connections on the other nodes of this cluster too.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Sets what sees every user event (once; later calls are ignored).
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn observe(&self, user: Uuid, out: &Outbound) {
        if let Some(observer) = self.observer.get() {
            observer(user, &out.frame);
        }
    }

    /// Sends a frame to every connection of a user. `make` builds the frame with or
    /// without a request id: the connection that asked (`origin`) gets its id echoed,
    /// the others get none (nor do the user's connections on other nodes).
    pub fn publish(
        &self,
        user: Uuid,
        origin: Option<(ReceiverId, Option<String>)>,
        make: impl Fn(Option<String>) -> ServerFrame,
    ) {
        let plain = Outbound::new(make(None));
        if let Some(cluster) = self.cluster.get() {
            cluster.publish_user_event(user, &plain);
        }
        self.observe(user, &plain);
        let Some(receivers) = self.users.get(&user).map(|u| u.receivers.clone()) else { return };
        if receivers.is_empty() {
            return;
        }
        let (origin_id, echoed) = match origin {
            Some((id, Some(request_id))) => (Some(id), Some(Outbound::new(make(Some(request_id))))),
            Some((id, None)) => (Some(id), None),
            None => (None, None),
        };
        for receiver in &receivers {
            let out = match (&echoed, origin_id) {
                (Some(echoed), Some(id)) if id == receiver.id => echoed,
                _ => &plain,
            };
            deliver_to(user, receiver, out);
        }
    }

    /// Sends a user event another node published to the user's connections here.
    pub fn deliver(&self, user: Uuid, out: &Outbound) {
        self.observe(user, out);
        let Some(receivers) = self.users.get(&user).map(|u| u.receivers.clone()) else { return };
        for receiver in &receivers {
            deliver_to(user, receiver, out);
        }
    }
}

/// Queues a user event for one connection (one that overflows is closed by its writer).
fn deliver_to(user: Uuid, receiver: &Receiver, out: &Outbound) {
    if receiver.deliver(out) == Delivery::Overflowed {
        tracing::warn!(user_id = %user, receiver = receiver.id, "connection too slow; closing it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::{QueueBounds, ReceiverKind};

    #[test]
    fn places_are_capped_and_given_back() {
        let hub = Arc::new(UserHub::default());
        let user = Uuid::new_v4();
        let a = hub.reserve(user, 2).unwrap();
        let mut b = hub.reserve(user, 2).unwrap();
        assert!(hub.reserve(user, 2).is_none());
        let (receiver, _inbox, _) =
            Receiver::channel(ReceiverKind::Connection, QueueBounds { frames: 4, bytes: 1 << 16 });
        b.join(receiver);
        drop(a);
        assert_eq!(hub.connections_of(user), 1);
        drop(b);
        assert_eq!(hub.connections_of(user), 0);
        assert!(hub.users.is_empty());
    }
}
