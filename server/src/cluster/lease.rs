//! Ownership and fencing: claiming, renewing and giving up sessions' leases, and
//! stopping the sessions whose lease this node can no longer vouch for.
//!
//! A lease's value names its holder exactly: the instance and a token unique to the claim
//! (`node#incarnation/token`), so an actor that stops releases its own lease and never the
//! one a newer actor of the same session (on this node) claimed after it. Every renewal and
//! release compares the value it expects.
//!
//! An owner stops its session once half a lease has passed since the last renewal Redis
//! confirmed (or since its last heartbeat, whichever is older): its heartbeat key lives
//! three quarters of a lease and its lease a whole one, so a session is stopped here before
//! another node may claim it. The database fences what timing cannot: every claim raises
//! the session's epoch and every write carries it (see `store::Fence`).
//!
//! A Redis that restarted empty has forgotten every lease: claims of free leases wait a
//! whole lease after it came back (the `relay:up` gate), so every owner that still runs a
//! session takes its lease again first (a renewal re-takes a missing lease).

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Script;
use uuid::Uuid;

use super::keys::*;
use super::{Cluster, ClusterError};

/// How many leases one renewal script handles.
pub(super) const RENEW_CHUNK: usize = 500;

/// Renews leases this instance holds. KEYS: lease keys; ARGV[1] ttl (ms); ARGV[1 + i] the
/// value this instance holds KEYS[i] under. A lease that is missing (Redis restarted empty)
/// is taken again: nobody else holds it. Returns the 1-based indexes of the keys held by
/// another claim now.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local lost = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 1]
  local holder = redis.call('GET', key)
  if holder == mine or not holder then
    redis.call('SET', key, mine, 'PX', ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
"#,
    )
});

/// Deletes leases if they hold the given values. KEYS: lease keys; ARGV[i]: the value of
/// KEYS[i]. Returns how many were deleted.
pub(super) static RELEASE_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then n = n + redis.call('DEL', key) end
end
return n
"#,
    )
});

/// Claims a session's lease. KEYS[1] lease key, KEYS[2] the `up` gate; ARGV[1] the value to
/// hold it under (`instance/token`); ARGV[2] ttl (ms); ARGV[3] the prefix of heartbeat keys.
/// The lease is taken when free, when its holder's heartbeat is gone (the holder died, or
/// restarted as a new instance: a holder stops its sessions before its heartbeat can
/// expire), or when its holder is this same instance (an earlier actor here that stopped).
/// A free lease is not taken while the gate is closed (Redis came back empty less than a
/// lease ago): returns "" then. Otherwise returns the value the lease holds after the claim.
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
local mine = string.match(ARGV[1], '^(.*)/') or ARGV[1]
if holder then
  local instance = string.match(holder, '^(.*)/') or holder
  local node = string.match(instance, '^(.*)#') or instance
  if instance ~= mine and redis.call('GET', ARGV[3] .. node) == instance then
    return holder
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then return '' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"#,
    )
});

/// Deletes a key if it holds a value. KEYS[1] key; ARGV[1] value.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Opens the gate for claims of free leases once Redis has held its data for a lease.
/// KEYS[1] the gate; KEYS[2] when it opens (ms, Redis time); ARGV[1] the lease (ms).
/// Returns 1 when the gate is open.
pub(super) static OPEN_GATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local opens = redis.call('GET', KEYS[2])
if not opens then
  redis.call('SET', KEYS[2], now + tonumber(ARGV[1]))
  return 0
end
if now >= tonumber(opens) then
  redis.call('SET', KEYS[1], '1')
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"#,
    )
});

/// Who holds a session's lease after a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This instance, under this token: it runs the session.
    Mine(u64),
    /// Another instance runs it.
    Held(std::sync::Arc<str>),
}

/// A lease this instance holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Owned {
    /// The claim's token (part of the lease's value).
    pub(super) token: u64,
    /// When the claim or the last renewal Redis confirmed was sent (Redis counts the
    /// lease's time from later).
    pub(super) confirmed: Instant,
}

impl Cluster {
    // ---- leases ----------------------------------------------------------------------------

    /// The value a lease of this instance is held under.
    fn lease_value(&self, token: u64) -> String {
        format!("{}/{token}", self.instance)
    }

