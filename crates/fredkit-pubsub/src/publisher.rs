//! [`Publisher`].

use crate::metrics::Metrics;
use crate::options::{Mode, PubSubOptions};
use bytes::Bytes;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::prelude::Options;
use fred::types::ClusterHash;
use fred::util::redis_keyslot;
use fredkit_conn::{Redis, Topology};
use fredkit_core::{Codec, MsgPack, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub(crate) fn sharded(redis: &Redis, mode: Mode) -> bool {
    match mode {
        Mode::Plain => false,
        Mode::Sharded => true,
        _ => matches!(redis.config().topology(), Topology::Cluster(_)),
    }
}

/// Publishes typed messages on the shared connection.
///
/// Pub/sub is **at-most-once** per `PUBLISH` the server runs: a message
/// published while a subscriber is disconnected is lost for it (the
/// subscriber sees a [`Delivery::Gap`](crate::Delivery::Gap)). A publish
/// whose reply was lost with its connection (after the server ran it) is
/// sent again by fred on the new connection, so subscribers can get that
/// message twice: make consumers idempotent. Use Redis Streams
/// (fredkit-streams) when every message must arrive.
///
/// ```no_run
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// use fredkit_pubsub::Publisher;
/// let publisher = Publisher::new(&redis);
/// let receivers = publisher.publish("orders", &("created", 42u64)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Publisher<C: Codec + Clone = MsgPack> {
    redis: Redis,
    codec: C,
    sharded: bool,
    clustered: bool,
    metrics: Arc<Metrics>,
}

impl Publisher<MsgPack> {
    /// A publisher with the MessagePack codec and default options.
    pub fn new(redis: &Redis) -> Self {
        Self::with_codec(redis, MsgPack, PubSubOptions::default())
    }
}

impl<C: Codec + Clone> Publisher<C> {
    /// A publisher with a codec and options (the mode decides between
    /// `PUBLISH` and `SPUBLISH`; use the same options as the subscribers).
    pub fn with_codec(redis: &Redis, codec: C, options: PubSubOptions) -> Self {
        Publisher {
            redis: redis.clone(),
            codec,
            sharded: sharded(redis, options.mode),
            clustered: matches!(redis.config().topology(), Topology::Cluster(_)),
            metrics: Arc::new(Metrics::new("publisher")),
        }
    }

    /// Encodes `value` and publishes it on `channel`. Messages of one
    /// publisher on one channel arrive in publish order (on a cluster too);
    /// across channels a cluster gives no order. Returns how many
    /// subscribers received it (with sharded pub/sub: on the owning shard;
    /// with plain pub/sub on a cluster: on the node that took the command).
    ///
    /// Costs one round trip (`PUBLISH` or `SPUBLISH`).
    ///
    /// # Errors
    /// A codec error if the value cannot be encoded (nothing is sent);
    /// connection/timeout errors from Redis. If the future is dropped after the
    /// command was written, the message may still be delivered.
    pub async fn publish<T: Serialize + ?Sized>(&self, channel: &str, value: &T) -> Result<u64> {
        let payload = self.codec.encode(value)?;
        self.publish_bytes(channel, payload).await
    }

    /// Publishes raw bytes on `channel`, without encoding. Same cost and
    /// errors as [`publish`](Self::publish).
    pub async fn publish_bytes(&self, channel: &str, payload: impl Into<Bytes>) -> Result<u64> {
        let payload: Bytes = payload.into();
        let span = tracing::debug_span!(
            "fredkit.pubsub.publish",
            primitive = "pubsub",
            sharded = self.sharded,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty
        );
        let started = Instant::now();
        let client = self.redis.client();
        let result = async {
            if self.sharded {
                client.spublish::<u64, _, _>(channel, payload).await
            } else if self.clustered {
                // fred sends a plain PUBLISH to any node, and nodes forward it
                // over separate cluster-bus links: two publishes from one
                // publisher could arrive out of order. Routing by the
                // channel's slot keeps one channel's messages in order.
                let options = Options {
                    cluster_hash: Some(ClusterHash::Custom(redis_keyslot(channel.as_bytes()))),
                    ..Options::default()
                };
                client
                    .with_options(&options)
                    .publish::<u64, _, _>(channel, payload)
                    .await
            } else {
                client.publish::<u64, _, _>(channel, payload).await
            }
        }
        .instrument(span.clone())
        .await;
        span.record("duration_us", started.elapsed().as_micros() as u64);
        match result {
            Ok(n) => {
                span.record("outcome", "ok");
                Metrics::add(&self.metrics.published, 1);
                Ok(n)
            }
            Err(e) => {
                span.record("outcome", "error");
                let command = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
                Err(fredkit_core::Error::from(e).naming(command, channel))
            }
        }
    }

    /// Whether this publisher uses `SPUBLISH`.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// This publisher's counters (`published`).
    pub fn metrics(&self) -> crate::MetricsSnapshot {
        self.metrics.snapshot()
    }
}
