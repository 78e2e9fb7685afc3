//! Retention: a background job that archives sessions soft-deleted more than
//! `CHAT_ARCHIVE_AFTER_DAYS` ago (their messages leave the live table for
//! `chat_message_archive`) and purges, with every message, those deleted more than
//! `CHAT_PURGE_AFTER_DAYS` ago. It runs at start-up and then every
//! `CHAT_RETENTION_INTERVAL_SECS` (daily), in bounded batches so no transaction grows large.
//! It also deletes idempotency keys older than 24 hours.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Sessions handled per transaction.
const BATCH: usize = 500;

/// The time `age` before `now`, or the earliest time there is when that lies further back
/// (the configuration bounds ages, so that is only a guard: subtracting must never panic).
fn cutoff(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(age).ok().and_then(|age| now.checked_sub_signed(age)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What one run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Sessions archived.
    pub archived_sessions: u64,
    /// Messages moved to the archive.
    pub archived_messages: u64,
    /// Sessions purged.
    pub purged_sessions: u64,
    /// Messages purged (live or archived).
    pub purged_messages: u64,
    /// Idempotency keys past their 24 hours, deleted.
    pub expired_keys: u64,
}

/// The job and its settings.
pub struct Retention {
    /// The database.
    pub store: Store,
    /// Deleted sessions older than this are archived.
    pub archive_after: Duration,
    /// Deleted sessions older than this are purged.
    pub purge_after: Duration,
    /// How often the job runs after its first run at start-up.
    pub every: Duration,
    /// Where runs are counted.
    pub metrics: Arc<Metrics>,
}

impl Retention {
    /// Runs once: archives, then purges, batch by batch until nothing is left to do.
    pub async fn run(&self) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let cutoff = |age: Duration| cutoff(Utc::now(), age);
        loop {
            let (sessions, messages) = self.store.archive_deleted_before(cutoff(self.archive_after), BATCH).await?;
            report.archived_sessions += sessions;
            report.archived_messages += messages;
            if (sessions as usize) < BATCH {
                break;
            }
        }
        loop {
            let (sessions, messages) = self.store.purge_deleted_before(cutoff(self.purge_after), BATCH).await?;
            report.purged_sessions += sessions;
            report.purged_messages += messages;
            if (sessions as usize) < BATCH {
                break;
            }
        }
        // Idempotency keys hold a day; write-batch markers matter only while their writer
        // retries (a writer that stopped leaves one behind).
        loop {
            let (keys, markers) = self.store.expire_keys_and_markers(BATCH).await?;
            report.expired_keys += keys;
            if (keys.max(markers) as usize) < BATCH {
                break;
            }
        }
        let counted = [
            ("archived", report.archived_sessions, report.archived_messages),
            ("purged", report.purged_sessions, report.purged_messages),
        ];
        for (action, sessions, messages) in counted {
            self.metrics.retention_sessions.with_label_values(&[action]).inc_by(sessions);
            self.metrics.retention_messages.with_label_values(&[action]).inc_by(messages);
        }
        Ok(report)
    }

    /// Runs now and then every `every` until `stop`.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.run().await {
                    Ok(report) if report != RetentionReport::default() => {
                        tracing::info!(?report, "retention: old deleted sessions archived and purged")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "retention run failed; it runs again later"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_age_has_a_cutoff() {
        let now = Utc::now();
        assert_eq!(cutoff(now, Duration::from_secs(86_400)), now - chrono::Duration::days(1));
        assert_eq!(cutoff(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(cutoff(now, Duration::from_secs(u64::MAX / 2)), DateTime::<Utc>::MIN_UTC);
    }
}
