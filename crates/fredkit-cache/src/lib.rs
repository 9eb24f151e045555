//! Cache-aside over Redis that never stampedes, never serves garbage, and
//! keeps serving when Redis is down.
//!
//! A [`Cache<V>`](Cache) stores typed values under one key prefix:
//!
//! - **Cache-aside**: [`get`](Cache::get), [`set`](Cache::set),
//!   [`remove`](Cache::remove), [`get_or_set`](Cache::get_or_set),
//!   [`get_or_try_set`](Cache::get_or_try_set) (factory errors returned,
//!   nothing cached), [`get_or_try_set_optional`](Cache::get_or_try_set_optional)
//!   (absences cached for the negative TTL), [`fetch`](Cache::fetch) (value +
//!   origin + stale flag), [`get_many`](Cache::get_many) (one `MGET` per hash
//!   slot, pipelined), [`set_many`](Cache::set_many) (pipelined `SET`s),
//!   [`invalidate_prefix`](Cache::invalidate_prefix) (`SCAN` + `UNLINK` on
//!   every primary, never `KEYS`).
//! - **Stampede protection at two levels**: concurrent callers for one key
//!   in a process share one fill (*single flight*); across processes a fill
//!   lock (`SET NX PX` with a random token, released by compare-and-delete,
//!   with the entry re-read in the same script, renewed while the factory
//!   runs) lets one process compute while the others wait a bounded time — woken by the filler's
//!   invalidation message or polling with capped, jittered backoff — then
//!   fall back to their own factory call. No recursion anywhere.
//! - **Fail-safe**: every entry carries its logical expiry in a versioned
//!   envelope and lives `max_stale` longer in Redis. When the factory fails
//!   or times out, or Redis is unreachable, the last known value is served
//!   and counted as stale ([`Fetched::stale`]). Soft and hard factory
//!   timeouts; a timed-out factory finishes in the background and its value
//!   is stored.
//! - **Eager refresh**: past a fraction of the TTL, or by XFetch
//!   ([`CacheOptionsBuilder::xfetch`]: `now - delta*beta*ln(rand) >= expiry`
//!   with the factory's measured duration), a hit returns at once and
//!   refreshes the entry in the background, once across processes: a process
//!   that finds another's refresh lock backs off until the entry changes or
//!   that lock expires.
//! - **Tags** ([`EntryOptions::tags`], [`Cache::invalidate_tag`]): O(1)
//!   invalidation of every entry under a tag on every instance; entries carry
//!   their tags' versions, compared lazily on read (Redis and L1).
//! - **Auto-recovery**: removals, writes and tag invalidations that failed
//!   while Redis was unreachable are queued (bounded, deduplicated) and
//!   replayed with their invalidation message when it answers again.
//! - **Fail-safe throttle** ([`CacheOptionsBuilder::fail_safe_throttle`]) and
//!   **adaptive entries** ([`Cache::fetch_adaptive`], [`Adapted`]).
//! - **L1 + L2**: an optional in-process L1 ([`L1Options`]; a sharded
//!   `quick_cache` bounded by entries or by approximate bytes, with its own
//!   TTL; ~40–80 ns per hit). Every write
//!   publishes an invalidation (keys only) carrying the writer's instance id
//!   and a per-publisher sequence; a receiver that sees a gap in a sequence,
//!   a pub/sub reconnect (`Gap`) or lag flushes its whole L1. The L1 TTL
//!   bounds staleness whatever happens to pub/sub.
//! - **Start-up never needs Redis**: [`Cache::new`] succeeds while Redis is
//!   down or late; the invalidation subscription is retried in the
//!   background, and L1 stays off (reads skip it) until Redis confirms it
//!   ([`Cache::is_ready`], [`Cache::wait_ready`]).
//! - **Garbage in**: an entry that does not decode is a miss: deleted,
//!   logged as a warning, counted in [`CacheMetrics::decode_failures`].
//! - **Circuit breaker** ([`fredkit_core::CircuitBreaker`]) around Redis
//!   calls: during an outage the cache answers from L1 / the factory at full
//!   speed.
//! - **Metrics** ([`Cache::metrics`]) and `tracing` spans
//!   (`fredkit.cache.*`, debug level, so the hit path stays cheap).
//!
//! A runnable tour of every feature, against `REDIS_URL` or a throwaway
//! server: `cargo run -p fredkit-cache --example tour`.
//!
//! ```no_run
//! use std::time::Duration;
//! use fredkit_cache::{Cache, CacheOptions, L1Options};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Product { id: u64, name: String }
//!
//! # async fn load_product(id: u64) -> Result<Product, std::io::Error> {
//! #     Ok(Product { id, name: "tea".into() })
//! # }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = fredkit_conn::Redis::from_url("redis://127.0.0.1:6379").await?;
//! let products: Cache<Product> = Cache::new(
//!     &redis,
//!     CacheOptions::builder("shop:product")
//!         .ttl(Duration::from_secs(300))
//!         .max_stale(Duration::from_secs(3600))
//!         .l1(L1Options::new())
//!         .build()?,
//! )
//! .await?;
//!
//! // One database call per key, however many requests arrive at once,
//! // in this process and in every other one.
//! let p = products
//!     .get_or_try_set("42", || load_product(42))
//!     .await?;
//! println!("{p:?} {:?}", products.metrics());
//! # Ok(()) }
//! ```
//!
//! # Choosing `V`
//!
//! Values are returned by clone. For large values read mostly from L1, use
//! `Cache<Arc<T>>`: an L1 hit then copies a pointer (serde's `rc` support is
//! enabled by this crate).
//!
//! # Keys and round trips
//!
//! Entry `k` lives at `prefix:{k}` (each key its own hash tag, escaped by
//! [`KeySpace`]), its fill lock at
//! `prefix:lock:{k}` (same slot), invalidations on the channel
//! `prefix:invalidations` (sharded pub/sub on a cluster).
//!
//! | operation | round trips |
//! |---|---|
//! | hit in L1 | 0 |
//! | `get`, hit in Redis | 1 (`GET`) |
//! | `get_or_set` miss, lock free | 3 (`GET`, lock + re-read script, store + release script) + 1 `PUBLISH` in the background |
//! | `get_or_set` miss, another process filling | 2 + 1 per poll (woken early by pub/sub) |
//! | `set` / `remove` | 1 + a batched background `PUBLISH` |
//! | `get_many` | 1 pipeline (one `MGET` per slot) |
//! | `set_many` | 1 pipeline |
//! | `invalidate_prefix` | 2 per page of 1000 keys per primary |
//! | `invalidate_tag` | 1 script + a batched background `PUBLISH` |
//! | `get` / `fetch` of a tagged entry in Redis | 2 (`GET`, `MGET` of its tags' versions); in L1: 0 |
//! | `set_with` with tags | 2 (`MGET` of the tags' versions, `SET`) + a batched `PUBLISH` |
//!
//! Tag versions live at `prefix:tag:{tag}` (absent = 0), each kept as long
//! as the cache's longest entry (`ttl + ttl_jitter + max_stale`) past its
//! last change.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod bulk;
mod cache;
mod envelope;
mod fill;
mod flight;
mod invalidation;
mod l1;
mod l2;
mod metrics;
mod options;
mod recovery;
mod refresh;
mod store;
mod tags;
mod tracking;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use cache::{Cache, CacheValue, Fetched, FillError, Origin};
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use metrics::CacheMetrics;
pub use options::{Adapted, CacheOptions, CacheOptionsBuilder, EntryOptions, L1Options};
pub use store::RedisCacheStore;
pub use tracking::InvalidationMode;
