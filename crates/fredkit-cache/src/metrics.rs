//! Counters of a [`Cache`](crate::Cache): [`CacheMetrics`] snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

use fredkit_core::metrics::{Counter, Labels, Tally};

/// Stripes of the hot counters (hits), so two cores counting hits do not
/// fight over one cache line.
const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter split over cache-line-padded stripes; reading sums them. With
/// the `metrics` feature it is also recorded as a [`Counter`].
#[derive(Default)]
pub(crate) struct Striped([Padded; STRIPES], Counter);

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
        self.1.increment(1);
    }

    fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) l1_hits: Striped,
    pub(crate) l2_hits: Striped,
    pub(crate) misses: Tally,
    pub(crate) stale_served: Tally,
    pub(crate) factory_calls: Tally,
    pub(crate) loads: Tally,
    pub(crate) coalesced: Tally,
    pub(crate) factory_errors: Tally,
    pub(crate) factory_timeouts: Tally,
    pub(crate) fill_lock_waits: Tally,
    pub(crate) fill_wait_timeouts: Tally,
    pub(crate) eager_refreshes: Tally,
    pub(crate) eager_refresh_skips: Tally,
    pub(crate) decode_failures: Tally,
    pub(crate) redis_errors: Tally,
    pub(crate) invalidations_published: Tally,
    pub(crate) invalidations_received: Tally,
    pub(crate) l1_flushes: Tally,
    pub(crate) recovery_queued: Tally,
    pub(crate) recovery_replayed: Tally,
    pub(crate) recovery_dropped: Tally,
    pub(crate) tracking_reconnects: Tally,
}

#[inline]
pub(crate) fn incr(c: &Tally) {
    c.add(1);
}

impl Metrics {
    /// The counters of a cache under `prefix`, registered once: hits and
    /// misses as `fredkit_cache_get_total{outcome}` (`l1_hit`, `l2_hit`,
    /// `miss`), every other counter as `fredkit_cache_<counter>_total`.
    pub(crate) fn new(prefix: &str) -> Metrics {
        let labels = Labels::new().with("prefix", prefix);
        let outcome = |o: &'static str| labels.clone().with("outcome", o);
        let striped = |o: &'static str| {
            Striped(
                Default::default(),
                Counter::new("fredkit_cache_get_total", &outcome(o)),
            )
        };
        Metrics {
            l1_hits: striped("l1_hit"),
            l2_hits: striped("l2_hit"),
            misses: Tally::new("fredkit_cache_get_total", &outcome("miss")),
            stale_served: Tally::new("fredkit_cache_stale_served_total", &labels),
            factory_calls: Tally::new("fredkit_cache_factory_calls_total", &labels),
            loads: Tally::new("fredkit_cache_loads_total", &labels),
            coalesced: Tally::new("fredkit_cache_coalesced_total", &labels),
            factory_errors: Tally::new("fredkit_cache_factory_errors_total", &labels),
            factory_timeouts: Tally::new("fredkit_cache_factory_timeouts_total", &labels),
            fill_lock_waits: Tally::new("fredkit_cache_fill_lock_waits_total", &labels),
            fill_wait_timeouts: Tally::new("fredkit_cache_fill_wait_timeouts_total", &labels),
            eager_refreshes: Tally::new("fredkit_cache_eager_refreshes_total", &labels),
            eager_refresh_skips: Tally::new("fredkit_cache_eager_refresh_skips_total", &labels),
            decode_failures: Tally::new("fredkit_cache_decode_failures_total", &labels),
            redis_errors: Tally::new("fredkit_cache_redis_errors_total", &labels),
            invalidations_published: Tally::new(
                "fredkit_cache_invalidations_published_total",
                &labels,
            ),
            invalidations_received: Tally::new(
                "fredkit_cache_invalidations_received_total",
                &labels,
            ),
            l1_flushes: Tally::new("fredkit_cache_l1_flushes_total", &labels),
            recovery_queued: Tally::new("fredkit_cache_recovery_queued_total", &labels),
            recovery_replayed: Tally::new("fredkit_cache_recovery_replayed_total", &labels),
            recovery_dropped: Tally::new("fredkit_cache_recovery_dropped_total", &labels),
            tracking_reconnects: Tally::new("fredkit_cache_tracking_reconnects_total", &labels),
        }
    }

    pub(crate) fn snapshot(&self) -> CacheMetrics {
        let g = |c: &Tally| c.get();
        CacheMetrics {
            l1_hits: self.l1_hits.get(),
            l2_hits: self.l2_hits.get(),
            misses: g(&self.misses),
            stale_served: g(&self.stale_served),
            factory_calls: g(&self.factory_calls),
            loads: g(&self.loads),
            coalesced: g(&self.coalesced),
            factory_errors: g(&self.factory_errors),
            factory_timeouts: g(&self.factory_timeouts),
            fill_lock_waits: g(&self.fill_lock_waits),
            fill_wait_timeouts: g(&self.fill_wait_timeouts),
            eager_refreshes: g(&self.eager_refreshes),
            eager_refresh_skips: g(&self.eager_refresh_skips),
            decode_failures: g(&self.decode_failures),
            redis_errors: g(&self.redis_errors),
            invalidations_published: g(&self.invalidations_published),
            invalidations_received: g(&self.invalidations_received),
            l1_flushes: g(&self.l1_flushes),
            recovery_queued: g(&self.recovery_queued),
            recovery_replayed: g(&self.recovery_replayed),
            recovery_dropped: g(&self.recovery_dropped),
            tracking_reconnects: g(&self.tracking_reconnects),
        }
    }
}

