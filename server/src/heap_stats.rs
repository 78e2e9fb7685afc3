//! Live-heap accounting for memory investigations (cargo feature `heap-stats`): how much of
//! the process's resident memory is memory the program holds, and how much the allocator
//! keeps after the program gave it back.
//!
//! The binary wraps its allocator in [`Counting`] and, with `RELAY_HEAP_STATS_SECS` set,
//! prints a line to stderr at that interval (see BENCHMARKS.md, "Memory after a load").
//! Off by default: every allocation then pays an extra atomic add.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Counters spread over cache lines so threads allocating at once rarely share one.
const SHARDS: usize = 16;

#[repr(align(64))]
struct Shard(AtomicI64);

static LIVE: [Shard; SHARDS] = [const { Shard(AtomicI64::new(0)) }; SHARDS];

/// The shard of the calling thread, from an address on its stack: threads' stacks lie far
/// apart, and finding it needs no thread-local (whose first use may allocate on some
/// targets, and an allocator must not allocate).
fn shard() -> &'static AtomicI64 {
    let mark = 0u8;
    let addr = std::hint::black_box(&mark) as *const u8 as usize;
    // Stacks are megabytes apart: the bits above 1 MiB tell threads apart.
    &LIVE[(addr >> 20) % SHARDS].0
}

/// A global allocator that counts the bytes handed out and not yet freed.
pub struct Counting<A>(pub A);

// SAFETY: every call is passed to the inner allocator unchanged; the counters only observe.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the inner allocator's.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            shard().fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            shard().fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) };
        shard().fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shard().fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

/// Bytes the program holds now (allocated and not freed), across all threads.
pub fn live_bytes() -> i64 {
    LIVE.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

/// The process's resident memory, from `/proc/self/statm` (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// With `RELAY_HEAP_STATS_SECS` set to a number of seconds (at least 1), starts a thread
/// that prints `heap-stats rss_mib=… live_mib=… rss_minus_live_mib=…` to stderr at that
/// interval. RSS less live is mostly what the allocator keeps after the program freed it,
/// plus the mapped binary and thread stacks; it can be negative, because live bytes count
/// zeroed allocations the program has not touched yet (not resident).
pub fn report_from_env() {
    let Some(secs) = std::env::var("RELAY_HEAP_STATS_SECS").ok().and_then(|s| s.parse::<u64>().ok()) else {
        return;
    };
    let every = Duration::from_secs(secs.max(1));
    let mib = |b: f64| b / (1024.0 * 1024.0);
    std::thread::Builder::new()
        .name("heap-stats".into())
        .spawn(move || {
            loop {
                let live = live_bytes() as f64;
                match resident_bytes() {
                    Some(rss) => eprintln!(
                        "heap-stats rss_mib={:.1} live_mib={:.1} rss_minus_live_mib={:.1}",
                        mib(rss as f64),
                        mib(live),
                        mib(rss as f64 - live)
                    ),
                    None => eprintln!("heap-stats rss_mib=n/a live_mib={:.1}", mib(live)),
                }
                std::thread::sleep(every);
            }
        })
        .expect("a thread for heap statistics");
}
