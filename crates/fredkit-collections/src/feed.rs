//! [`Feed`]: a capped list of the newest N items, pushed and trimmed in one
//! step.

use std::{
    fmt,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, Instant},
};

use fred::{interfaces::ListInterface, types::Value};
use fredkit_conn::Redis;
use fredkit_core::{Codec, Error, IntoKeySpace, KeySpace, MsgPack, Result, Script};
use serde::{de::DeserializeOwned, Serialize};

use crate::common::{decode_error, read_error, script_error, ttl_ms, OpMetrics};

static PUSH: Script = Script::new("feed_push", include_str!("../scripts/feed_push.lua"));
static AGED: Script = Script::new("feed_aged", include_str!("../scripts/feed_aged.lua"));

/// A family of capped feeds (activity feeds, recent events): one Redis list
/// per name holding the newest `cap` items, newest first, expiring `ttl`
/// after the last push; optionally each item only for a maximum age
/// ([`with_max_age`](Self::with_max_age)).
///
/// # Keys
///
/// `<prefix>:{<name>}:feed` (one slot per feed).
///
/// # Guarantees
///
/// - [`push`](Self::push) is one Lua script: `LPUSH`, `LTRIM` to `cap` and
///   `PEXPIRE` in one atomic step. No reader ever sees more than `cap` items,
///   and no crash leaves a feed uncapped or without its TTL (the seed's
///   separate `LPUSH` then `LTRIM` could).
/// - The newest `cap` pushes (in the server's order) are kept.
/// - With a maximum age, an item older than it by the Redis server's clock
///   is never returned, and every call (reads too) trims such items from the
///   oldest end; items are then stored as `<server ms>:<item>`.
/// - Garbage: a key that is not a list is an
///   [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) error naming
///   it (nothing written); an item the codec cannot decode is an
///   [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) error naming the key
///   and index. With a maximum age, an item without a valid time prefix
///   (pushed without the age limit, or garbage) counts as expired: skipped
///   and trimmed (repaired). Never a panic.
///
/// # Round trips
///
/// | operation | round trips | Redis commands |
/// |---|---|---|
/// | [`push`](Self::push) | 1 | `EVALSHA` (`TYPE`, `LPUSH`, `LTRIM`, `PEXPIRE`, `LLEN`) |
/// | [`latest`](Self::latest) | 1 | `LRANGE` |
/// | [`len`](Self::len) | 1 | `LLEN` |
///
/// With a maximum age every operation is one `EVALSHA` (`TIME`, trimming
/// `LINDEX`/`RPOP`, then `LPUSH`+`LTRIM`+`PEXPIRE`, `LRANGE` or `LLEN`): the
/// reads need a primary.
pub struct Feed<T, C = MsgPack> {
    redis: Redis,
    space: KeySpace,
    cap: u32,
    ttl_ms: u64,
    max_age_ms: u64,
    codec: C,
    metrics: Arc<OpMetrics>,
    _item: PhantomData<fn() -> T>,
}

impl<T, C: Clone> Clone for Feed<T, C> {
    fn clone(&self) -> Self {
        Feed {
            redis: self.redis.clone(),
            space: self.space.clone(),
            cap: self.cap,
            ttl_ms: self.ttl_ms,
            max_age_ms: self.max_age_ms,
            codec: self.codec.clone(),
            metrics: Arc::clone(&self.metrics),
            _item: PhantomData,
        }
    }
}

impl<T, C: fmt::Debug> fmt::Debug for Feed<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("space", &self.space)
            .field("cap", &self.cap)
            .field("ttl_ms", &self.ttl_ms)
            .field("max_age_ms", &self.max_age_ms)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<T> Feed<T, MsgPack> {
    /// Feeds under `prefix` keeping the newest `cap` items, expiring `ttl`
    /// after the last push; items in MessagePack. No I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for a prefix [`KeySpace::new`] rejects, a `cap` of 0 or a TTL under
    /// 1 ms.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace, cap: u32, ttl: Duration) -> Result<Self> {
        Feed::with_codec(redis, prefix, cap, ttl, MsgPack)
    }
}

impl<T, C: Codec + Clone> Feed<T, C> {
    /// Like [`new`](Feed::new) with another codec. No I/O.
    ///
    /// # Errors
    ///
    /// As [`new`](Feed::new).
    pub fn with_codec(
        redis: &Redis,
        prefix: impl IntoKeySpace,
        cap: u32,
        ttl: Duration,
        codec: C,
    ) -> Result<Self> {
        let space = prefix.into_key_space()?;
        if cap == 0 {
            return Err(Error::invalid_input(format!(
                "Feed {space}: the cap must be at least 1"
            )));
        }
        let ttl_ms = ttl_ms(&format!("Feed {space}"), ttl)?;
        let metrics = Arc::new(OpMetrics::new("feed", space.prefix()));
        Ok(Feed {
            redis: redis.clone(),
            space,
            cap,
            ttl_ms,
            max_age_ms: 0,
            codec,
            metrics,
            _item: PhantomData,
        })
    }

