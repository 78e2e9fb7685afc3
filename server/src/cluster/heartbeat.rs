//! Liveness: this node's heartbeat, which also renews its leases, noticing peers that
//! went away, and the periodic sweep of what nobody watches any more.

use std::collections::HashSet;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::keys::*;
use super::transport::{Envelope, SubscriberCommand};
use super::{Cluster, ClusterError};

impl Cluster {
    // ---- heartbeat -------------------------------------------------------------------------

    /// Keeps this instance alive, renews its leases, and notices peers that went away.
    pub(super) async fn heartbeat(&self) -> Result<(), ClusterError> {
        let beat = Instant::now();
        let mut redis = self.redis.clone();
        // Three quarters of the lease: beating every quarter, a peer notices this node gone
        // within the lease time after its last beat.
        let ttl = (self.lease * 3 / 4).as_millis() as u64;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (previous, members): (Option<String>, Vec<String>) = redis::pipe()
            .cmd("SET")
            .arg(alive_key(&self.node_id))
            .arg(&*self.instance)
            .arg("PX")
            .arg(ttl)
            .arg("GET")
            .cmd("ZADD")
            .arg(NODES_KEY)
            .arg(now_ms)
            .arg(&*self.node_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(NODES_KEY)
            .arg("-inf")
            .arg(now_ms - MEMBER_MEMORY_MS)
            .ignore()
            .cmd("ZRANGE")
            .arg(NODES_KEY)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        let alive: Vec<Option<String>> = if members.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET")
                .arg(members.iter().map(|m| alive_key(m)).collect::<Vec<_>>())
                .query_async(&mut redis)
                .await?
        };
        let live: HashSet<String> = alive.into_iter().flatten().collect();
        // This node's own heartbeat was missing: Redis lost its keys (restarted empty, or
        // this node could not beat for long). The peers' heartbeats are missing too until
        // each beats again (within a quarter of the lease), so nobody counts as gone now.
        let redis_forgot = previous.as_deref() != Some(&*self.instance);
        let gone: Vec<String> = {
            let mut known = self.live.write().expect("live set lock");
            let gone =
                if redis_forgot && !known.is_empty() { Vec::new() } else { known.difference(&live).cloned().collect() };
            *known = if redis_forgot { known.union(&live).cloned().collect() } else { live.clone() };
            gone
        };
        self.metrics.cluster_nodes.set(live.len() as i64);
        let handler = self.handler();
        for instance in &gone {
            tracing::warn!(node_id = %self.node_id, gone = %instance, "a node left the cluster");
            if let Some(handler) = &handler {
                handler.instance_gone(instance);
            }
        }
        if !gone.is_empty() {
            // What a gone instance published is never heard again: forget its numbers.
            let mut numbering = self.numbering.lock().expect("numbering lock");
            numbering.forget(|instance| gone.iter().any(|g| g == instance));
        }
        // Only owners seen alive before: an owner that joined after the list was read is not gone.
        self.relays.fail_owners(|owner| gone.iter().any(|g| g == owner), "the node running this session went away");
        self.renew(beat).await?;
        *self.last_beat.write().expect("last beat lock") = beat;
        // After Redis came back empty, free leases are claimed again only once it has held
        // its data for a lease (every owner renews within that time).
        self.open_gate().await?;
        Ok(())
    }

    pub(super) fn sweep(&self) {
        self.direct.retain(|_, r| !r.is_closed());
        let closed = self.relays.drop_closed();
        if let Some(handler) = self.handler() {
            for (session_id, owner, receiver) in closed {
                handler.receiver_closed(session_id, owner, receiver);
            }
        }
        for (session, owner, receivers) in self.relays.watch_lists() {
            let envelope = Envelope::Watching { to: owner.to_string(), session, receivers };
            self.publish(node_channel(node_of(&owner)), &envelope);
        }
        let _ = self.subscriber.send(SubscriberCommand::Sweep);
        self.observe();
    }
}

/// Beats every quarter of the lease; the heartbeat key lives three quarters, so a peer
/// notices this node gone within the lease time of its last beat. A session whose lease
/// could not be renewed for half the lease is stopped (see [`Cluster::fence`]) before its
/// lease or this node's heartbeat can expire and another node may take it over.
pub(super) async fn heartbeat_loop(cluster: Weak<Cluster>, shutdown: CancellationToken) {
    let Some(every) = cluster.upgrade().map(|c| c.lease / 4) else { return };
    // A steady beat whatever each one took (a late beat is not made up with a burst).
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(me) = cluster.upgrade() else { return };
        // A Redis that hangs must not hold the fence back: a beat gets a quarter of the lease.
        let beat = tokio::time::timeout(every, me.heartbeat()).await.unwrap_or(Err(ClusterError::Timeout));
        me.beating.store(beat.is_ok(), Ordering::Release);
        if let Err(e) = beat {
            tracing::warn!(error = %e, "cluster heartbeat failed");
            me.fence();
        }
        me.sweep();
    }
}
