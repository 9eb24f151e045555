//! Tags: `EntryOptions::tags` on writes, [`Cache::invalidate_tag`] in O(1).
//!
//! A tag has a version in Redis, `prefix:tag:{tag}` (absent = 0), moved on
//! by `invalidate_tag` (`INCR`, one script). An entry carries the versions of
//! its tags as they were when its value was computed (read before the
//! factory runs); it is valid while each still equals the tag's current
//! version. Nothing is scanned or deleted: readers compare lazily.
//!
//! - **Redis (L2)**: a read that finds a tagged entry reads its tags'
//!   versions (`MGET`, one per slot, pipelined: one more round trip, for
//!   tagged entries only; the tags live in other slots than the entry, so
//!   no single script can read both on a cluster). A mismatch is a miss.
//! - **L1**: each instance keeps the tag versions it has seen in memory
//!   (raised by those reads, by its own `invalidate_tag`, and by the
//!   invalidation messages of other instances, which carry `(tag, version)`
//!   on the existing channel). An L1 hit on a tagged copy compares the copy's
//!   versions with memory (hash lookups, no Redis): an invalidation heard
//!   turns every copy under the tag into a miss at once. A lost message is
//!   a sequence gap, which flushes L1 as for keys; the L1 TTL bounds the rest.

use crate::cache::{Cache, CacheValue, Inner};
use crate::invalidation::Inv;
use crate::l1::L1Entry;
use fred::types::{Key, Value};
use fredkit_core::{Codec, Error, Result, Script};
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use tracing::Instrument;

pub(crate) static INVALIDATE_TAG: Script = Script::new(
    "invalidate_tag",
    include_str!("../scripts/invalidate_tag.lua"),
);

/// Above this many tags, the in-memory versions are forgotten (copies under
/// a forgotten tag then go to Redis once, which teaches it again).
const BOOK_MAX: usize = 100_000;

/// The tag versions an instance has seen (never lowered).
#[derive(Default)]
pub(crate) struct TagBook(RwLock<HashMap<String, u64>>);

impl TagBook {
    /// Raises `tag`'s known version to `version` (never lowers it).
    pub(crate) fn raise(&self, tag: &str, version: u64) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get_mut(tag) {
            *v = (*v).max(version);
            return;
        }
        if map.len() >= BOOK_MAX {
            map.clear();
        }
        map.insert(tag.to_string(), version);
    }

    /// Whether every `(tag, version)` is the known current version (an
    /// unknown tag is not current: the copy is checked against Redis).
    pub(crate) fn current(&self, tags: &[(String, u64)]) -> bool {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        tags.iter().all(|(t, v)| map.get(t) == Some(v))
    }

    fn known(&self, tag: &str) -> u64 {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(tag).copied().unwrap_or(0)
    }

    /// An L1 copy is usable as far as tags go.
    #[inline]
    pub(crate) fn copy_ok<V>(&self, e: &L1Entry<V>) -> bool {
        match &e.tags {
            None => true,
            Some(t) => self.current(t),
        }
    }
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    pub(crate) fn tag_key(&self, tag: &str) -> Result<String> {
        if tag.is_empty() {
            return Err(Error::invalid_input(
                "cache tag is empty: pass the tag, e.g. \"category:7\"",
            ));
        }
        self.opts.tag_keys.tagged(tag, [""; 0])
    }

    /// The current versions of `tags` in Redis (absent = 0; a value that is
    /// not a number never matches), one `MGET` per slot, pipelined. Raises
    /// the in-memory versions.
    pub(crate) async fn tag_versions(&self, tags: &[&str]) -> Result<Vec<u64>> {
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        let mut keys = Vec::with_capacity(tags.len());
        for (i, t) in tags.iter().enumerate() {
            let k = self.tag_key(t)?;
            let slot = if self.clustered {
                fred::util::redis_keyslot(k.as_bytes())
            } else {
                (i / 1000) as u16
            };
            groups.entry(slot).or_default().push(i);
            keys.push(k);
        }
        let replies = self
            .redis_call(async {
                let pipe = self.redis.client().pipeline();
                for idx in groups.values() {
                    let ks: Vec<Key> = idx.iter().map(|&i| Key::from(keys[i].as_str())).collect();
                    fred::interfaces::KeysInterface::mget::<(), _>(&pipe, ks).await?;
                }
                pipe.all::<Vec<Value>>().await.map_err(Error::from)
            })
            .await?;
        let mut out = vec![0u64; tags.len()];
        for (idx, reply) in groups.values().zip(replies) {
            let values = match reply {
                Value::Array(v) => v,
                other => vec![other],
            };
            for (&i, v) in idx.iter().zip(values) {
                out[i] = match v {
                    Value::Null => 0,
                    Value::Integer(n) => u64::try_from(n).unwrap_or(u64::MAX),
                    other => other
                        .as_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(u64::MAX),
                };
            }
        }
        for (t, v) in tags.iter().zip(&out) {
            self.local.tags.raise(t, *v);
        }
        Ok(out)
    }

    /// How long a tag's version key lives past its last change: the longest
    /// physical life of a tagged entry (ttl + ttl_jitter + max_stale).
    pub(crate) fn tag_life_ms(&self) -> i64 {
        let ms = self
            .opts
            .ttl
            .saturating_add(self.opts.ttl_jitter)
            .saturating_add(self.opts.max_stale)
            .as_millis();
        i64::try_from(ms).unwrap_or(i64::MAX).max(1)
    }

    /// `tags` with their current versions in Redis: what a value computed
    /// from now on is written under.
    pub(crate) async fn tag_stamp(&self, tags: &[String]) -> Result<Vec<(String, u64)>> {
        let names: Vec<&str> = tags.iter().map(String::as_str).collect();
        let versions = self.tag_versions(&names).await?;
        Ok(tags.iter().cloned().zip(versions).collect())
    }

    /// `tags` with the versions this instance knows (Redis unreachable; the
    /// entry then lives in L1 only, checked against the same memory).
    pub(crate) fn tag_stamp_local(&self, tags: &[String]) -> Vec<(String, u64)> {
        tags.iter()
            .map(|t| (t.clone(), self.local.tags.known(t)))
            .collect()
    }

    /// Whether an entry read from Redis is still valid as far as its tags
    /// go (always, untagged: no round trip).
    pub(crate) async fn tags_current_in_redis(
        &self,
        tags: &Option<std::sync::Arc<[(String, u64)]>>,
    ) -> Result<bool> {
        let Some(tags) = tags else { return Ok(true) };
        let names: Vec<&str> = tags.iter().map(|(t, _)| t.as_str()).collect();
        let now = self.tag_versions(&names).await?;
        Ok(tags.iter().zip(now).all(|((_, v), n)| *v == n))
    }
}

