//! Bulk operations: `get_many`, `set_many`, `invalidate_prefix`.

use crate::cache::{Cache, CacheValue, Inner};
use crate::envelope::{self, Stored};
use crate::invalidation::Inv;
use crate::l1::{now as l1_now, Ticket};
use crate::metrics::incr;
use fred::interfaces::KeysInterface;
use fred::types::scan::Scanner;
use fred::types::{Expiration, Key, Value};
use fredkit_core::{Codec, Error, Result};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use tracing::Instrument;

impl<V: CacheValue, C: Codec + Clone> Cache<V, C> {
    /// The fresh values under `keys`, in order (`None` where absent, expired,
    /// undecodable, or Redis unreachable).
    ///
    /// Cost: fresh L1 copies answer first; the other keys are read with one
    /// `MGET` per hash slot (standalone: one `MGET` per 1000 keys), all in
    /// one pipeline — one round trip per node, concurrently. Undecodable
    /// entries are misses (deleted and counted, as in [`get`](Self::get)).
    /// Dropping the future has no effect.
    ///
    /// ```no_run
    /// # async fn run(c: fredkit_cache::Cache<u64>) -> fredkit_core::Result<()> {
    /// c.set_many(&[("a", 1), ("b", 2)]).await?;
    /// assert_eq!(c.get_many(&["a", "missing", "b"]).await?, vec![Some(1), None, Some(2)]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty key; Redis errors other than
    /// unavailability.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        let inner = &self.inner;
        let mut out: Vec<Option<V>> = vec![None; keys.len()];
        let mut todo: Vec<(usize, String, Option<Ticket>)> = Vec::new();
        let now = l1_now();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref();
            if let Some(l1) = &inner.local.l1 {
                if let Some(e) = l1.get(k, now).filter(|e| inner.local.tags.copy_ok(e)) {
                    if now < e.fresh_until {
                        inner.local.metrics.l1_hits.incr();
                        out[i] = e.value;
                        continue;
                    }
                }
            }
            let epoch = inner.local.l1.as_ref().map(|l1| l1.ticket(k));
            todo.push((i, inner.data_key(k)?, epoch));
        }
        if todo.is_empty() {
            return Ok(out);
        }
        // Group by slot (cluster) so each MGET stays in one slot.
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (j, (_, data_key, _)) in todo.iter().enumerate() {
            let slot = if inner.clustered {
                fred::util::redis_keyslot(data_key.as_bytes())
            } else {
                (j / 1000) as u16 // standalone: chunks of 1000 keys
            };
            groups.entry(slot).or_default().push(j);
        }
        let replies = inner
            .redis_call(async {
                let pipe = inner.redis.client().pipeline();
                for idx in groups.values() {
                    let ks: Vec<Key> = idx.iter().map(|&j| Key::from(todo[j].1.as_str())).collect();
                    pipe.mget::<(), _>(ks).await?;
                }
                pipe.all::<Vec<Value>>().await.map_err(Error::from)
            })
            .instrument(tracing::debug_span!(
                "fredkit.cache.get_many",
                primitive = "cache",
                keys = todo.len()
            ))
            .await;
        let replies = match replies {
            Ok(r) => r,
            Err(e) if e.is_unavailable() => {
                for _ in &todo {
                    incr(&inner.local.metrics.misses);
                }
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let mut found: Vec<(usize, Option<Stored<V>>)> = Vec::with_capacity(todo.len());
        for (idx, reply) in groups.values().zip(replies) {
            let values = match reply {
                Value::Array(v) => v,
                other => vec![other],
            };
            for (&j, value) in idx.iter().zip(values) {
                let (i, data_key, _) = &todo[j];
                let user_key = keys[*i].as_ref();
                let stored = match value.into_bytes() {
                    Some(b) => {
                        inner.decode_or_unlink(user_key, || Key::from(data_key.as_str()), &b)
                    }
                    None => None,
                };
                found.push((j, stored));
            }
        }
        // Tagged entries: their tags' current versions, all in one pipeline.
        let mut tag_names: Vec<&str> = found
            .iter()
            .filter_map(|(_, s)| s.as_ref()?.tags.as_deref())
            .flat_map(|t| t.iter().map(|(name, _)| name.as_str()))
            .collect();
        tag_names.sort_unstable();
        tag_names.dedup();
        let current: Option<HashMap<String, u64>> = if tag_names.is_empty() {
            Some(HashMap::new())
        } else {
            match inner.tag_versions(&tag_names).await {
                Ok(v) => Some(tag_names.iter().map(|t| t.to_string()).zip(v).collect()),
                Err(e) if e.is_unavailable() => None,
                Err(e) => return Err(e),
            }
        };
        let now_ms = envelope::now_ms();
        for (j, stored) in found {
            let (i, _, epoch) = &todo[j];
            let user_key = keys[*i].as_ref();
            let tags_ok = |s: &Stored<V>| match (&s.tags, &current) {
                (None, _) => true,
                (Some(t), Some(cur)) => t.iter().all(|(name, v)| cur.get(name) == Some(v)),
                (Some(_), None) => false,
            };
            match stored {
                Some(s) if s.is_fresh(now_ms) && tags_ok(&s) => {
                    inner.local.metrics.l2_hits.incr();
                    inner.l1_insert_read(user_key, &s, *epoch, now_ms);
                    out[*i] = s.value;
                }
                _ => incr(&inner.local.metrics.misses),
            }
        }
        Ok(out)
    }

    /// Stores every `(key, value)` for the default TTL (plus jitter per
    /// entry): one pipeline of `SET … PX` (one round trip per node), then
    /// L1 updates and one batched invalidation.
    ///
    /// # Errors
    ///
    /// Codec errors (nothing written), `InvalidInput` for an empty key, Redis
    /// errors (L1 is updated anyway). If the future is dropped, any subset of
    /// the writes may have happened.
    pub async fn set_many<K: AsRef<str>>(&self, items: &[(K, V)]) -> Result<()> {
        let inner = &self.inner;
        let mut prepared = Vec::with_capacity(items.len());
        for (k, v) in items {
            let k = k.as_ref();
            let data_key = inner.data_key(k)?;
            let (bytes, stored, px) =
                inner.envelope(Some(v), (inner.opts.ttl, inner.opts.max_stale), &[], 0)?;
            prepared.push((k, data_key, bytes, stored, px));
        }
        // Taken before the writes: a copy is not inserted if an invalidation
        // (maybe of a later write from elsewhere) arrives meanwhile.
        let mut tickets = Vec::with_capacity(prepared.len());
        for (k, ..) in &prepared {
            tickets.push(inner.local.l1.as_ref().map(|l1| l1.ticket(k)));
        }
        let r = inner
            .redis_call(async {
                let pipe = inner.redis.client().pipeline();
                for (_, data_key, bytes, _, px) in &prepared {
                    pipe.set::<(), _, _>(
                        data_key.as_str(),
                        bytes.clone(),
                        Some(Expiration::PX(*px)),
                        None,
                        false,
                    )
                    .await?;
                }
                pipe.all::<Vec<Value>>().await.map_err(Error::from)
            })
            .instrument(tracing::debug_span!(
                "fredkit.cache.set_many",
                primitive = "cache",
                keys = prepared.len()
            ))
            .await;
        let now_ms = envelope::now_ms();
        for ((k, _, _, stored, _), ticket) in prepared.iter().zip(tickets) {
            if let (Some(l1), Some(ticket)) = (&inner.local.l1, ticket) {
                l1.insert_write(k, stored, ticket, now_ms, inner.opts.eager_refresh);
            }
            inner.publish(Inv::Key(k.to_string()));
            inner.local.wake(k);
        }
        r.map(|_| ())
    }

    /// Deletes every entry whose key starts with `prefix` (`""` = the whole
    /// cache): `SCAN MATCH` in pages of 1000 on every primary (on a cluster,
    /// each primary is scanned) and `UNLINK` of each page, grouped by slot
    /// and pipelined. Never `KEYS`. Then every instance's L1 is flushed
    /// (this one at once, the others through an invalidation message).
    ///
    /// Returns the number of keys deleted. Entries written while the scan
    /// runs may survive. Cost: one round trip per page per node, plus one
    /// per page for the deletes. If the future is dropped, some pages may
    /// have been deleted; L1s are flushed only at the end.
    ///
    /// ```no_run
    /// # async fn run(c: fredkit_cache::Cache<u64>) -> fredkit_core::Result<()> {
    /// // Every entry whose key starts with "user:42:" (keys are user keys,
    /// // not Redis key names).
    /// let deleted = c.invalidate_prefix("user:42:").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Redis errors (the scan stops; already deleted keys stay deleted).
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        let inner = &self.inner;
        let span = tracing::debug_span!(
            "fredkit.cache.invalidate_prefix",
            primitive = "cache",
            deleted = tracing::field::Empty
        );
        async {
            let pattern = inner.scan_pattern(prefix);
            let client = inner.redis.client().clone();
            let mut deleted = 0u64;
            let mut pages = if inner.clustered {
                client.scan_cluster(pattern, Some(1000), None).boxed()
            } else {
                client.scan(pattern, Some(1000), None).boxed()
            };
            let mut result = Ok(());
            while let Some(page) = pages.next().await {
                let mut page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        result = Err(Error::from(e));
                        break;
                    }
                };
                let keys = page.take_results().unwrap_or_default();
                page.next();
                if keys.is_empty() {
                    continue;
                }
                match inner.unlink_grouped(keys).await {
                    Ok(n) => deleted += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            inner.local.flush_l1("invalidate_prefix");
            inner.publish(Inv::All);
            tracing::Span::current().record("deleted", deleted);
            result.map(|_| deleted)
        }
        .instrument(span)
        .await
    }
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    pub(crate) fn scan_pattern(&self, prefix: &str) -> String {
        // `prefix:{<escaped user prefix>` then `*`; the escaping is per
        // character, so the escaped prefix is a prefix of every escaped key.
        let mut head = self.opts.keys.prefix().to_string();
        head.push_str(":{");
        if let Ok(tagged) = self.opts.keys.tagged(&format!("{prefix}x"), [""; 0]) {
            // escaped(prefix + "x") minus "x}" = escaped(prefix)
            let start = self.opts.keys.prefix().len() + 2;
            if let Some(esc) = tagged.get(start..tagged.len().saturating_sub(2)) {
                head.push_str(esc);
            }
        }
        let mut pattern = String::with_capacity(head.len() + 8);
        for c in head.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }

    /// `UNLINK`s keys grouped by slot, pipelined.
    pub(crate) async fn unlink_grouped(&self, keys: Vec<Key>) -> Result<u64> {
        let mut groups: BTreeMap<u16, Vec<Key>> = BTreeMap::new();
        for k in keys {
            let slot = if self.clustered {
                fred::util::redis_keyslot(k.as_bytes())
            } else {
                0
            };
            groups.entry(slot).or_default().push(k);
        }
        self.redis_call(async {
            let pipe = self.redis.client().pipeline();
            for (_, ks) in groups {
                pipe.unlink::<(), _>(ks).await?;
            }
            let counts: Vec<i64> = pipe.all().await?;
            Ok(counts.into_iter().map(|n| n.max(0) as u64).sum())
        })
        .await
    }
}
