//! Limits kept in Redis, shared by every server node: each decision is one Lua script,
//! so reading, deciding and writing a counter is atomic however many nodes ask at once.
//! Time comes from the Redis server (`TIME`), so the nodes' clocks do not matter.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use super::{Rate, RateDecision};

/// GCRA: the theoretical arrival time (TAT) of the next event is stored per key; an event
/// conforms when it is no earlier than `TAT - limit * interval`.
/// KEYS[1] key; ARGV[1] interval (ms per event); ARGV[2] limit. Returns
/// {allowed, remaining, retry_after_ms, reset_after_ms}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * limit
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
local remaining = math.floor((now + interval * limit - new_tat) / interval)
return {1, remaining, 0, new_tat - now}
"#;

/// Takes one unit below the limit. KEYS[1] key; ARGV[1] limit; ARGV[2] ttl (s); ARGV[3]
/// seed ('' when unknown). Returns {taken (1/0, or -1 when the key is missing and no seed
/// was given), count}.
const TAKE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  if ARGV[3] == '' then return {-1, 0} end
  v = ARGV[3]
  redis.call('SET', KEYS[1], v, 'EX', ARGV[2])
end
v = tonumber(v)
if v >= tonumber(ARGV[1]) then return {0, v} end
return {1, redis.call('INCR', KEYS[1])}
"#;

/// Gives a unit back (of a daily count or a window). KEYS[1] key.
const GIVE_BACK: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v > 0 then redis.call('DECR', KEYS[1]) end
return 0
"#;

/// Raises a counter to at least ARGV[1] (a count kept in process while Redis was away).
/// KEYS[1] key; ARGV[2] ttl (s).
const RAISE: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0
"#;

/// Counts an event in a window that starts at its first event. KEYS[1] key; ARGV[1]
/// window (ms). Returns the count and the ms until the window ends.
const HIT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, math.max(0, redis.call('PTTL', KEYS[1]))}
"#;

/// Prefix of every key, so relay-chat can share a Redis with other programs.
const PREFIX: &str = "relay:";

/// The Redis backend.
pub struct RedisLimits {
    connection: ConnectionManager,
    gcra: Script,
    take: Script,
    give_back: Script,
    raise: Script,
    hit: Script,
}

impl RedisLimits {
    /// Prepares a connection to `url`, made on first use (so a server whose Redis is down
    /// at start-up starts anyway, on in-process limits), with short timeouts: a limit
    /// check must never hang a send.
    pub fn new(url: &str, timeout: Duration) -> RedisResult<RedisLimits> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        Ok(RedisLimits {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            gcra: Script::new(GCRA),
            take: Script::new(TAKE),
            give_back: Script::new(GIVE_BACK),
            raise: Script::new(RAISE),
            hit: Script::new(HIT),
        })
    }

    /// Checks the server answers.
    pub async fn ping(&self) -> RedisResult<()> {
        redis::cmd("PING").query_async::<String>(&mut self.connection.clone()).await.map(|_| ())
    }

    /// Takes one event of `rate` for `key` if it conforms.
    pub async fn rate(&self, key: &str, rate: Rate) -> RedisResult<RateDecision> {
        let interval_ms = (rate.period.as_millis() as u64 / u64::from(rate.limit.max(1))).max(1);
        let (allowed, remaining, retry_ms, reset_ms): (i64, i64, i64, i64) = self
            .gcra
            .key(format!("{PREFIX}{key}"))
            .arg(interval_ms)
            .arg(rate.limit)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: rate.limit,
            remaining: remaining.max(0) as u32,
            retry_after: Duration::from_millis(retry_ms.max(0) as u64),
            reset_after: Duration::from_millis(reset_ms.max(0) as u64),
        })
    }

    /// Takes a unit of `key` below `limit`; `None` when the key is missing and `seed` is
    /// `None` (the caller reads the seed, once, and asks again).
    pub async fn take_quota(
        &self,
        key: &str,
        limit: u32,
        ttl: Duration,
        seed: Option<u32>,
    ) -> RedisResult<Option<(bool, u32)>> {
        let (taken, count): (i64, i64) = self
            .take
            .key(format!("{PREFIX}{key}"))
            .arg(limit)
            .arg(ttl.as_secs().max(1))
            .arg(seed.map(|s| s.to_string()).unwrap_or_default())
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok((taken >= 0).then_some((taken == 1, count.max(0) as u32)))
    }

    /// Gives back a unit of a daily count or a window, taken for something that then did
    /// not count.
    pub async fn give_back(&self, key: &str) -> RedisResult<()> {
        self.give_back.key(format!("{PREFIX}{key}")).invoke_async::<i64>(&mut self.connection.clone()).await.map(|_| ())
    }

    /// Raises a counter to at least `count`.
    pub async fn raise_quota(&self, key: &str, count: u32, ttl: Duration) -> RedisResult<()> {
        self.raise
            .key(format!("{PREFIX}{key}"))
            .arg(count)
            .arg(ttl.as_secs().max(1))
            .invoke_async::<i64>(&mut self.connection.clone())
            .await
            .map(|_| ())
    }

    /// Counts one event in a window of `length` that starts at its first event; the count
    /// after it and the time until the window ends.
    pub async fn hit_window(&self, key: &str, length: Duration) -> RedisResult<(u32, Duration)> {
        let (count, ttl_ms): (i64, i64) = self
            .hit
            .key(format!("{PREFIX}{key}"))
            .arg(length.as_millis().max(1) as u64)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok((count.max(0) as u32, Duration::from_millis(ttl_ms.max(0) as u64)))
    }
}
