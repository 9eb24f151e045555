//! # fredkit
//!
//! Redis patterns for Rust services, built on [`fred`](https://docs.rs/fred) and tokio.
//! This facade re-exports the fredkit crates; depend on it, or on the single
//! crates you need.
//!
//! | module | crate | status |
//! |---|---|---|
//! | [`core`] | `fredkit-core` | errors, codecs, keys, scripts, backoff, circuit breaker, traits |
//! | [`conn`] | `fredkit-conn` | configuration, the shared `Redis` handle, health |
//! | `pubsub` (feature `pubsub`) | `fredkit-pubsub` | typed pub/sub, fan-out, resubscription with gap events |
//! | `cache` (feature `cache`) | `fredkit-cache` | cache-aside without stampedes, fail-safe, L1 + L2 with sequenced invalidation |
//! | `lock` (feature `lock`) | `fredkit-lock` | locks with fencing tokens, watchdog, pub/sub wake-ups, fenced writes, Redlock, semaphore |
//! | `ratelimit` (feature `ratelimit`) | `fredkit-ratelimit` | fixed window, sliding log, sliding counter, GCRA in one round trip; tower layer |
//! | `streams` (feature `streams`) | `fredkit-streams` | at-least-once consumer-group workers, retries, dead letters, admin tools |
//! | `revocation` (feature `revocation`) | `fredkit-revocation` | JWT revocation by id, subject and organisation; fail modes; local cache |
//! | `collections` (feature `collections`) | `fredkit-collections` | TTL maps (carts), feeds, presence, leaderboards, Bloom filters |
//! | `jobs` (feature `jobs`) | `fredkit-jobs` | background jobs: delayed, prioritised, recurring, retried, leased |
//! | `session` (feature `session`) | `fredkit-session` | web sessions with per-field atomic writes; tower-sessions store |
//! | `flags` (feature `flags`) | `fredkit-flags` | feature flags evaluated locally from a synced snapshot |
//!
//! ## Features
//! - `pubsub`: [`fredkit-pubsub`](https://docs.rs/fredkit-pubsub) as `fredkit::pubsub`.
//! - `cache`: [`fredkit-cache`](https://docs.rs/fredkit-cache) as `fredkit::cache`.
//! - `lock`: [`fredkit-lock`](https://docs.rs/fredkit-lock) as `fredkit::lock`.
//! - `ratelimit`: [`fredkit-ratelimit`](https://docs.rs/fredkit-ratelimit) as `fredkit::ratelimit`.
//! - `streams`: [`fredkit-streams`](https://docs.rs/fredkit-streams) as `fredkit::streams`.
//! - `revocation`: [`fredkit-revocation`](https://docs.rs/fredkit-revocation) as `fredkit::revocation`.
//! - `collections`, `jobs`, `session`, `flags`: the crates of the same names.
//! - `session-tower-sessions`: fredkit-session's `tower_sessions::SessionStore`.
//! - `flags-openfeature`: fredkit-flags' OpenFeature provider.
//! - `ratelimit-tower`, `ratelimit-axum`: the rate limiter's tower layer (and
//!   the client IP from axum's `ConnectInfo`).
//! - `revocation-local-cache`, `revocation-tower`: the revocation store's
//!   pub/sub-fed local cache and its tower layer.
//! - `full`: all of the above.
//! - `tls`: `rediss://` URLs through rustls (ring): certificates verified
//!   against the native roots or a given CA, client certificates (mTLS), a
//!   server-name override (`fredkit::conn::TlsOptions`).
//! - `json`: the JSON codec next to the default MessagePack one.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's quickstart, compiled as a doctest (with every feature on) so
/// that it cannot rot.
#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use fredkit_cache as cache;
#[cfg(feature = "collections")]
#[cfg_attr(docsrs, doc(cfg(feature = "collections")))]
pub use fredkit_collections as collections;
pub use fredkit_conn as conn;
pub use fredkit_core as core;
#[cfg(feature = "flags")]
#[cfg_attr(docsrs, doc(cfg(feature = "flags")))]
pub use fredkit_flags as flags;
#[cfg(feature = "jobs")]
#[cfg_attr(docsrs, doc(cfg(feature = "jobs")))]
pub use fredkit_jobs as jobs;
#[cfg(feature = "lock")]
#[cfg_attr(docsrs, doc(cfg(feature = "lock")))]
pub use fredkit_lock as lock;
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub use fredkit_pubsub as pubsub;
#[cfg(feature = "ratelimit")]
#[cfg_attr(docsrs, doc(cfg(feature = "ratelimit")))]
pub use fredkit_ratelimit as ratelimit;
#[cfg(feature = "revocation")]
#[cfg_attr(docsrs, doc(cfg(feature = "revocation")))]
pub use fredkit_revocation as revocation;
#[cfg(feature = "session")]
#[cfg_attr(docsrs, doc(cfg(feature = "session")))]
pub use fredkit_session as session;
#[cfg(feature = "streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "streams")))]
pub use fredkit_streams as streams;

pub use fredkit_conn::{Redis, RedisConfig};
pub use fredkit_core::{Error, ErrorKind, Result};
