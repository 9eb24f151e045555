//! [`CacheOptions`] and [`L1Options`]: builders with documented defaults.

use fredkit_core::IntoKeySpace;
use fredkit_core::{CircuitBreaker, Error, KeySpace, Result};
use std::time::Duration;

/// Options of the optional in-process L1 (a sharded, entry-bounded
/// `quick_cache` in front of Redis; a hit is a shard read lock, a hash
/// lookup, a clone of the value and a coarse clock read: no allocation, no
/// Redis, no breaker).
///
/// ```
/// use std::time::Duration;
/// use fredkit_cache::L1Options;
///
/// let l1 = L1Options::new()
///     .max_entries(50_000)            // default 10 000
///     .ttl(Duration::from_secs(2));   // default 5 s
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct L1Options {
    pub(crate) max_entries: u64,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) ttl: Duration,
}

impl Default for L1Options {
    fn default() -> Self {
        L1Options {
            max_entries: 10_000,
            max_bytes: None,
            ttl: Duration::from_secs(5),
        }
    }
}

impl L1Options {
    /// The defaults: 10 000 entries, TTL 5 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most entries L1 holds (S3-FIFO-style eviction: entries read
    /// again are kept over one-hit entries).
    /// Default 10 000; must be ≥ 1.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Bounds L1 by approximate memory instead of by entry count: the sum
    /// over copies of the key's length, the value's encoded size (as stored
    /// in Redis, before compression) and a fixed per-entry overhead stays
    /// under `bytes`. With it, [`max_entries`](Self::max_entries) is only a
    /// sizing hint. A value too large for its share of L1 is simply not kept
    /// in L1 (it is still cached in Redis). Default: off (bounded by
    /// entries); must be ≥ 1.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// How long an L1 copy may answer reads before Redis is asked again.
    ///
    /// This is the **hard bound on staleness across instances**: whatever
    /// happens to invalidation messages (lost, delayed, subscriber cut), an
    /// instance never answers from its L1 copy of a key more than this long
    /// after another instance overwrote it. Normally invalidations make the
    /// window the pub/sub latency. Default 5 s; must be non-zero.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// How a [`Cache`](crate::Cache) behaves. Build with
/// [`CacheOptions::builder`]; every knob has a default, and
/// [`build`](CacheOptionsBuilder::build) rejects invalid combinations.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub(crate) keys: KeySpace,
    pub(crate) lock_keys: KeySpace,
    pub(crate) tag_keys: KeySpace,
    pub(crate) ttl: Duration,
    pub(crate) ttl_jitter: Duration,
    pub(crate) max_stale: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) compress_above: Option<usize>,
    pub(crate) max_value_bytes: usize,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) xfetch_beta: Option<f64>,
    pub(crate) fail_safe_throttle: Option<Duration>,
    pub(crate) lock_ttl: Duration,
    pub(crate) fill_wait: Duration,
    pub(crate) l1: Option<L1Options>,
    pub(crate) invalidation: bool,
    pub(crate) invalidation_mode: crate::tracking::InvalidationMode,
    pub(crate) breaker: Option<CircuitBreaker>,
}

impl CacheOptions {
    /// A builder for entries under `prefix` (a `&str`/`String` validated like
    /// [`KeySpace::new`] when [`build`](CacheOptionsBuilder::build) runs, or a
    /// [`KeySpace`]). Entry `k` is stored at `prefix:{k}` (its own hash
    /// tag), its fill lock at `prefix:lock:{k}`, and invalidations travel on
    /// the channel `prefix:invalidations`.
    pub fn builder(prefix: impl IntoKeySpace) -> CacheOptionsBuilder {
        CacheOptionsBuilder {
            // A bad prefix is reported by build(); the error (always
            // InvalidInput, naming the prefix) is kept as its message so that
            // the builder stays Clone.
            prefix: prefix.into_key_space().map_err(|e| match e {
                Error::InvalidInput(message) => message,
                other => other.to_string(),
            }),
            ttl: Duration::from_secs(300),
            ttl_jitter: Duration::ZERO,
            max_stale: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            compress_above: Some(8 * 1024),
            max_value_bytes: 64 * 1024 * 1024,
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
            xfetch_beta: None,
            fail_safe_throttle: None,
            lock_ttl: Duration::from_secs(10),
            fill_wait: Duration::from_secs(10),
            l1: None,
            invalidation: true,
            invalidation_mode: Default::default(),
            breaker: None,
        }
    }

