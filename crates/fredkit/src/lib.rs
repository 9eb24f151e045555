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
//!
//! ## Features
//! - `pubsub`: [`fredkit-pubsub`](https://docs.rs/fredkit-pubsub) as `fredkit::pubsub`.
//! - `tls`: `rediss://` URLs through rustls.
//! - `json`: the JSON codec next to the default MessagePack one.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use fredkit_cache as cache;
pub use fredkit_conn as conn;
pub use fredkit_core as core;
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
#[cfg(feature = "streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "streams")))]
pub use fredkit_streams as streams;

pub use fredkit_conn::{Redis, RedisConfig};
pub use fredkit_core::{Error, ErrorKind, Result};
