//! Typed, atomic, cluster-safe Redis data structures.
//!
//! - [`TtlMap`]: a hash per id (a shopping cart) whose TTL every write
//!   refreshes, with typed values through the codec and integer quantities:
//!   `add`, `remove`, `remove_if_zero` in one atomic round trip each, and a
//!   [`merge_into`](TtlMap::merge_into) across cluster slots that never loses
//!   or doubles an item when interrupted and retried.
//! - [`Feed`]: a capped list of the newest N items, pushed and trimmed in one
//!   step.
//!   Optionally with a maximum age per item (server clock).
//! - [`Presence`]: who is online from heartbeats, a sorted set scored by
//!   server time and trimmed on every call (no sweeper task).
//! - [`Leaderboard`]: scores submitted as best / latest / increment, top N,
//!   rank and neighbours with documented ties, optional daily / weekly
//!   boards that expire.
//! - [`BloomFilter`]: "surely absent or probably present" on
//!   `SETBIT`/`GETBIT` in one script (no module), sized from the expected
//!   items and false-positive rate, bulk calls in one round trip.
//!
//! Every structure builds its keys from a [`KeySpace`]
//! with one hash tag per structure instance (one slot), sets a TTL on every
//! write, and reports garbage under a key as a typed error naming the key.
//!
//! ```no_run
//! use std::time::Duration;
//! use fredkit_collections::{Feed, MergeOutcome, TtlMap};
//!
//! # async fn run() -> fredkit_core::Result<()> {
//! let redis = fredkit_conn::Redis::from_url("redis://127.0.0.1:6379").await?;
//! // Carts that expire after 30 days without a write; the value is a price.
//! let carts: TtlMap<u64> = TtlMap::new(&redis, "shop:cart", Duration::from_secs(30 * 86_400))?;
//! carts.add("anon-7f3a", "sku-1", 2).await?;
//! carts.set("anon-7f3a", "sku-1", &1999).await?;
//! carts.add("user-42", "sku-1", 1).await?;
//! // At login: exact even when interrupted and retried.
//! let merged = carts.merge_into("anon-7f3a", "user-42").await?;
//! assert!(matches!(merged, MergeOutcome::Merged { .. }));
//! assert_eq!(carts.quantity("user-42", "sku-1").await?, 3);
//!
//! let feed: Feed<String> = Feed::new(&redis, "shop:activity", 100, Duration::from_secs(86_400))?;
//! feed.push("user-42", &"added sku-1".to_string()).await?;
//! let newest = feed.latest("user-42", 10).await?;
//! # Ok(()) }
//! ```

mod acl;
mod bloom;
mod common;
mod feed;
mod leaderboard;
mod presence;
mod ttlmap;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use bloom::{BloomFilter, BloomFilterBuilder};
pub use feed::Feed;
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use leaderboard::{Leaderboard, LeaderboardBuilder, Order, Period, Ranked, Submit};
pub use presence::Presence;
pub use ttlmap::{MergeOutcome, MergePlan, MergeRule, TtlMap};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
