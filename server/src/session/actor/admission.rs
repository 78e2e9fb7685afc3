//! Letting a send through the user's limits: the stored-message cap (under the user's
//! lock), the daily quota and the send rate; and giving back what a send that failed took.

use std::time::Duration;

use chrono::Utc;
use relay_protocol::{ErrorBody, ErrorCode, UserRole};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::*;
use crate::auth::AuthUser;
use crate::cluster::{ClusterError, UserLock};
use crate::limits::{self, Rate, RateDecision};

/// How many write deadlines the storage cap's lock is held at most: a check, a durable
/// save, and the wait for a save that timed out.
const STORAGE_LOCK_DEADLINES: u32 = 3;

/// What letting a send through took from the user's limits.
pub(super) struct Admission {
    /// The daily counter a unit was taken from, to give back if the send fails after all.
    quota_key: Option<String>,
    /// The send rate after this send.
    pub(super) rate: Option<RateDecision>,
    /// Held from the storage-cap check until the message is stored with its count, so
    /// concurrent sends of one user to many sessions cannot all pass one check.
    storage: Option<StorageLock>,
}

/// The user's lock for the storage cap: this node's, and the cluster's when there is one.
struct StorageLock {
    _local: OwnedMutexGuard<()>,
    cluster: Option<UserLock>,
}

/// Whether a send's message still has to be stored (and so checked against the user's
/// stored-message cap), or is stored already (a repeated send whose reply is generated now).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Storing {
    /// A new message: the cap applies.
    NewMessage,
    /// The message is stored already.
    Stored,
}

impl Admission {
    /// Gives back what the send took (it failed after all).
    pub(super) async fn give_back(self, deps: &SessionDeps) {
        if let Some(key) = &self.quota_key {
            deps.limiter.give_back_quota(key).await;
        }
        self.release().await;
    }

    /// Keeps what the send took (its message is queued, and is stored once the database
    /// takes it) and lets the user's next send check the storage cap only once the
    /// user's queued writes are stored, or the lock's time is up.
    pub(super) fn keep_until_stored(self, deps: &SessionDeps, owner: Uuid) {
        let writes = deps.writes.clone();
        let hold = STORAGE_LOCK_DEADLINES * writes.deadline();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(hold, writes.flush_user(owner)).await;
            self.release().await;
        });
    }

    /// Lets the user's next send check the storage cap.
    pub(super) async fn release(self) {
        if let Some(StorageLock { cluster: Some(lock), .. }) = self.storage {
            lock.release().await;
        }
    }
}

impl SessionState {
    /// Lets a send through the user's storage cap, daily quota and send rate (admins have
    /// none of them), or refuses it before anything is stored or billed. The quota is taken
    /// first and given back if the rate refuses, so a refused send costs nothing. The
    /// storage cap is checked under the user's lock, held until the message is stored.
    pub(super) async fn admit(&self, user: &AuthUser, storing: Storing) -> Result<Admission, SessionError> {
        let mut admission = Admission { quota_key: None, rate: None, storage: None };
        if user.role == UserRole::Admin {
            return Ok(admission);
        }
        let (settings, limiter) = (&self.deps.settings, &self.deps.limiter);
        if let (Some(max), Storing::NewMessage) = (settings.max_stored_messages, storing) {
            let storage = self.storage_lock(user.id).await?;
            let stored = self.deps.store.stored_messages(user.id).await;
            let stored = match stored {
                Ok(stored) => stored,
                Err(e) => {
                    Admission { quota_key: None, rate: None, storage: Some(storage) }.release().await;
                    return Err(e.into());
                }
            };
            admission.storage = Some(storage);
            if stored >= max {
                admission.release().await;
                self.deps.metrics.limit_refused("stored_messages");
                return Err(SessionError::StorageFull(max));
            }
        }
        if let Some(limit) = settings.daily_quota {
            let day = Utc::now().date_naive();
            let key = limits::quota_key(user.id, day);
            let taken = limiter.take_quota(&key, limit, self.deps.store.messages_on(user.id, day)).await;
            let (taken, used) = match taken {
                Ok(taken) => taken,
                Err(e) => {
                    admission.release().await;
                    return Err(e.into());
                }
            };
            if !taken {
                admission.release().await;
                self.deps.metrics.limit_refused("daily_quota");
                let wait = limits::until_midnight();
                return Err(SessionError::QuotaExceeded(RateDecision {
                    allowed: false,
                    limit,
                    remaining: limit.saturating_sub(used),
                    retry_after: wait,
                    reset_after: wait,
                }));
            }
            admission.quota_key = Some(key);
        }
        if let Some(per_minute) = settings.rate_per_minute {
            let rate = Rate { limit: per_minute, period: Duration::from_secs(60) };
            let decision = limiter.rate(&limits::send_rate_key(user.id), rate).await;
            if !decision.allowed {
                admission.give_back(&self.deps).await;
                self.deps.metrics.limit_refused("send_rate");
                return Err(SessionError::RateLimited(decision));
            }
            admission.rate = Some(decision);
        }
        Ok(admission)
    }

    /// The user's storage-cap lock: this node's, then (in a cluster) the cluster's, for as
    /// long as a check and a durable save can take. Without Redis answering, the node's
    /// alone (logged); while another node holds it for longer than that, the send is
    /// refused (`unavailable`), never let through unchecked.
    async fn storage_lock(&self, user: Uuid) -> Result<StorageLock, SessionError> {
        let local = self.deps.user_locks.lock_owned(user).await;
        let Some(cluster) = &self.deps.cluster else { return Ok(StorageLock { _local: local, cluster: None }) };
        let hold = STORAGE_LOCK_DEADLINES * self.deps.writes.deadline();
        let cluster = match cluster.lock_user(user, "stored", hold).await {
            Ok(lock) => Some(lock),
            Err(ClusterError::Timeout) => {
                let busy = ErrorBody {
                    retry_after_ms: Some(500),
                    ..ErrorBody::new(ErrorCode::Unavailable, "another message of yours is being stored; retry")
                };
                return Err(SessionError::Reported(busy));
            }
            Err(e) => {
                tracing::warn!(user_id = %user, error = %e, "no cluster lock for the storage cap; checking on this node only");
                None
            }
        };
        Ok(StorageLock { _local: local, cluster })
    }
}
