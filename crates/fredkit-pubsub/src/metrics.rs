//! Counters a user can read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`Publisher`](crate::Publisher) or [`Subscriber`](crate::Subscriber).
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) lagged: AtomicU64,
    pub(crate) resubscribes: AtomicU64,
    pub(crate) silent_reconnects: AtomicU64,
    pub(crate) resubscribe_failures: AtomicU64,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Messages published.
    pub published: u64,
    /// Messages received from Redis (before fan-out to local receivers).
    pub received: u64,
    /// Messages a receiver could not decode.
    pub decode_errors: u64,
    /// Messages local receivers missed because they fell behind (sum of `Lagged(n)`).
    pub lagged: u64,
    /// Times the subscriber resubscribed after a reconnect or lost messages (gaps).
    pub resubscribes: u64,
    /// Times the subscriber's liveness probe found its connection silent (a
    /// `PING` unanswered for three command timeouts, at least 3 s, while the
    /// connection still counted as up: a paused or dead server, a half-open
    /// TCP connection) and forced a reconnection. Always 0 on a
    /// [`Publisher`](crate::Publisher).
    pub silent_reconnects: u64,
    /// (Re)subscribe attempts after a (re)connect — or for the first
    /// connection of a subscriber made while Redis was down — that failed
    /// or timed out and were retried with backoff. Always 0 on a
    /// [`Publisher`](crate::Publisher).
    pub resubscribe_failures: u64,
}

impl Metrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
            resubscribes: self.resubscribes.load(Ordering::Relaxed),
            silent_reconnects: self.silent_reconnects.load(Ordering::Relaxed),
            resubscribe_failures: self.resubscribe_failures.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
