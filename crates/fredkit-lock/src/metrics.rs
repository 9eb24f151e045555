//! Counters a user can read: [`LockMetrics`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`LockManager`](crate::LockManager) (its locks, its
/// semaphores). Read them with [`LockManager::metrics`](crate::LockManager::metrics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) acquired: AtomicU64,
    pub(crate) contended: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) release_not_held: AtomicU64,
    pub(crate) wakeups: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LockMetrics {
        LockMetrics {
            acquired: self.acquired.load(Ordering::Relaxed),
            contended: self.contended.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            renewals: self.renewals.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            release_not_held: self.release_not_held.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a manager's counters (locks and semaphore permits
/// together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockMetrics {
    /// Grants (locks and permits).
    pub acquired: u64,
    /// Attempts that found the lock held or every permit taken.
    pub contended: u64,
    /// `acquire` calls that waited their whole `wait` without a grant.
    pub timed_out: u64,
    /// Guards marked lost (renewal found the lock gone, no renewal for a
    /// whole TTL, or `extend` returned `false`).
    pub lost: u64,
    /// Successful watchdog renewals.
    pub renewals: u64,
    /// Releases that freed a lock or permit still held.
    pub released: u64,
    /// Releases that found the lock or permit no longer held (expired).
    pub release_not_held: u64,
    /// Wake-up messages received for local waiters.
    pub wakeups: u64,
}
