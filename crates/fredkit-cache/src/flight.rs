//! Single flight: concurrent callers of one key in a process share one fill.

use crate::cache::{CacheValue, Fetched, Inner};
use fredkit_core::Codec;
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// The result a single flight hands to the callers that joined it.
#[derive(Clone)]
pub(crate) enum Shared<V> {
    Done(Fetched<V>),
    /// The leader's factory failed: followers fail too (or serve stale).
    Failed,
    /// The flight ended without a value for others (an eager refresh that
    /// was skipped): followers try on their own.
    Retry,
    Timeout(Duration),
    Panicked,
}

pub(crate) type FlightRx<V> = watch::Receiver<Option<Shared<V>>>;

pub(crate) enum Join<V: CacheValue, C: Codec + Clone> {
    Follow(FlightRx<V>),
    Lead(Flight<V, C>),
}

/// A leader's hold on a key's single flight. [`finish`](Flight::finish)
/// unregisters the flight and hands the outcome to its followers; dropped
/// unfinished (the task was aborted), it still unregisters, and followers see
/// a closed channel and retry: a flight can never be left dangling.
pub(crate) struct Flight<V: CacheValue, C: Codec + Clone> {
    inner: Arc<Inner<V, C>>,
    key: String,
    tx: watch::Sender<Option<Shared<V>>>,
}

impl<V: CacheValue, C: Codec + Clone> Flight<V, C> {
    pub(crate) fn finish(self, outcome: Shared<V>) {
        // Unregister first: a follower that retries must not find this
        // finished flight again.
        self.unregister();
        let _ = self.tx.send(Some(outcome));
    }

    fn unregister(&self) {
        let mut flights = self.inner.flights();
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            flights.remove(&self.key);
        }
    }
}

impl<V: CacheValue, C: Codec + Clone> Drop for Flight<V, C> {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    pub(crate) fn flights(&self) -> MutexGuard<'_, HashMap<String, FlightRx<V>>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join<V, C> {
        let mut flights = self.flights();
        if let Some(rx) = flights.get(key) {
            return Join::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key.to_string(), rx);
        Join::Lead(Flight {
            inner: Arc::clone(self),
            key: key.to_string(),
            tx,
        })
    }
}
