//! Counters a user can read: [`RevocationMetrics`].

use fredkit_core::metrics::{Histogram, Labels, Tally};

/// A snapshot of a [`Revocations`](crate::Revocations) store's counters,
/// counted since it was created (clones share them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevocationMetrics {
    /// Reads answered: every `is_revoked` and `check` that returned `Ok`
    /// (a read cancelled before its answer is not counted).
    pub checks: u64,
    /// Reads that found the token revoked (by id, subject or organisation) —
    /// in Redis or in the local cache. Fail-closed answers are not counted
    /// here.
    pub revoked_hits: u64,
    /// Reads answered "not revoked" because Redis was unavailable
    /// ([`FailMode::Open`](fredkit_core::FailMode::Open)).
    pub fail_open: u64,
    /// Reads answered "revoked" because Redis was unavailable
    /// ([`FailMode::Closed`](fredkit_core::FailMode::Closed)).
    pub fail_closed: u64,
    /// Round trips the read path sent to Redis (one per `is_revoked` or
    /// `check` that was not answered locally or refused by the breaker).
    pub redis_reads: u64,
    /// Reads answered from the local cache without a round trip.
    pub local_answers: u64,
    /// Times the local cache was flushed because messages may have been
    /// lost (resubscribe gap, lagging receiver, undecodable event).
    pub cache_flushes: u64,
    /// Revocation events received from other instances (and this one) on
    /// the event channel. Counted after the event has been applied to the
    /// local cache: once this count covers an event, checks answer from it.
    pub events_received: u64,
    /// Revocations stored in Redis whose event could not be published
    /// (other instances' caches then learn of it within their `ttl`).
    pub publish_failures: u64,
}

/// One counter on its own cache line: the hot ones are bumped by every
/// worker thread, and sharing a line would make each bump slower.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded(pub(crate) Tally);

impl std::ops::Deref for Padded {
    type Target = Tally;
    fn deref(&self) -> &Tally {
        &self.0
    }
}

/// The live counters. The read path bumps one counter per call (two for a
/// revoked token): `checks` is derived when a snapshot is taken. With the
/// `metrics` feature each is also recorded as `fredkit_revocation_*`
/// (docs/observability.md).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) redis_reads: Padded,
    pub(crate) local_answers: Padded,
    pub(crate) revoked_hits: Padded,
    /// Reads sent to Redis that did not produce an answer from Redis (an
    /// error — if it was an outage, the fail-mode answer is counted there —
    /// or a read dropped by its caller before the reply).
    pub(crate) read_failures: Tally,
    pub(crate) fail_open: Tally,
    pub(crate) fail_closed: Tally,
    pub(crate) cache_flushes: Tally,
    pub(crate) events_received: Tally,
    pub(crate) publish_failures: Tally,
    /// The time of each read sent to Redis, answered or not.
    pub(crate) read_latency: Histogram,
}

impl Counters {
    /// The counters of a store under `prefix`, registered once.
    pub(crate) fn new(prefix: &str) -> Counters {
        let labels = Labels::new().with("prefix", prefix);
        let fallback = |o: &'static str| labels.clone().with("outcome", o);
        let tally = |name: &'static str| Tally::new(name, &labels);
        Counters {
            redis_reads: Padded(tally("fredkit_revocation_redis_reads_total")),
            local_answers: Padded(tally("fredkit_revocation_local_answers_total")),
            revoked_hits: Padded(tally("fredkit_revocation_revoked_total")),
            read_failures: tally("fredkit_revocation_read_failures_total"),
            fail_open: Tally::new("fredkit_revocation_fallback_total", &fallback("open")),
            fail_closed: Tally::new("fredkit_revocation_fallback_total", &fallback("closed")),
            cache_flushes: tally("fredkit_revocation_cache_flushes_total"),
            events_received: tally("fredkit_revocation_events_received_total"),
            publish_failures: tally("fredkit_revocation_publish_failures_total"),
            read_latency: Histogram::new("fredkit_revocation_read_seconds", &labels),
        }
    }

    pub(crate) fn add(counter: &Tally) {
        counter.add(1);
    }

    pub(crate) fn snapshot(&self) -> RevocationMetrics {
        let get = |c: &Tally| c.get();
        let fail_open = get(&self.fail_open);
        let fail_closed = get(&self.fail_closed);
        let redis_reads = get(&self.redis_reads);
        let local_answers = get(&self.local_answers);
        let answered_by_redis = redis_reads.saturating_sub(get(&self.read_failures));
        RevocationMetrics {
            checks: local_answers
                .saturating_add(answered_by_redis)
                .saturating_add(fail_open)
                .saturating_add(fail_closed),
            revoked_hits: get(&self.revoked_hits),
            fail_open,
            fail_closed,
            redis_reads,
            local_answers,
            cache_flushes: get(&self.cache_flushes),
            events_received: get(&self.events_received),
            publish_failures: get(&self.publish_failures),
        }
    }
}
