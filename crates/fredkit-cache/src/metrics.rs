//! Counters of a [`Cache`](crate::Cache): [`CacheMetrics`] snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

/// Stripes of the hot counters (hits), so two cores counting hits do not
/// fight over one cache line.
const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter split over cache-line-padded stripes; reading sums them.
#[derive(Default)]
pub(crate) struct Striped([Padded; STRIPES]);

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % STRIPES
    };
}

impl Striped {
    #[inline]
    pub(crate) fn incr(&self) {
        let i = STRIPE.with(|s| *s);
        self.0[i].0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) l1_hits: Striped,
    pub(crate) l2_hits: Striped,
    pub(crate) misses: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) factory_calls: AtomicU64,
    pub(crate) factory_errors: AtomicU64,
    pub(crate) factory_timeouts: AtomicU64,
    pub(crate) fill_lock_waits: AtomicU64,
    pub(crate) fill_wait_timeouts: AtomicU64,
    pub(crate) eager_refreshes: AtomicU64,
    pub(crate) decode_failures: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    pub(crate) invalidations_published: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
    pub(crate) l1_flushes: AtomicU64,
}

#[inline]
pub(crate) fn incr(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn snapshot(&self) -> CacheMetrics {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheMetrics {
            l1_hits: self.l1_hits.get(),
            l2_hits: self.l2_hits.get(),
            misses: g(&self.misses),
            stale_served: g(&self.stale_served),
            factory_calls: g(&self.factory_calls),
            factory_errors: g(&self.factory_errors),
            factory_timeouts: g(&self.factory_timeouts),
            fill_lock_waits: g(&self.fill_lock_waits),
            fill_wait_timeouts: g(&self.fill_wait_timeouts),
            eager_refreshes: g(&self.eager_refreshes),
            decode_failures: g(&self.decode_failures),
            redis_errors: g(&self.redis_errors),
            invalidations_published: g(&self.invalidations_published),
            invalidations_received: g(&self.invalidations_received),
            l1_flushes: g(&self.l1_flushes),
        }
    }
}

/// A snapshot of a cache's counters since it was built
/// ([`Cache::metrics`](crate::Cache::metrics)). Counters only grow; subtract
/// two snapshots for a rate. Reading is a handful of relaxed atomic loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheMetrics {
    /// Reads answered by the in-process L1 with a fresh entry.
    pub l1_hits: u64,
    /// Reads answered by Redis (L2) with a fresh entry.
    pub l2_hits: u64,
    /// Reads that found no fresh entry in any level (absent, logically
    /// expired, undecodable, or Redis unreachable), counted **per caller**:
    /// one per `get`, per `get_or_set`-style call and per `get_many` key.
    /// N concurrent `get_or_set` callers of a missing key count N misses
    /// while the factory runs once (see `factory_calls`). Fills follow for
    /// `get_or_set`. A fresh cached absence is a hit, not a miss.
    pub misses: u64,
    /// Stale entries served because the factory failed or timed out, or Redis
    /// was unreachable (fail-safe).
    pub stale_served: u64,
    /// Factory invocations by this instance (fills, fallbacks and eager
    /// refreshes).
    pub factory_calls: u64,
    /// Factory invocations that returned an error or panicked.
    pub factory_errors: u64,
    /// Factory invocations that passed the soft or hard timeout.
    pub factory_timeouts: u64,
    /// Fills that found another process's fill lock and waited for its value.
    pub fill_lock_waits: u64,
    /// Waits for another process's fill that ran out of time, after which this
    /// instance called the factory itself.
    pub fill_wait_timeouts: u64,
    /// Background refreshes started because an entry passed the eager-refresh
    /// point.
    pub eager_refreshes: u64,
    /// Entries that did not decode (wrong type, truncated, foreign writer):
    /// each was deleted and treated as a miss.
    pub decode_failures: u64,
    /// Redis calls that failed because Redis was unreachable, slow, busy or
    /// shielded by the open circuit breaker (answered from L1 / the factory
    /// instead).
    pub redis_errors: u64,
    /// Invalidation messages this instance published (one message may carry
    /// many keys).
    pub invalidations_published: u64,
    /// Invalidation messages received from other instances.
    pub invalidations_received: u64,
    /// Whole-L1 flushes: a missed invalidation was detected (sequence gap,
    /// pub/sub reconnect or lag, undecodable message) or `invalidate_prefix`
    /// ran somewhere.
    pub l1_flushes: u64,
}