    /// Claims a session's lease, or says who holds it. While Redis has been back from an
    /// empty restart for less than a lease, a free lease is not claimed
    /// ([`ClusterError::Recovering`]).
    pub async fn claim(&self, session_id: Uuid) -> Result<Claim, ClusterError> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let value = self.lease_value(token);
        let sent = Instant::now();
        let mut redis = self.redis.clone();
        let holder: String = CLAIM
            .key(lease_key(session_id))
            .key(GATE_KEY)
            .arg(&value)
            .arg(self.lease.as_millis() as u64)
            .arg(ALIVE_PREFIX)
            .invoke_async(&mut redis)
            .await?;
        if holder.is_empty() {
            return Err(ClusterError::Recovering);
        }
        if holder != value {
            let instance = holder.rsplit_once('/').map_or(holder.as_str(), |(instance, _)| instance);
            return Ok(Claim::Held(instance.into()));
        }
        self.owned.insert(session_id, Owned { token, confirmed: sent });
        self.metrics.cluster_owned_sessions.set(self.owned.len() as i64);
        Ok(Claim::Mine(token))
    }

    /// Whether this instance may still run a session under the claim `token`: it holds that
    /// claim, and half a lease has not passed since Redis last confirmed it (nor since the
    /// last heartbeat reached Redis). Checked before every event a session emits.
    pub fn holds(&self, session_id: Uuid, token: u64) -> bool {
        let Some(owned) = self.owned.get(&session_id).map(|o| *o) else { return false };
        owned.token == token && self.valid(owned.confirmed)
    }

    /// Whether a lease confirmed at `confirmed` is still this node's to vouch for.
    fn valid(&self, confirmed: Instant) -> bool {
        let beat = *self.last_beat.read().expect("last beat lock");
        confirmed.min(beat).elapsed() < self.lease / 2
    }

    /// Gives a session's lease up (its actor stopped), if this instance still holds it
    /// under `token` (a newer claim of the same session here is left alone).
    pub async fn release(&self, session_id: Uuid, token: u64) {
        if self.owned.remove_if(&session_id, |_, owned| owned.token == token).is_none() {
            return;
        }
        self.metrics.cluster_owned_sessions.set(self.owned.len() as i64);
        let mut redis = self.redis.clone();
        let released: Result<i64, _> =
            RELEASE.key(lease_key(session_id)).arg(self.lease_value(token)).invoke_async(&mut redis).await;
        if let Err(e) = released {
            tracing::warn!(%session_id, error = %e, "could not release a session lease; it expires by itself");
        }
    }

    /// Renews every lease held, as of a heartbeat sent at `beat`; a lease held by another
    /// claim now is lost. Leases this node can no longer vouch for are lost first, never
    /// renewed: their actors are stopping, and another node may have claimed them.
    pub(super) async fn renew(&self, beat: Instant) -> Result<(), ClusterError> {
        self.fence();
        let owned: Vec<(Uuid, u64)> = self.owned.iter().map(|e| (*e.key(), e.token)).collect();
        let mut redis = self.redis.clone();
        for chunk in owned.chunks(RENEW_CHUNK) {
            let mut script = RENEW.prepare_invoke();
            script.arg(self.lease.as_millis() as u64);
            for (session_id, token) in chunk {
                script.key(lease_key(*session_id));
                script.arg(self.lease_value(*token));
            }
            let lost: Vec<usize> = script.invoke_async(&mut redis).await?;
            for (session_id, token) in chunk {
                if let Some(mut owned) = self.owned.get_mut(session_id)
                    && owned.token == *token
                {
                    owned.confirmed = beat;
                }
            }
            for i in lost {
                let (session_id, token) = chunk[i - 1];
                self.lose(session_id, token);
            }
        }
        Ok(())
    }

    /// Stops the sessions this node can no longer vouch for (see [`Cluster::holds`]): they
    /// stop before another node may take them.
    pub(super) fn fence(&self) {
        let stale: Vec<(Uuid, u64)> =
            self.owned.iter().filter(|e| !self.valid(e.confirmed)).map(|e| (*e.key(), e.token)).collect();
        for (session_id, token) in stale {
            self.lose(session_id, token);
        }
    }

    /// Stops running a session whose lease (under `token`) this instance can no longer
    /// vouch for.
    fn lose(&self, session_id: Uuid, token: u64) {
        if self.owned.remove_if(&session_id, |_, owned| owned.token == token).is_none() {
            return;
        }
        self.metrics.cluster_owned_sessions.set(self.owned.len() as i64);
        tracing::warn!(%session_id, instance = %self.instance, "lost a session lease; stopping its actor");
        if let Some(handler) = self.handler() {
            handler.lease_lost(session_id, token);
        }
    }

    /// Opens the claim gate if Redis has held its data for a lease (see [`OPEN_GATE`]);
    /// returns whether it is open.
    pub(super) async fn open_gate(&self) -> Result<bool, ClusterError> {
        let mut redis = self.redis.clone();
        let open: i64 = OPEN_GATE
            .key(GATE_KEY)
            .key(GATE_OPENS_KEY)
            .arg(self.lease.as_millis() as u64)
            .invoke_async(&mut redis)
            .await?;
        Ok(open == 1)
    }

    /// Leaves the cluster at shutdown (after the sessions stopped and their writes were
    /// stored): the leases still held are given up and the heartbeat deleted, so peers take
    /// over at once instead of after the lease.
    pub async fn leave(&self) {
        let owned: Vec<(Uuid, u64)> = self.owned.iter().map(|e| (*e.key(), e.token)).collect();
        let mut redis = self.redis.clone();
        for chunk in owned.chunks(RENEW_CHUNK) {
            let mut script = RELEASE_ALL.prepare_invoke();
            for (session_id, token) in chunk {
                script.key(lease_key(*session_id));
                script.arg(self.lease_value(*token));
            }
            let released: Result<i64, _> = script.invoke_async(&mut redis).await;
            if let Err(e) = released {
                tracing::warn!(error = %e, "could not give leases up; they expire by themselves");
            }
        }
        self.owned.clear();
        let _: Result<(), _> = redis::cmd("DEL").arg(alive_key(&self.node_id)).query_async(&mut redis).await;
    }
}

/// Runs the fence often enough that a session stops within a twentieth of a lease of
/// the moment it may no longer run (half a lease after its last confirmation).
pub(super) async fn fence_loop(cluster: std::sync::Weak<Cluster>, shutdown: tokio_util::sync::CancellationToken) {
    let Some(every) = cluster.upgrade().map(|c| c.lease / 20) else { return };
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(me) = cluster.upgrade() else { return };
        me.fence();
    }
}
