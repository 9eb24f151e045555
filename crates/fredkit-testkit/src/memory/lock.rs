//! [`MemoryLock`]: a [`DistributedLock`] in a map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fredkit_core::traits::{DistributedLock, LockLease};
use fredkit_core::{Clock, Error, Result};

use super::{lock, Timebase};

/// A [`DistributedLock`] in process memory, for unit tests of code that locks.
///
/// Keeps the trait's contract: at most one live lease per resource (per the lock's
/// [`Clock`]); a lease ends when released or when its TTL runs out; only the lease's
/// token releases or extends it (an expired lease cannot touch the next holder's lock);
/// fencing tokens of a resource grow strictly with every grant, from 1, for as long as the
/// double lives (also across expiries). A zero TTL, or one under 1 ms (fredkit-lock's
/// resolution), and an empty resource name are
/// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput).
///
/// Clones share the locks: give each simulated process its own clone. Not reentrant,
/// never waits (`try_acquire` only), and cannot fail for availability (see the
/// [module docs](crate::memory)). One fencing counter per resource ever locked is kept,
/// as fredkit-lock keeps one in Redis.
///
/// ```
/// use std::time::Duration;
/// use fredkit_core::traits::DistributedLock;
/// use fredkit_testkit::memory::MemoryLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fredkit_core::Result<()> {
/// let locks = MemoryLock::new();
/// let other_process = locks.clone();
/// let lease = locks.try_acquire("invoice:42", Duration::from_secs(10)).await?.unwrap();
/// assert!(other_process.try_acquire("invoice:42", Duration::from_secs(10)).await?.is_none());
/// assert!(locks.release(&lease).await?);
/// let next = other_process.try_acquire("invoice:42", Duration::from_secs(10)).await?.unwrap();
/// assert!(next.fencing_token > lease.fencing_token);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryLock {
    state: Arc<Mutex<HashMap<String, Resource>>>,
    time: Timebase,
}

#[derive(Debug, Default)]
struct Resource {
    /// The live holder's token and expiry, if any (may have run out).
    holder: Option<(String, Instant)>,
    /// The last fencing token granted.
    fence: u64,
}

impl Resource {
    fn held_by(&self, token: &str, now: Instant) -> bool {
        self.holder
            .as_ref()
            .is_some_and(|(t, expires)| t == token && *expires > now)
    }
}

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) {
        return Err(Error::invalid_input(format!(
            "lock TTL must be at least 1 ms, got {ttl:?}: pass how long the work may hold the lock"
        )));
    }
    Ok(())
}

fn check_resource(resource: &str) -> Result<()> {
    if resource.is_empty() {
        return Err(Error::invalid_input(
            "lock resource is empty: name what you lock, e.g. \"invoice:42\"",
        ));
    }
    Ok(())
}

impl MemoryLock {
    /// No lock held, on the system clock.
    pub fn new() -> MemoryLock {
        MemoryLock::default()
    }

    /// The same locks reading time from `clock` (a
    /// [`ManualClock`](fredkit_core::ManualClock) lets a test expire a lease by advancing
    /// it). Call it before taking locks.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MemoryLock {
        self.time = Timebase::new(clock);
        self
    }

    /// Whether someone holds a live lease on `resource`.
    pub fn is_locked(&self, resource: &str) -> bool {
        let now = self.time.clock.now();
        lock(&self.state)
            .get(resource)
            .and_then(|r| r.holder.as_ref())
            .is_some_and(|(_, expires)| *expires > now)
    }

    /// The last fencing token granted for `resource` (0 if never locked).
    pub fn last_fencing_token(&self, resource: &str) -> u64 {
        lock(&self.state).get(resource).map_or(0, |r| r.fence)
    }
}

#[async_trait]
impl DistributedLock for MemoryLock {
    async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Option<LockLease>> {
        check_ttl(ttl)?;
        check_resource(resource)?;
        let now = self.time.clock.now();
        let Some(expires) = now.checked_add(ttl) else {
            return Err(Error::invalid_input(format!(
                "lock TTL {ttl:?} is too long to represent"
            )));
        };
        let mut state = lock(&self.state);
        let r = state.entry(resource.to_string()).or_default();
        if r.holder.as_ref().is_some_and(|(_, e)| *e > now) {
            return Ok(None);
        }
        let Some(fence) = r.fence.checked_add(1) else {
            return Err(Error::protocol(format!(
                "the fencing counter of lock {resource:?} is exhausted (u64::MAX grants)"
            )));
        };
        let token = format!("{:032x}", rand::random::<u128>());
        r.fence = fence;
        r.holder = Some((token.clone(), expires));
        Ok(Some(LockLease {
            resource: resource.to_string(),
            token,
            fencing_token: fence,
        }))
    }

    async fn release(&self, lease: &LockLease) -> Result<bool> {
        check_resource(&lease.resource)?;
        let now = self.time.clock.now();
        let mut state = lock(&self.state);
        match state.get_mut(&lease.resource) {
            Some(r) if r.held_by(&lease.token, now) => {
                r.holder = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool> {
        check_ttl(ttl)?;
        check_resource(&lease.resource)?;
        let now = self.time.clock.now();
        let Some(expires) = now.checked_add(ttl) else {
            return Err(Error::invalid_input(format!(
                "lock TTL {ttl:?} is too long to represent"
            )));
        };
        let mut state = lock(&self.state);
        match state.get_mut(&lease.resource) {
            Some(r) if r.held_by(&lease.token, now) => {
                r.holder = Some((lease.token.clone(), expires));
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
