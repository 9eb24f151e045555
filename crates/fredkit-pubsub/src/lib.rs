//! Typed Redis pub/sub that survives reconnects and scales out on a cluster.
//!
//! - [`Publisher::publish`] encodes a value (MessagePack by default) and
//!   publishes it: one round trip.
//! - [`Subscriber`] holds **one** subscriber connection and fans it out to any
//!   number of local [`Subscription`] streams; a slow receiver gets
//!   [`Delivery::Lagged`] and never blocks the others.
//! - After a reconnect everything is resubscribed automatically and every
//!   receiver gets [`Delivery::Gap`]: messages published in between are lost.
//!   A connection that goes silent without closing (paused server, half-open
//!   TCP) is found by a liveness probe (one `PING` every 500 ms) and
//!   reconnected the same way; see [`Subscriber`].
//! - On a cluster, sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) is used by
//!   default ([`Mode::Auto`]), so a message travels only to its shard.
//!
//! Pub/sub is **at-most-once**. For delivery that survives disconnects, use
//! Redis Streams (fredkit-streams).
//!
//! A runnable version of the example below, which starts its own throwaway
//! server: `cargo run -p fredkit-pubsub --example fanout`.
//!
//! ```no_run
//! use futures::StreamExt;
//! use fredkit_conn::Redis;
//! use fredkit_pubsub::{Delivery, Publisher, Subscriber};
//!
//! # async fn run() -> fredkit_core::Result<()> {
//! let redis = Redis::from_url("redis://127.0.0.1:6379").await?;
//! let subscriber = Subscriber::new(&redis).await?;
//! let mut events = subscriber.subscribe::<String>("events").await?;
//!
//! Publisher::new(&redis).publish("events", "hello").await?;
//! if let Some(Delivery::Message(m)) = events.next().await {
//!     assert_eq!(m.payload?, "hello");
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod glob;
mod metrics;
mod options;
mod publisher;
mod subscriber;
mod traits;

/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use acl::{acl_rule, ACL_COMMANDS};
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use metrics::{Metrics, MetricsSnapshot};
pub use options::{Mode, PubSubOptions};
pub use publisher::Publisher;
pub use subscriber::{Delivery, Message, Subscriber, Subscription};
