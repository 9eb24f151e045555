//! Counters a user can read.

use fredkit_core::metrics::{Labels, Tally};

/// Counters of one [`Publisher`](crate::Publisher) or [`Subscriber`](crate::Subscriber);
/// with the `metrics` feature each is also recorded as
/// `fredkit_pubsub_<counter>_total{role}` (docs/observability.md; the
/// instances of one role add up).
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) published: Tally,
    pub(crate) received: Tally,
    pub(crate) decode_errors: Tally,
    pub(crate) lagged: Tally,
    pub(crate) resubscribes: Tally,
    pub(crate) silent_reconnects: Tally,
    pub(crate) resubscribe_failures: Tally,
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
            published: self.published.get(),
            received: self.received.get(),
            decode_errors: self.decode_errors.get(),
            lagged: self.lagged.get(),
            resubscribes: self.resubscribes.get(),
            silent_reconnects: self.silent_reconnects.get(),
            resubscribe_failures: self.resubscribe_failures.get(),
        }
    }

    pub(crate) fn add(counter: &Tally, n: u64) {
        counter.add(n);
    }

    /// The counters of a publisher or subscriber (`role`), registered once.
    pub(crate) fn new(role: &'static str) -> Metrics {
        let labels = Labels::new().with("role", role);
        let tally = |name: &'static str| Tally::new(name, &labels);
        Metrics {
            published: tally("fredkit_pubsub_published_total"),
            received: tally("fredkit_pubsub_received_total"),
            decode_errors: tally("fredkit_pubsub_decode_errors_total"),
            lagged: tally("fredkit_pubsub_lagged_total"),
            resubscribes: tally("fredkit_pubsub_resubscribes_total"),
            silent_reconnects: tally("fredkit_pubsub_silent_reconnects_total"),
            resubscribe_failures: tally("fredkit_pubsub_resubscribe_failures_total"),
        }
    }
}