    /// The key space entries live in.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The default logical TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The fail-safe window: how long past its logical expiry an entry is
    /// kept to be served stale.
    pub fn max_stale(&self) -> Duration {
        self.max_stale
    }

    /// The L1 options, if L1 is on.
    pub fn l1(&self) -> Option<&L1Options> {
        self.l1.as_ref()
    }
}

/// Builds [`CacheOptions`]. The type's doc lists what most services set:
///
/// ```
/// use std::time::Duration;
/// use fredkit_cache::{CacheOptions, L1Options};
///
/// let options = CacheOptions::builder("shop:products")
///     .ttl(Duration::from_secs(300))             // default 5 min
///     .ttl_jitter(Duration::from_secs(30))       // default 0: add 0..30 s per write
///     .max_stale(Duration::from_secs(3600))      // default 10 min of fail-safe
///     .negative_ttl(Duration::from_secs(10))     // default 30 s for cached absences
///     .compress_above(Some(4096))                // default 8 KiB; None = never
///     .soft_timeout(Duration::from_millis(100))  // default none
///     .hard_timeout(Duration::from_secs(2))      // default none
///     .eager_refresh(0.8)                        // default off
///     .l1(L1Options::new())                      // default off
///     .build()?;
/// assert_eq!(options.ttl(), Duration::from_secs(300));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct CacheOptionsBuilder {
    prefix: std::result::Result<KeySpace, String>,
    ttl: Duration,
    ttl_jitter: Duration,
    max_stale: Duration,
    negative_ttl: Duration,
    compress_above: Option<usize>,
    max_value_bytes: usize,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    eager_refresh: Option<f64>,
    xfetch_beta: Option<f64>,
    fail_safe_throttle: Option<Duration>,
    lock_ttl: Duration,
    fill_wait: Duration,
    l1: Option<L1Options>,
    invalidation: bool,
    invalidation_mode: crate::tracking::InvalidationMode,
    breaker: Option<CircuitBreaker>,
}

impl CacheOptionsBuilder {
    /// Default logical TTL of entries (how long they are *fresh*). Default
    /// 5 min; must be ≥ 1 ms.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Random extra TTL in `0..jitter` added to every write, so entries
    /// written together do not expire together. Default 0.
    pub fn ttl_jitter(mut self, jitter: Duration) -> Self {
        self.ttl_jitter = jitter;
        self
    }

    /// Fail-safe window: entries stay in Redis (and L1) this long after their
    /// logical expiry and are served, counted as stale, when the factory
    /// fails or times out or Redis is unreachable. Default 10 min; zero turns
    /// fail-safe off.
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// TTL of a cached absence (a `None` from an optional factory, see
    /// [`Cache::get_or_try_set_optional`](crate::Cache::get_or_try_set_optional)).
    /// An absence gets neither `ttl_jitter` nor `max_stale` (it is never
    /// served stale): it lives exactly this long in Redis, then the factory
    /// is asked again. Default 30 s; must be ≥ 1 ms.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Encoded values longer than this many bytes are LZ4-compressed (kept
    /// only if smaller). Default `Some(8192)`; `None` never compresses.
    pub fn compress_above(mut self, bytes: Option<usize>) -> Self {
        self.compress_above = bytes;
        self
    }