/// A snapshot of a cache's counters since it was built
/// ([`Cache::metrics`](crate::Cache::metrics)). Counters only grow; subtract
/// two snapshots for a rate. Reading is a handful of relaxed atomic loads.
///
/// # Callers or loads: which counter for what
///
/// Two questions, two sets of counters, never mixed:
///
/// - **How often did a caller get a fresh cached value?** Count callers:
///   `l1_hits + l2_hits` against `misses` (one per caller without a fresh
///   entry). [`hit_ratio`](Self::hit_ratio) is
///   `hits / (hits + misses)`: the share of reads the cache answered. Use it
///   for the cache's effectiveness as the caller sees it.
/// - **How often did the source (database, API) get called?** Count
///   factory runs: `loads` (runs that answered a miss) plus the eager
///   refreshes; `factory_calls` is their sum. Under a stampede of N callers
///   on one cold key, one instance counts N `misses`, 1 `load` and N-1
///   `coalesced`; with several instances, the others count their callers'
///   misses and a `fill_lock_waits` each, and no load. Use `loads` for the
///   load on the source, never `misses`.
///
/// `misses - loads - coalesced` is the misses answered some other way (a
/// value another process stored while this one waited for its fill lock,
/// a stale value served, an error).
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
    /// Factory invocations by this instance, for whatever reason: `loads`
    /// plus the eager refreshes that ran the factory.
    pub factory_calls: u64,
    /// Factory runs that answered a miss (a fill, or the fallback when Redis
    /// or the fill lock could not be used): the load misses put on the
    /// source. One per in-process flight, however many callers joined it.
    /// Eager refreshes are not loads (they run on hits).
    pub loads: u64,
    /// Callers that missed and joined a load (or refresh) already running in
    /// this instance instead of starting one (in-process single-flight).
    pub coalesced: u64,
    /// Factory invocations that returned an error or panicked.
    pub factory_errors: u64,
    /// Factory invocations that passed the soft or hard timeout.
    pub factory_timeouts: u64,
    /// Fills that found another process's fill lock and waited for its value.
    pub fill_lock_waits: u64,
    /// Waits for another process's fill that ran out of time, after which this
    /// instance called the factory itself.
    pub fill_wait_timeouts: u64,
    /// Eager refreshes started: an entry passed its eager-refresh point and
    /// this instance took the key's fill lock (or could not reach Redis) and
    /// ran the factory in the background. One per refresh point across all
    /// instances.
    pub eager_refreshes: u64,
    /// Eager refreshes not started because another process held the key's
    /// fill lock (it is refreshing the entry): each cost one `fill_acquire`
    /// script, after which this instance backs off — no further attempt for
    /// that entry until it changes (the refreshed value arrives) or the
    /// other process's lock expires.
    pub eager_refresh_skips: u64,
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
    /// Removals (of removed keys and of keys whose write failed) and tag
    /// invalidations queued because Redis was unreachable (auto-recovery;
    /// deduplicated: a key queued twice counts once).
    pub recovery_queued: u64,
    /// Queued operations replayed once Redis answered again.
    pub recovery_replayed: u64,
    /// Queued operations dropped because the queue was full (10,000); the
    /// replay then flushes every instance's L1.
    pub recovery_dropped: u64,
    /// Reconnects of the tracking connection (`InvalidationMode::Tracking`
    /// or `Both`): each flushed L1 and enabled tracking again.
    pub tracking_reconnects: u64,
}

