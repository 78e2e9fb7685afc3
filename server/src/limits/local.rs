//! Limits kept in this process: used when no `REDIS_URL` is set, and while Redis is
//! unreachable. Rates are GCRA (the `governor` crate), the same algorithm the Redis
//! script runs, so a limit reads the same whichever backend answers.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{Rate, RateDecision};

type KeyedLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// The in-process backend.
#[derive(Default)]
pub struct LocalLimits {
    /// One keyed GCRA limiter per rate.
    rates: DashMap<Rate, Arc<KeyedLimiter>>,
    /// Counters of the day, by key (the key names the day).
    quotas: DashMap<String, u32>,
    /// Fixed-window counters: count and when the window ends.
    windows: DashMap<String, (u32, Instant)>,
}

impl LocalLimits {
    fn limiter(&self, rate: Rate) -> Arc<KeyedLimiter> {
        self.rates
            .entry(rate)
            .or_insert_with(|| {
                let limit = NonZeroU32::new(rate.limit.max(1)).unwrap_or(NonZeroU32::MIN);
                let per_cell = rate.period / limit.get();
                let quota = Quota::with_period(per_cell).unwrap_or_else(|| Quota::per_second(limit)).allow_burst(limit);
                Arc::new(RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>())
            })
            .clone()
    }

    /// Takes one event of `rate` for `key` if it conforms.
    pub fn rate(&self, key: &str, rate: Rate) -> RateDecision {
        let limiter = self.limiter(rate);
        let per_cell = rate.period / rate.limit.max(1);
        match limiter.check_key(&key.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateDecision {
                    allowed: true,
                    limit: rate.limit,
                    remaining,
                    retry_after: Duration::ZERO,
                    reset_after: per_cell * (rate.limit - remaining.min(rate.limit)),
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(limiter.clock().now());
                RateDecision {
                    allowed: false,
                    limit: rate.limit,
                    remaining: 0,
                    retry_after,
                    reset_after: per_cell * rate.limit,
                }
            }
        }
    }

    /// The count of `key`, if this process has one.
    pub fn quota_count(&self, key: &str) -> Option<u32> {
        self.quotas.get(key).map(|c| *c)
    }

    /// Takes one unit of `key` below `limit`, starting from `seed` when the key is new;
    /// returns whether it was taken and the count after.
    pub fn take_quota(&self, key: &str, limit: u32, seed: u32) -> (bool, u32) {
        let mut count = self.quotas.entry(key.to_string()).or_insert(seed);
        if *count >= limit {
            return (false, *count);
        }
        *count += 1;
        (true, *count)
    }

    /// Gives back a unit taken for a send that then failed.
    pub fn give_back_quota(&self, key: &str) {
        if let Some(mut count) = self.quotas.get_mut(key) {
            *count = count.saturating_sub(1);
        }
    }

    /// Forgets every quota counter, so each starts again from its seed.
    pub fn forget_quotas(&self) {
        self.quotas.clear();
    }

    /// Every quota counter this process holds (to hand to Redis when it returns).
    pub fn quota_counts(&self) -> Vec<(String, u32)> {
        self.quotas.iter().map(|e| (e.key().clone(), *e.value())).collect()
    }

    /// Counts one event in a window of `length` that starts at its first event; the count
    /// after it and the time until the window ends.
    pub fn hit_window(&self, key: &str, length: Duration) -> (u32, Duration) {
        let now = Instant::now();
        let mut entry = self.windows.entry(key.to_string()).or_insert((0, now + length));
        if entry.1 <= now {
            *entry = (0, now + length);
        }
        entry.0 += 1;
        (entry.0, entry.1 - now)
    }

    /// Gives back an event counted in a window (while the window lasts).
    pub fn give_back_window(&self, key: &str) {
        if let Some(mut entry) = self.windows.get_mut(key)
            && entry.1 > Instant::now()
        {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// Forgets what no longer matters: idle rate keys, ended windows, other days.
    pub fn sweep(&self, today: &str) {
        for limiter in self.rates.iter() {
            limiter.retain_recent();
        }
        let now = Instant::now();
        self.windows.retain(|_, (_, ends)| *ends > now);
        self.quotas.retain(|key, _| key.ends_with(today));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_allows_its_burst_then_refuses() {
        let local = LocalLimits::default();
        let rate = Rate { limit: 3, period: Duration::from_secs(60) };
        let remaining: Vec<u32> = (0..3).map(|_| local.rate("u", rate)).map(|d| d.remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = local.rate("u", rate);
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::from_secs(19) && refused.retry_after <= Duration::from_secs(20));
        assert!(local.rate("v", rate).allowed, "keys are separate");
    }

    #[test]
    fn quotas_start_from_their_seed_and_stop_at_the_limit() {
        let local = LocalLimits::default();
        assert_eq!(local.take_quota("q:2026-11-28", 3, 1), (true, 2));
        assert_eq!(local.take_quota("q:2026-11-28", 3, 0), (true, 3));
        assert_eq!(local.take_quota("q:2026-11-28", 3, 0), (false, 3));
        local.give_back_quota("q:2026-11-28");
        assert_eq!(local.quota_count("q:2026-11-28"), Some(2));
        local.sweep("2026-11-29");
        assert_eq!(local.quota_count("q:2026-11-28"), None);
    }

    #[test]
    fn windows_count_until_they_end() {
        let local = LocalLimits::default();
        let (count, ends_in) = local.hit_window("w", Duration::from_millis(50));
        assert_eq!(count, 1);
        assert!(ends_in <= Duration::from_millis(50) && ends_in > Duration::from_millis(30));
        assert_eq!(local.hit_window("w", Duration::from_millis(50)).0, 2);
        local.give_back_window("w");
        assert_eq!(local.hit_window("w", Duration::from_millis(50)).0, 2, "a unit given back is taken again");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(local.hit_window("w", Duration::from_millis(50)).0, 1, "a new window");
    }
}
