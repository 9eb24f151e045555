//! [`TtlMap`]: a hash per id (a shopping cart) whose TTL every write
//! refreshes, with typed values, atomic quantities and a crash-safe merge.

use std::{
    collections::BTreeMap,
    fmt,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::{interfaces::HashesInterface, types::Value};
use fredkit_conn::Redis;
use fredkit_core::{Codec, Error, IntoKeySpace, KeySpace, MsgPack, Result, Script};
use serde::{de::DeserializeOwned, Serialize};

use crate::common::{decode_error, read_error, script_error, ttl_ms, OpMetrics};

static WRITE: Script = Script::new("ttlmap_write", include_str!("../scripts/ttlmap_write.lua"));
static MERGE_BEGIN: Script = Script::new(
    "ttlmap_merge_begin",
    include_str!("../scripts/merge_begin.lua"),
);
static MERGE_APPLY: Script = Script::new(
    "ttlmap_merge_apply",
    include_str!("../scripts/merge_apply.lua"),
);
static MERGE_FINISH: Script = Script::new(
    "ttlmap_merge_finish",
    include_str!("../scripts/merge_finish.lua"),
);

const QTY: &str = "n:";
const VAL: &str = "v:";

/// How [`TtlMap::merge_into`] combines a field present in both maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MergeRule {
    /// Quantities are summed; a value is copied only where the target has
    /// none (the target's own value wins). The default: a cart's items
    /// add up.
    #[default]
    Sum,
    /// Per field, the entry (quantity and value together) written last
    /// wins whole. "Written" is the last [`add`](TtlMap::add) or
    /// [`set`](TtlMap::set) of that field, timed by the Redis server's clock
    /// (ms) and recorded in the map by every write of a map with this rule
    /// (field `t:<field>`). On a tie, or when neither side has a time
    /// (written under [`MergeRule::Sum`]), the target's entry stays. A field
    /// only the source has is copied.
    KeepNewer,
}

/// A family of maps — one Redis hash per id, e.g. one shopping cart per
/// user or anonymous session — each expiring `ttl` after its last write.
///
/// Every map holds, per field, an integer **quantity** ([`add`](Self::add),
/// [`quantity`](Self::quantity)) and/or a typed **value** `V` encoded with
/// the codec `C` ([`set`](Self::set), [`get`](Self::get)). A field's
/// quantity and value live side by side (`n:<field>` and `v:<field>` in the
/// hash) and [`remove`](Self::remove) drops both.
///
/// # Keys
///
/// `<prefix>:{<id>}:map`: the id is the hash tag, so every key of one map is
/// in one cluster slot; two maps are usually on different slots, which
/// [`merge_into`](Self::merge_into) is built for.
///
/// # Guarantees
///
/// - Every write is one Lua script (one round trip): it checks the key, writes
///   and sets the TTL (`PEXPIRE`) in one atomic step, so a crash never leaves
///   a map without its expiry. Reads never touch the TTL.
/// - Quantities are exact under any concurrency (`HINCRBY`), exact for every
///   `i64`; an overflow is an error and writes nothing.
/// - Garbage under a key (not a hash, a quantity that is not an integer) is
///   an [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) error
///   naming the key (and field); a value the codec cannot decode is an
///   [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) error naming the
///   key and field. Nothing panics, and a failed write writes nothing.
/// - [`merge_into`](Self::merge_into) never loses or doubles a quantity,
///   even when interrupted between its steps and retried (see its docs).
///
/// # Round trips
///
/// | operation | round trips | Redis commands |
/// |---|---|---|
/// | [`get`](Self::get), [`quantity`](Self::quantity) | 1 | `HGET` |
/// | [`all`](Self::all), [`quantities`](Self::quantities) | 1 | `HGETALL` |
/// | [`set`](Self::set), [`add`](Self::add), [`remove`](Self::remove), [`remove_if_zero`](Self::remove_if_zero) | 1 | `EVALSHA` (`HGET` of the merge mark, which also refuses a non-hash, then `HINCRBY`+`HGET`, `HSET` or `HDEL`, and `PEXPIRE`) |
/// | [`merge_into`](Self::merge_into) | 3 (one per step; 1 when the source is empty) | `EVALSHA` ×3 |
///
/// (Plus one `EVAL` per script and node after a restart or `SCRIPT FLUSH`.)
pub struct TtlMap<V, C = MsgPack> {
    redis: Redis,
    space: KeySpace,
    ttl_ms: u64,
    rule: MergeRule,
    codec: C,
    metrics: Arc<OpMetrics>,
    _value: PhantomData<fn() -> V>,
}

