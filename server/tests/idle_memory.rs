//! A thread going idle hands back to the system what other threads freed of its memory.
//! Its own test binary: it reads the process's resident memory, which other tests running
//! beside it would move. The binary's own allocations go to the system allocator, so the
//! blocks allocated here are the only ones mimalloc holds.
#![cfg(feature = "mimalloc")]

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::rss_bytes;
use libmimalloc_sys as mi;
use relay_server::idle_memory::{AT_MOST_EVERY, thread_going_idle};

const BLOCKS: usize = 64 * 1024;
const SIZE: usize = 1024;
const FREED: usize = BLOCKS * SIZE;

/// 64 MiB of small blocks, allocated by mimalloc on the calling thread and written whole.
fn allocate() -> Vec<usize> {
    (0..BLOCKS)
        .map(|_| {
            // SAFETY: a plain allocation, written within its size.
            let p = unsafe { mi::mi_malloc(SIZE) };
            assert!(!p.is_null());
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 1, SIZE) };
            p as usize
        })
        .collect()
}

/// Frees, on this thread, blocks another thread allocated.
fn free(blocks: Vec<usize>) {
    for block in blocks {
        // SAFETY: allocated by mi_malloc in `allocate`, freed once.
        unsafe { mi::mi_free(block as *mut std::ffi::c_void) };
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What a load leaves: blocks one thread allocated and another freed (a request's buffers
/// handed to a writer, a task moved between workers) stay resident until a collection one
/// purge delay after they were freed; nothing collects once the load is over unless a
/// thread going idle does.
#[test]
fn going_idle_gives_back_what_other_threads_freed() {
    // The sleeps below follow mimalloc's default purge delay and decommitting purges.
    // mimalloc reads its variables whatever their case.
    if let Some((name, _)) = std::env::vars().find(|(name, _)| name.to_ascii_uppercase().starts_with("MIMALLOC_")) {
        panic!("this test measures mimalloc's defaults: unset {name}");
    }
    let (blocks_tx, blocks_rx) = mpsc::channel();
    let (freed_tx, freed_rx) = mpsc::channel();
    let owner = std::thread::spawn(move || {
        blocks_tx.send(allocate()).unwrap();
        freed_rx.recv().unwrap();
        let held = rss_bytes() as usize;
        thread_going_idle();
        // The first collection schedules the purge; a collection a purge delay later (a
        // second, as `AT_MOST_EVERY`) runs it.
        std::thread::sleep(AT_MOST_EVERY + Duration::from_millis(200));
        thread_going_idle();
        (held, rss_bytes() as usize)
    });
    free(blocks_rx.recv().unwrap());
    freed_tx.send(()).unwrap();
    let (held, after) = owner.join().unwrap();
    eprintln!("resident {:.1} MiB → {:.1} MiB", mib(held), mib(after));
    assert!(held >= FREED, "the freed blocks were resident: {held} bytes");
    assert!(after + FREED / 2 <= held, "going idle gave back {} of {FREED} bytes", held.saturating_sub(after));
}
