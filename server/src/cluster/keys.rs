//! The names of every Redis key and channel the cluster uses.

use uuid::Uuid;

/// Every key and channel starts with this, so relay-chat can share a Redis.
pub(super) const PREFIX: &str = "relay:";
/// The channel of user events, read by every node.
pub(super) const USERS_CHANNEL: &str = "relay:users";
/// Channels of sessions' events: this, then the session id.
pub(super) const SESSION_CHANNEL_PREFIX: &str = "relay:session:";
/// Heartbeat keys: this, then the node id; the value is the live instance.
pub(super) const ALIVE_PREFIX: &str = "relay:alive:";
/// The sorted set of node ids (scored by their last heartbeat).
pub(super) const NODES_KEY: &str = "relay:nodes";
/// Set while claims of free leases are allowed: gone when Redis restarted empty, and set
/// again a lease after it came back (see `lease::OPEN_GATE`).
pub(super) const GATE_KEY: &str = "relay:up";
/// When [`GATE_KEY`] may be set again (Redis time, ms), while it is missing.
pub(super) const GATE_OPENS_KEY: &str = "relay:up-after";
/// How long a silent node id stays in [`NODES_KEY`] (a day).
pub(super) const MEMBER_MEMORY_MS: i64 = 24 * 3600 * 1000;

pub(super) fn lease_key(session_id: Uuid) -> String {
    format!("{PREFIX}lease:{session_id}")
}

pub(super) fn connections_key(user: Uuid) -> String {
    format!("{PREFIX}connections:{user}")
}

pub(super) fn viewers_key(share_id: Uuid) -> String {
    format!("{PREFIX}viewers:{share_id}")
}

pub(super) fn alive_key(node: &str) -> String {
    format!("{ALIVE_PREFIX}{node}")
}

pub(super) fn node_channel(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

pub(super) fn session_channel(session_id: Uuid) -> String {
    format!("{SESSION_CHANNEL_PREFIX}{session_id}")
}

/// The node id of an instance (`node#incarnation`).
pub(super) fn node_of(instance: &str) -> &str {
    instance.rsplit_once('#').map_or(instance, |(node, _)| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_name_their_node() {
        assert_eq!(node_of("node-a#00000000000000ff"), "node-a");
        assert_eq!(node_of("plain"), "plain");
    }
}
