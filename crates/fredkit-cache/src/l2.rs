//! Entries in Redis (L2): keys, reads, garbage, envelopes, writes, and the
//! invalidations writes publish.

use crate::cache::{CacheValue, Inner};
use crate::envelope::{self, Stored};
use crate::fill::FILL_STORE_RELEASE;
use crate::invalidation::Inv;
use crate::l1::Ticket;
use crate::metrics::incr;
use bytes::Bytes;
use fred::interfaces::KeysInterface;
use fred::types::{Expiration, Key, Value};
use fredkit_core::{Codec, Error, Result, Script};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) static UNLINK_GARBAGE: Script = Script::new(
    "unlink_garbage",
    include_str!("../scripts/unlink_garbage.lua"),
);

pub(crate) fn non_empty_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_input(
            "cache key is empty: pass the entry's key, e.g. \"user:42\" (the cache adds its prefix)",
        ));
    }
    Ok(())
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    /// Every entry point builds its keys here (an empty key never reaches
    /// L1 either: nothing is stored under one), so all refuse an empty key
    /// with the same message — not the `KeySpace` one about hash tags, which
    /// names an implementation detail the caller never chose.
    pub(crate) fn data_key(&self, key: &str) -> Result<String> {
        non_empty_key(key)?;
        self.opts.keys.tagged(key, [""; 0])
    }

    pub(crate) fn lock_key(&self, key: &str) -> Result<String> {
        non_empty_key(key)?;
        self.opts.lock_keys.tagged(key, [""; 0])
    }

    pub(crate) fn publish(&self, inv: Inv) {
        let Some(tx) = &self.inv_tx else { return };
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            self.publish_closed(inv);
        } else if let Err(mpsc::error::SendError(inv)) = tx.send(inv) {
            // The publisher task stopped taking messages (closed).
            self.publish_closed(inv);
        }
    }

    /// After `close`: the write publishes its own invalidation (one short
    /// task, one `PUBLISH`). Sequences may then arrive out of order, which
    /// receivers treat as a gap (a flush): safe.
    pub(crate) fn publish_closed(&self, inv: Inv) {
        let Some(outbox) = &self.outbox else { return };
        let (keys, all, tags) = match inv {
            Inv::Key(k) => (vec![k], false, Vec::new()),
            Inv::All => (Vec::new(), true, Vec::new()),
            Inv::Tag(t, v) => (Vec::new(), false, vec![(t, v)]),
            Inv::Close => return,
        };
        let outbox = Arc::clone(outbox);
        let local = Arc::clone(&self.local);
        tokio::spawn(async move { outbox.send(&local, keys, all, tags).await });
    }

    /// Runs a Redis call through the breaker, counting unavailability.
    pub(crate) async fn redis_call<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let r = self.breaker.call(fut).await;
        if let Err(e) = &r {
            if e.is_unavailable() {
                incr(&self.local.metrics.redis_errors);
            }
        }
        r
    }

    /// One `GET`; garbage is deleted, counted and reported as absent.
    pub(crate) async fn l2_get(&self, key: &str, data_key: String) -> Result<Option<Stored<V>>> {
        let permit = match self.breaker.try_acquire() {
            Ok(p) => p,
            Err(e) => {
                incr(&self.local.metrics.redis_errors);
                return Err(e);
            }
        };
        // The key's bytes move into fred's `Key` without a copy; clones of
        // it are reference counts.
        let data_key = Key::from(data_key);
        let reply = self
            .redis
            .client()
            .get::<Option<Bytes>, _>(data_key.clone())
            .await;
        match reply {
            Ok(Some(bytes)) => {
                permit.success();
                match self.decode_or_unlink(key, || data_key, &bytes) {
                    // A tagged entry: its tags' versions must still be current.
                    Some(s) if s.tags.is_some() => {
                        if self.tags_current_in_redis(&s.tags).await? {
                            Ok(Some(s))
                        } else {
                            Ok(None)
                        }
                    }
                    other => Ok(other),
                }
            }
            Ok(None) => {
                permit.success();
                Ok(None)
            }
            Err(e) => {
                let e = Error::from(e);
                if e.is_unavailable() {
                    permit.failure();
                    incr(&self.local.metrics.redis_errors);
                    Err(e)
                } else {
                    permit.success();
                    if e.to_string().contains("WRONGTYPE") {
                        self.garbage(key, data_key, Bytes::new(), "not a string (WRONGTYPE)");
                        Ok(None)
                    } else {
                        Err(e)
                    }
                }
            }
        }
    }

    pub(crate) fn decode_or_unlink(
        &self,
        key: &str,
        data_key: impl FnOnce() -> Key,
        bytes: &Bytes,
    ) -> Option<Stored<V>> {
        match envelope::decode::<V, C>(&self.codec, bytes, self.opts.max_value_bytes) {
            Ok(s) => Some(s),
            Err(g) => {
                self.garbage(key, data_key(), bytes.clone(), &g.0);
                None
            }
        }
    }

    /// An entry that does not decode: count, warn, delete in the background.
    /// `read` is what was read: the entry is deleted only if it still holds
    /// exactly that (a value written meanwhile survives).
    pub(crate) fn garbage(&self, key: &str, data_key: Key, read: Bytes, why: &str) {
        incr(&self.local.metrics.decode_failures);
        tracing::warn!(
            prefix = self.opts.keys.prefix(),
            reason = why,
            "fredkit-cache: undecodable entry treated as a miss and deleted"
        );
        tracing::debug!(key, "fredkit-cache: undecodable entry key");
        self.local.remove_l1(key);
        let client = self.redis.client().clone();
        let breaker = self.breaker.clone();
        tokio::spawn(async move {
            let _ = breaker
                .call(UNLINK_GARBAGE.exec::<_, i64, _, _>(&client, data_key, Value::Bytes(read)))
                .await;
        });
    }

    pub(crate) fn l1_insert_read(
        &self,
        key: &str,
        stored: &Stored<V>,
        epoch: Option<Ticket>,
        now_ms: u64,
    ) {
        if let (Some(l1), Some(epoch)) = (&self.local.l1, epoch) {
            l1.insert_read(key, stored, epoch, now_ms, self.opts.eager_refresh);
        }
    }

    /// Envelope bytes, the stored form, and the physical TTL in ms.
    pub(crate) fn envelope(
        &self,
        value: Option<&V>,
        (ttl, max_stale): (Duration, Duration),
        tags: &[(String, u64)],
        delta_ms: u32,
    ) -> Result<(Bytes, Stored<V>, i64)> {
        let jitter = if self.opts.ttl_jitter.is_zero() || value.is_none() {
            0
        } else {
            rand::random::<u64>() % (self.opts.ttl_jitter.as_millis() as u64).max(1)
        };
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX / 4)
            .saturating_add(jitter);
        let now = envelope::now_ms();
        let fresh_until = now.saturating_add(ttl_ms);
        let stale_ms = if value.is_some() {
            u64::try_from(max_stale.as_millis()).unwrap_or(u64::MAX / 4)
        } else {
            0
        };
        let px = i64::try_from(ttl_ms.saturating_add(stale_ms)).unwrap_or(i64::MAX);
        let bytes = envelope::encode(
            &self.codec,
            value,
            now,
            fresh_until,
            self.opts.compress_above,
            tags,
            delta_ms,
        )?;
        let stored = Stored {
            value: value.cloned(),
            created_ms: now,
            fresh_until_ms: fresh_until,
            size: envelope::plain_size(&bytes),
            tags: (!tags.is_empty()).then(|| tags.into()),
            delta_ms,
        };
        Ok((bytes, stored, px))
    }

    /// Writes an entry (releasing `lock` = (lock key, token) in the same
    /// script if given), updates L1, queues the invalidation, wakes a local
    /// waiter. Returns the stored form.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn store(
        self: &Arc<Self>,
        key: &str,
        data_key: &str,
        lock: Option<(&str, &str)>,
        value: Option<&V>,
        ttl: (Duration, Duration),
        tags: &[(String, u64)],
        delta_ms: u32,
    ) -> Result<Stored<V>> {
        let (bytes, stored, px) = self.envelope(value, ttl, tags, delta_ms)?;
        // Before the write: see `L1::insert_write`.
        let ticket = self.local.l1.as_ref().map(|l1| l1.ticket(key));
        let r = self
            .redis_call(async {
                match lock {
                    Some((lock_key, token)) => FILL_STORE_RELEASE
                        .exec::<_, i64, _, _>(
                            self.redis.client(),
                            vec![data_key.to_string(), lock_key.to_string()],
                            vec![Value::Bytes(bytes), Value::Integer(px), Value::from(token)],
                        )
                        .await
                        .map(|_| ()),
                    None => self
                        .redis
                        .client()
                        .set::<(), _, _>(data_key, bytes, Some(Expiration::PX(px)), None, false)
                        .await
                        .map_err(Error::from),
                }
            })
            .await;
        if let (Some(l1), Some(ticket)) = (&self.local.l1, ticket) {
            l1.insert_write(
                key,
                &stored,
                ticket,
                envelope::now_ms(),
                self.opts.eager_refresh,
            );
        }
        self.publish(Inv::Key(key.to_string()));
        self.local.wake(key);
        match &r {
            Ok(()) => self.recovered_key(key),
            // Replayed as a removal when Redis is back (auto-recovery).
            Err(e) if e.is_unavailable() => {
                self.queue_for_recovery(crate::recovery::Op::Key(key.to_string()))
            }
            Err(_) => {}
        }
        r.map(|_| stored)
    }
}
