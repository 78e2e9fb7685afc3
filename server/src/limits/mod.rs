//! Per-user limits: the send rate (`CHAT_RATE_LIMIT_PER_MINUTE`), the daily message quota
//! (`CHAT_DAILY_MESSAGE_QUOTA`), login and registration protection, and the lock that makes
//! a cap check and the write it guards one step for a user.
//!
//! Counters live in Redis when `REDIS_URL` is set ([`redis`]), so every node shares them,
//! and in this process otherwise ([`local`]). If Redis stops answering, the [`Limiter`]
//! keeps deciding in process (logged once, shown by `/readyz` and `relay_redis_up`), checks
//! every second whether Redis is back, hands it the daily counts it kept meanwhile, and
//! uses it again. Each outage starts its in-process daily counts afresh from the database
//! (what Redis counted in between is not in this process's old counts).

mod local;
mod redis;

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{Days, NaiveDate, NaiveTime, Utc};
use relay_protocol::{Quota, UserRole};
use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::metrics::Metrics;
use crate::store::{DayUsage, Store, StoreError};
use local::LocalLimits;
use redis::RedisLimits;

/// How long one Redis call may take before the limiter decides in process instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a down Redis is asked whether it is back, and in-process counters are swept.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Today's quota of a user as the usage ledger has it, for display.
pub async fn quota(store: &Store, daily_limit: Option<u32>, user: &AuthUser) -> Result<Quota, StoreError> {
    let today = Utc::now().date_naive();
    let used = store.usage_on(user.id, today).await?;
    Ok(quota_from(used, daily_limit, user.role))
}

/// Builds the quota object from today's usage.
pub fn quota_from(used: DayUsage, daily_limit: Option<u32>, role: UserRole) -> Quota {
    let limit = if role == UserRole::Admin { None } else { daily_limit };
    Quota {
        messages_today: used.messages,
        limit,
        remaining: limit.map(|l| l.saturating_sub(used.messages)),
        resets_at: next_midnight(),
        prompt_tokens_today: used.prompt_tokens,
        completion_tokens_today: used.completion_tokens,
    }
}

/// The next midnight UTC, when daily counts start again.
pub fn next_midnight() -> chrono::DateTime<Utc> {
    let today = Utc::now().date_naive();
    today.checked_add_days(Days::new(1)).unwrap_or(today).and_time(NaiveTime::MIN).and_utc()
}

/// Time until the next midnight UTC.
pub fn until_midnight() -> Duration {
    (next_midnight() - Utc::now()).to_std().unwrap_or_default()
}

/// A GCRA rate: `limit` events per `period`, as a burst of `limit` if saved up, refilled
/// one per `period / limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Events per period.
    pub limit: u32,
    /// The period.
    pub period: Duration,
}

/// What a limit said about one event; what `X-RateLimit-*` headers carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateDecision {
    /// Whether the event was let through (and counted).
    pub allowed: bool,
    /// The limit.
    pub limit: u32,
    /// Events left now.
    pub remaining: u32,
    /// When the next event would be let through (zero when allowed).
    pub retry_after: Duration,
    /// When the limit is whole again.
    pub reset_after: Duration,
}

/// Where the limiter keeps its counters now, as `/readyz` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisStatus {
    /// No `REDIS_URL`: in process by design.
    Disabled,
    /// In Redis.
    Up,
    /// Redis is unreachable: in process until it returns.
    Down,
}

impl RedisStatus {
    /// As `/readyz` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisStatus::Disabled => "disabled",
            RedisStatus::Up => "up",
            RedisStatus::Down => "down",
        }
    }
}

