//! The in-process L1 and the local state the invalidation listener shares
//! with the cache: L1, fill waiters, counters.

use crate::envelope::Stored;
use crate::metrics::{incr, Metrics};
use crate::options::L1Options;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};

const STRIPES: usize = 64;

/// L1 time: a coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` on Linux:
/// ~10 ns to read against ~30–40 ns for `Instant::now`, resolution one
/// kernel tick, at most 10 ms). Read on every L1 hit.
pub(crate) type Tick = coarsetime::Instant;

/// Upper bound of the coarse clock's lag behind real time. Every L1 deadline
/// is moved this much earlier, so a copy may stop answering up to 10 ms
/// early, never late.
const TICK_SLACK: Duration = Duration::from_millis(10);

/// Now, on the L1 clock. Does not touch coarsetime's shared "recent" cell
/// (a store every hit would make cores fight over one cache line).
#[inline]
pub(crate) fn now() -> Tick {
    coarsetime::Instant::now_without_cache_update()
}

pub(crate) fn later(t: Tick, d: Duration) -> Tick {
    t.saturating_add(coarsetime::Duration::from(d))
}

/// Taken before a Redis read whose result may go into L1: the key's stripe
/// epoch and the time, so the copy can be refused if an invalidation came in
/// meanwhile, and its L1 life counts from before the read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    epoch: u64,
    started: Tick,
}

/// One L1 copy. Stored by value (a hit clones it once: the value and three
/// plain fields), so `Cache<Arc<T>>` hits cost one reference-count bump.
#[derive(Clone)]
pub(crate) struct L1Entry<V> {
    pub(crate) value: Option<V>,
    /// Answer reads from L1 until then (min of L1 TTL and logical expiry).
    pub(crate) fresh_until: Tick,
    /// Eager-refresh point, when eager refresh is on.
    pub(crate) refresh_at: Option<Tick>,
    /// Physical end of the copy (`fresh_until` + `max_stale`): past it, the
    /// copy is not even a fail-safe fallback.
    pub(crate) expires: Tick,
    pub(crate) created_ms: u64,
    /// The tags and versions the entry was written under (`None`: untagged).
    pub(crate) tags: crate::envelope::Tags,
    /// The entry's logical expiry on the L1 clock (XFetch compares with it).
    pub(crate) logical_end: Tick,
    /// How long the factory took to compute the value, ms (0: unknown).
    pub(crate) delta_ms: u32,
    /// Weight when L1 is bounded by bytes (1 when bounded by entries).
    weight: u32,
}

/// Weighs L1 copies: 1 each (bounded by entries), or their precomputed
/// approximate size (bounded by bytes).
#[derive(Clone, Copy)]
pub(crate) struct Weight;

impl<V> quick_cache::Weighter<String, L1Entry<V>> for Weight {
    #[inline]
    fn weight(&self, _key: &String, e: &L1Entry<V>) -> u64 {
        u64::from(e.weight)
    }
}

/// Fixed per-copy overhead counted when L1 is bounded by bytes (entry,
/// map slot, key allocation).
const ENTRY_OVERHEAD: usize = 96;

pub(crate) struct L1<V> {
    /// Bounded by entries; S3-FIFO-style eviction, sharded locks (reads take
    /// a shard's read lock, no write on a hit).
    cache: quick_cache::sync::Cache<String, L1Entry<V>, Weight>,
    by_bytes: bool,
    ttl: Duration,
    max_stale: Duration,
    /// Per-stripe epochs: bumped (under the stripe's lock) by every write,
    /// removal or flush touching the stripe. A read that fetched from Redis
    /// inserts its copy only if its stripe's epoch did not move since before
    /// the Redis read, so an old value read concurrently with an invalidation
    /// cannot be put back into L1 after the invalidation removed it.
    stripes: Vec<Mutex<u64>>,
    hasher: RandomState,
    /// False until the invalidation subscription is confirmed (or always
    /// true with invalidation off): until then nothing is read from or put
    /// into L1, since invalidations from other instances could be missed.
    live: AtomicBool,
}

