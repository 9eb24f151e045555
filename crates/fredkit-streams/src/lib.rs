//! At-least-once workers on Redis Streams that lose nothing.
//!
//! - [`Producer`] appends typed entries (`XADD`, MessagePack by default) with
//!   headers (`type`, `trace_id`, your own) and trims the stream in the same
//!   command ([`Trim`]: `MAXLEN ~` or `MINID ~` by age); batches are one
//!   pipeline.
//! - [`Worker`] consumes a consumer group: `XREADGROUP ... BLOCK` on a
//!   dedicated connection, a handler `async fn(Message<T>) -> Result<(), E>`
//!   with bounded concurrency, batched `XACK`s, retries of failed entries and
//!   recovery of crashed consumers' entries through `XAUTOCLAIM`, a
//!   dead-letter stream after `max_deliveries`, and a graceful
//!   [`shutdown`](Worker::shutdown) that reports.
//! - [`StreamAdmin`] creates groups idempotently and gives operators the
//!   pending summary, the lag per group and the dead letters, which it can
//!   replay.
//!
//! ```no_run
//! use std::time::Duration;
//! use fredkit_core::KeySpace;
//! use fredkit_streams::{Message, Producer, StreamKeys, Worker, WorkerConfig};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64 }
//!
//! # async fn run() -> fredkit_core::Result<()> {
//! let redis = fredkit_conn::Redis::from_url("redis://127.0.0.1:6379").await?;
//! let keys = StreamKeys::new(&KeySpace::new("shop")?, "orders")?;
//!
//! let config = WorkerConfig::builder("billing").build()?;
//! let worker = Worker::start(&redis, keys.clone(), config, |m: Message<Order>| async move {
//!     if m.payload.id == 0 {
//!         return Err("order 0 is invalid"); // retried, then dead-lettered
//!     }
//!     Ok(())
//! })
//! .await?;
//!
//! Producer::<Order>::new(&redis, keys).publish(&Order { id: 7 }).await?;
//! let report = worker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Delivery contract
//!
//! - **Nothing is lost.** An entry delivered to a worker stays in the group's
//!   pending entries list (PEL) until it is acknowledged, which happens only
//!   after its handler returned `Ok`, or after it was copied to the
//!   dead-letter stream (one script: `XADD` + `XACK`, so never one without
//!   the other). A worker that crashes leaves its entries pending; every
//!   worker runs `XAUTOCLAIM` every `claim_interval` and takes over entries
//!   pending longer than `min_idle`, whoever owned them.
//! - **Retries.** A handler error, panic or timeout leaves the entry pending;
//!   it is delivered again (to any worker) once it has been idle for
//!   `min_idle`. The delivery on which it fails for the `max_deliveries`-th
//!   time dead-letters it with the handler's error. An entry reclaimed with
//!   a delivery count above `max_deliveries` (its consumers kept crashing)
//!   is dead-lettered by the claim itself. A payload that does not decode
//!   is dead-lettered at once with the decode error. A dead letter replayed
//!   with [`StreamAdmin::replay_dead_letters`] is handled again only by the
//!   group that dead-lettered it (the other groups' workers acknowledge it
//!   without running their handler).
//! - **At least once, and exactly once per success in the normal case.**
//!   A successful handling is acknowledged right after the handler returns
//!   (acknowledgements are batched: the ids that finished while the previous
//!   `XACK` was in flight go in the next one). It is handled again only if
//!   that `XACK` does not reach Redis before `min_idle` has passed since the
//!   delivery: a Redis outage or a process crash between the handler's
//!   success and the acknowledgement. Workers enforce the rest: a handler
//!   runs at most `handler_timeout` (< `min_idle`, checked at `build()`)
//!   counted from the delivery, so no other worker can take over an entry
//!   whose handler is still running; and a worker never reads more entries
//!   than it has free handler slots, so none waits unstarted. Keep
//!   `min_idle - handler_timeout` above the acknowledgement round trip (the
//!   command timeout, 1 s by default, is a safe margin). Handlers that must
//!   never run twice should still deduplicate on [`Message::id`].
//! - **Lost replies.** A read or claim whose reply never reaches the worker
//!   (its timeout expired on a paused server, the connection was killed
//!   mid-command) may still have handed entries to this consumer on the
//!   server. Nobody handles them until a claim takes them over after
//!   `min_idle`, as for a crashed consumer: late, never lost.
//! - **Ordering.** None across entries: concurrent handlers and retries
//!   reorder. Use `concurrency(1)` and one worker for strict order (retries
//!   still reorder).
//! - **Deleted while pending.** An entry trimmed away (see [`Trim`]) or
//!   `XDEL`'d while pending cannot be handled; Redis 7's `XAUTOCLAIM` reports
//!   such ids and the worker counts them in
//!   [`WorkerSnapshot::deleted_while_pending`] and logs a warning (fred's
//!   `xautoclaim_values` would drop them; the claim script reads the raw
//!   reply).
//! - **Persistence.** What "acknowledged" survives is the server's business:
//!   with AOF (`appendfsync everysec`), a Redis process crash loses nothing
//!   that was answered, a machine crash up to about a second. Entries and
//!   acknowledgements lost that way are redelivered or lost accordingly.
//!
//! # Keys
//!
//! [`StreamKeys`] puts the stream and its dead-letter stream under one hash
//! tag (`prefix:{name}:stream`, `prefix:{name}:dead`), so every script is
//! single-slot on a cluster. Neither has a TTL: both are bounded by
//! approximate `MAXLEN` trimming.
//!
//! # Entry format
//!
//! Field `payload` holds the encoded value; every other field is a header
//! (`type`, `trace_id`, your own). `payload` and names starting with `dlq.`
//! are reserved. A dead letter holds the original fields plus `dlq.id`,
//! `dlq.group`, `dlq.consumer`, `dlq.deliveries`, `dlq.error` and `dlq.at`
//! (`dlq.missing` when the entry had been trimmed away, `dlq.dropped_fields`
//! when it had more headers than one script call can copy: thousands); a
//! replayed one
//! carries `dlq.replayed_from` and `dlq.replay_group`.
//!
//! # Observability
//!
//! Spans `fredkit.streams.publish` and `fredkit.streams.handle` both carry
//! the entry's `trace_id` header, so a trace id given to the producer shows
//! up on the handler's span; `fredkit.streams.worker` wraps a worker's loop.
//! Counters: [`ProducerMetrics`] and [`WorkerSnapshot`].
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod admin;
mod config;
mod fields;
mod keys;
mod message;
mod metrics;
mod producer;
mod reply;
mod worker;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use admin::{DeadLetter, GroupInfo, PendingSummary, ReplayReport, StartFrom, StreamAdmin};
pub use config::{WorkerConfig, WorkerConfigBuilder};
pub use fields::{PAYLOAD_FIELD, RESERVED_PREFIX, TRACE_ID_HEADER, TYPE_HEADER};
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use keys::{StreamId, StreamKeys};
pub use message::Message;
pub use metrics::{ProducerMetrics, ProducerSnapshot, WorkerMetrics, WorkerSnapshot};
pub use producer::{Producer, ProducerConfig, ProducerConfigBuilder, Trim};
pub use worker::{ShutdownReport, Worker, WorkerHandle};
