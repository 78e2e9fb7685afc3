//! A circuit breaker for the model provider: after `threshold` consecutive failures it
//! opens and every request is refused at once (no provider call, no waiting) for the
//! cooldown; then one probe request is let through (half-open), whose outcome closes the
//! breaker again or reopens it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the breaker stands, as `/metrics` shows it (`0` closed, `1` open, `2` half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed = 0,
    /// Requests are refused until the cooldown ends.
    Open = 1,
    /// One probe is in flight; others are refused until it ends.
    HalfOpen = 2,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The breaker; shared by every request of one server.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    threshold: u32,
    cooldown: Duration,
}

/// Why a request may not go to the provider now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// How long until the breaker lets a probe through.
    pub retry_after: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker { inner: Mutex::new(Inner::Closed { failures: 0 }), threshold: threshold.max(1), cooldown }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks to send a request: allowed when closed, or as the one probe once the cooldown
    /// of an open breaker has passed.
    pub fn permit(&self) -> Result<(), Refused> {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *inner = Inner::HalfOpen;
                    Ok(())
                } else {
                    Err(Refused { retry_after: until - now })
                }
            }
            Inner::HalfOpen => Err(Refused { retry_after: self.cooldown }),
        }
    }

    /// The request reached the provider and it answered: close.
    pub fn success(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }

    /// The provider failed (unreachable, 5xx, timed out, rejected our key); returns true
    /// when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut inner = self.lock();
        let failures = match *inner {
            Inner::Closed { failures } => failures + 1,
            // A failed probe reopens at once.
            Inner::HalfOpen | Inner::Open { .. } => self.threshold,
        };
        if failures >= self.threshold {
            *inner = Inner::Open { until: Instant::now() + self.cooldown };
            true
        } else {
            *inner = Inner::Closed { failures };
            false
        }
    }

    /// A request that was let through ended without telling anything about the provider
    /// (the caller went away): a probe gives its place back.
    pub fn abandon(&self) {
        let mut inner = self.lock();
        if matches!(*inner, Inner::HalfOpen) {
            *inner = Inner::Open { until: Instant::now() };
        }
    }

    /// The state now, for metrics.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let breaker = Breaker::new(3, Duration::from_millis(50));
        assert!(!breaker.failure());
        breaker.success();
        assert!(!breaker.failure());
        assert!(!breaker.failure());
        assert!(breaker.failure(), "the third consecutive failure opens it");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.permit().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.permit().is_ok(), "one probe after the cooldown");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.permit().is_err(), "only one");
        assert!(breaker.failure(), "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.permit().is_ok());
        breaker.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.permit().is_ok());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_one_through() {
        let breaker = Breaker::new(1, Duration::from_millis(10));
        breaker.failure();
        std::thread::sleep(Duration::from_millis(15));
        assert!(breaker.permit().is_ok());
        breaker.abandon();
        assert!(breaker.permit().is_ok());
    }
}