    /// The largest decompressed value accepted when reading (a larger claim
    /// is treated as garbage instead of allocated). Default 64 MiB.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// When a stale value exists and the factory has not answered within this
    /// time, the stale value is returned at once; the factory goes on in the
    /// background and its result is stored. Default none; must be shorter
    /// than the hard timeout.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// The longest a caller waits for a factory: then the stale value is
    /// returned if there is one, else a timeout error. The factory goes on in
    /// the background and its result is stored. It also bounds the wait for
    /// another process's fill (the fill lock): a caller whose hard timeout
    /// (shorter than `fill_wait`) runs out while waiting gets the stale value
    /// or the timeout error, without running the factory itself. Default
    /// none.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Eager refresh: a `get_or_set` that finds an entry older than this
    /// fraction of its TTL returns it and refreshes it in the background
    /// (once per key at a time, per process; across processes the fill lock
    /// keeps it to one). Default off; must be in `(0, 1)`.
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.eager_refresh = Some(fraction);
        self
    }

    /// Probabilistic early refresh, XFetch (Vattani, Chierichetti,
    /// Lowenstein, VLDB 2015): a hit at time `now` refreshes the entry in
    /// the background when `now - delta * beta * ln(rand()) >= expiry`,
    /// `delta` being how long the factory took to compute the entry (stored
    /// in the entry, measured by the instance that computed it), `rand()`
    /// uniform in (0, 1]. The hotter the key and the slower its factory, the
    /// earlier the refresh; cold keys are rarely refreshed early. `beta` 1 is
    /// the paper's optimum; > 1 refreshes earlier. Default off. May be
    /// combined with [`eager_refresh`](Self::eager_refresh) (either one
    /// triggers); entries written by `set` (no measured delta) are refreshed
    /// by the fixed fraction only. A refresh is the same as an eager one:
    /// once per refresh point across processes.
    pub fn xfetch(mut self, beta: f64) -> Self {
        self.xfetch_beta = Some(beta);
        self
    }

    /// Fail-safe throttle (FusionCache's `FailSafeThrottleDuration`): after
    /// a factory failure (error, panic, timeout) answered with a stale
    /// value, calls for the key in this instance reuse that stale value for
    /// `duration` instead of calling the failing factory again (each still
    /// reads Redis once, so a fresh value written by another instance is
    /// served as soon as it exists). Default off: every wave of misses calls
    /// the factory.
    pub fn fail_safe_throttle(mut self, duration: Duration) -> Self {
        self.fail_safe_throttle = Some(duration);
        self
    }

    /// Time-to-live of the cross-process fill lock: a filler that dies frees
    /// the key after this long. While the factory runs, the lock is renewed
    /// every `lock_ttl / 3` (one small script each) for up to `fill_wait`,
    /// so a factory slower than this does not let another process fill too.
    /// Default 10 s; must be ≥ 1 ms.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// The longest a caller waits for another process's fill before calling
    /// the factory itself. Make it comfortably longer than the factory's
    /// usual time: a wait that runs out means one more factory call (a
    /// shorter `hard_timeout` ends the wait first, with no call). Default
    /// 10 s; must be non-zero.
    pub fn fill_wait(mut self, wait: Duration) -> Self {
        self.fill_wait = wait;
        self
    }

    /// Turns on the in-process L1. Default off.
    pub fn l1(mut self, l1: L1Options) -> Self {
        self.l1 = Some(l1);
        self
    }

    /// Publish invalidations on every write and listen to other instances'
    /// (needed to keep L1s coherent; also wakes up fill waiters at once).
    /// Default on. Off: no subscriber connection, L1 copies live until their
    /// TTL, waiters only poll.
    pub fn invalidation(mut self, on: bool) -> Self {
        self.invalidation = on;
        self
    }

    /// How L1 copies learn about writes: fredkit's own messages
    /// ([`Backplane`](crate::InvalidationMode::Backplane), the default: writes
    /// through fredkit only), Redis client-side caching
    /// ([`Tracking`](crate::InvalidationMode::Tracking): RESP3 `CLIENT
    /// TRACKING ON BCAST PREFIX prefix:` on a connection of the cache's own,
    /// every primary of a cluster: writes from any client, e.g. `redis-cli`),
    /// or [`Both`](crate::InvalidationMode::Both). With `Tracking` alone the
    /// backplane is off (no tag versions to other instances' memory; fill
    /// waiters only poll). L1 serves once tracking is confirmed; a reconnect
    /// of the tracking connection flushes L1 and tracking is enabled again.
    pub fn invalidation_mode(mut self, mode: crate::tracking::InvalidationMode) -> Self {
        self.invalidation_mode = mode;
        if mode == crate::tracking::InvalidationMode::Tracking {
            self.invalidation = false;
        }
        self
    }

    /// The circuit breaker around Redis calls. Default: a breaker of its own
    /// named `cache:<prefix>` with fredkit-core's defaults (opens at 50 %
    /// failures over ≥ 10 calls in 10 s, for 5 s). Share one breaker between
    /// caches on the same Redis by passing clones.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for
    /// a bad prefix; [`ErrorKind::Config`](fredkit_core::ErrorKind::Config)
    /// for a TTL, negative TTL or lock TTL under 1 ms or over 100 years
    /// (`ttl + ttl_jitter + max_stale` counts), a zero fill wait, an
    /// eager-refresh fraction outside `(0, 1)`, a soft timeout not shorter
    /// than the hard one, or an L1 with zero entries or zero TTL.
    pub fn build(self) -> Result<CacheOptions> {
        const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
        let keys = self.prefix.map_err(Error::invalid_input)?;
        let lock_keys = keys.child("lock")?;
        let tag_keys = keys.child("tag")?;
        let ms = Duration::from_millis(1);
        if self.ttl < ms || self.negative_ttl < ms || self.lock_ttl < ms {
            return Err(Error::config(
                "cache ttl, negative_ttl and lock_ttl must be at least 1 ms (Redis PX resolution)",
            ));
        }
        let physical = self
            .ttl
            .saturating_add(self.ttl_jitter)
            .saturating_add(self.max_stale);
        if physical > MAX_TTL
            || self.negative_ttl > MAX_TTL
            || self.lock_ttl > MAX_TTL
            || self.fill_wait > MAX_TTL
        {
            return Err(Error::config(
                "cache ttl + ttl_jitter + max_stale, negative_ttl, lock_ttl and fill_wait must each be at most 100 years (Redis rejects larger expiry times, so nothing would be cached)",
            ));
        }
        if self.fill_wait.is_zero() {
            return Err(Error::config(
                "cache fill_wait must be non-zero; make it longer than the factory usually takes",
            ));
        }
        if let Some(f) = self.eager_refresh {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::config(format!(
                    "cache eager_refresh fraction {f} must be in (0, 1), e.g. 0.8"
                )));
            }
        }
        if let Some(b) = self.xfetch_beta {
            if !(b > 0.0 && b.is_finite()) {
                return Err(Error::config(format!(
                    "cache xfetch beta {b} must be a positive number, e.g. 1.0"
                )));
            }
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout) {
            if soft >= hard {
                return Err(Error::config(format!(
                    "cache soft_timeout {soft:?} must be shorter than hard_timeout {hard:?}"
                )));
            }
        }
        if let Some(l1) = &self.l1 {
            if l1.max_entries == 0 || l1.ttl.is_zero() || l1.max_bytes == Some(0) {
                return Err(Error::config(
                    "L1 max_entries, max_bytes and ttl must be non-zero; leave L1 off instead",
                ));
            }
        }
        Ok(CacheOptions {
            keys,
            lock_keys,
            tag_keys,
            ttl: self.ttl,
            ttl_jitter: self.ttl_jitter,
            max_stale: self.max_stale,
            negative_ttl: self.negative_ttl,
            compress_above: self.compress_above,
            max_value_bytes: self.max_value_bytes,
            soft_timeout: self.soft_timeout,
            hard_timeout: self.hard_timeout,
            eager_refresh: self.eager_refresh,
            xfetch_beta: self.xfetch_beta,
            fail_safe_throttle: self.fail_safe_throttle,
            lock_ttl: self.lock_ttl,
            fill_wait: self.fill_wait,
            l1: self.l1,
            invalidation: self.invalidation,
            invalidation_mode: self.invalidation_mode,
            breaker: self.breaker,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fredkit_core::ErrorKind;

    #[test]
    fn defaults_are_as_documented() {
        let o = CacheOptions::builder("app:c").build().unwrap();
        assert_eq!(o.ttl, Duration::from_secs(300));
        assert_eq!(o.ttl_jitter, Duration::ZERO);
        assert_eq!(o.max_stale, Duration::from_secs(600));
        assert_eq!(o.negative_ttl, Duration::from_secs(30));
        assert_eq!(o.compress_above, Some(8192));
        assert_eq!(o.lock_ttl, Duration::from_secs(10));
        assert_eq!(o.fill_wait, Duration::from_secs(10));
        assert!(o.l1.is_none() && o.invalidation && o.eager_refresh.is_none());
        assert_eq!(o.keys.tagged("k", [""; 0]).unwrap(), "app:c:{k}");
        assert_eq!(o.lock_keys.tagged("k", [""; 0]).unwrap(), "app:c:lock:{k}");
        let l1 = L1Options::new();
        assert_eq!((l1.max_entries, l1.ttl), (10_000, Duration::from_secs(5)));
    }

    #[test]
    fn invalid_combinations_are_rejected_at_build() {
        let b = || CacheOptions::builder("app:c");
        let bad = [
            b().ttl(Duration::ZERO).build(),
            b().lock_ttl(Duration::from_micros(10)).build(),
            b().fill_wait(Duration::ZERO).build(),
            b().eager_refresh(1.0).build(),
            b().eager_refresh(0.0).build(),
            b().soft_timeout(Duration::from_secs(2))
                .hard_timeout(Duration::from_secs(1))
                .build(),
            b().l1(L1Options::new().max_entries(0)).build(),
            b().l1(L1Options::new().ttl(Duration::ZERO)).build(),
            b().l1(L1Options::new().max_bytes(0)).build(),
            // "Forever" is not a TTL Redis accepts (PX overflows): every
            // write would fail and nothing would ever be cached.
            b().ttl(Duration::MAX).build(),
            b().max_stale(Duration::MAX).build(),
            b().ttl(Duration::from_secs(60 * 60 * 24 * 365 * 80))
                .max_stale(Duration::from_secs(60 * 60 * 24 * 365 * 30))
                .build(),
            b().negative_ttl(Duration::MAX).build(),
            b().lock_ttl(Duration::MAX).build(),
            b().fill_wait(Duration::MAX).build(),
            b().ttl_jitter(Duration::MAX).build(),
        ];
        for r in bad {
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Config);
        }
        assert_eq!(
            CacheOptions::builder("bad{").build().unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;
    use fredkit_core::ErrorKind;

    /// Every way of giving a prefix works, including what testkit hands out
    /// (a trailing ':'), and a bad one fails at build() naming it once.
    #[test]
    fn builder_takes_any_prefix_form_and_reports_a_bad_one_at_build() {
        let ks = KeySpace::new("app:c").unwrap();
        for options in [
            CacheOptions::builder("app:c").build().unwrap(),
            CacheOptions::builder("app:c:".to_string()).build().unwrap(),
            CacheOptions::builder(&ks).build().unwrap(),
            CacheOptions::builder(ks.clone()).build().unwrap(),
        ] {
            assert_eq!(options.keys(), &ks);
        }
        let err = CacheOptions::builder("bad{tag}").build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(text.contains("bad{tag}"), "{text}");
        assert_eq!(text.matches("invalid input").count(), 1, "{text}");
    }
}

/// Per-entry options of a write: [`Cache::set_with`](crate::Cache::set_with)
/// and [`Cache::fetch_with`](crate::Cache::fetch_with).
///
/// ```
/// use std::time::Duration;
/// use fredkit_cache::EntryOptions;
///
/// let o = EntryOptions::new()
///     .tags(["product:42", "category:7"])   // invalidate_tag("category:7") drops it
///     .ttl(Duration::from_secs(60));        // default: the cache's ttl
/// ```
#[must_use]
#[derive(Debug, Clone, Default)]
pub struct EntryOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) tags: Vec<String>,
    /// Set by `fetch_adaptive`: where its factory leaves its decisions.
    pub(crate) adapt: Option<AdaptSlot>,
}

