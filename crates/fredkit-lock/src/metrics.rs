//! Counters a user can read: [`LockMetrics`].

use fredkit_core::metrics::{Histogram, Labels, Tally};

/// Counters of one [`LockManager`](crate::LockManager) (its locks, its
/// semaphores). Read them with [`LockManager::metrics`](crate::LockManager::metrics);
/// with the `metrics` feature they are also recorded under
/// `fredkit_lock_*` (docs/observability.md).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) acquired: Tally,
    pub(crate) contended: Tally,
    pub(crate) timed_out: Tally,
    pub(crate) lost: Tally,
    pub(crate) renewals: Tally,
    pub(crate) released: Tally,
    pub(crate) release_not_held: Tally,
    pub(crate) wakeups: Tally,
    /// From `acquire` called to its answer (granted, busy or error).
    pub(crate) acquire_wait: Histogram,
    /// From a grant to its guard's release (or drop).
    pub(crate) hold: Histogram,
}

impl Counters {
    /// The counters of a manager under `prefix`, registered once.
    pub(crate) fn new(prefix: &str) -> Counters {
        let labels = Labels::new().with("prefix", prefix);
        let outcome = |o: &'static str| labels.clone().with("outcome", o);
        Counters {
            acquired: Tally::new("fredkit_lock_acquire_total", &outcome("granted")),
            contended: Tally::new("fredkit_lock_acquire_total", &outcome("contended")),
            timed_out: Tally::new("fredkit_lock_acquire_total", &outcome("timed_out")),
            lost: Tally::new("fredkit_lock_lost_total", &labels),
            renewals: Tally::new("fredkit_lock_renewals_total", &labels),
            released: Tally::new("fredkit_lock_release_total", &outcome("released")),
            release_not_held: Tally::new("fredkit_lock_release_total", &outcome("not_held")),
            wakeups: Tally::new("fredkit_lock_wakeups_total", &labels),
            acquire_wait: Histogram::new("fredkit_lock_acquire_wait_seconds", &labels),
            hold: Histogram::new("fredkit_lock_hold_seconds", &labels),
        }
    }

    pub(crate) fn add(counter: &Tally) {
        counter.add(1);
    }

    pub(crate) fn snapshot(&self) -> LockMetrics {
        LockMetrics {
            acquired: self.acquired.get(),
            contended: self.contended.get(),
            timed_out: self.timed_out.get(),
            lost: self.lost.get(),
            renewals: self.renewals.get(),
            released: self.released.get(),
            release_not_held: self.release_not_held.get(),
            wakeups: self.wakeups.get(),
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