    /// Limits every item's age to `max_age` (by the Redis server's clock):
    /// older items are not returned by [`latest`](Self::latest) nor counted
    /// by [`len`](Self::len), and every call trims them. Default: none.
    ///
    /// Items pushed without an age limit have no time and count as expired
    /// under one; so do not switch a live feed's name to it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an age under 1 ms.
    pub fn with_max_age(mut self, max_age: Duration) -> Result<Self> {
        self.max_age_ms = ttl_ms(&format!("Feed {} max age", self.space), max_age)?;
        Ok(self)
    }

    /// The maximum age of an item, if limited.
    pub fn max_age(&self) -> Option<Duration> {
        (self.max_age_ms > 0).then(|| Duration::from_millis(self.max_age_ms))
    }

    fn ms(n: u64) -> Value {
        Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
    }

    async fn aged(&self, key: &str, args: Vec<Value>) -> Result<Value> {
        AGED.exec::<_, Value, _, _>(self.redis.client(), key, args)
            .await
            .map_err(script_error)
    }

    /// The Redis key of feed `name`: `<prefix>:{<name>}:feed`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty name.
    pub fn key(&self, name: &str) -> Result<String> {
        self.space.tagged(name, ["feed"])
    }

    /// The most items a feed keeps.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Pushes `item` as the newest of feed `name`, drops what is beyond the
    /// cap and resets the TTL, in one atomic round trip; returns the length
    /// after the push (at most the cap).
    ///
    /// Cancellation: a dropped future has pushed (and trimmed) once, or not
    /// at all. After a connection break fred may re-send the script, which
    /// then pushes the item twice (see
    /// [`Script::exec`](fredkit_core::Script::exec)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) when the item does
    /// not encode; [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol)
    /// naming the key when it holds something other than a list. Nothing is
    /// written on error.
    pub async fn push(&self, name: &str, item: &T) -> Result<u64>
    where
        T: Serialize,
    {
        let started = Instant::now();
        let r = async {
            let key = self.key(name)?;
            let bytes = self.codec.encode(item)?;
            if self.max_age_ms > 0 {
                let args: Vec<Value> = vec![
                    "push".into(),
                    Self::ms(self.max_age_ms),
                    Value::Bytes(bytes),
                    Value::Integer(i64::from(self.cap)),
                    Self::ms(self.ttl_ms),
                ];
                let v = self.aged(&key, args).await?;
                return v.as_u64().ok_or_else(|| {
                    Error::protocol(format!("script feed_aged answered {v:?} to push"))
                });
            }
            let args: Vec<Value> = vec![
                Value::Bytes(bytes),
                Value::Integer(i64::from(self.cap)),
                Value::Integer(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX)),
            ];
            PUSH.exec::<_, u64, _, _>(self.redis.client(), key, args)
                .await
                .map_err(script_error)
        }
        .await;
        self.metrics.record(started, &r);
        r
    }

    /// The newest `n` items of feed `name`, newest first (fewer when it holds
    /// fewer; empty when it does not exist). One round trip (`LRANGE`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) naming the key
    /// and index of the first item that does not decode;
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it is not a list.
    pub async fn latest(&self, name: &str, n: u32) -> Result<Vec<T>>
    where
        T: DeserializeOwned,
    {
        if n == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(name)?;
        let v: Value = if self.max_age_ms > 0 {
            let args: Vec<Value> = vec![
                "latest".into(),
                Self::ms(self.max_age_ms),
                Value::Integer(i64::from(n)),
            ];
            self.aged(&key, args).await?
        } else {
            self.redis
                .client()
                .lrange(key.as_str(), 0, i64::from(n) - 1)
                .await
                .map_err(|e| read_error(&key, "list", e))?
        };
        let items = match v {
            Value::Null => Vec::new(),
            Value::Array(items) => items,
            other => vec![other],
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let bytes = item.into_bytes().ok_or_else(|| {
                    Error::protocol(format!("LRANGE on {key} returned a non-string item"))
                })?;
                self.codec
                    .decode(&bytes)
                    .map_err(|e| decode_error(&key, &format!("item {i}"), e))
            })
            .collect()
    }

    /// The number of items in feed `name` (0 when it does not exist). One
    /// round trip (`LLEN`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it is not a list.
    pub async fn len(&self, name: &str) -> Result<u64> {
        let key = self.key(name)?;
        if self.max_age_ms > 0 {
            let args: Vec<Value> = vec!["len".into(), Self::ms(self.max_age_ms)];
            let v = self.aged(&key, args).await?;
            return v
                .as_u64()
                .ok_or_else(|| Error::protocol(format!("script feed_aged answered {v:?} to len")));
        }
        self.redis
            .client()
            .llen(key.as_str())
            .await
            .map_err(|e| read_error(&key, "list", e))
    }
}
