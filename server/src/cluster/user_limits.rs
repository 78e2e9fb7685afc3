//! Places counted across nodes (a user's connections, a share link's viewers) in Redis,
//! and per-user locks.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use super::keys::*;
use super::{Cluster, ClusterError};

/// Lua that sums a count hash's places (a field per instance) held by live instances into
/// `total`, dropping the fields of instances that are gone (their places went with them).
/// KEYS[1] the count hash; ARGV[1] the prefix of heartbeat keys.
const LIVE_TOTAL: &str = r#"
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local instance = fields[i]
  local node = string.match(instance, '^(.*)#') or instance
  if redis.call('GET', ARGV[1] .. node) == instance then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], instance)
  end
end
"#;

/// Takes a place (a WebSocket connection of a user, a viewer of a share link) against a
/// cluster-wide cap, unless that many are held on live instances. KEYS[1] the count hash;
/// ARGV[1] prefix of heartbeat keys; ARGV[2] instance; ARGV[3] cap. Returns the places held
/// with this one when taken, 0 when the cap is reached.
pub(super) static TAKE_PLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LIVE_TOTAL}
if total >= tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('EXPIRE', KEYS[1], 86400)
return total + 1"
    ))
});

/// How many places live instances hold. KEYS[1] the count hash; ARGV[1] prefix of
/// heartbeat keys.
static COUNT_PLACES: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{LIVE_TOTAL}\nreturn total")));

/// Gives a place back. KEYS[1] the count hash; ARGV[1] instance.
pub(super) static GIVE_PLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"#,
    )
});

/// How much longer than its holder means to hold it a per-user cluster lock lives (it
/// expires by itself only if its holder dies holding it).
const USER_LOCK_MARGIN: Duration = Duration::from_secs(2);

impl Cluster {
    // ---- per-user limits across nodes ----------------------------------------------------

    /// Counts a connection of `user` against `max` across the cluster; false when the user
    /// already holds `max` on live nodes.
    pub async fn take_connection(&self, user: Uuid, max: usize) -> Result<bool, ClusterError> {
        Ok(self.take_place(connections_key(user), max).await?.is_some())
    }

    /// Gives back a connection counted by [`Cluster::take_connection`] (in the background).
    pub fn give_connection(&self, user: Uuid) {
        let given = self.give_place(connections_key(user));
        tokio::spawn(async move {
            if let Err(e) = given.await {
                tracing::warn!(user_id = %user, error = %e, "could not give a connection back to the cluster count");
            }
        });
    }

    /// Counts a live viewer of a share link against `max` across the cluster; the viewers
    /// with this one, or `None` when the link already has `max`.
    pub async fn take_viewer(&self, share_id: Uuid, max: usize) -> Result<Option<u32>, ClusterError> {
        self.take_place(viewers_key(share_id), max).await
    }

    /// Gives back a viewer counted by [`Cluster::take_viewer`]; the viewers left.
    pub async fn give_viewer(&self, share_id: Uuid) -> Result<u32, ClusterError> {
        self.give_place(viewers_key(share_id)).await?;
        self.viewers(share_id).await
    }

    /// How many live viewers a share link has across the cluster.
    pub async fn viewers(&self, share_id: Uuid) -> Result<u32, ClusterError> {
        let mut redis = self.redis.clone();
        Ok(COUNT_PLACES.key(viewers_key(share_id)).arg(ALIVE_PREFIX).invoke_async(&mut redis).await?)
    }

    async fn take_place(&self, key: String, max: usize) -> Result<Option<u32>, ClusterError> {
        let mut redis = self.redis.clone();
        let held: u32 =
            TAKE_PLACE.key(key).arg(ALIVE_PREFIX).arg(&*self.instance).arg(max).invoke_async(&mut redis).await?;
        Ok((held > 0).then_some(held))
    }

    fn give_place(&self, key: String) -> impl std::future::Future<Output = Result<(), ClusterError>> + use<> {
        let (mut redis, instance) = (self.redis.clone(), self.instance.clone());
        async move {
            let _: i64 = GIVE_PLACE.key(key).arg(&*instance).invoke_async(&mut redis).await?;
            Ok(())
        }
    }

    /// Takes a user's cluster-wide lock (for a check and the write it guards, such as the
    /// sessions-per-user cap) for at most `hold`: it lives a little longer, so it cannot
    /// expire under a holder that keeps to that. Waits up to `hold` for another holder to
    /// release it, then answers [`ClusterError::Timeout`] (the check must not go ahead
    /// without it: that holder may be writing).
    pub async fn lock_user(&self, user: Uuid, what: &str, hold: Duration) -> Result<UserLock, ClusterError> {
        let key = format!("{PREFIX}lock:{what}:{user}");
        let token = format!("{}:{}", self.instance, rand::random::<u64>());
        let deadline = Instant::now() + hold;
        let mut redis = self.redis.clone();
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg((hold + USER_LOCK_MARGIN).as_millis() as u64)
                .query_async(&mut redis)
                .await?;
            if taken.is_some() {
                return Ok(UserLock { redis, key, token });
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A per-user lock held across the cluster; [`UserLock::release`] gives it back (it also
/// expires by itself if its holder dies).
pub struct UserLock {
    redis: ConnectionManager,
    key: String,
    token: String,
}

impl UserLock {
    /// Gives the lock back, if it is still this holder's.
    pub async fn release(mut self) {
        let released: Result<i64, _> =
            super::lease::RELEASE.key(&self.key).arg(&self.token).invoke_async(&mut self.redis).await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release a user lock; it expires by itself");
        }
    }
}