impl CacheMetrics {
    /// Reads that found a fresh entry (`l1_hits + l2_hits`).
    pub fn hits(&self) -> u64 {
        self.l1_hits.saturating_add(self.l2_hits)
    }

    /// Every read counted per caller: `hits() + misses`.
    pub fn reads(&self) -> u64 {
        self.hits().saturating_add(self.misses)
    }

    /// The share of reads answered by a fresh cached value,
    /// `hits / (hits + misses)`, counted per caller (see the type's docs for
    /// why `loads` is not in it); `None` before the first read. Of two
    /// snapshots, subtract them first ([`since`](Self::since)) for the ratio
    /// of an interval.
    pub fn hit_ratio(&self) -> Option<f64> {
        match self.reads() {
            0 => None,
            reads => Some(self.hits() as f64 / reads as f64),
        }
    }

    /// The counts between `earlier` and `self` (each counter's difference,
    /// saturating at zero), for rates and [`hit_ratio`](Self::hit_ratio) over
    /// an interval.
    pub fn since(&self, earlier: &CacheMetrics) -> CacheMetrics {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        CacheMetrics {
            l1_hits: d(self.l1_hits, earlier.l1_hits),
            l2_hits: d(self.l2_hits, earlier.l2_hits),
            misses: d(self.misses, earlier.misses),
            stale_served: d(self.stale_served, earlier.stale_served),
            factory_calls: d(self.factory_calls, earlier.factory_calls),
            loads: d(self.loads, earlier.loads),
            coalesced: d(self.coalesced, earlier.coalesced),
            factory_errors: d(self.factory_errors, earlier.factory_errors),
            factory_timeouts: d(self.factory_timeouts, earlier.factory_timeouts),
            fill_lock_waits: d(self.fill_lock_waits, earlier.fill_lock_waits),
            fill_wait_timeouts: d(self.fill_wait_timeouts, earlier.fill_wait_timeouts),
            eager_refreshes: d(self.eager_refreshes, earlier.eager_refreshes),
            eager_refresh_skips: d(self.eager_refresh_skips, earlier.eager_refresh_skips),
            decode_failures: d(self.decode_failures, earlier.decode_failures),
            redis_errors: d(self.redis_errors, earlier.redis_errors),
            invalidations_published: d(
                self.invalidations_published,
                earlier.invalidations_published,
            ),
            invalidations_received: d(self.invalidations_received, earlier.invalidations_received),
            l1_flushes: d(self.l1_flushes, earlier.l1_flushes),
            recovery_queued: d(self.recovery_queued, earlier.recovery_queued),
            recovery_replayed: d(self.recovery_replayed, earlier.recovery_replayed),
            recovery_dropped: d(self.recovery_dropped, earlier.recovery_dropped),
            tracking_reconnects: d(self.tracking_reconnects, earlier.tracking_reconnects),
        }
    }
}
