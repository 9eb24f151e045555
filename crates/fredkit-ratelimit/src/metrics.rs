//! Counters a user can read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`Limiter`](crate::Limiter) (shared by its clones) or
/// one [`LoginThrottle`](crate::LoginThrottle).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) allowed: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) fail_open: AtomicU64,
    pub(crate) fail_closed: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// A point-in-time copy of a limiter's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Checks Redis allowed (cost 0 state reads included).
    pub allowed: u64,
    /// Checks Redis denied.
    pub denied: u64,
    /// Checks answered "allowed" without Redis because it was unavailable
    /// (or the circuit breaker was open) and the fail mode is
    /// [`FailMode::Open`](fredkit_core::FailMode::Open).
    pub fail_open: u64,
    /// Checks answered "denied" without Redis because it was unavailable
    /// (or the circuit breaker was open) and the fail mode is
    /// [`FailMode::Closed`](fredkit_core::FailMode::Closed).
    pub fail_closed: u64,
    /// Checks that returned an error (misuse, or Redis answering something
    /// unexpected).
    pub errors: u64,
}

impl Metrics {
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            fail_open: self.fail_open.load(Ordering::Relaxed),
            fail_closed: self.fail_closed.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
