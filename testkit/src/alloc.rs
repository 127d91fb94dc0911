//! A global allocator that counts allocations, to prove that a hot path allocates nothing.
//!
//! A test binary installs it with
//! `#[global_allocator] static GLOBAL: Counting = Counting;` and reads [`allocations`]
//! around the part that must not allocate. The count is process-wide: every thread counts
//! unless it called [`ignore_this_thread`], or, once a test called [`count_only_the_engine_and_me`],
//! only the engine's threads and that test's thread count (libtest's own threads allocate
//! when they report a test running past 60 s, which a slow machine makes a false failure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The system allocator, counting every allocation and reallocation.
#[derive(Debug)]
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Set once a test counts only the engine's threads and its own.
static ONLY_MARKED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set on threads whose allocations are not part of what is measured.
    static IGNORED: Cell<bool> = const { Cell::new(false) };
    /// Set on a test's thread whose allocations count when only marked threads do.
    static MARKED: Cell<bool> = const { Cell::new(false) };
}

/// Allocations counted so far, in the whole process.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// Stops counting the calling thread's allocations (a bench's control thread, whose
/// bookkeeping is not part of the hot path).
pub fn ignore_this_thread() {
    IGNORED.with(|i| i.set(true));
}

/// From now on, counts only the allocations of the engine's threads (every engine's) and of
/// the calling thread, the one that drives the packets.
pub fn count_only_the_engine_and_me() {
    MARKED.with(|m| m.set(true));
    ONLY_MARKED.store(true, Ordering::SeqCst);
}

fn count() {
    let counted = if ONLY_MARKED.load(Ordering::Relaxed) {
        MARKED.with(Cell::get) || tunpipe::on_engine_thread()
    } else {
        !IGNORED.with(Cell::get)
    };
    if counted {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
