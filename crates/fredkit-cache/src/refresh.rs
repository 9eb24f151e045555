//! Eager refresh: a hit past the refresh point refreshes the entry in the
//! background, once.

use crate::cache::{Cache, CacheValue};
use crate::fill::Mode;
use crate::flight::{Join, Shared};
use crate::metrics::incr;
use fredkit_core::Codec;
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

impl<V: CacheValue, C: Codec + Clone> Cache<V, C> {
    pub(crate) fn start_refresh<F, Fut, E>(
        &self,
        key: &str,
        factory: F,
        created_ms: u64,
        accept_none: bool,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let inner = &self.inner;
        let Join::Lead(flight) = inner.join(key) else {
            return; // a fill or refresh of this key is already running here
        };
        let Ok(data_key) = inner.data_key(key) else {
            return;
        };
        incr(&inner.local.metrics.eager_refreshes);
        let task_inner = Arc::clone(inner);
        let task_key = key.to_string();
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
