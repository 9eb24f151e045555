//! The cache store trait: [`CacheStore`] and its typed [`CacheStoreExt`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{Codec, Result};

/// A key–value store with expiry: the storage a cache reads and writes.
///
/// The trait exists so that code which caches does not care where entries
/// live: Redis (fredkit-cache), a two-level in-process + Redis store, or a map in a
/// unit test. It speaks bytes and is object-safe; [`CacheStoreExt`] adds typed
/// `get`/`set` through a [`Codec`] to every implementation.
///
/// Keys are full key names, built with [`KeySpace`](crate::KeySpace).
///
/// # Contract
///
/// | method | promise | round trips (Redis implementations) |
/// |---|---|---|
/// | [`get_bytes`](Self::get_bytes) | the stored bytes, or `None` if absent or expired | 1 |
/// | [`set_bytes`](Self::set_bytes) | stores the value, replacing any, expiring after `ttl` | 1 |
/// | [`remove`](Self::remove) | deletes; `true` if something was there | 1 |
///
/// **Failure.** Every method returns the store's error unchanged (for Redis,
/// [`Error::is_unavailable`](crate::Error::is_unavailable) tells an outage
/// from a bug). Deciding to serve stale data or call the source instead is
/// the caller's job: caches fail open.
///
/// **Cancellation.** Dropping a `get_bytes` future has no effect. Dropping a
/// `set_bytes` or `remove` future leaves the entry either as it was or as the
/// call would have left it — never half-written.
///
/// # Example
///
/// A complete in-memory store, used through the typed extension:
///
/// ```
/// use std::{collections::HashMap, sync::Mutex, time::{Duration, Instant}};
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use fredkit_core::{traits::{CacheStore, CacheStoreExt}, MsgPack, Result};
///
/// #[derive(Default)]
/// struct MemoryStore {
///     entries: Mutex<HashMap<String, (Bytes, Instant)>>,
/// }
///
/// #[async_trait]
/// impl CacheStore for MemoryStore {
///     async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
///         let entries = self.entries.lock().unwrap();
///         Ok(entries
///             .get(key)
///             .filter(|(_, expires)| *expires > Instant::now())
///             .map(|(value, _)| value.clone()))
///     }
///
///     async fn set_bytes(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
///         let expires = Instant::now() + ttl;
///         self.entries.lock().unwrap().insert(key.to_string(), (value, expires));
///         Ok(())
///     }
///
///     async fn remove(&self, key: &str) -> Result<bool> {
///         Ok(self.entries.lock().unwrap().remove(key).is_some())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<()> {
/// // Any implementation can stand behind a trait object.
/// let store: std::sync::Arc<dyn CacheStore> = std::sync::Arc::new(MemoryStore::default());
///
/// store.set(&MsgPack, "user:42", &vec!["admin", "ops"], Duration::from_secs(60)).await?;
/// let roles: Option<Vec<String>> = store.get(&MsgPack, "user:42").await?;
/// assert_eq!(roles, Some(vec!["admin".to_string(), "ops".to_string()]));
///
/// assert!(store.remove("user:42").await?);
/// assert_eq!(store.get::<Vec<String>, _>(&MsgPack, "user:42").await?, None);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait CacheStore: Send + Sync {
    /// The bytes stored under `key`, or `None` when there is no live entry.
    ///
    /// # Errors
    ///
    /// The store could not be read (for Redis: connection, timeout, busy).
    async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>>;

    /// Stores `value` under `key` for `ttl`, replacing any previous entry and
    /// its expiry. A zero `ttl` is an
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error
    /// (Redis rejects it; an entry that never lives is a bug).
    ///
    /// # Errors
    ///
    /// The store could not be written; `InvalidInput` for a zero `ttl`.
    async fn set_bytes(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()>;

    /// Deletes `key`. `true` when an entry was removed, `false` when there was
    /// none.
    ///
    /// # Errors
    ///
    /// The store could not be written.
    async fn remove(&self, key: &str) -> Result<bool>;
}

/// Typed `get`/`set` on every [`CacheStore`], through a [`Codec`].
///
/// Blanket-implemented: `use fredkit_core::traits::CacheStoreExt` and call
/// the methods on any store, including `dyn CacheStore`.
#[async_trait]
pub trait CacheStoreExt: CacheStore {
    /// Reads and decodes the entry under `key`. Same round trips and
    /// cancellation as [`CacheStore::get_bytes`].
    ///
    /// # Errors
    ///
    /// As [`CacheStore::get_bytes`], and
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) when the stored bytes do
    /// not decode as `T` (a caller may treat that as a miss).
    async fn get<T, C>(&self, codec: &C, key: &str) -> Result<Option<T>>
    where
        T: DeserializeOwned,
        C: Codec,
    {
        match self.get_bytes(key).await? {
            Some(bytes) => codec.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Encodes `value` and stores it under `key` for `ttl`. Same round trips
    /// and cancellation as [`CacheStore::set_bytes`].
    ///
    /// # Errors
    ///
    /// As [`CacheStore::set_bytes`], and
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) when `value` cannot be
    /// encoded (nothing is written then).
    async fn set<T, C>(&self, codec: &C, key: &str, value: &T, ttl: Duration) -> Result<()>
    where
        T: Serialize + Sync + ?Sized,
        C: Codec,
    {
        let bytes = codec.encode(value)?;
        self.set_bytes(key, bytes, ttl).await
    }
}

impl<S: CacheStore + ?Sized> CacheStoreExt for S {}