impl<V, C: Clone> Clone for TtlMap<V, C> {
    fn clone(&self) -> Self {
        TtlMap {
            redis: self.redis.clone(),
            space: self.space.clone(),
            ttl_ms: self.ttl_ms,
            rule: self.rule,
            codec: self.codec.clone(),
            metrics: Arc::clone(&self.metrics),
            _value: PhantomData,
        }
    }
}

impl<V, C: fmt::Debug> fmt::Debug for TtlMap<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlMap")
            .field("space", &self.space)
            .field("ttl_ms", &self.ttl_ms)
            .field("rule", &self.rule)
            .field("codec", &self.codec)
            .finish()
    }
}

/// What [`TtlMap::merge_into`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MergeOutcome {
    /// The source map did not exist (never written, expired, or already
    /// merged and deleted): nothing was added to the target.
    NothingToMerge,
    /// The source's fields are in the target and the source is deleted.
    Merged {
        /// Quantity and value entries the source held (a field with both
        /// counts twice).
        entries: usize,
        /// False when an earlier, interrupted attempt had already added them
        /// to the target (this call only finished the merge).
        applied_now: bool,
    },
}

/// An interrupted-safe merge in progress: the result of
/// [`TtlMap::begin_merge`] (step 1), to pass to
/// [`apply_merge`](TtlMap::apply_merge) (step 2) and
/// [`finish_merge`](TtlMap::finish_merge) (step 3).
#[derive(Clone, Debug)]
pub struct MergePlan {
    from: String,
    to: String,
    id: String,
    snapshot: Vec<(Bytes, Bytes)>,
}

impl MergePlan {
    /// The merge id stored in the source's mark (the same on every retry).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The source map's id.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// The target map's id.
    pub fn to(&self) -> &str {
        &self.to
    }

    /// Quantity and value entries of the source's snapshot (a field with
    /// both counts twice; write times are not counted).
    pub fn entries(&self) -> usize {
        self.snapshot
            .iter()
            .filter(|(f, _)| f.starts_with(QTY.as_bytes()) || f.starts_with(VAL.as_bytes()))
            .count()
    }
}

impl<V> TtlMap<V, MsgPack> {
    /// Maps under `prefix` whose TTL every write resets to `ttl`, values in
    /// MessagePack. No I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for a prefix [`KeySpace::new`] rejects or a TTL under 1 ms.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace, ttl: Duration) -> Result<Self> {
        TtlMap::with_codec(redis, prefix, ttl, MsgPack)
    }
}

impl<V, C: Codec + Clone> TtlMap<V, C> {
    /// Like [`new`](TtlMap::new) with another codec (e.g.
    /// `fredkit_core::Json`). No I/O.
    ///
    /// # Errors
    ///
    /// As [`new`](TtlMap::new).
    pub fn with_codec(
        redis: &Redis,
        prefix: impl IntoKeySpace,
        ttl: Duration,
        codec: C,
    ) -> Result<Self> {
        let space = prefix.into_key_space()?;
        let ttl_ms = ttl_ms(&format!("TtlMap {space}"), ttl)?;
        let metrics = Arc::new(OpMetrics::new("ttlmap", space.prefix()));
        Ok(TtlMap {
            redis: redis.clone(),
            space,
            ttl_ms,
            rule: MergeRule::Sum,
            codec,
            metrics,
            _value: PhantomData,
        })
    }

