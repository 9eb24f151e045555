//! The in-process L1 and the local state the invalidation listener shares
//! with the cache: L1, fill waiters, counters.

use crate::envelope::Stored;
use crate::metrics::{incr, Metrics};
use crate::options::L1Options;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

const STRIPES: usize = 64;

/// Taken before a Redis read whose result may go into L1: the key's stripe
/// epoch and the time, so the copy can be refused if an invalidation came in
/// meanwhile, and its L1 life counts from before the read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    epoch: u64,
    started: Instant,
}

/// One L1 copy.
pub(crate) struct L1Entry<V> {
    pub(crate) value: Option<V>,
    /// Answer reads from L1 until then (min of L1 TTL and logical expiry).
    pub(crate) fresh_until: Instant,
    /// Eager-refresh point, when eager refresh is on.
    pub(crate) refresh_at: Option<Instant>,
    pub(crate) created_ms: u64,
}

pub(crate) struct L1<V> {
    cache: moka::sync::Cache<String, Arc<L1Entry<V>>>,
    ttl: Duration,
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
            cache: moka::sync::Cache::builder()
                .max_capacity(o.max_entries)
                // Copies are kept past their L1 TTL for the fail-safe window
                // (served only when Redis or the factory fails).
                .time_to_live(o.ttl.saturating_add(max_stale))
                .build(),
            ttl: o.ttl,
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

    fn stripe(&self, key: &str) -> &Mutex<u64> {
        let i = (self.hasher.hash_one(key) as usize) % STRIPES;
        &self.stripes[i]
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<L1Entry<V>>> {
        if !self.is_live() {
            return None;
        }
        self.cache.get(key)
    }

    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        Ticket {
            epoch: *lock(self.stripe(key)),
            started: Instant::now(),
        }
    }

    /// A copy whose L1 life starts at `born` (before the read it came from).
    fn entry(
        &self,
        stored: &Stored<V>,
        now_ms: u64,
        eager: Option<f64>,
        born: Instant,
    ) -> Arc<L1Entry<V>> {
        let now = Instant::now();
        let left = Duration::from_millis(stored.fresh_until_ms.saturating_sub(now_ms));
        let refresh_at = eager.map(|f| {
            let life = stored.fresh_until_ms.saturating_sub(stored.created_ms) as f64;
            let at_ms = stored.created_ms as f64 + life * f;
            let in_ms = (at_ms - now_ms as f64).max(0.0);
            now + Duration::from_millis(in_ms as u64)
        });
        Arc::new(L1Entry {
            value: stored.value.clone(),
            fresh_until: (now + left).min(born + self.ttl),
            refresh_at,
            created_ms: stored.created_ms,
        })
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
        let e = self.entry(stored, now_ms, eager, ticket.started);
        let guard = lock(self.stripe(key));
        if *guard == ticket.epoch && self.is_live() {
            self.cache.insert(key.to_string(), e);
        }
    }

    /// Inserts this instance's own write (always wins over concurrent reads).
    pub(crate) fn insert_write(
        &self,
        key: &str,
        stored: &Stored<V>,
        now_ms: u64,
        eager: Option<f64>,
    ) {
        let e = self.entry(stored, now_ms, eager, Instant::now());
        let mut guard = lock(self.stripe(key));
        *guard = guard.wrapping_add(1);
        if self.is_live() {
            self.cache.insert(key.to_string(), e);
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        let mut guard = lock(self.stripe(key));
        *guard = guard.wrapping_add(1);
        self.cache.invalidate(key);
    }

    pub(crate) fn flush(&self) {
        let mut guards: Vec<_> = self.stripes.iter().map(lock).collect();
        for g in guards.iter_mut() {
            **g = g.wrapping_add(1);
        }
        self.cache.invalidate_all();
    }
}

/// State shared by a cache and its invalidation listener task (which must not
/// keep the cache itself alive).
pub(crate) struct Local<V> {
    pub(crate) instance: u64,
    pub(crate) l1: Option<L1<V>>,
    pub(crate) metrics: Metrics,
    /// Fill waiters of this process: at most one per key (the single flight's
    /// leader), woken when the key is written.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// True once the invalidation subscription is confirmed (at once with
    /// invalidation off).
    ready: watch::Sender<bool>,
}

impl<V: Clone + Send + Sync + 'static> Local<V> {
    pub(crate) fn new(instance: u64, l1: Option<L1<V>>) -> Self {
        Local {
            instance,
            l1,
            metrics: Metrics::default(),
            waiters: Mutex::new(HashMap::new()),
            ready: watch::channel(false).0,
        }
    }

    /// The invalidation subscription is confirmed (or there is none): L1
    /// starts serving, from empty.
    pub(crate) fn set_ready(&self) {
        if let Some(l1) = &self.l1 {
            l1.go_live();
            tracing::debug!("fredkit-cache: L1 live");
        }
        self.ready.send_replace(true);
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