/// Where an adaptive factory leaves what it decided about its entry.
pub(crate) type AdaptSlot = std::sync::Arc<std::sync::Mutex<Option<Adapted<()>>>>;

/// A value from an adaptive factory
/// ([`Cache::fetch_adaptive`](crate::Cache::fetch_adaptive)) with what the
/// factory decided about its entry from the value itself (FusionCache's
/// adaptive caching): its TTL, its fail-safe window, or not to cache it at
/// all.
///
/// ```
/// use std::time::Duration;
/// use fredkit_cache::Adapted;
///
/// // A draft changes often: cache it briefly, and never serve it stale.
/// let a = Adapted::new(Some("draft".to_string()))
///     .ttl(Duration::from_secs(5))
///     .max_stale(Duration::ZERO);
/// // An error page from upstream: hand it to this caller, cache nothing.
/// let b = Adapted::new(Some("try later".to_string())).skip_caching();
/// ```
#[must_use]
#[derive(Debug, Clone, Default)]
pub struct Adapted<V> {
    pub(crate) value: Option<V>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) max_stale: Option<Duration>,
    pub(crate) skip: bool,
}

impl<V> Adapted<V> {
    /// `value` (`None`: an absence, cached for the negative TTL) with the
    /// call's options.
    pub fn new(value: Option<V>) -> Self {
        Adapted {
            value,
            ttl: None,
            max_stale: None,
            skip: false,
        }
    }