impl<V: CacheValue, C: Codec + Clone> Cache<V, C> {
    /// Makes every entry written under `tag` a miss, on every instance, in
    /// L1 and in Redis, in O(1): one script (`INCR` of the tag's version,
    /// whose key lives as long as the cache's longest entry) and one
    /// invalidation message carrying the new version (batched, in the
    /// background). Entries are not deleted: each reader compares an entry's
    /// tag versions with the current ones (Redis reads: one `MGET` more for
    /// a tagged entry; L1 hits: in memory). Untagged entries and other tags
    /// are untouched.
    ///
    /// A value being computed by a fill when the tag is invalidated is
    /// written under the older version, so it is a miss too. An entry
    /// written by [`set_with`](Self::set_with) takes the versions current
    /// when `set_with` reads them.
    ///
    /// ```no_run
    /// # async fn run(c: fredkit_cache::Cache<u64>) -> fredkit_core::Result<()> {
    /// use fredkit_cache::EntryOptions;
    /// c.set_with("p42", &4200, &EntryOptions::new().tags(["category:7"])).await?;
    /// c.invalidate_tag("category:7").await?;
    /// assert_eq!(c.get("p42").await?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// Cancellation: dropped before the script's reply, the tag may or may
    /// not have moved (other instances then learn it from their next Redis
    /// read of a tagged entry, at the latest after their L1 TTL).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty tag; Redis errors. When Redis is
    /// unreachable the invalidation is also queued and replayed (with its
    /// message to the other instances) as soon as Redis answers again (see
    /// the crate docs, auto-recovery).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        let inner = &self.inner;
        let tag_key = inner.tag_key(tag)?;
        let r: Result<i64> = inner
            .redis_call(INVALIDATE_TAG.exec(
                inner.redis.client(),
                vec![tag_key.clone()],
                vec![Value::Integer(inner.tag_life_ms())],
            ))
            .instrument(tracing::debug_span!(
                "fredkit.cache.invalidate_tag",
                primitive = "cache"
            ))
            .await;
        let version = match r {
            Ok(v) => v,
            Err(e) => {
                if e.is_unavailable() {
                    inner.queue_for_recovery(crate::recovery::Op::Tag(tag.to_string()));
                }
                return Err(e.naming("EVALSHA invalidate_tag", &tag_key));
            }
        };
        let version = u64::try_from(version).unwrap_or(0);
        inner.local.tags.raise(tag, version);
        inner.publish(Inv::Tag(tag.to_string(), version));
        Ok(())
    }
}
