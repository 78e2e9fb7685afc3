//! What a running mock shares between requests: its settings, its counters and journal,
//! and the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::settings::MockSettings;

/// One chat completion request as the mock saw it (with [`MockSettings::journal`]).
#[derive(Clone, Debug, Serialize)]
pub struct JournalEntry {
    /// When it arrived.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When its response ended (`None` while it runs).
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How it ended.
    pub outcome: JournalOutcome,
    /// The client's `User-Agent` (which node asked).
    pub user_agent: Option<String>,
    /// The text of the last user message.
    pub last_user: String,
}

/// How a journaled request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalOutcome {
    /// Still answering.
    Running,
    /// The whole reply was sent.
    Completed,
    /// The client went away first.
    ClosedEarly,
    /// Refused (a bad request, a fault status) before any reply.
    Refused,
}

/// A snapshot of what the mock has seen, also served as JSON by `GET /mock/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    /// Chat completion POSTs received.
    pub requests: u64,
    /// Streaming responses that began.
    pub streams_started: u64,
    /// Streaming responses whose `data: [DONE]` was handed to the body.
    pub streams_completed: u64,
    /// Responses (streaming or not) dropped before completion because the client went away.
    pub streams_closed_early: u64,
    /// Streaming responses currently in flight; a gauge, so `/mock/reset` leaves it alone.
    pub active_streams: u64,
    /// The last chat completion request body that parsed as JSON.
    pub last_request: Option<Value>,
}

/// The shared state behind a mock router: settings, live stats and the shutdown signal.
#[derive(Clone, Debug)]
pub struct MockState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: MockSettings,
    // A watch channel doubles as the stats store and the change notifier, so
    // `wait_for_closed_early` wakes exactly when a counter moves, without polling.
    stats: watch::Sender<MockStats>,
    // Ends stalled and in-flight streams on shutdown; otherwise graceful
    // shutdown would wait forever for a stalled client.
    shutdown: CancellationToken,
    // How many requests carried each last user message with a `fail_first` directive, so
    // the first N of them fail and the rest (a client's retries) succeed.
    attempts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    // Every request, when `settings.journal` is on.
    journal: std::sync::Mutex<Vec<JournalEntry>>,
}

impl MockState {
    /// Creates fresh state with zeroed stats for the given settings.
    pub fn new(settings: MockSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                stats: watch::Sender::new(MockStats::default()),
                shutdown: CancellationToken::new(),
                attempts: Default::default(),
                journal: Default::default(),
            }),
        }
    }

    /// Every request so far, oldest first (empty unless [`MockSettings::journal`] is on).
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.inner.journal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes a request's arrival; returns its place in the journal.
    pub(crate) fn journal_start(&self, user_agent: Option<String>, last_user: &str) -> Option<usize> {
        if !self.inner.settings.journal {
            return None;
        }
        let mut journal = self.inner.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.push(JournalEntry {
            started_at: chrono::Utc::now(),
            ended_at: None,
            outcome: JournalOutcome::Running,
            user_agent,
            last_user: last_user.to_owned(),
        });
        Some(journal.len() - 1)
    }

    /// Notes how a journaled request ended.
    pub(crate) fn journal_end(&self, entry: Option<usize>, outcome: JournalOutcome) {
        let Some(i) = entry else { return };
        let mut journal = self.inner.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = journal.get_mut(i)
            && entry.ended_at.is_none()
        {
            entry.ended_at = Some(chrono::Utc::now());
            entry.outcome = outcome;
        }
    }

    /// Returns the settings every request starts from.
    pub fn settings(&self) -> &MockSettings {
        &self.inner.settings
    }

    /// Returns a snapshot of the stats.
    pub fn stats(&self) -> MockStats {
        self.inner.stats.borrow().clone()
    }

    /// Zeroes the counters and forgets the last request, keeping the `active_streams` gauge.
    pub fn reset(&self) {
        self.inner.attempts.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.inner.stats.send_modify(|s| *s = MockStats { active_streams: s.active_streams, ..MockStats::default() });
    }

    /// Waits until `streams_closed_early >= at_least`, returning false if `timeout` passes first.
    pub async fn wait_for_closed_early(&self, at_least: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.stats.subscribe();
        let waited =
            tokio::time::timeout(timeout, async { rx.wait_for(|s| s.streams_closed_early >= at_least).await.is_ok() })
                .await;
        matches!(waited, Ok(true))
    }

    /// Cancelled when the mock shuts down: ends stalled and in-flight streams.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Counts one more request carrying `message` (for `fail_first`); returns how many
    /// have, this one included.
    pub(crate) fn attempt(&self, message: &str) -> usize {
        let mut attempts = self.inner.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let seen = attempts.entry(message.to_owned()).or_default();
        *seen += 1;
        *seen
    }

    /// Ends every in-flight response abruptly; used when the server stops.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    pub(crate) fn modify(&self, f: impl FnOnce(&mut MockStats)) {
        self.inner.stats.send_modify(f);
    }
}
