//! `search`: a database filled with many stored messages (written straight into the
//! tables, as a server left them), then searched over REST by their users: the latency of
//! one-word and three-word queries at every depth of word frequency.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::Utc;
use relay_protocol::{AuthResponse, Message, MessageStatus, Role, SearchResults, Session};
use relay_server::store::{Store, StoreConfig};
use serde::Serialize;
use uuid::Uuid;

use super::words::{Rng, word};
use crate::report::{latency_rows, line};
use crate::{Endpoint, Samples, Summary, Target};

/// What the `search` scenario does.
#[derive(Clone, Debug, Serialize)]
pub struct SearchConfig {
    /// Messages stored in all.
    pub messages: usize,
    /// Users they belong to (evenly).
    pub users: usize,
    /// Sessions per user.
    pub sessions_per_user: usize,
    /// Searches of each kind (one word, three words).
    pub queries: usize,
    /// Words in the vocabulary (drawn with a Zipf law, as words of a language are).
    pub vocabulary: usize,
}

/// The figures of a `search` run.
#[derive(Clone, Debug, Serialize)]
pub struct SearchReport {
    /// What ran.
    pub config: SearchConfig,
    /// Time to write the messages (s), and the rate.
    pub fill_secs: f64,
    /// Messages written per second while filling (the full-text index included).
    pub fill_per_sec: f64,
    /// One-word searches: the word's rank in the vocabulary is spread from common to rare.
    pub one_word: Summary,
    /// Three-word searches (three of the 30 most common words, so they meet in messages).
    pub three_words: Summary,
    /// Mean matches per one-word search, and per three-word search (of the searching user).
    pub mean_matches: (f64, f64),
    /// Searches that failed.
    pub errors: u64,
    /// Streams measured alone and beside searches, when asked for.
    pub streams: Option<super::search_streams::StreamsReport>,
}

impl fmt::Display for SearchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "search: {} messages of {} users ({} sessions each), {} searches of each kind",
            c.messages, c.users, c.sessions_per_user, c.queries
        )?;
        line(f, "fill", format!("{:.0} s, {:.0} messages/s", self.fill_secs, self.fill_per_sec))?;
        latency_rows(f, &[("search, one word", &self.one_word), ("search, three words", &self.three_words)])?;
        writeln!(
            f,
            "mean matches per search: {:.1} (one word), {:.1} (three words); errors: {}",
            self.mean_matches.0, self.mean_matches.1, self.errors
        )?;
        match &self.streams {
            Some(streams) => write!(f, "{streams}"),
            None => Ok(()),
        }
    }
}

/// Registers the users over the API (so they can log in), returning their ids and tokens.
pub async fn register(target: &Target, users: usize) -> anyhow::Result<Vec<AuthResponse>> {
    let endpoint = Endpoint::new(target).await?;
    let mut registered = Vec::with_capacity(users);
    for _ in 0..users {
        registered.push(endpoint.register().await?);
    }
    Ok(registered)
}

/// Writes the messages straight into the database at `database` (the server that uses it
/// stopped, or a SurrealDB server), a session at a time; returns the time it took.
pub async fn fill(
    database: &StoreConfig,
    users: &[AuthResponse],
    config: &SearchConfig,
    progress: bool,
) -> anyhow::Result<Duration> {
    fill_store(&Store::connect(database).await?, users, config, progress).await
}

