//! The per-user hub: every WebSocket connection of a user registers here, so changes to
//! the user's sessions (from any connection or from REST) reach all of their tabs.

use dashmap::DashMap;
use relay_protocol::ServerFrame;
use uuid::Uuid;

use crate::fanout::{Delivery, Outbound, Receiver, ReceiverId};

/// Connections by user.
#[derive(Default)]
pub struct UserHub {
    users: DashMap<Uuid, Vec<Receiver>>,
}

impl UserHub {
    /// Registers a connection of a user.
    pub fn join(&self, user: Uuid, receiver: Receiver) {
        self.users.entry(user).or_default().push(receiver);
    }

    /// Removes a connection of a user.
    pub fn leave(&self, user: Uuid, receiver: ReceiverId) {
        if let dashmap::Entry::Occupied(mut entry) = self.users.entry(user) {
            entry.get_mut().retain(|r| r.id != receiver);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }

    /// Sends a frame to every connection of a user. `make` builds the frame with or
    /// without a request id: the connection that asked (`origin`) gets its id echoed,
    /// the others get none.
    pub fn publish(
        &self,
        user: Uuid,
        origin: Option<(ReceiverId, Option<String>)>,
        make: impl Fn(Option<String>) -> ServerFrame,
    ) {
        let Some(receivers) = self.users.get(&user).map(|r| r.clone()) else { return };
        let plain = Outbound::new(make(None));
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
            if receiver.deliver(out) == Delivery::Overflowed {
                tracing::warn!(user_id = %user, receiver = receiver.id, "connection too slow; closing it");
            }
        }
    }
}
