//! Cross-instance invalidation over fredkit-pubsub.
//!
//! Every write of an instance enqueues its key; one publisher task per cache
//! drains the queue and publishes batches `{instance, seq, keys, all}` with a
//! per-publisher sequence that grows by exactly one per message (the task is
//! the only publisher, so messages leave in sequence order). A receiver keeps
//! the last sequence seen per publisher; anything but `last + 1` — or a
//! pub/sub `Gap`/`Lagged`, or an undecodable message — means an invalidation
//! may have been lost, and the receiver flushes its whole L1.

use crate::l1::Local;
use crate::metrics::incr;
use fredkit_core::{CircuitBreaker, Error};
use fredkit_pubsub::{Delivery, Publisher, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most keys per message.
const BATCH: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Invalidation {
    /// Publishing instance.
    #[serde(rename = "i")]
    pub(crate) instance: u64,
    /// Per-publisher sequence, from 1.
    #[serde(rename = "s")]
    pub(crate) seq: u64,
    /// Keys written or removed (user keys, not Redis key names).
    #[serde(rename = "k", default)]
    pub(crate) keys: Vec<String>,
    /// Drop everything (after `invalidate_prefix`).
    #[serde(rename = "a", default)]
    pub(crate) all: bool,
}

pub(crate) enum Inv {
    Key(String),
    All,
}

pub(crate) async fn publish_loop<V: Clone + Send + Sync + 'static>(
    publisher: Publisher,
    channel: String,
    breaker: CircuitBreaker,
    local: Arc<Local<V>>,
    mut rx: mpsc::UnboundedReceiver<Inv>,
) {
    let mut seq = 0u64;
    while let Some(first) = rx.recv().await {
        let mut msg = Invalidation {
            instance: local.instance,
            seq: 0,
            keys: Vec::new(),
            all: false,
        };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Inv::Key(k) => msg.keys.push(k),
                Inv::All => msg.all = true,
            }
            if msg.keys.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if msg.all {
            msg.keys.clear();
        }
        // The sequence moves even if the publish fails: receivers then see a
        // gap on the next message and flush, instead of keeping a copy this
        // lost message should have removed.
        seq += 1;
        msg.seq = seq;
        let result = breaker
            .call(async { publisher.publish(&channel, &msg).await })
            .await;
        match result {
            Ok(_) => incr(&local.metrics.invalidations_published),
            Err(e) => {
                incr(&local.metrics.redis_errors);
                tracing::debug!(error = %e, seq, "fredkit-cache: invalidation not published; receivers will see a sequence gap");
            }
        }
    }
}

pub(crate) async fn listen<V: Clone + Send + Sync + 'static>(
    local: Arc<Local<V>>,
    mut sub: Subscription<Invalidation>,
) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    while let Some(delivery) = sub.next().await {
        match delivery {
            Delivery::Message(m) => match m.payload {
                Ok(msg) => {
                    if msg.instance == local.instance {
                        continue;
                    }
                    incr(&local.metrics.invalidations_received);
                    let expected = last.get(&msg.instance).map_or(1, |s| s.wrapping_add(1));
                    last.insert(msg.instance, msg.seq);
                    if msg.seq != expected {
                        tracing::debug!(
                            publisher = msg.instance,
                            expected,
                            got = msg.seq,
                            "fredkit-cache: invalidation sequence gap, flushing L1"
                        );
                        local.flush_l1("sequence gap");
                    } else if msg.all {
                        local.flush_l1("invalidate_prefix");
                    } else {
                        for k in &msg.keys {
                            local.remove_l1(k);
                        }
                    }
                    for k in &msg.keys {
                        local.wake(k);
                    }
                }
                Err(e) => {
                    let e: Error = e;
                    tracing::warn!(error = %e, "fredkit-cache: undecodable invalidation message, flushing L1");
                    local.flush_l1("undecodable invalidation");
                }
            },
            Delivery::Gap => local.flush_l1("pub/sub reconnect"),
            Delivery::Lagged(_) => local.flush_l1("pub/sub lag"),
            _ => local.flush_l1("unknown pub/sub event"),
        }
    }
}
