//! In-memory doubles of every fredkit-core trait, for unit tests of code that takes a
//! `dyn CacheStore`, `dyn DistributedLock`, `dyn RateLimiter`, `dyn RevocationStore`,
//! `dyn StreamProducer` or `dyn Publisher`/`dyn Subscriber` — no Redis needed.
//!
//! | double | trait(s) |
//! |---|---|
//! | [`MemoryCacheStore`] | [`CacheStore`](fredkit_core::traits::CacheStore) |
//! | [`MemoryLock`] | [`DistributedLock`](fredkit_core::traits::DistributedLock) |
//! | [`MemoryRateLimiter`] | [`RateLimiter`](fredkit_core::traits::RateLimiter) (fixed window, sliding log, GCRA) |
//! | [`MemoryRevocationStore`] | [`RevocationStore`](fredkit_core::traits::RevocationStore) |
//! | [`MemoryStreamProducer`] | [`StreamProducer`](fredkit_core::traits::StreamProducer) |
//! | [`MemoryPubSub`] | [`Publisher`](fredkit_core::traits::Publisher) and [`Subscriber`](fredkit_core::traits::Subscriber) |
//!
//! # What they promise
//!
//! Each double keeps every promise its trait documents — expiry, fencing tokens that only
//! grow, exact atomic rate limits, revocation until expiry, strictly growing stream ids,
//! pub/sub in publish order — and passes the same contract suite
//! ([`crate::contract`]) as fredkit's Redis implementation. They also refuse the same
//! misuse the Redis implementations refuse (an empty key, a zero TTL, a cost above the
//! limit, a reserved stream header) with the same [`ErrorKind`](fredkit_core::ErrorKind),
//! so a unit test catches it before production does.
//!
//! - **Shared state.** Clones of a double share one store, like two processes sharing a
//!   Redis: hand one clone to each component under test.
//! - **Thread-safe and tokio-friendly.** State sits behind a `std::sync::Mutex` held only
//!   for the in-memory step (never across an `.await`); every method completes without
//!   waiting, so the doubles work on any runtime flavour and under
//!   `tokio::time::pause`.
//! - **Deterministic time.** Every double reads time from a
//!   [`Clock`] (default [`SystemClock`]);
//!   `with_clock(ManualClock)` lets a test move time by hand and assert expiry without
//!   sleeping. Wall-clock values (revocation times, stream ids) are the wall time when the
//!   double was built plus the clock's elapsed time, so a [`ManualClock`](fredkit_core::ManualClock)
//!   drives them too. Clones share the clock.
//!
//! # What they do not model
//!
//! No network: no outage, timeout, failover, lost reply, reconnect or `FailMode`
//! fallback ever happens (an in-memory call cannot fail for availability), no round-trip
//! cost, no persistence, no cluster slots, no memory limit or eviction. Code paths that
//! handle those need the Redis implementations against fredkit-testkit's real servers
//! (see [`RedisServer`](crate::RedisServer) and its fault controls).
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use fredkit_core::{traits::{CacheStore, CacheStoreExt}, ManualClock, MsgPack};
//! use fredkit_testkit::memory::MemoryCacheStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> fredkit_core::Result<()> {
//! let clock = ManualClock::new();
//! let store: Arc<dyn CacheStore> = Arc::new(MemoryCacheStore::new().with_clock(Arc::new(clock.clone())));
//! store.set(&MsgPack, "app:user:42", "Ada", Duration::from_secs(60)).await?;
//! assert_eq!(store.get::<String, _>(&MsgPack, "app:user:42").await?.as_deref(), Some("Ada"));
//! clock.advance(Duration::from_secs(61));
//! assert_eq!(store.get::<String, _>(&MsgPack, "app:user:42").await?, None); // expired
//! # Ok(())
//! # }
//! ```

mod cache;
mod lock;
mod pubsub;
mod rate_limit;
mod revocation;
mod streams;

pub use cache::MemoryCacheStore;
pub use lock::MemoryLock;
pub use pubsub::MemoryPubSub;
pub use rate_limit::MemoryRateLimiter;
pub use revocation::MemoryRevocationStore;
pub use streams::{MemoryStreamProducer, StreamEntry};

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fredkit_core::{Clock, SystemClock};

/// The time of a double: a [`Clock`] for durations, and the wall time derived from it.
#[derive(Clone)]
struct Timebase {
    clock: Arc<dyn Clock>,
    origin: Instant,
    wall_origin: SystemTime,
}

impl fmt::Debug for Timebase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timebase")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Default for Timebase {
    fn default() -> Self {
        Timebase::new(Arc::new(SystemClock))
    }
}

impl Timebase {
    fn new(clock: Arc<dyn Clock>) -> Timebase {
        let origin = clock.now();
        Timebase {
            clock,
            origin,
            wall_origin: SystemTime::now(),
        }
    }

    /// Time since the double was built, per its clock.
    fn elapsed(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.origin)
    }

    /// Microseconds since the double was built (saturating).
    fn micros(&self) -> u64 {
        u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The double's wall time: the wall time it was built at plus its clock's elapsed time.
    fn wall(&self) -> SystemTime {
        self.wall_origin
            .checked_add(self.elapsed())
            .unwrap_or(self.wall_origin)
    }

    /// [`wall`](Self::wall) in Unix milliseconds (0 before 1970).
    fn unix_millis(&self) -> u64 {
        unix_millis(self.wall())
    }
}

/// `t` in Unix milliseconds: 0 before 1970, saturating far in the future.
fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `d` in microseconds, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Locks a double's state; a poisoned lock (a panic in another test thread) is taken over,
/// since every update leaves the state consistent before anything can panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// When a map of entries was last swept for expired ones: it is swept again once it has
/// doubled in size, so expired entries cost amortised O(1) and memory stays bounded by
/// twice the live entries.
#[derive(Debug, Default)]
struct Sweep {
    at_len: usize,
}

impl Sweep {
    /// Whether a map now holding `len` entries should be swept.
    fn due(&mut self, len: usize) -> bool {
        if len >= self.at_len.saturating_mul(2).max(64) {
            self.at_len = len;
            true
        } else {
            false
        }
    }

    /// Records the size after a sweep.
    fn swept(&mut self, len: usize) {
        self.at_len = len;
    }
}
