//! Retention: a background job that archives sessions soft-deleted more than
//! `CHAT_ARCHIVE_AFTER_DAYS` ago (their messages leave the live table for
//! `chat_message_archive`) and purges, with every message, those deleted more than
//! `CHAT_PURGE_AFTER_DAYS` ago. It runs at start-up and then every
//! `CHAT_RETENTION_INTERVAL_SECS` (daily), in bounded batches; a batch whose transaction
//! fails (its sessions' text may not fit the embedded database's memtable) is tried again
//! with half as many. It also deletes idempotency keys older than 24 hours.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Sessions handled per transaction, at most.
const BATCH: usize = 500;

/// Runs `step` (which handles up to the batch it is given, and answers how many it handled
/// and what went with them) until it handles fewer than it was given, or until `stop`,
/// checked between batches (a batch is a transaction: cut off, it would be rolled back
/// with an error logged). A step that fails is tried again with half the batch, down to
/// one, and the smaller batch is kept: the sessions of a batch may hold more text than one
/// transaction can take.
async fn in_batches<F, Fut>(stop: &CancellationToken, mut step: F) -> Result<(u64, u64), StoreError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, u64), StoreError>>,
{
    let (mut batch, mut handled, mut with) = (BATCH, 0, 0);
    loop {
        if stop.is_cancelled() {
            return Ok((handled, with));
        }
        match step(batch).await {
            Ok((n, m)) => {
                handled += n;
                with += m;
                if (n as usize) < batch {
                    return Ok((handled, with));
                }
            }
            Err(error) if batch > 1 => {
                tracing::warn!(%error, batch, "a retention batch failed; trying half as many");
                batch /= 2;
            }
            Err(error) => return Err(error),
        }
    }
}

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
    /// Runs once: archives, then purges, then expires keys, each batch by batch until
    /// nothing is left to do. A step that fails does not keep the next from running (a
    /// session too large to archive in one transaction must not stop purges); the first
    /// failure is the run's answer.
    pub async fn run(&self) -> Result<RetentionReport, StoreError> {
        self.run_until(&CancellationToken::new()).await
    }

    /// [`Retention::run`], ending between two batches once `stop` is cancelled; the next
    /// run finds what is left.
    async fn run_until(&self, stop: &CancellationToken) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let mut failed = None;
        let mut note = |step: &str, result: Result<(u64, u64), StoreError>| match result {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, step, "a retention step failed");
                failed.get_or_insert(error);
                (0, 0)
            }
        };
        let cutoff = |age: Duration| cutoff(Utc::now(), age);
        (report.archived_sessions, report.archived_messages) = note(
            "archive",
            in_batches(stop, |batch| self.store.archive_deleted_before(cutoff(self.archive_after), batch)).await,
        );
        (report.purged_sessions, report.purged_messages) = note(
            "purge",
            in_batches(stop, |batch| self.store.purge_deleted_before(cutoff(self.purge_after), batch)).await,
        );
        // Idempotency keys hold a day; write-batch markers matter only while their writer
        // retries (a writer that stopped leaves one behind).
        (_, report.expired_keys) = note(
            "expire keys",
            in_batches(stop, |batch| async move {
                let (keys, markers) = self.store.expire_keys_and_markers(batch).await?;
                Ok((keys.max(markers), keys))
            })
            .await,
        );
        let counted = [
            ("archived", report.archived_sessions, report.archived_messages),
            ("purged", report.purged_sessions, report.purged_messages),
        ];
        for (action, sessions, messages) in counted {
            self.metrics.retention_sessions.with_label_values(&[action]).inc_by(sessions);
            self.metrics.retention_messages.with_label_values(&[action]).inc_by(messages);
        }
        failed.map_or(Ok(report), Err)
    }

    /// Runs now and then every `every` until `stop`, which also ends a run under way after
    /// its current batch. The task ends once stopped, so a shutdown can wait for it before
    /// closing the database.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.run_until(&stop).await {
                    Ok(report) if report != RetentionReport::default() => {
                        tracing::info!(?report, "retention: old deleted sessions archived and purged")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "retention run failed; it runs again later"),
                }
            }
        })
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

    /// A batch too large for one transaction is halved until it fits, and the work goes
    /// on at that size to the end; a step that fails even alone fails the run.
    #[tokio::test]
    async fn a_failing_batch_is_halved_until_it_fits() {
        let left = std::cell::Cell::new(1_000u64);
        let asked = std::cell::RefCell::new(Vec::new());
        let done = in_batches(&CancellationToken::new(), |batch| {
            asked.borrow_mut().push(batch);
            let result = if batch > 100 {
                Err(StoreError::Batch("Memtable arena is full".into()))
            } else {
                let n = left.get().min(batch as u64);
                left.set(left.get() - n);
                Ok((n, 2 * n))
            };
            async move { result }
        })
        .await
        .unwrap();
        assert_eq!(done, (1_000, 2_000));
        let asked = asked.into_inner();
        assert_eq!(&asked[..3], &[500, 250, 125]);
        assert!(asked[3..].iter().all(|&b| b == 62), "{asked:?}");
        let never =
            in_batches(&CancellationToken::new(), |_| async { Err::<(u64, u64), _>(StoreError::Timeout) }).await;
        assert!(matches!(never, Err(StoreError::Timeout)));
    }

    /// A stop lets the batch under way finish (it is a transaction) and starts no other.
    #[tokio::test]
    async fn a_stop_ends_the_work_between_batches() {
        let stop = CancellationToken::new();
        let batches = std::cell::Cell::new(0u64);
        let done = in_batches(&stop, |batch| {
            batches.set(batches.get() + 1);
            if batches.get() == 2 {
                stop.cancel();
            }
            // Work for four batches, were it not stopped.
            let handled = if batches.get() < 4 { batch as u64 } else { 0 };
            async move { Ok((handled, 1)) }
        })
        .await
        .unwrap();
        assert_eq!(batches.get(), 2);
        assert_eq!(done, (2 * BATCH as u64, 2));
    }
}
