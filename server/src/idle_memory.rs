//! Memory a load freed, handed back to the system once the load is over.
//!
//! mimalloc returns freed pages to the system only at a collection at least one purge delay
//! (a second) after they were freed, and collects on its own only as it allocates. After a
//! burst nothing allocates, so what the burst freed stayed resident (measured in
//! BENCHMARKS.md, "Memory after a load"). Each runtime calls [`thread_going_idle`] as its
//! threads park: a collection there hands back the pages that thread keeps for itself and
//! runs the program-wide purge of the pages any thread freed. A runtime's timers wake its
//! threads now and then, so one of them collects within seconds of a load's end. A thread
//! whose last park came within a second of its previous collection, and that no timer
//! wakes, keeps the few pages it holds for itself (BENCHMARKS.md: on disk, what the
//! program holds besides its data and code after a load is next to nothing).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// A busy thread parks thousands of times a second; collecting at most once a second per
/// thread bounds the cost (no change in replies per second or CPU per reply, measured) and
/// matches the purge delay.
pub const AT_MOST_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static COLLECTED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For a runtime's `on_thread_park`: collects the allocator's free pages, at most once
/// every [`AT_MOST_EVERY`] per thread.
pub fn thread_going_idle() {
    let now = Instant::now();
    if COLLECTED_AT.get().is_some_and(|then| now.duration_since(then) < AT_MOST_EVERY) {
        return;
    }
    COLLECTED_AT.set(Some(now));
    collect();
}

#[cfg(feature = "mimalloc")]
fn collect() {
    // Not forced: a forced collection also decommits at once what was freed a moment ago,
    // which a busy thread would fault back in.
    // SAFETY: mi_collect takes no pointer; it walks the calling thread's own heap and the
    // program's arenas under their own locks, and on a thread that never allocated through
    // mimalloc it does nothing.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

#[cfg(not(feature = "mimalloc"))]
fn collect() {}
