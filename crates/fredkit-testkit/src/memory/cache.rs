//! [`MemoryCacheStore`]: a [`CacheStore`] in a map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fredkit_core::traits::CacheStore;
use fredkit_core::{Clock, Error, Result};

use super::{lock, Sweep, Timebase};

/// A [`CacheStore`] in process memory: bytes with expiry, for unit tests.
///
/// Keeps the trait's contract: `get_bytes` answers the stored bytes until the entry's TTL
/// has run out (per the store's [`Clock`]), `set_bytes` replaces the value *and* its
/// expiry, `remove` says whether something live was there. Like fredkit-cache's
/// `RedisCacheStore` it refuses an empty key and a zero TTL (or one under 1 ms, which Redis
/// cannot express) with [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput),
/// writing nothing.
///
/// Clones share the entries. Every call completes at once, without waiting; expired
/// entries are dropped lazily (on access, and in a sweep whenever the map has doubled).
/// Not modelled: outages, eviction under memory pressure, persistence (see the
/// [module docs](crate::memory)).
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use fredkit_core::traits::CacheStore;
/// use fredkit_testkit::memory::MemoryCacheStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fredkit_core::Result<()> {
/// let store = MemoryCacheStore::new();
/// store.set_bytes("app:k", Bytes::from_static(b"v"), Duration::from_secs(5)).await?;
/// assert_eq!(store.get_bytes("app:k").await?, Some(Bytes::from_static(b"v")));
/// assert!(store.remove("app:k").await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryCacheStore {
    state: Arc<Mutex<State>>,
    time: Timebase,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, (Bytes, Instant)>,
    sweep: Sweep,
}

impl MemoryCacheStore {
    /// An empty store on the system clock.
    pub fn new() -> MemoryCacheStore {
        MemoryCacheStore::default()
    }

    /// The same store reading time from `clock` (for example a
    /// [`ManualClock`](fredkit_core::ManualClock) the test advances). Call it before
    /// storing entries: their expiry is measured on the clock they were stored with.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MemoryCacheStore {
        self.time = Timebase::new(clock);
        self
    }

    /// How many live entries the store holds.
    pub fn len(&self) -> usize {
        let now = self.time.clock.now();
        lock(&self.state)
            .entries
            .values()
            .filter(|(_, expires)| *expires > now)
            .count()
    }

    /// Whether the store holds no live entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The remaining life of `key`'s entry, `None` when there is none.
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = self.time.clock.now();
        lock(&self.state)
            .entries
            .get(key)
            .and_then(|(_, expires)| expires.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }
}

fn non_empty(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_input(
            "cache key is empty: pass the entry's key, e.g. \"app:cache:user:42\"",
        ));
    }
    Ok(())
}

#[async_trait]
impl CacheStore for MemoryCacheStore {
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        non_empty(key)?;
        let now = self.time.clock.now();
        let mut state = lock(&self.state);
        match state.entries.get(key) {
            Some((value, expires)) if *expires > now => Ok(Some(value.clone())),
            Some(_) => {
                state.entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set_bytes(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        non_empty(key)?;
        if ttl < Duration::from_millis(1) {
            return Err(Error::invalid_input(format!(
                "cache TTL must be at least 1 ms (got {ttl:?}) for key {key:?}"
            )));
        }
        let now = self.time.clock.now();
        let Some(expires) = now.checked_add(ttl) else {
            return Err(Error::invalid_input(format!(
                "cache TTL {ttl:?} for key {key:?} is too long to represent"
            )));
        };
        let mut state = lock(&self.state);
        state.entries.insert(key.to_string(), (value, expires));
        let len = state.entries.len();
        if state.sweep.due(len) {
            state.entries.retain(|_, (_, expires)| *expires > now);
            let len = state.entries.len();
            state.sweep.swept(len);
        }
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<bool> {
        non_empty(key)?;
        let now = self.time.clock.now();
        Ok(lock(&self.state)
            .entries
            .remove(key)
            .is_some_and(|(_, expires)| expires > now))
    }
}