    /// Sets the rule [`merge_into`](Self::merge_into) applies. Default
    /// [`MergeRule::Sum`]. With [`MergeRule::KeepNewer`], every `add` and
    /// `set` also records the field's write time (server clock) in the map,
    /// in the same script. Use the same rule on every handle of a prefix.
    pub fn with_merge_rule(mut self, rule: MergeRule) -> Self {
        self.rule = rule;
        self
    }

    /// The merge rule.
    pub fn merge_rule(&self) -> MergeRule {
        self.rule
    }

    /// The Redis key of map `id`: `<prefix>:{<id>}:map`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty id.
    pub fn key(&self, id: &str) -> Result<String> {
        self.space.tagged(id, ["map"])
    }

    /// The TTL every write sets.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    async fn write(&self, id: &str, op: &str, field: &str, arg: Value) -> Result<Value> {
        let started = Instant::now();
        let r = async {
            let key = self.key(id)?;
            let args: Vec<Value> = vec![
                op.into(),
                field.into(),
                arg,
                Value::Integer(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX)),
                if self.rule == MergeRule::KeepNewer {
                    "1"
                } else {
                    "0"
                }
                .into(),
            ];
            WRITE
                .exec::<_, Value, _, _>(self.redis.client(), key, args)
                .await
                .map_err(script_error)
        }
        .await;
        self.metrics.record(started, &r);
        r
    }

    async fn hget(&self, id: &str, field: String) -> Result<(String, Option<Bytes>)> {
        let key = self.key(id)?;
        let v: Value = self
            .redis
            .client()
            .hget(key.as_str(), field)
            .await
            .map_err(|e| read_error(&key, "hash", e))?;
        let bytes = match v {
            Value::Null => None,
            other => Some(other.into_bytes().ok_or_else(|| {
                Error::protocol(format!("HGET on {key} returned a non-string reply"))
            })?),
        };
        Ok((key, bytes))
    }

    async fn hgetall(&self, id: &str) -> Result<(String, Vec<(Bytes, Bytes)>)> {
        let key = self.key(id)?;
        let v: Value = self
            .redis
            .client()
            .hgetall(key.as_str())
            .await
            .map_err(|e| read_error(&key, "hash", e))?;
        let pairs = pairs(&key, v)?;
        Ok((key, pairs))
    }

    /// Field `field`'s value in map `id`, `None` when it has none. One round
    /// trip (`HGET`); does not refresh the TTL.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) naming the key
    /// and field when the stored bytes do not decode as `V`;
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it is not a hash; connection errors and timeouts as they are.
    pub async fn get(&self, id: &str, field: &str) -> Result<Option<V>>
    where
        V: DeserializeOwned,
    {
        let (key, bytes) = self.hget(id, format!("{VAL}{field}")).await?;
        match bytes {
            None => Ok(None),
            Some(b) => self
                .codec
                .decode(&b)
                .map(Some)
                .map_err(|e| decode_error(&key, &format!("the value of field {field:?}"), e)),
        }
    }

    /// Every value of map `id`, by field (empty when the map does not
    /// exist). One round trip (`HGETALL`); does not refresh the TTL.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), for the first value that does not decode.
    pub async fn all(&self, id: &str) -> Result<BTreeMap<String, V>>
    where
        V: DeserializeOwned,
    {
        let (key, pairs) = self.hgetall(id).await?;
        let mut out = BTreeMap::new();
        for (f, v) in pairs {
            if let Some(field) = f.strip_prefix(VAL.as_bytes()) {
                let field = String::from_utf8_lossy(field).into_owned();
                let value = self
                    .codec
                    .decode(&v)
                    .map_err(|e| decode_error(&key, &format!("the value of field {field:?}"), e))?;
                out.insert(field, value);
            }
        }
        Ok(out)
    }

    /// Field `field`'s quantity in map `id` (0 when absent). One round trip
    /// (`HGET`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key and field when it is not a decimal integer, or the key when it is
    /// not a hash.
    pub async fn quantity(&self, id: &str, field: &str) -> Result<i64> {
        let (key, bytes) = self.hget(id, format!("{QTY}{field}")).await?;
        match bytes {
            None => Ok(0),
            Some(b) => parse_qty(&key, field, &b),
        }
    }

    /// Every quantity of map `id`, by field (empty when the map does not
    /// exist). One round trip (`HGETALL`).
    ///
    /// # Errors
    ///
    /// As [`quantity`](Self::quantity), for the first bad quantity.
    pub async fn quantities(&self, id: &str) -> Result<BTreeMap<String, i64>> {
        let (key, pairs) = self.hgetall(id).await?;
        let mut out = BTreeMap::new();
        for (f, v) in pairs {
            if let Some(field) = f.strip_prefix(QTY.as_bytes()) {
                let field = String::from_utf8_lossy(field).into_owned();
                let n = parse_qty(&key, &field, &v)?;
                out.insert(field, n);
            }
        }
        Ok(out)
    }

    /// Sets field `field`'s value in map `id` and resets the map's TTL, in
    /// one atomic round trip. The field's quantity is untouched.
    ///
    /// Cancellation: a dropped future has written the value and TTL, or
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) when the value
    /// does not encode; [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol)
    /// naming the key when it is not a hash;
    /// [`ErrorKind::Busy`](fredkit_core::ErrorKind::Busy) while the map is
    /// being merged into another (finish with [`merge_into`](Self::merge_into)).
    /// Nothing is written on error.
    pub async fn set(&self, id: &str, field: &str, value: &V) -> Result<()>
    where
        V: Serialize,
    {
        let bytes = self.codec.encode(value)?;
        self.write(id, "set", field, Value::Bytes(bytes)).await?;
        Ok(())
    }

    /// Adds `n` (may be negative) to field `field`'s quantity in map `id`
    /// (absent counts as 0), resets the map's TTL, and returns the new
    /// quantity: one atomic round trip, exact under any concurrency.
    ///
    /// Cancellation: a dropped future has added `n` once, or not at all. Like
    /// every script, fred may re-send it after a connection break (see
    /// [`Script::exec`](fredkit_core::Script::exec)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key (and field) when the key is not a hash or the quantity is not an
    /// integer; [`ErrorKind::Script`](fredkit_core::ErrorKind::Script) on an
    /// `i64` overflow; [`ErrorKind::Busy`](fredkit_core::ErrorKind::Busy)
    /// while the map is being merged. Nothing is written on error.
    pub async fn add(&self, id: &str, field: &str, n: i64) -> Result<i64> {
        let v = self.write(id, "add", field, Value::Integer(n)).await?;
        let key = self.key(id)?;
        match v.as_bytes() {
            Some(b) => parse_qty(&key, field, b),
            None => Err(Error::protocol(format!(
                "script ttlmap_write returned {v:?} for an add on {key}"
            ))),
        }
    }

    /// Removes field `field` (its quantity and its value) from map `id` and
    /// resets the TTL of what is left; true when there was something to
    /// remove. One atomic round trip.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set) (no codec error).
    pub async fn remove(&self, id: &str, field: &str) -> Result<bool> {
        let v = self.write(id, "remove", field, Value::from("")).await?;
        Ok(v.as_i64() == Some(1))
    }

    /// Removes field `field` (quantity and value) when its quantity is 0 or
    /// less, and resets the map's TTL; true when removed. One atomic round
    /// trip: an `add` racing with it either lands before (and is judged) or
    /// after (on a fresh field).
    ///
    /// # Errors
    ///
    /// As [`add`](Self::add).
    pub async fn remove_if_zero(&self, id: &str, field: &str) -> Result<bool> {
        let v = self
            .write(id, "remove_if_zero", field, Value::from(""))
            .await?;
        Ok(v.as_i64() == Some(1))
    }

    /// Merges map `from` into map `to` (e.g. an anonymous cart into the
    /// user's at login) under the map's [`MergeRule`] — by default
    /// quantities are summed and a value is copied only where `to` has none
    /// (the target's own value wins) — then deletes `from`.
    ///
    /// The two maps are usually on different cluster slots, so no single
    /// script can do it; it runs three idempotent steps:
    ///
    /// 1. [`begin_merge`](Self::begin_merge) (on `from`'s slot) marks `from`
    ///    as merging into `to` under a merge id and returns its content.
    ///    While marked, `from` refuses writes, so the content cannot change.
    ///    A retry finds the mark and reuses its id.
    /// 2. [`apply_merge`](Self::apply_merge) (on `to`'s slot) adds the
    ///    content and records the merge id in `to` (field `~m:<id>`, which
    ///    lives and expires with `to`), in one script: a second apply of the
    ///    same id adds nothing.
    /// 3. [`finish_merge`](Self::finish_merge) deletes `from` if it still
    ///    carries that merge id.
    ///
    /// So an interruption anywhere (a dropped future, a crashed process, a
    /// lost connection) followed by calling `merge_into(from, to)` again
    /// never loses or doubles an item. Until then, writes to `from` fail
    /// with [`ErrorKind::Busy`](fredkit_core::ErrorKind::Busy) saying to
    /// finish the merge. Round trips: 3 (1 when `from` does not exist).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// when `from == to`; [`ErrorKind::Busy`](fredkit_core::ErrorKind::Busy)
    /// when `from` is being merged into a different map, or `to` is itself
    /// being merged into another; [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol)
    /// naming the key for garbage in either map (nothing written to `to`).
    /// After an error in step 2 or 3, `from` stays marked: retry.
    pub async fn merge_into(&self, from: &str, to: &str) -> Result<MergeOutcome> {
        self.merge_into_observed(from, to, |_| {}).await
    }

    /// [`merge_into`](Self::merge_into), calling `after_step` with
    /// `"begin"` and then `"apply"` once each step has returned. For fault
    /// tests, which block (and kill the process) there; not part of the
    /// API.
    #[doc(hidden)]
    pub async fn merge_into_observed(
        &self,
        from: &str,
        to: &str,
        mut after_step: impl FnMut(&'static str),
    ) -> Result<MergeOutcome> {
        let Some(plan) = self.begin_merge(from, to).await? else {
            return Ok(MergeOutcome::NothingToMerge);
        };
        after_step("begin");
        let applied_now = self.apply_merge(&plan).await?;
        after_step("apply");
        self.finish_merge(&plan).await?;
        Ok(MergeOutcome::Merged {
            entries: plan.entries(),
            applied_now,
        })
    }

    /// Step 1 of [`merge_into`](Self::merge_into): marks `from` as merging
    /// into `to` (keeping an existing mark's id) and resets its TTL; returns
    /// its content, or `None` when `from` does not exist. One round trip.
    /// Public so a caller can run the steps from a job queue, and so tests
    /// can interrupt between them.
    ///
    /// # Errors
    ///
    /// As [`merge_into`](Self::merge_into).
    pub async fn begin_merge(&self, from: &str, to: &str) -> Result<Option<MergePlan>> {
        if from == to {
            return Err(Error::invalid_input(format!(
                "TtlMap {}: cannot merge map {from:?} into itself",
                self.space
            )));
        }
        let started = Instant::now();
        let r = async {
            let key = self.key(from)?;
            self.key(to)?;
            let fresh = merge_id();
            let args: Vec<Value> = vec![
                to.into(),
                fresh.into(),
                Value::Integer(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX)),
            ];
            let v: Value = MERGE_BEGIN
                .exec(self.redis.client(), key.as_str(), args)
                .await
                .map_err(script_error)?;
            let mut items = match v {
                Value::Array(items) => items.into_iter(),
                Value::Null => return Ok(None),
                other => {
                    return Err(Error::protocol(format!(
                        "script ttlmap_merge_begin returned {other:?} for {key}"
                    )))
                }
            };
            let Some(id) = items.next() else {
                return Ok(None);
            };
            let id = id.as_string().ok_or_else(|| {
                Error::protocol(format!(
                    "script ttlmap_merge_begin returned no merge id for {key}"
                ))
            })?;
            let mut snapshot = Vec::with_capacity(items.len() / 2);
            while let (Some(f), Some(v)) = (items.next(), items.next()) {
                match (f.into_bytes(), v.into_bytes()) {
                    (Some(f), Some(v)) => snapshot.push((f, v)),
                    _ => {
                        return Err(Error::protocol(format!(
                            "script ttlmap_merge_begin returned a non-string field of {key}"
                        )))
                    }
                }
            }
            Ok(Some(MergePlan {
                from: from.to_string(),
                to: to.to_string(),
                id,
                snapshot,
            }))
        }
        .await;
        self.metrics.record(started, &r);
        r
    }

    /// Step 2 of [`merge_into`](Self::merge_into): adds the plan's content to
    /// the target once per merge id and resets the target's TTL; true when
    /// added now, false when this merge id was applied before. One round
    /// trip, atomic.
    ///
    /// # Errors
    ///
    /// As [`merge_into`](Self::merge_into); nothing is written on error.
    pub async fn apply_merge(&self, plan: &MergePlan) -> Result<bool> {
        let started = Instant::now();
        let r = async {
            let key = self.key(&plan.to)?;
            let mut args: Vec<Value> = Vec::with_capacity(3 + plan.snapshot.len() * 2);
            args.push(plan.id.as_str().into());
            args.push(Value::Integer(
                i64::try_from(self.ttl_ms).unwrap_or(i64::MAX),
            ));
            args.push(
                match self.rule {
                    MergeRule::Sum => "sum",
                    MergeRule::KeepNewer => "newer",
                }
                .into(),
            );
            for (f, v) in &plan.snapshot {
                args.push(Value::Bytes(f.clone()));
                args.push(Value::Bytes(v.clone()));
            }
            let v: i64 = MERGE_APPLY
                .exec(self.redis.client(), key.as_str(), args)
                .await
                .map_err(script_error)?;
            Ok(v == 1)
        }
        .await;
        self.metrics.record(started, &r);
        r
    }

    /// Step 3 of [`merge_into`](Self::merge_into): deletes the source if it
    /// still carries the plan's merge id; true when deleted. One round trip.
    /// Call it only after [`apply_merge`](Self::apply_merge) succeeded.
    ///
    /// # Errors
    ///
    /// Connection errors and timeouts; the source then stays marked.
    pub async fn finish_merge(&self, plan: &MergePlan) -> Result<bool> {
        let started = Instant::now();
        let r = async {
            let key = self.key(&plan.from)?;
            let v: i64 = MERGE_FINISH
                .exec(self.redis.client(), key.as_str(), plan.id.as_str())
                .await
                .map_err(script_error)?;
            Ok(v == 1)
        }
        .await;
        self.metrics.record(started, &r);
        r
    }
}

/// 128 random bits as 32 hex digits.
fn merge_id() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

fn parse_qty(key: &str, field: &str, b: &[u8]) -> Result<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            Error::protocol(format!(
                "fredkit-collections found garbage: {key} field {:?} holds {:?}, not a decimal integer; remove the field or delete the key",
                format!("{QTY}{field}"),
                String::from_utf8_lossy(&b[..b.len().min(24)])
            ))
        })
}

/// The field/value pairs of an `HGETALL` reply.
fn pairs(key: &str, v: Value) -> Result<Vec<(Bytes, Bytes)>> {
    let bad = || Error::protocol(format!("HGETALL on {key} returned a malformed reply"));
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Map(m) => m
            .inner()
            .into_iter()
            .map(|(k, v)| Ok((k.into_bytes(), v.into_bytes().ok_or_else(bad)?)))
            .collect(),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let Some(f) = it.next() {
                let v = it.next().ok_or_else(bad)?;
                out.push((
                    f.into_bytes().ok_or_else(bad)?,
                    v.into_bytes().ok_or_else(bad)?,
                ));
            }
            Ok(out)
        }
        _ => Err(bad()),
    }
}