/// Errors of setting the limiter up.
#[derive(Debug, thiserror::Error)]
#[error("REDIS_URL: {0}")]
pub struct LimitsError(#[from] ::redis::RedisError);

/// Decides limits in Redis or, without it, in process.
pub struct Limiter {
    local: LocalLimits,
    redis: Option<RedisLimits>,
    redis_up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Limiter {
    /// A limiter over Redis at `redis_url`, or in process without one.
    pub fn new(redis_url: Option<&str>, metrics: Arc<Metrics>) -> Result<Arc<Limiter>, LimitsError> {
        let redis = redis_url.map(|url| RedisLimits::new(url, REDIS_TIMEOUT)).transpose()?;
        metrics.redis_up.set(i64::from(redis.is_some()));
        Ok(Arc::new(Limiter {
            local: LocalLimits::default(),
            redis_up: AtomicBool::new(redis.is_some()),
            redis,
            metrics,
        }))
    }

    /// Where counters are kept now.
    pub fn redis_status(&self) -> RedisStatus {
        match (&self.redis, self.redis_up.load(Ordering::Acquire)) {
            (None, _) => RedisStatus::Disabled,
            (Some(_), true) => RedisStatus::Up,
            (Some(_), false) => RedisStatus::Down,
        }
    }

    /// Runs the upkeep until `stop`: asks a down Redis whether it is back (handing it the
    /// daily counts kept meanwhile), and sweeps in-process counters.
    pub fn spawn_upkeep(self: &Arc<Self>, stop: CancellationToken) {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                limiter.local.sweep(&Utc::now().date_naive().to_string());
                if limiter.redis_status() == RedisStatus::Down {
                    limiter.try_redis_again().await;
                }
            }
        });
    }

    async fn try_redis_again(&self) {
        let Some(redis) = &self.redis else { return };
        if !matches!(tokio::time::timeout(REDIS_TIMEOUT, redis.ping()).await, Ok(Ok(()))) {
            return;
        }
        let ttl = until_midnight() + Duration::from_secs(3600);
        for (key, count) in self.local.quota_counts() {
            if tokio::time::timeout(REDIS_TIMEOUT, redis.raise_quota(&key, count, ttl)).await.is_err() {
                return;
            }
        }
        self.redis_up.store(true, Ordering::Release);
        self.metrics.redis_up.set(1);
        tracing::warn!("Redis is reachable again; limits are shared through it again");
    }

    /// Redis, while it is up.
    fn redis(&self) -> Option<&RedisLimits> {
        self.redis.as_ref().filter(|_| self.redis_up.load(Ordering::Acquire))
    }

    /// Runs a Redis call made while Redis was up; `None` (and Redis marked down, logged
    /// once) when there was none or it fails, so the caller decides in process.
    async fn in_redis<T>(&self, call: Option<impl Future<Output = ::redis::RedisResult<T>>>) -> Option<T> {
        let call = call?;
        match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(value)) => Some(value),
            failed => {
                if self.redis_up.swap(false, Ordering::AcqRel) {
                    // Counts kept in process during an earlier outage are stale now: Redis
                    // counted on since. Forgotten, each is read again from the database.
                    self.local.forget_quotas();
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::error!(error, "Redis is unreachable; limits are kept in this process until it returns");
                    self.metrics.redis_up.set(0);
                }
                None
            }
        }
    }

    /// Takes one event of `rate` for `key` if it conforms.
    pub async fn rate(&self, key: &str, rate: Rate) -> RateDecision {
        match self.in_redis(self.redis().map(|r| r.rate(key, rate))).await {
            Some(decision) => decision,
            None => self.local.rate(key, rate),
        }
    }

    /// Takes one unit of the daily counter `key` below `limit`; a counter neither Redis nor
    /// this process has yet starts from `seed` (today's count in the store). Returns
    /// whether it was taken and the count after.
    pub async fn take_quota<S>(&self, key: &str, limit: u32, seed: S) -> Result<(bool, u32), StoreError>
    where
        S: Future<Output = Result<u32, StoreError>>,
    {
        let ttl = until_midnight() + Duration::from_secs(3600);
        match self.in_redis(self.redis().map(|r| r.take_quota(key, limit, ttl, None))).await {
            Some(Some(taken)) => Ok(taken),
            Some(None) => {
                let seed = seed.await?;
                if let Some(Some(taken)) =
                    self.in_redis(self.redis().map(|r| r.take_quota(key, limit, ttl, Some(seed)))).await
                {
                    return Ok(taken);
                }
                Ok(self.local.take_quota(key, limit, seed))
            }
            None => {
                let seed = match self.local.quota_count(key) {
                    Some(_) => 0,
                    None => seed.await?,
                };
                Ok(self.local.take_quota(key, limit, seed))
            }
        }
    }

    /// Gives back a unit taken for a send that then failed.
    pub async fn give_back_quota(&self, key: &str) {
        if self.in_redis(self.redis().map(|r| r.give_back(key))).await.is_none() {
            self.local.give_back_quota(key);
        }
    }

    /// Counts one event in a window of `length` that starts at its first event, in one
    /// atomic step (so events racing each other each see their own count); the count after
    /// it and the time until the window ends.
    pub async fn hit_window(&self, key: &str, length: Duration) -> (u32, Duration) {
        match self.in_redis(self.redis().map(|r| r.hit_window(key, length))).await {
            Some(hit) => hit,
            None => self.local.hit_window(key, length),
        }
    }

    /// Gives back an event counted by [`Limiter::hit_window`] that turned out not to count.
    pub async fn give_back_window(&self, key: &str) {
        if self.in_redis(self.redis().map(|r| r.give_back(key))).await.is_none() {
            self.local.give_back_window(key);
        }
    }
}

/// The address group per-address limits count a client by: an IPv4 address as it is, an
/// IPv6 address by its /64 prefix (one host is routinely given a whole /64, so counting
/// single addresses would let it take as many places as it likes).
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

/// The limiter key part naming a client address: `203.0.113.9`, or `2001:db8:1:2::/64`.
pub fn address_key(ip: IpAddr) -> String {
    match address_group(ip) {
        IpAddr::V6(prefix) => format!("{prefix}/64"),
        v4 => v4.to_string(),
    }
}

/// The key of a user's send rate.
pub fn send_rate_key(user: Uuid) -> String {
    format!("rate:send:{user}")
}

/// The key of a user's daily message count (it ends with the day, which sweeping relies on).
pub fn quota_key(user: Uuid, day: NaiveDate) -> String {
    format!("quota:{user}:{day}")
}

/// How many locks users are spread over; two users rarely share one, and sharing only
/// serialises their checks.
const STRIPES: usize = 64;

/// Per-user locks, so that "count, compare with the cap, write" cannot interleave with the
/// same steps of a concurrent request of the same user (which would let both pass the cap).
pub struct UserLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for UserLocks {
    fn default() -> Self {
        UserLocks { stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect() }
    }
}

impl UserLocks {
    fn stripe(&self, user: Uuid) -> &Arc<Mutex<()>> {
        &self.stripes[(user.as_u128() % STRIPES as u128) as usize]
    }

    /// Locks the user's stripe until the guard is dropped.
    pub async fn lock(&self, user: Uuid) -> MutexGuard<'_, ()> {
        self.stripe(user).lock().await
    }

    /// Locks the user's stripe until the guard is dropped; the guard may outlive the
    /// borrow (it is held across steps of a session actor).
    pub async fn lock_owned(&self, user: Uuid) -> OwnedMutexGuard<()> {
        self.stripe(user).clone().lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_key(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(address_key(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(address_key(ip("2001:db8:1:2::ffff")), address_key(ip("2001:db8:1:2:aaaa::1")));
        assert_ne!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:3::1")));
        assert_eq!(address_key(ip("::ffff:203.0.113.9")), "203.0.113.9", "a mapped IPv4 address is IPv4");
    }
}
