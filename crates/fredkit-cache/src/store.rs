//! [`RedisCacheStore`]: fredkit-core's object-safe [`CacheStore`] on Redis.

use async_trait::async_trait;
use bytes::Bytes;
use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use fredkit_conn::Redis;
use fredkit_core::traits::CacheStore;
use fredkit_core::{CircuitBreaker, Error, Result};
use std::time::Duration;

/// Plain bytes with expiry on Redis, behind fredkit-core's object-safe
/// [`CacheStore`] trait, for code that wants a swappable store
/// (`Arc<dyn CacheStore>`) rather than the full [`Cache`](crate::Cache).
///
/// Keys are used as given (build them with
/// [`KeySpace`](fredkit_core::KeySpace)); values are stored raw, without the
/// [`Cache`](crate::Cache) envelope, so the two do not read each other's
/// entries. Calls go through a circuit breaker: during an outage they fail
/// fast with [`ErrorKind::CircuitOpen`](fredkit_core::ErrorKind::CircuitOpen).
///
/// | method | round trips |
/// |---|---|
/// | `get_bytes` | 1 (`GET`) |
/// | `set_bytes` | 1 (`SET … PX`) |
/// | `remove` | 1 (`UNLINK`) |
///
/// A TTL under 1 ms or over 100 years is refused before any round trip with
/// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
/// naming the key (Redis would reject the larger ones).
///
/// ```no_run
/// use std::{sync::Arc, time::Duration};
/// use fredkit_cache::RedisCacheStore;
/// use fredkit_core::{traits::{CacheStore, CacheStoreExt}, MsgPack};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let store: Arc<dyn CacheStore> = Arc::new(RedisCacheStore::new(&redis));
/// store.set(&MsgPack, "app:greeting", "hello", Duration::from_secs(60)).await?;
/// let v: Option<String> = store.get(&MsgPack, "app:greeting").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisCacheStore {
    redis: Redis,
    breaker: CircuitBreaker,
}

impl RedisCacheStore {
    /// A store on `redis` with a default circuit breaker named `cache-store`.
    pub fn new(redis: &Redis) -> Self {
        Self::with_breaker(redis, CircuitBreaker::named("cache-store"))
    }

    /// A store on `redis` guarded by `breaker` (share one per Redis).
    pub fn with_breaker(redis: &Redis, breaker: CircuitBreaker) -> Self {
        RedisCacheStore {
            redis: redis.clone(),
            breaker,
        }
    }
}

/// The same refusal as [`Cache`](crate::Cache)'s, for the raw store.
fn non_empty(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_input(
            "cache key is empty: pass the entry's Redis key, e.g. \"app:cache:user:42\"",
        ));
    }
    Ok(())
}

/// The longest TTL a cache entry may have: Redis rejects expiry times that
/// overflow its clock, and 100 years is "forever".
pub(crate) const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `ttl` in milliseconds for `SET … PX`, or `InvalidInput` naming `key`
/// when it is under 1 ms or over [`MAX_TTL`] (a TTL Redis would refuse, or
/// one no whole millisecond represents).
pub(crate) fn ttl_px(key: &str, ttl: Duration) -> Result<i64> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::invalid_input(format!(
            "cache TTL for key {key:?} must be at least 1 ms, got {ttl:?}: pass how long the entry may be served"
        )));
    }
    if ttl > MAX_TTL {
        return Err(Error::invalid_input(format!(
            "cache TTL for key {key:?} must be at most 100 years, got {ttl:?}: Redis rejects larger expiry times (use 100 years for \"forever\")"
        )));
    }
    i64::try_from(ttl.as_millis()).map_err(|_| {
        Error::invalid_input(format!(
            "cache TTL for key {key:?} does not fit in Redis's milliseconds: {ttl:?}"
        ))
    })
}

#[async_trait]
impl CacheStore for RedisCacheStore {
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        non_empty(key)?;
        self.breaker
            .call(async {
                self.redis
                    .client()
                    .get::<Option<Bytes>, _>(key)
                    .await
                    .map_err(Error::from)
            })
            .await
    }

    async fn set_bytes(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        non_empty(key)?;
        let px = ttl_px(key, ttl)?;
        self.breaker
            .call(async {
                self.redis
                    .client()
                    .set::<(), _, _>(key, value, Some(Expiration::PX(px)), None, false)
                    .await
                    .map_err(Error::from)
            })
            .await
    }

    async fn remove(&self, key: &str) -> Result<bool> {
        non_empty(key)?;
        self.breaker
            .call(async {
                self.redis
                    .client()
                    .unlink::<i64, _>(key)
                    .await
                    .map_err(Error::from)
            })
            .await
            .map(|n| n > 0)
    }
}