fn lock(m: &Mutex<u64>) -> MutexGuard<'_, u64> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<V: Clone + Send + Sync + 'static> L1<V> {
    pub(crate) fn new(o: &L1Options, max_stale: Duration) -> Self {
        L1 {
            cache: quick_cache::sync::Cache::with_weighter(
                usize::try_from(o.max_entries).unwrap_or(usize::MAX),
                o.max_bytes.unwrap_or(o.max_entries),
                Weight,
            ),
            by_bytes: o.max_bytes.is_some(),
            ttl: o.ttl,
            max_stale,
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            hasher: RandomState::new(),
            live: AtomicBool::new(false),
        }
    }

    #[inline]
    fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Starts serving: drops whatever is in L1 (bumping every epoch, so a
    /// read that started before cannot insert its copy) and then lets reads
    /// and inserts through.
    pub(crate) fn go_live(&self) {
        self.flush();
        self.live.store(true, Ordering::Release);
    }

    /// Stops serving for good (the cache is closed): nothing is read from
    /// or put into L1 any more, and what is there is dropped.
    pub(crate) fn go_dark(&self) {
        self.live.store(false, Ordering::Release);
        self.flush();
    }

    fn stripe(&self, key: &str) -> &Mutex<u64> {
        let i = (self.hasher.hash_one(key) as usize) % STRIPES;
        &self.stripes[i]
    }

    /// The copy of `key` (a clone), if L1 is live and the copy is not past
    /// its physical end; `now` is [`now()`], read once by the caller.
    #[inline]
    pub(crate) fn get(&self, key: &str, now: Tick) -> Option<L1Entry<V>> {
        if !self.is_live() {
            return None;
        }
        self.cache.get(key).filter(|e| now < e.expires)
    }

    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        Ticket {
            epoch: *lock(self.stripe(key)),
            started: now(),
        }
    }

    /// A copy whose L1 life starts at `born` (before the read it came from).
    fn entry(
        &self,
        key: &str,
        stored: &Stored<V>,
        now_ms: u64,
        eager: Option<f64>,
        born: Tick,
    ) -> L1Entry<V> {
        // Deadlines count from a coarse reading that may lag real time by up
        // to TICK_SLACK: move them that much earlier.
        let t = now().saturating_sub(coarsetime::Duration::from(TICK_SLACK));
        let born = born.saturating_sub(coarsetime::Duration::from(TICK_SLACK));
        let left = Duration::from_millis(stored.fresh_until_ms.saturating_sub(now_ms));
        let refresh_at = eager.map(|f| {
            let life = stored.fresh_until_ms.saturating_sub(stored.created_ms) as f64;
            let at_ms = stored.created_ms as f64 + life * f;
            let in_ms = (at_ms - now_ms as f64).max(0.0);
            later(t, Duration::from_millis(in_ms as u64))
        });
        let fresh_until = later(t, left).min(later(born, self.ttl));
        L1Entry {
            value: stored.value.clone(),
            fresh_until,
            refresh_at,
            // Counted from the end of the copy's fresh life (which is never
            // past the entry's logical expiry), so a copy is a fail-safe
            // fallback at most `max_stale` past the entry's logical expiry.
            expires: later(fresh_until, self.max_stale),
            created_ms: stored.created_ms,
            tags: stored.tags.clone(),
            logical_end: later(t, left),
            delta_ms: stored.delta_ms,
            weight: if self.by_bytes {
                let bytes = key.len() + stored.size + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            } else {
                1
            },
        }
    }

    /// Inserts a copy read from Redis, unless the key's stripe saw a write,
    /// removal or flush since the ticket was taken.
    pub(crate) fn insert_read(
        &self,
        key: &str,
        stored: &Stored<V>,
        ticket: Ticket,
        now_ms: u64,
        eager: Option<f64>,
    ) {
        let e = self.entry(key, stored, now_ms, eager, ticket.started);
        let guard = lock(self.stripe(key));
        if *guard == ticket.epoch && self.is_live() {
            self.cache.insert(key.to_string(), e);
        }
    }

    /// Inserts this instance's own write (it wins over concurrent reads:
    /// their copies are refused). `ticket` is taken before the write went to
    /// Redis: if the key's stripe saw an invalidation, removal or flush (or
    /// another write) since, a later write from elsewhere may have landed in
    /// Redis after ours, so the copy is dropped instead of inserted.
    pub(crate) fn insert_write(
        &self,
        key: &str,
        stored: &Stored<V>,
        ticket: Ticket,
        now_ms: u64,
        eager: Option<f64>,
    ) {
        let e = self.entry(key, stored, now_ms, eager, ticket.started);
        let mut guard = lock(self.stripe(key));
        let clean = *guard == ticket.epoch;
        *guard = guard.wrapping_add(1);
        if clean && self.is_live() {
            self.cache.insert(key.to_string(), e);
        } else {
            self.cache.remove(key);
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        let mut guard = lock(self.stripe(key));
        *guard = guard.wrapping_add(1);
        self.cache.remove(key);
    }

    pub(crate) fn flush(&self) {
        let mut guards: Vec<_> = self.stripes.iter().map(lock).collect();
        for g in guards.iter_mut() {
            **g = g.wrapping_add(1);
        }
        self.cache.clear();
    }
}

/// State shared by a cache and its invalidation listener task (which must not
/// keep the cache itself alive).
pub(crate) struct Local<V> {
    pub(crate) instance: u64,
    pub(crate) l1: Option<L1<V>>,
    pub(crate) metrics: Metrics,
    /// The tag versions this instance has seen (see `tags.rs`).
    pub(crate) tags: crate::tags::TagBook,
    /// Fill waiters of this process: at most one per key (the single flight's
    /// leader), woken when the key is written.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// True once the invalidation subscription is confirmed (at once with
    /// invalidation off).
    ready: watch::Sender<bool>,
    /// Sources of invalidations still to confirm before L1 serves.
    gates: std::sync::atomic::AtomicUsize,
}

impl<V: Clone + Send + Sync + 'static> Local<V> {
    pub(crate) fn new(instance: u64, l1: Option<L1<V>>, prefix: &str) -> Self {
        Local {
            instance,
            l1,
            metrics: Metrics::new(prefix),
            tags: Default::default(),
            waiters: Mutex::new(HashMap::new()),
            ready: watch::channel(false).0,
            gates: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// The invalidation subscription is confirmed (or there is none): L1
    /// starts serving, from empty.
    ///
    /// With more than one source of invalidations (backplane and tracking),
    /// each calls this once and L1 starts serving after the last.
    pub(crate) fn set_ready(&self) {
        let left = self
            .gates
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                Some(g.saturating_sub(1))
            })
            .unwrap_or(0);
        if left > 1 {
            return; // another source of invalidations is not confirmed yet
        }
        if let Some(l1) = &self.l1 {
            l1.go_live();
            tracing::debug!("fredkit-cache: L1 live");
        }
        self.ready.send_replace(true);
    }

    /// One more source of invalidations must confirm before L1 serves.
    pub(crate) fn add_gate(&self) {
        self.gates.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub(crate) fn ready_rx(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_waiter(&self, key: &str) -> Arc<Notify> {
        self.waiters()
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    pub(crate) fn unregister_waiter(&self, key: &str) {
        self.waiters().remove(key);
    }

    /// Wakes this process's waiter for `key`, if any.
    pub(crate) fn wake(&self, key: &str) {
        let waiters = self.waiters();
        if let Some(n) = waiters.get(key) {
            n.notify_one();
        }
    }

    pub(crate) fn flush_l1(&self, reason: &'static str) {
        if let Some(l1) = &self.l1 {
            l1.flush();
            incr(&self.metrics.l1_flushes);
            tracing::debug!(reason, "fredkit-cache: L1 flushed");
        }
    }

    pub(crate) fn remove_l1(&self, key: &str) {
        if let Some(l1) = &self.l1 {
            l1.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::envelope::now_ms;

    fn stored(v: u64, fresh_ms: u64) -> Stored<u64> {
        let now = now_ms();
        Stored {
            value: Some(v),
            created_ms: now,
            fresh_until_ms: now + fresh_ms,
            size: 1000,
            tags: None,
            delta_ms: 0,
        }
    }

    fn l1(entries: u64, ttl: Duration, max_stale: Duration) -> L1<u64> {
        let l1 = L1::new(&L1Options::new().max_entries(entries).ttl(ttl), max_stale);
        l1.go_live();
        l1
    }

    fn value(l1: &L1<u64>, key: &str) -> Option<u64> {
        let now = now();
        l1.get(key, now)
            .filter(|e| now < e.fresh_until)
            .and_then(|e| e.value)
    }

    #[test]
    fn nothing_is_served_or_stored_until_live_and_going_live_starts_empty() {
        let l1 = L1::new(&L1Options::new(), Duration::ZERO);
        l1.insert_write("k", &stored(1, 60_000), l1.ticket("k"), now_ms(), None);
        let t = l1.ticket("r");
        l1.insert_read("r", &stored(2, 60_000), t, now_ms(), None);
        assert!(l1.get("k", now()).is_none() && l1.get("r", now()).is_none());
        l1.go_live();
        assert!(l1.get("k", now()).is_none() && l1.get("r", now()).is_none());
        l1.insert_write("k", &stored(3, 60_000), l1.ticket("k"), now_ms(), None);
        assert_eq!(value(&l1, "k"), Some(3));
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_inserted() {
        let l1 = l1(100, Duration::from_secs(60), Duration::ZERO);
        let before_remove = l1.ticket("k");
        l1.remove("k");
        l1.insert_read("k", &stored(1, 60_000), before_remove, now_ms(), None);
        assert_eq!(value(&l1, "k"), None);
        let before_flush = l1.ticket("k");
        l1.flush();
        l1.insert_read("k", &stored(1, 60_000), before_flush, now_ms(), None);
        assert_eq!(value(&l1, "k"), None);
        let clean = l1.ticket("k");
        l1.insert_read("k", &stored(2, 60_000), clean, now_ms(), None);
        assert_eq!(value(&l1, "k"), Some(2));
    }

    #[test]
    fn a_write_that_raced_an_invalidation_is_not_inserted() {
        let l1 = l1(100, Duration::from_secs(60), Duration::ZERO);
        l1.insert_write("k", &stored(1, 60_000), l1.ticket("k"), now_ms(), None);
        // Our SET is in flight; another instance's later SET lands in Redis
        // and its invalidation arrives before our reply.
        let before_our_write = l1.ticket("k");
        l1.remove("k");
        l1.insert_write("k", &stored(2, 60_000), before_our_write, now_ms(), None);
        assert_eq!(value(&l1, "k"), None, "our older write must not be cached");
        let before_flush = l1.ticket("k");
        l1.flush();
        l1.insert_write("k", &stored(3, 60_000), before_flush, now_ms(), None);
        assert_eq!(value(&l1, "k"), None);
        l1.insert_write("k", &stored(4, 60_000), l1.ticket("k"), now_ms(), None);
        assert_eq!(value(&l1, "k"), Some(4));
    }

    #[test]
    fn remove_and_flush_drop_copies() {
        let l1 = l1(100, Duration::from_secs(60), Duration::ZERO);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            l1.insert_write(k, &stored(i as u64, 60_000), l1.ticket(k), now_ms(), None);
        }
        l1.remove("a");
        assert_eq!((value(&l1, "a"), value(&l1, "b")), (None, Some(1)));
        l1.flush();
        assert_eq!((value(&l1, "b"), value(&l1, "c")), (None, None));
    }

    #[test]
    fn l1_is_bounded_by_entries() {
        let l1 = l1(100, Duration::from_secs(60), Duration::ZERO);
        for i in 0..10_000u64 {
            l1.insert_write(
                &format!("k{i}"),
                &stored(i, 60_000),
                l1.ticket(&format!("k{i}")),
                now_ms(),
                None,
            );
        }
        let held = (0..10_000u64)
            .filter(|i| value(&l1, &format!("k{i}")).is_some())
            .count();
        assert!(held <= 100, "{held} copies held, bound 100");
        assert!(held > 0);
    }

    #[test]
    fn l1_can_be_bounded_by_bytes() {
        // 1000-byte values + key + overhead: ~1100 bytes each, 110 KB bound.
        let l1 = L1::new(
            &L1Options::new().max_entries(100).max_bytes(110_000),
            Duration::ZERO,
        );
        l1.go_live();
        for i in 0..10_000u64 {
            l1.insert_write(
                &format!("k{i}"),
                &stored(i, 60_000),
                l1.ticket(&format!("k{i}")),
                now_ms(),
                None,
            );
        }
        let held = (0..10_000u64)
            .filter(|i| value(&l1, &format!("k{i}")).is_some())
            .count();
        assert!(held > 0);
        assert!(held <= 100, "{held} copies of ~1.1 KB held, bound 110 KB");
        assert!(l1.cache.weight() <= 110_000);
    }

    #[test]
    fn a_copy_answers_at_most_its_ttl_and_lives_max_stale_longer_as_fallback() {
        let l1 = l1(100, Duration::from_millis(150), Duration::from_millis(150));
        l1.insert_write("k", &stored(1, 60_000), l1.ticket("k"), now_ms(), None);
        let e = l1.get("k", now()).unwrap();
        // Never later than the TTL from now (deadlines err early).
        assert!(e.fresh_until <= later(now(), Duration::from_millis(150)));
        assert!(e.expires <= later(now(), Duration::from_millis(300)));
        std::thread::sleep(Duration::from_millis(200));
        let e = l1.get("k", now()).unwrap();
        assert!(now() >= e.fresh_until, "past its TTL, a copy is stale");
        std::thread::sleep(Duration::from_millis(150));
        assert!(l1.get("k", now()).is_none(), "past TTL + max_stale, gone");
    }

    #[test]
    fn a_copy_is_a_fallback_at_most_max_stale_past_the_entrys_logical_expiry() {
        // L1 TTL far longer than the entry's fresh life: past the logical
        // expiry + max_stale the copy must not even be a stale fallback
        // (fail-safe promises stale values only within max_stale).
        let l1 = l1(100, Duration::from_secs(60), Duration::from_millis(100));
        l1.insert_write("k", &stored(1, 100), l1.ticket("k"), now_ms(), None);
        let e = l1.get("k", now()).unwrap();
        assert!(e.expires <= later(now(), Duration::from_millis(200)));
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            l1.get("k", now()).is_none(),
            "past expiry + max_stale, gone"
        );
    }

    #[test]
    fn a_copy_never_outlives_the_logical_expiry_of_the_entry() {
        let l1 = l1(100, Duration::from_secs(60), Duration::ZERO);
        l1.insert_write("k", &stored(1, 100), l1.ticket("k"), now_ms(), None);
        let e = l1.get("k", now()).unwrap();
        assert!(e.fresh_until <= later(now(), Duration::from_millis(100)));
    }
}
