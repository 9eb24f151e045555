//! A counting global allocator for `flags.eval_allocs`, cheap when not
//! counting.
//!
//! Every allocation goes to the system allocator, as without it. While
//! [`count`] runs a closure, allocations made *by that thread* (alloc,
//! alloc_zeroed, realloc) are counted in a thread-local; other threads are
//! not counted. When nothing is being counted, the only extra work per
//! allocation is one relaxed load of a global flag that is never written
//! then (no shared cache line bounces) and a predicted branch: the `flags`
//! suite measures that cost (`flags.alloc_counter_overhead_ns`) so that other
//! suites' figures can be trusted not to move.
//!
//! The workspace forbids `unsafe`; this crate's lints only deny it, and this
//! module is the one place allowed to use it (a `GlobalAlloc` impl cannot be
//! written without it). No crate does the same with an off switch:
//! allocation-counter, for one, counts on every thread at every allocation.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many [`count`] calls are running (any thread).
static COUNTING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Allocations of this thread while counting. Const-initialised and
    /// without a destructor: safe to touch from inside the allocator.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting when asked to.
pub(crate) struct CountingAlloc;

#[inline(always)]
fn note() {
    if COUNTING.load(Ordering::Relaxed) != 0 {
        let _ = ALLOCS.try_with(|c| c.set(c.get().wrapping_add(1)));
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping does not allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the number of allocations (alloc,
/// alloc_zeroed, realloc) this thread made meanwhile.
pub(crate) fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNTING.fetch_add(1, Ordering::SeqCst);
    let before = ALLOCS.with(Cell::get);
    let out = f();
    let after = ALLOCS.with(Cell::get);
    COUNTING.fetch_sub(1, Ordering::SeqCst);
    (out, after.wrapping_sub(before))
}

/// Nanoseconds per alloc+dealloc pair of `size` bytes through the global
/// allocator (not counting) minus the same straight on `System`: what the
/// counter costs every other suite; and the `System` pair's own cost.
/// Medians of `rounds` timed runs of `n` pairs each, alternating the two
/// (short runs, many of them: a run that the scheduler cut into does not
/// move a median).
pub(crate) fn overhead_ns(size: usize, n: u64, rounds: usize) -> (f64, f64) {
    use std::hint::black_box;
    use std::time::Instant;
    let Ok(layout) = Layout::from_size_align(size.max(1), 8) else {
        return (f64::NAN, f64::NAN);
    };
    let mut diffs = Vec::with_capacity(rounds);
    let mut plain = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        for _ in 0..n {
            // SAFETY: a non-zero-sized layout; the pointer is freed at once
            // with the same layout (a null one is skipped).
            unsafe {
                let p = GLOBAL.alloc(black_box(layout));
                if !p.is_null() {
                    GLOBAL.dealloc(black_box(p), layout);
                }
            }
        }
        let ours = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            // SAFETY: as above.
            unsafe {
                let p = System.alloc(black_box(layout));
                if !p.is_null() {
                    System.dealloc(black_box(p), layout);
                }
            }
        }
        let system = t.elapsed().as_nanos() as f64 / n as f64;
        diffs.push(ours - system);
        plain.push(system);
    }
    (
        crate::harness::median(&diffs),
        crate::harness::median(&plain),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_threads_allocations_only_while_asked() {
        let (v, n) = count(|| {
            let v: Vec<Box<u64>> = (0..10).map(Box::new).collect();
            std::hint::black_box(v).len()
        });
        assert_eq!(v, 10);
        // Ten boxes and the vector itself.
        assert_eq!(n, 11);
        let ((), n) = count(|| {
            std::hint::black_box(1 + 1);
        });
        assert_eq!(n, 0);
    }
}