/// Writes the messages through `store`, as [`fill`] does.
pub async fn fill_store(
    store: &Store,
    users: &[AuthResponse],
    config: &SearchConfig,
    progress: bool,
) -> anyhow::Result<Duration> {
    let cumulative: Vec<f64> = (1..=config.vocabulary)
        .scan(0.0, |sum, rank| {
            *sum += 1.0 / rank as f64;
            Some(*sum)
        })
        .collect();
    let words: Vec<String> = (0..config.vocabulary).map(word).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let per_session = config.messages.div_ceil(users.len() * config.sessions_per_user).max(1);
    let started = Instant::now();
    let mut written = 0;
    let mut last_report = Instant::now();
    let now = Utc::now();
    for user in users {
        for s in 0..config.sessions_per_user {
            if written >= config.messages {
                break;
            }
            let at = now - chrono::Duration::minutes((s * per_session) as i64);
            let session = Session::new(Uuid::new_v4(), format!("conversation {s}"), at);
            let messages: Vec<Message> = (0..per_session.min(config.messages - written))
                .map(|i| {
                    let length = 5 + (rng.next() % 56) as usize;
                    let content: Vec<&str> = (0..length).map(|_| words[rng.zipf(&cumulative)].as_str()).collect();
                    Message {
                        id: Uuid::new_v4(),
                        session_id: session.id,
                        role: if i % 2 == 0 { Role::User } else { Role::Assistant },
                        content: content.join(" "),
                        token_count: Some(length as u32),
                        status: MessageStatus::Complete,
                        created_at: at + chrono::Duration::seconds(i as i64),
                        superseded: false,
                        model: None,
                        replaced_by: None,
                    }
                })
                .collect();
            written += messages.len();
            store.import(&[(user.user.id, session)], &messages).await?;
            if progress && last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                let rate = written as f64 / started.elapsed().as_secs_f64();
                eprintln!("fill: {written} of {} messages, {rate:.0}/s", config.messages);
            }
        }
    }
    Ok(started.elapsed())
}

/// Waits until no process holds the embedded database's lock file (`relay.db/LOCK`), so a
/// server can open it; an error after `patience`.
pub async fn wait_unlocked(lock: &std::path::Path, patience: Duration) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + patience;
    loop {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(lock)?;
        // SAFETY: flock on a descriptor we own; the lock is released when `file` closes.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        drop(file);
        if taken {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{} is still locked after {patience:?}", lock.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Searches as the users, one search at a time: `queries` one-word searches (ranks spread
/// over the vocabulary, common to rare) and as many three-word ones.
pub async fn run(
    target: &Target,
    users: &[AuthResponse],
    config: &SearchConfig,
    fill: Duration,
) -> anyhow::Result<SearchReport> {
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut one, mut three) = (Samples::default(), Samples::default());
    let (mut matches_one, mut matches_three, mut errors) = (0u64, 0u64, 0u64);
    for i in 0..config.queries * 2 {
        let user = &users[(rng.next() % users.len() as u64) as usize];
        let query = if i % 2 == 0 {
            // Ranks 0, 1, 2, 4, 8 … up the vocabulary, so common words are searched as often as rare ones.
            let doublings = (config.vocabulary as f64).log2() as u64 + 1;
            let rank = ((1u64 << (rng.next() % doublings)) - 1) as usize;
            word(rank.min(config.vocabulary - 1))
        } else {
            (0..3).map(|_| word((rng.next() % 30) as usize)).collect::<Vec<_>>().join(" ")
        };
        let started = Instant::now();
        let response = http
            .get(format!("{}/api/v1/chat/search", target.server))
            .query(&[("q", query.as_str())])
            .bearer_auth(&user.token)
            .send()
            .await;
        let found = match response {
            Ok(r) if r.status() == 200 => r.json::<SearchResults>().await.ok(),
            _ => None,
        };
        let took = started.elapsed();
        match found {
            Some(found) if i % 2 == 0 => {
                one.record(took);
                matches_one += found.total;
            }
            Some(found) => {
                three.record(took);
                matches_three += found.total;
            }
            None => errors += 1,
        }
    }
    let per = |sum: u64| sum as f64 / config.queries.max(1) as f64;
    Ok(SearchReport {
        config: config.clone(),
        fill_secs: fill.as_secs_f64(),
        fill_per_sec: config.messages as f64 / fill.as_secs_f64().max(1e-9),
        one_word: one.summary(),
        three_words: three.summary(),
        mean_matches: (per(matches_one), per(matches_three)),
        errors,
        streams: None,
    })
}
