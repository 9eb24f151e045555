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
//!   whose token is older than one it has seen (bytes, or typed values
//!   through fredkit-core's codec); [`FencedCounter`] adds to an integer in
//!   one script under the same check. Both can be seeded without a lock.
//! - [`LockManager::acquire_all`] takes several locks all or nothing,
//!   deadlock-free, one fencing token each ([`LockSet`]).
//! - [`LockManager::close`] closes the manager's connections and background
//!   work for a clean stop.
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
//! # How tokens are drawn, and the clock they rely on
//!
//! The script that takes the lock also draws its token:
//!
//! ```text
//! token = max(counter + 1, the Redis server's time in microseconds)
//! ```
//!
//! and stores it back as the resource's counter (`p:{r}:fence`, which
//! **never expires**; see [`LockManager`]). The counter alone makes tokens
//! strictly increase on one server, whatever its clock does. The clock makes
//! them increase when the counter is **lost or behind**: lost with the
//! server's data (a restart without persistence, an eviction under an
//! `allkeys-*` policy, a deleted or flushed key), or behind after a failover
//! to a replica that missed the last grants (replication is asynchronous; a
//! planned `SENTINEL FAILOVER` also loses the grants the old master makes
//! between the replica's promotion and the moment the old master is turned
//! into a replica or the clients leave it). Such a server draws its next
//! token from its clock, and the grants it lost took place earlier, so their
//! tokens (clock readings too) are lower.
//!
//! **The assumption, precisely:** a token drawn on a server whose counter is
//! lost or behind is above a lost token drawn elsewhere if the new server's
//! clock is behind the old one's by less than the real time between the two
//! grants. That time is at least how long clients take to leave the old
//! server for the new one: for a crash, the failure detection and
//! promotion (seconds: Sentinel's `down-after-milliseconds` plus the
//! election); for a restart, the restart; for a planned failover, as little
//! as a client's reconnection (milliseconds). So **keep the clocks of a
//! master and its replicas synchronised (NTP or chrony) to well under a
//! millisecond — what NTP gives on one network — and never step a clock back
//! by more**. A clock stepped back on a server whose counter survives is
//! harmless: the counter goes on.
//!
//! **A counter ahead of the clock** (set by hand, or after a clock was
//! stepped back) is incremented by one per grant: tokens still strictly
//! increase on that server, but a loss of that counter is covered again only
//! once the clock has passed it. Normally tokens are the server's time in
//! microseconds (about 1.8 x 10^15 today), below 2^53 — exact in Lua and in
//! JSON numbers — until the year 2255. A counter that is not a decimal number
//! below 2^53 (or not a string) makes `acquire` fail with
//! [`ErrorKind::Protocol`] naming the key;
//! nothing is written. Set it to the last token handed out, or delete it.
//!
//! Redis runs scripts one at a time and the grant validates every key before
//! it writes any, so a try that fails on the server leaves nothing behind (no
//! lock held by nobody, no counter moved); one whose answer was lost (a
//! timeout) is undone in the background (see [`LockManager::acquire`]).
//! [Replica confirmation](LockOptionsBuilder::replicas) (`WAIT`) makes a lost
//! grant unlikely in the first place; tokens do not depend on it.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod fenced;
mod grant;
mod guard;
mod manager;
mod metrics;
mod multi;
mod options;
mod redlock;
mod reply;
mod semaphore;
mod waiters;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use fenced::{FencedCounter, FencedIncr, FencedStore, FencedWrite, Raw, MAX_FENCING_TOKEN};
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use guard::{LockGuard, LostSignal};
pub use manager::{LockContext, LockManager};
pub use metrics::LockMetrics;
pub use multi::LockSet;
pub use options::{LockOptions, LockOptionsBuilder};
pub use redlock::{Redlock, RedlockGuard, RedlockOptions, RedlockOptionsBuilder};
pub use semaphore::{Permit, Semaphore};
