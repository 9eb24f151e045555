//! Eager refresh: a hit past the refresh point refreshes the entry in the
//! background, once across all processes.
//!
//! The refresh takes the key's fill lock (`fill_acquire`, one script). A
//! process that finds the lock held by another one (it is refreshing) backs
//! off: it records the entry generation (`created_ms`) it tried to refresh
//! and the other filler's remaining lock time, and sends no further script
//! for that entry until the entry changes (the refreshed value arrives: its
//! invalidation drops the L1 copy and the next read brings a newer
//! `created_ms`) or that lock expires (the other filler died).

use crate::cache::Inner;
use crate::cache::{Cache, CacheValue};
use crate::fill::Mode;
use crate::flight::{Join, Shared};
use crate::options::EntryOptions;
use fredkit_core::Codec;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

impl<V: CacheValue, C: Codec + Clone> Cache<V, C> {
    pub(crate) fn start_refresh<F, Fut, E>(
        &self,
        key: &str,
        factory: F,
        created_ms: u64,
        accept_none: bool,
        entry: &EntryOptions,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let inner = &self.inner;
        if inner.refresh_backed_off(key, created_ms) {
            return; // another process is refreshing this entry
        }
        let Join::Lead(flight) = inner.join(key) else {
            return; // a fill or refresh of this key is already running here
        };
        let Ok(data_key) = inner.data_key(key) else {
            return;
        };
        let task_inner = Arc::clone(inner);
        let task_key = key.to_string();
        let task_entry = entry.clone();
        tokio::spawn(
            async move {
                let r = task_inner
                    .fill(
                        &task_key,
                        data_key,
                        factory,
                        None,
                        true,
                        None,
                        accept_none,
                        Mode::Refresh { created_ms },
                        task_entry,
                    )
                    .await;
                flight.finish(match r {
                    Ok(f) => Shared::Done(f),
                    Err(_) => Shared::Retry,
                });
            }
            .instrument(tracing::debug_span!(
                "fredkit.cache.refresh",
                primitive = "cache"
            )),
        );
    }
}

/// Entries whose refresh another process holds: key -> (the entry's
/// `created_ms`, until when not to try again).
#[derive(Default)]
pub(crate) struct RefreshBackoff(std::sync::Mutex<HashMap<String, (u64, Instant)>>);

/// Above this many recorded back-offs, expired ones are dropped on insert.
const BACKOFF_PRUNE: usize = 4096;

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    /// Another process holds `key`'s fill lock for `lock_left`: do not try
    /// to refresh the entry created at `created_ms` again before then.
    pub(crate) fn refresh_backoff(&self, key: &str, created_ms: u64, lock_left: Duration) {
        let now = Instant::now();
        let until = now.checked_add(lock_left).unwrap_or(now);
        let mut map = self
            .refresh_backoff
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= BACKOFF_PRUNE {
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= BACKOFF_PRUNE * 16 {
                map.clear();
            }
        }
        map.insert(key.to_string(), (created_ms, until));
    }

    /// Whether a refresh of `key`'s entry created at `created_ms` is backed
    /// off; forgets a back-off that ended or was for another entry.
    pub(crate) fn refresh_backed_off(&self, key: &str, created_ms: u64) -> bool {
        let mut map = self
            .refresh_backoff
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            None => false,
            Some(&(c, until)) if c == created_ms && Instant::now() < until => true,
            Some(_) => {
                map.remove(key);
                false
            }
        }
    }
}

/// XFetch's head start, `-delta * beta * ln(rand())` with `rand()` uniform
/// in (0, 1]: a hit refreshes when now plus this reaches the expiry. Zero
/// when the factory's duration is unknown.
pub(crate) fn xfetch_early(delta_ms: u32, beta: f64) -> Duration {
    if delta_ms == 0 {
        return Duration::ZERO;
    }
    let r = 1.0 - rand::random::<f64>(); // (0, 1]
    let secs = f64::from(delta_ms) / 1000.0 * beta * -r.ln();
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
}