    /// The entry's logical TTL (a tagged entry's is capped at the cache's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The entry's fail-safe window (how long past its TTL it is kept to be
    /// served stale) instead of the cache's `max_stale`.
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = Some(max_stale);
        self
    }

    /// Return the value to the callers of this fill without caching it
    /// (neither Redis nor L1): the next call runs the factory again.
    pub fn skip_caching(mut self) -> Self {
        self.skip = true;
        self
    }

    /// The decisions without the value.
    pub(crate) fn split(self) -> (Option<V>, Adapted<()>) {
        (
            self.value,
            Adapted {
                value: None,
                ttl: self.ttl,
                max_stale: self.max_stale,
                skip: self.skip,
            },
        )
    }
}

impl EntryOptions {
    /// No tags, the cache's TTL.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry's tags: [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)
    /// of any of them makes it a miss on every instance (L1 and Redis). Each
    /// tag is non-empty, at most 1024 bytes; at most 64 tags per entry.
    /// Duplicates are ignored.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        for t in tags {
            let t = t.into();
            if !self.tags.contains(&t) {
                self.tags.push(t);
            }
        }
        self
    }

    /// The entry's logical TTL instead of the cache's (plus jitter, then
    /// `max_stale`). A tagged entry's TTL may not exceed the cache's `ttl`
    /// (a tag's version key lives as long as the cache's longest entry).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Checks the tags and the TTL against `opts`; names `key`.
    pub(crate) fn check(&self, key: &str, opts: &CacheOptions) -> Result<Duration> {
        let ttl = self.ttl.unwrap_or(opts.ttl);
        if self.tags.len() > 64 {
            return Err(Error::invalid_input(format!(
                "cache entry {key:?}: {} tags, at most 64 allowed",
                self.tags.len()
            )));
        }
        if let Some(t) = self.tags.iter().find(|t| t.is_empty() || t.len() > 1024) {
            return Err(Error::invalid_input(format!(
                "cache entry {key:?}: tag {t:?} must be 1 to 1024 bytes"
            )));
        }
        if !self.tags.is_empty() && ttl > opts.ttl {
            return Err(Error::invalid_input(format!(
                "cache entry {key:?}: a tagged entry's ttl {ttl:?} may not exceed the cache's ttl {:?} (its tags' versions would expire first)",
                opts.ttl
            )));
        }
        Ok(ttl)
    }
}
