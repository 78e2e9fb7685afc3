//! Per-user limits. For now: the daily message count behind the `quota` object.

use chrono::{Days, NaiveTime, Utc};
use relay_protocol::{Quota, UserRole};

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
