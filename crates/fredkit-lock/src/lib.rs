//! Distributed locks on Redis that stay safe under pauses, expiry and
//! failover: fencing tokens, an opt-in watchdog, waiters woken by pub/sub,
//! fenced writes, Redlock and counting semaphores with expiring permits.
//!
//! - [`LockManager::acquire`] takes a lock in **one script** that also draws
//!   a **fencing token** — a number that strictly increases with every grant
//!   of the resource — and, if asked, waits for a busy lock without busy
//!   loops (one pub/sub subscription per manager wakes its waiters).
//! - [`LockGuard::release`] / [`LockGuard::extend`] compare the holder's
//!   random token, so a holder whose lock expired can never free or extend
//!   the next holder's lock. Dropping a guard releases in the background.
//! - The [watchdog](LockOptionsBuilder::watchdog) renews every `ttl/3` and
//!   flags the guard [lost](LockGuard::lost) if the lock vanished or Redis
//!   stayed unreachable for a TTL.
//! - [`FencedStore`] is the storage-side half of fencing: it rejects a write
//!   whose token is older than one it has seen.
//! - [`Redlock`] runs the Redlock algorithm over independent servers (read
//!   its docs for what it does not promise); [`Semaphore`] limits
//!   concurrency to N holders whose permits expire.
//!
//! Locks **fail closed**: a Redis error is never a granted lock.
//!
//! ```no_run
//! use std::time::Duration;
//! use fredkit_lock::{FencedStore, FencedWrite, LockManager, LockOptions};
//!
//! # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
//! let locks = LockManager::new(&redis, "app:locks")?;
//! let store = FencedStore::new(&redis, "app:data")?;
//! let opts = LockOptions::builder()
//!     .ttl(Duration::from_secs(5))
//!     .wait(Duration::from_secs(1))
//!     .watchdog(true)
//!     .build()?;
//!
//! let charged = locks
//!     .with_lock("payment:981", &opts, |ctx| async move {
//!         // ... charge the card ...
//!         // The storage checks the fencing token: a holder that stalled past
//!         // its TTL is rejected here even though it thinks it holds the lock.
//!         store.write("payment:981", "charged", ctx.fencing_token, None).await
//!     })
//!     .await?;
//! match charged {
//!     None => println!("someone else is processing payment 981"),
//!     Some(Ok(FencedWrite::Written)) => println!("charged once"),
//!     Some(other) => println!("stale holder: {other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Why fencing tokens
//!
//! A lock with a TTL cannot stop a holder that pauses (GC, swap, a stalled
//! VM, a slow network) longer than the TTL: the lock expires, another client
//! takes it, and the first one wakes up and writes anyway. Only the storage
//! can refuse that write, and only if each write carries a number that tells
//! old holders from new ones: the fencing token (Martin Kleppmann, "How to do
//! distributed locking", 2016). Pass [`LockGuard::fencing_token`] along with
//! every write and have the storage reject tokens older than the newest it
//! has seen — [`FencedStore`] does exactly that for values kept in Redis.
//!
//! The fencing counter is stored in Redis next to the lock and **never
//! expires** (see [`LockManager`]), so tokens keep increasing across client
//! restarts. A counter that is missing — the first grant ever, or lost with
//! the server's data (a restart without persistence, an eviction under an
//! `allkeys-*` policy, a deleted key) — starts again from the server's clock
//! in microseconds, above every token handed out before, as long as that
//! clock did not go back (tokens are therefore large numbers, below 2^53
//! until the year 2255). What this cannot cover is a counter that survived
//! *behind*: a failover to a replica that missed the last `INCR`s. Run the
//! lock's Redis with AOF, and consider
//! [replica confirmation](LockOptionsBuilder::replicas).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod fenced;
mod guard;
mod manager;
mod metrics;
mod options;
mod redlock;
mod semaphore;
mod waiters;

pub use fenced::{FencedStore, FencedWrite, MAX_FENCING_TOKEN};
pub use guard::{LockGuard, LostSignal};
pub use manager::{LockContext, LockManager};
pub use metrics::LockMetrics;
pub use options::{LockOptions, LockOptionsBuilder};
pub use redlock::{Redlock, RedlockGuard, RedlockOptions, RedlockOptionsBuilder};
pub use semaphore::{Permit, Semaphore};
