//! Counters a user can read.

use fredkit_core::metrics::{Histogram, Labels, Tally};

/// Counters of one [`Limiter`](crate::Limiter) (shared by its clones) or
/// one [`LoginThrottle`](crate::LoginThrottle); with the `metrics` feature
/// also recorded as `fredkit_ratelimit_check_total{outcome}` and
/// `fredkit_ratelimit_check_seconds` (docs/observability.md).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) allowed: Tally,
    pub(crate) denied: Tally,
    pub(crate) fail_open: Tally,
    pub(crate) fail_closed: Tally,
    pub(crate) errors: Tally,
    /// The time of one check, whatever its outcome.
    pub(crate) latency: Histogram,
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
    /// The metrics of a limiter (`kind` "limiter" or "login") under
    /// `prefix`, registered once.
    pub(crate) fn new(kind: &'static str, prefix: &str) -> Metrics {
        let labels = Labels::new().with("prefix", prefix).with("kind", kind);
        let outcome = |o: &'static str| labels.clone().with("outcome", o);
        const CHECKS: &str = "fredkit_ratelimit_check_total";
        Metrics {
            allowed: Tally::new(CHECKS, &outcome("allowed")),
            denied: Tally::new(CHECKS, &outcome("denied")),
            fail_open: Tally::new(CHECKS, &outcome("fail_open")),
            fail_closed: Tally::new(CHECKS, &outcome("fail_closed")),
            errors: Tally::new(CHECKS, &outcome("error")),
            latency: Histogram::new("fredkit_ratelimit_check_seconds", &labels),
        }
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            allowed: self.allowed.get(),
            denied: self.denied.get(),
            fail_open: self.fail_open.get(),
            fail_closed: self.fail_closed.get(),
            errors: self.errors.get(),
        }
    }

    pub(crate) fn bump(counter: &Tally) {
        counter.add(1);
    }
}
