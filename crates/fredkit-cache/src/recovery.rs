//! Auto-recovery: removals, failed writes and tag invalidations that could
//! not reach Redis (down, paused, breaker open) are queued and replayed when
//! it answers again, so instances do not serve each other stale values after
//! an outage ends.
//!
//! The queue is bounded ([`MAX_PENDING`]) and deduplicated per key / tag (a
//! removal of `k` queued twice is one). A failed write is replayed as a
//! removal of its key: the value it tried to write may be older than what
//! another instance wrote since, and a removal can only cost a miss. A
//! replay is `UNLINK` (one pipeline, one `UNLINK` per slot) and
//! `invalidate_tag` scripts, then one invalidation message with every key
//! and tag (published directly, not through the breaker, which may still be
//! open). Its sequence may arrive out of order with the publisher task's:
//! receivers then see a gap and flush their whole L1, which is what an
//! outage deserves anyway. If the queue overflowed, the message says "all"
//! (every L1 flushed).
//!
//! The replay task runs only while something is queued: it probes Redis
//! with `PING` every [`PROBE`] (bypassing the breaker) and replays at the
//! first answer.

use crate::cache::{CacheValue, Inner};
use crate::invalidation::Invalidation;
use crate::metrics::incr;
use crate::tags::INVALIDATE_TAG;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::{Key, Value};
use fredkit_core::Codec;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most operations queued; past it the oldest are dropped and the replay
/// flushes every instance's L1.
pub(crate) const MAX_PENDING: usize = 10_000;
/// How often the replay task asks Redis whether it is back.
pub(crate) const PROBE: Duration = Duration::from_millis(100);

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    /// Remove this key (user key) and tell the other instances.
    Key(String),
    /// Invalidate this tag.
    Tag(String),
}

#[derive(Default)]
struct Pending {
    order: VecDeque<Op>,
    set: HashSet<Op>,
    overflowed: bool,
    running: bool,
}

/// The queue of a cache.
#[derive(Default)]
pub(crate) struct Recovery(Mutex<Pending>);

impl Recovery {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    /// Queues `op` for replay (deduplicated), starting the replay task if it
    /// is not running.
    pub(crate) fn queue_for_recovery(self: &Arc<Self>, op: Op) {
        let start = {
            let mut p = self.recovery.lock();
            if p.set.insert(op.clone()) {
                p.order.push_back(op);
                incr(&self.local.metrics.recovery_queued);
                while p.order.len() > MAX_PENDING {
                    if let Some(old) = p.order.pop_front() {
                        p.set.remove(&old);
                        p.overflowed = true;
                        incr(&self.local.metrics.recovery_dropped);
                    }
                }
            }
            !std::mem::replace(&mut p.running, true)
        };
        if start {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.replay_loop().await });
        }
    }

    /// A write of `key` succeeded: a queued removal of it is moot (it
    /// would only cost a miss, but the write is newer).
    pub(crate) fn recovered_key(&self, key: &str) {
        let mut p = self.recovery.lock();
        if p.order.is_empty() {
            return;
        }
        let op = Op::Key(key.to_string());
        if p.set.remove(&op) {
            p.order.retain(|o| o != &op);
        }
    }

    async fn replay_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE).await;
            let timeout = self.redis.config().command_timeout();
            let up = matches!(
                tokio::time::timeout(timeout, self.redis.client().ping::<Value>(None)).await,
                Ok(Ok(_))
            );
            if !up {
                continue;
            }
            let (batch, all) = {
                let mut p = self.recovery.lock();
                let n = p.order.len().min(1000);
                let batch: Vec<Op> = p.order.drain(..n).collect();
                for op in &batch {
                    p.set.remove(op);
                }
                (batch, std::mem::take(&mut p.overflowed))
            };
            match self.replay(&batch, all).await {
                Ok(()) => {
                    for _ in &batch {
                        incr(&self.local.metrics.recovery_replayed);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fredkit-cache: recovery replay failed; retrying");
                    let mut p = self.recovery.lock();
                    for op in batch.into_iter().rev() {
                        if p.set.insert(op.clone()) {
                            p.order.push_front(op);
                        }
                    }
                    p.overflowed |= all;
                    continue;
                }
            }
            let mut p = self.recovery.lock();
            if p.order.is_empty() {
                p.running = false;
                return;
            }
        }
    }

    async fn replay(&self, batch: &[Op], all: bool) -> fredkit_core::Result<()> {
        let mut keys = Vec::new();
        let mut groups: BTreeMap<u16, Vec<Key>> = BTreeMap::new();
        let mut tags = Vec::new();
        for op in batch {
            match op {
                Op::Key(k) => {
                    let data_key = self.data_key(k)?;
                    let slot = if self.clustered {
                        fred::util::redis_keyslot(data_key.as_bytes())
                    } else {
                        0
                    };
                    groups.entry(slot).or_default().push(Key::from(data_key));
                    keys.push(k.clone());
                }
                Op::Tag(t) => tags.push(t.clone()),
            }
        }
        if !groups.is_empty() {
            let pipe = self.redis.client().pipeline();
            for (_, ks) in groups {
                pipe.unlink::<(), _>(ks).await?;
            }
            pipe.all::<Vec<Value>>().await?;
        }
        let mut versions = Vec::with_capacity(tags.len());
        for t in tags {
            let v = self.invalidate_tag_raw(&t).await?;
            self.local.tags.raise(&t, v);
            versions.push((t, v));
        }
        for k in &keys {
            self.local.remove_l1(k);
            self.local.wake(k);
        }
        if let Some(outbox) = &self.outbox {
            let seq = outbox.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let msg = Invalidation {
                instance: self.local.instance,
                seq,
                keys: if all { Vec::new() } else { keys },
                all,
                tags: versions,
            };
            outbox.publisher.publish(&outbox.channel, &msg).await?;
            incr(&self.local.metrics.invalidations_published);
        }
        if all {
            self.local.flush_l1("recovery queue overflowed");
        }
        tracing::info!(
            ops = batch.len(),
            "fredkit-cache: replayed the writes and invalidations queued while Redis was unreachable"
        );
        Ok(())
    }

    /// `invalidate_tag`'s script, without the breaker.
    pub(crate) async fn invalidate_tag_raw(&self, tag: &str) -> fredkit_core::Result<u64> {
        let tag_key = self.tag_key(tag)?;
        let v: i64 = INVALIDATE_TAG
            .exec(
                self.redis.client(),
                vec![tag_key],
                vec![Value::Integer(self.tag_life_ms())],
            )
            .await?;
        Ok(u64::try_from(v).unwrap_or(0))
    }
}
