//! [`LockSet`]: the locks of several resources, taken all or nothing by
//! [`LockManager::acquire_all`](crate::LockManager::acquire_all) and released
//! together.

use std::fmt;
use std::time::Duration;

use fredkit_core::Result;
use futures::future::{join_all, select_all};

use crate::guard::LockGuard;

/// The locks on several resources, held together: what
/// [`LockManager::acquire_all`](crate::LockManager::acquire_all) returns.
///
/// Each resource has its own lock and its own **fencing token** (a grant per
/// resource, so each token strictly increases across the grants of *its*
/// resource; pass each to the storage of its resource). The guards are kept
/// in the order they were taken: sorted by resource name, duplicates
/// removed.
///
/// Dropping the set drops every guard, each releasing its lock in the
/// background (see [`LockGuard`]); [`release`](Self::release) releases them
/// all at once and says whether all were still held.
pub struct LockSet {
    guards: Vec<LockGuard>,
}

impl fmt::Debug for LockSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.guards.iter()).finish()
    }
}

impl LockSet {
    pub(crate) fn new(guards: Vec<LockGuard>) -> LockSet {
        LockSet { guards }
    }

    /// The guards, sorted by resource name.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// The locked resources, sorted.
    pub fn resources(&self) -> impl Iterator<Item = &str> + '_ {
        self.guards.iter().map(LockGuard::resource)
    }

    /// How many resources are locked (duplicates in the request count once).
    pub fn len(&self) -> usize {
        self.guards.len()
    }

    /// Never true for a set `acquire_all` returned (it refuses an empty
    /// request); here for the usual pairing with [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// The fencing token of `resource`'s grant, `None` if it is not in the
    /// set.
    pub fn fencing_token(&self, resource: &str) -> Option<u64> {
        self.guards
            .iter()
            .find(|g| g.resource() == resource)
            .map(LockGuard::fencing_token)
    }

    /// True once any of the locks is lost (see [`LockGuard::is_lost`]): the
    /// protected work must stop.
    pub fn is_lost(&self) -> bool {
        self.guards.iter().any(LockGuard::is_lost)
    }

    /// Completes as soon as any of the locks is lost (see
    /// [`LockGuard::lost`]). Cancel-safe.
    pub async fn lost(&self) {
        if self.guards.is_empty() {
            return;
        }
        let signals: Vec<_> = self.guards.iter().map(LockGuard::lost_signal).collect();
        let waits = signals.iter().map(|s| Box::pin(s.lost()));
        select_all(waits).await;
    }

    /// Resets every lock's TTL to `ttl`, all at once (one script per lock,
    /// sent together: one round trip of latency). `Ok(true)` when every lock
    /// was still held; `Ok(false)` when at least one had expired (that guard
    /// is marked lost: stop the work).
    ///
    /// # Errors
    ///
    /// As [`LockGuard::extend`]: the first error met; every lock was tried.
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        let results = join_all(self.guards.iter().map(|g| g.extend(ttl))).await;
        let mut all = true;
        for r in results {
            all &= r?;
        }
        Ok(all)
    }

    /// Releases every lock, all at once (one script per lock, sent
    /// together: one round trip of latency; on a cluster each goes to its
    /// resource's node). `Ok(true)` when every lock was still held;
    /// `Ok(false)` when at least one had expired (someone else's lock on
    /// that resource, if any, was left alone).
    ///
    /// # Errors
    ///
    /// The first error met; every lock was tried, and one whose release
    /// failed expires at its TTL. If the future is dropped, each lock is
    /// released or left to expire.
    pub async fn release(self) -> Result<bool> {
        let results = join_all(self.guards.into_iter().map(LockGuard::release)).await;
        let mut all = true;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(held) => all &= held,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }
}
