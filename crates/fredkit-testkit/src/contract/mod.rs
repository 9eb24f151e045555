//! Contract suites of fredkit-core's traits: one suite per trait, run against every
//! implementation — the Redis ones (in each crate's `contract` tests, on standalone and
//! cluster) and the in-memory doubles of [`crate::memory`] (in this crate's tests) — so
//! that a double cannot drift from what production does.
//!
//! Each suite is an async function generic over the trait. It takes **two handles onto
//! the same store** (two managers on one Redis, or two clones of a double), so that every
//! promise is checked across "processes"; a `ns` namespace (unique per run, e.g. from
//! [`unique_prefix`](crate::unique_prefix)) for the keys, resources, channels and streams
//! it uses; and a [`Time`] that says how the suite lets time pass. It asserts the trait's
//! documented invariants — exact values and counts, expiry, no double grant, ordering,
//! typed error kinds — and panics (like `assert!`) on the first broken one, naming it. An
//! unexpected error from the implementation is returned as `Err`.
//!
//! Assertions never bound how long something took: waits only go the safe way (wait at
//! least a TTL, then expect it gone; expect a long-lived entry still there), so a loaded
//! machine cannot fail a correct implementation.
//!
//! | suite | trait | checks |
//! |---|---|---|
//! | [`cache_store`] | `CacheStore` | round trip of any bytes, replace, remove's answer, expiry and replaced expiry, zero TTL refused and nothing written, concurrent writers |
//! | [`distributed_lock`] | `DistributedLock` | one holder at a time (also under a race), only the token releases/extends, expiry, extend sets the remaining life, fencing tokens strictly growing across grants and expiries, zero TTL refused |
//! | [`rate_limiter`] | `RateLimiter` | exact admission of `limit` across handles and under concurrency, denied consumes nothing (waits do not grow), cost 0, cost above the limit refused, keys apart |
//! | [`rate_limiter_refill`] | `RateLimiter` | waiting `retry_after` admits the same request, waiting `reset_after` restores full capacity |
//! | [`revocation_store`] | `RevocationStore` | revoked until expiry (plus a stated margin) then forgotten, never shortened, expired tokens not recorded, subject cut-off inclusive, only forward, `check` by id or subject |
//! | [`stream_producer`] | `StreamProducer` | every `Ok` entry stored once with its payload and headers, ids strictly growing (also concurrent), streams apart, reserved headers refused and nothing appended |
//! | [`pubsub`] | `Publisher` + `Subscriber` | active on return, publish order, nothing before subscribing, every receiver gets everything, channels apart, dropping one receiver leaves the others |
//!
//! ```
//! use fredkit_testkit::{contract, memory::MemoryLock};
//! use fredkit_core::ManualClock;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> fredkit_core::Result<()> {
//! let clock = ManualClock::new();
//! let lock = MemoryLock::new().with_clock(Arc::new(clock.clone()));
//! contract::distributed_lock(&lock, &lock.clone(), "t:lock", &contract::Time::Manual(clock)).await
//! # }
//! ```

mod cache;
mod lock;
mod pubsub;
mod rate_limit;
mod revocation;
mod streams;

pub use cache::cache_store;
pub use lock::distributed_lock;
pub use pubsub::pubsub;
pub use rate_limit::{rate_limiter, rate_limiter_refill};
pub use revocation::revocation_store;
pub use streams::{stream_producer, StreamReader};

use std::future::Future;
use std::time::Duration;

use fredkit_core::{ErrorKind, ManualClock, Result};

/// How a contract suite lets time pass for the implementation under test.
#[derive(Clone, Debug)]
pub enum Time {
    /// Real time: the suite sleeps (for Redis, whose clock it cannot move).
    Real,
    /// The [`ManualClock`] the implementation reads: the suite advances it, without
    /// sleeping.
    Manual(ManualClock),
}

impl Time {
    /// Lets at least `d` pass for the implementation.
    pub async fn pass(&self, d: Duration) {
        match self {
            Time::Real => tokio::time::sleep(d).await,
            Time::Manual(clock) => clock.advance(d),
        }
    }
}

/// Asserts that `r` failed with `kind`, naming `what` otherwise.
#[track_caller]
fn assert_kind<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, what: &str) {
    let got = match &r {
        Err(e) => format!("a {:?} error ({e})", e.kind()),
        Ok(v) => format!("Ok({v:?})"),
    };
    assert!(
        r.as_ref().is_err_and(|e| e.kind() == kind),
        "{what}: expected a {kind:?} error, got {got}"
    );
}

/// Runs `futures` concurrently (interleaved on this task, so the calls are in flight
/// together) and collects their outputs in order.
async fn together<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    futures::future::join_all(futures).await
}
