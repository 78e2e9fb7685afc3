//! Faults a test can inject into a server process, to make a rare interleaving happen on
//! demand: a database writer that is slow, a lease given up late, a publish that fails.
//!
//! Compiled only with the `fault-injection` feature (the test suite builds the binary with
//! it; release builds never have it), and read once from the environment of the process:
//!
//! - `RELAY_FAULT_WRITE_DELAY_MS`: every write-behind batch waits this long before it is
//!   written (writes queue up behind it, as behind a slow database).
//! - `RELAY_FAULT_WRITE_STALL_FILE=<path>`: while that file exists, no write-behind batch is
//!   written (a database that stops taking writes, on the test's cue).
//! - `RELAY_FAULT_RELEASE_DELAY_MS`: a stopped actor's lease is given up this much later
//!   (the window in which a new actor of the same session claims it).
//! - `RELAY_FAULT_FAIL_PUBLISH=<text>[*<count>]`: the first `count` (default 1) publish
//!   pipelines holding a message that contains `text` fail as if the connection broke.
//! - `RELAY_FAULT_SEARCH_DELAY_MS`: every search holds its turn this long before it asks
//!   the database (a slow search, so the next ones find every turn taken).

use std::time::Duration;

#[cfg(feature = "fault-injection")]
mod injected {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    pub struct Faults {
        pub write_delay: Option<Duration>,
        pub write_stall_file: Option<std::path::PathBuf>,
        pub release_delay: Option<Duration>,
        pub fail_publish: Option<(String, AtomicU32)>,
        pub search_delay: Option<Duration>,
    }

    fn millis(name: &str) -> Option<Duration> {
        std::env::var(name).ok()?.parse().ok().map(Duration::from_millis)
    }

    pub fn get() -> &'static Faults {
        static FAULTS: OnceLock<Faults> = OnceLock::new();
        FAULTS.get_or_init(|| Faults {
            write_delay: millis("RELAY_FAULT_WRITE_DELAY_MS"),
            write_stall_file: std::env::var("RELAY_FAULT_WRITE_STALL_FILE").ok().map(Into::into),
            release_delay: millis("RELAY_FAULT_RELEASE_DELAY_MS"),
            fail_publish: std::env::var("RELAY_FAULT_FAIL_PUBLISH").ok().map(|spec| {
                let (text, count) =
                    spec.rsplit_once('*').map_or((spec.as_str(), 1), |(t, n)| (t, n.parse().unwrap_or(1)));
                (text.to_owned(), AtomicU32::new(count))
            }),
            search_delay: millis("RELAY_FAULT_SEARCH_DELAY_MS"),
        })
    }

    pub fn take_publish_failure<'a>(mut payloads: impl Iterator<Item = &'a [u8]>) -> bool {
        let Some((text, left)) = &get().fail_publish else { return false };
        if left.load(Ordering::Acquire) == 0 {
            return false;
        }
        let matched = payloads.any(|p| p.windows(text.len()).any(|w| w == text.as_bytes()));
        matched && left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

/// How long each write-behind batch waits before it is written (`None` normally).
pub fn write_delay() -> Option<Duration> {
    #[cfg(feature = "fault-injection")]
    return injected::get().write_delay;
    #[cfg(not(feature = "fault-injection"))]
    None
}

/// Waits while writes are to stall (never, normally).
pub async fn write_stall() {
    #[cfg(feature = "fault-injection")]
    if let Some(file) = &injected::get().write_stall_file {
        while file.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long a stopped actor's lease release waits (`None` normally).
pub fn release_delay() -> Option<Duration> {
    #[cfg(feature = "fault-injection")]
    return injected::get().release_delay;
    #[cfg(not(feature = "fault-injection"))]
    None
}

/// How long a search holds its turn before it asks the database (`None` normally).
pub fn search_delay() -> Option<Duration> {
    #[cfg(feature = "fault-injection")]
    return injected::get().search_delay;
    #[cfg(not(feature = "fault-injection"))]
    None
}

/// Whether this publish pipeline (its messages' payloads) is to fail (never, normally).
pub fn fail_publish<'a>(payloads: impl Iterator<Item = &'a [u8]>) -> bool {
    #[cfg(feature = "fault-injection")]
    return injected::take_publish_failure(payloads);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = payloads;
        false
    }
}
