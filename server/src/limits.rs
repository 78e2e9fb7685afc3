//! Per-user limits: the daily message count behind the `quota` object, and the lock that
//! makes a cap check and the write it guards one step for a user.

use chrono::{Days, NaiveTime, Utc};
use relay_protocol::{Quota, UserRole};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::store::{Store, StoreError};

/// Today's quota of a user: admins are unlimited, everyone else gets `daily_limit`.
pub async fn quota(store: &Store, daily_limit: Option<u32>, user: &AuthUser) -> Result<Quota, StoreError> {
    let today = Utc::now().date_naive();
    let used = store.messages_on(user.id, today).await?;
    Ok(quota_from(used, daily_limit, user.role))
}

/// Builds the quota object from today's count.
pub fn quota_from(messages_today: u32, daily_limit: Option<u32>, role: UserRole) -> Quota {
    let limit = if role == UserRole::Admin { None } else { daily_limit };
    let tomorrow = Utc::now().date_naive().checked_add_days(Days::new(1)).unwrap_or_else(|| Utc::now().date_naive());
    Quota {
        messages_today,
        limit,
        remaining: limit.map(|l| l.saturating_sub(messages_today)),
        resets_at: tomorrow.and_time(NaiveTime::MIN).and_utc(),
    }
}

/// How many locks users are spread over; two users rarely share one, and sharing only
/// serialises their checks.
const STRIPES: usize = 64;

/// Per-user locks, so that "count, compare with the cap, write" cannot interleave with the
/// same steps of a concurrent request of the same user (which would let both pass the cap).
pub struct UserLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for UserLocks {
    fn default() -> Self {
        UserLocks { stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() }
    }
}

impl UserLocks {
    /// Locks the user's stripe until the guard is dropped.
    pub async fn lock(&self, user: Uuid) -> MutexGuard<'_, ()> {
        let stripe = (user.as_u128() % STRIPES as u128) as usize;
        self.stripes[stripe].lock().await
    }
}
