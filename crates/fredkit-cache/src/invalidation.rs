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
use fredkit_conn::Redis;
use fredkit_core::{Backoff, CircuitBreaker, Error};
use fredkit_pubsub::{Delivery, Publisher, Subscriber, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Tags moved to a new version by `invalidate_tag`: (tag, version).
    /// Older receivers ignore the field (their L1 TTL bounds them).
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tags: Vec<(String, u64)>,
}

pub(crate) enum Inv {
    Key(String),
    All,
    /// `invalidate_tag`: the tag and its new version.
    Tag(String, u64),
    /// `Cache::close`: publish what is queued, stop taking more, end.
    Close,
}

/// How an instance publishes its invalidations: the channel, the publisher
/// (on the shared connection) and the per-publisher sequence.
pub(crate) struct Outbox {
    pub(crate) publisher: Publisher,
    pub(crate) channel: String,
    pub(crate) breaker: CircuitBreaker,
    /// The last sequence used. Only the publish task moves it until the
    /// cache is closed; after that each write's own publish does.
    pub(crate) seq: AtomicU64,
}

impl Outbox {
    /// Publishes one message with the next sequence. The sequence moves even
    /// if the publish fails: receivers then see a gap on the next message
    /// and flush, instead of keeping a copy this lost message should have
    /// removed.
    pub(crate) async fn send<V: Clone + Send + Sync + 'static>(
        &self,
        local: &Local<V>,
        keys: Vec<String>,
        all: bool,
        tags: Vec<(String, u64)>,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let msg = Invalidation {
            instance: local.instance,
            seq,
            keys,
            all,
            tags,
        };
        let result = self
            .breaker
            .call(async { self.publisher.publish(&self.channel, &msg).await })
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

pub(crate) async fn publish_loop<V: Clone + Send + Sync + 'static>(
    outbox: Arc<Outbox>,
    local: Arc<Local<V>>,
    mut rx: mpsc::UnboundedReceiver<Inv>,
) {
    let mut closing = false;
    while let Some(first) = rx.recv().await {
        let mut keys = Vec::new();
        let mut tags = Vec::new();
        let mut all = false;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Inv::Key(k) => keys.push(k),
                Inv::All => all = true,
                Inv::Tag(t, v) => tags.push((t, v)),
                Inv::Close => {
                    // Later sends fail (the cache then publishes each write
                    // itself); what is queued already is still published.
                    rx.close();
                    closing = true;
                }
            }
            if keys.len() + tags.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if all {
            keys.clear();
        }
        if all || !keys.is_empty() || !tags.is_empty() {
            outbox.send(&local, keys, all, tags).await;
        }
        if closing && rx.is_empty() {
            return;
        }
    }
}

/// Where the listener gets its subscription from.
pub(crate) enum Source {
    /// A subscriber shared with other caches.
    Shared(Subscriber),
    /// A subscriber the cache made for itself (closed with the cache).
    Owned(Subscriber),
    /// Open a subscriber connection of its own (making one failed at start).
    Own(Redis),
}

/// Subscribes to `channel` — retrying with backoff for as long as it takes
/// (Redis down at start-up, subscribe not confirmed) — then lets L1 serve
/// and listens. Until the subscription is confirmed L1 serves nothing, so no
/// copy can outlive an invalidation this instance could not hear.
///
/// A refusal by the server's ACL (`ErrorKind::Permission`) goes to `refused`
/// (once), so that `Cache::new` can fail at once with it instead of waiting
/// out its start-up budget; the task keeps retrying (the rule may be fixed).
pub(crate) async fn subscribe_and_listen<V: Clone + Send + Sync + 'static>(
    local: Arc<Local<V>>,
    source: Source,
    channel: String,
    mut refused: Option<tokio::sync::oneshot::Sender<fredkit_core::Error>>,
) {
    let mut delays = Backoff::builder()
        .initial(std::time::Duration::from_millis(50))
        .max(std::time::Duration::from_secs(2))
        .build()
        .unwrap_or_default()
        .iter();
    let mut owned: Option<Subscriber> = None;
    let mut attempt = 0u32;
    let subscription = loop {
        let sub = match (&source, &owned) {
            (Source::Shared(s), _) | (Source::Owned(s), _) => Ok(s.clone()),
            (Source::Own(_), Some(s)) => Ok(s.clone()),
            (Source::Own(redis), None) => Subscriber::new(redis).await,
        };
        let result = match sub {
            Ok(sub) => {
                let r = sub.subscribe::<Invalidation>(&channel).await;
                if matches!(source, Source::Own(_)) {
                    owned = Some(sub);
                }
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(s) => break s,
            Err(e) => {
                attempt += 1;
                if e.kind() == fredkit_core::ErrorKind::Permission {
                    if let Some(tx) = refused.take() {
                        tracing::error!(error = %e, channel, "fredkit-cache: the server's ACL refuses the invalidation subscription; add the cache's rule (fredkit_cache::acl_rule) or turn invalidation off");
                        let _ = tx.send(e);
                        let pause = delays.next().unwrap_or(std::time::Duration::from_secs(1));
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                }
                if attempt == 1 {
                    tracing::warn!(error = %e, channel, "fredkit-cache: invalidation subscription not confirmed; L1 stays off until it is, retrying in the background");
                } else {
                    tracing::debug!(error = %e, attempt, "fredkit-cache: invalidation subscribe retry failed");
                }
                let pause = delays.next().unwrap_or(std::time::Duration::from_secs(1));
                tokio::time::sleep(pause).await;
            }
        }
    };
    if attempt > 0 {
        tracing::info!(
            attempt,
            "fredkit-cache: invalidation subscription confirmed; L1 on"
        );
    }
    local.set_ready();
    listen(local, subscription).await;
}

async fn listen<V: Clone + Send + Sync + 'static>(
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
                    // Tags first: a copy checked after this sees the new
                    // version, whatever the sequence says.
                    for (t, v) in &msg.tags {
                        local.tags.raise(t, *v);
                    }
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
