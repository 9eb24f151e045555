//! [`FencedStore`] and [`FencedCounter`]: the storage-side check that makes
//! fencing tokens useful.

use fredkit_core::IntoKeySpace;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use fred::bytes::Bytes;
use fred::interfaces::KeysInterface;
use fred::types::{Key, Value};
use fredkit_conn::Redis;
use fredkit_core::{Codec, Error, KeySpace, MsgPack, Result, Script};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::options::millis;
use crate::reply;

static FENCED_SET: Script = Script::new("fenced_set", include_str!("../scripts/fenced_set.lua"));
static FENCED_SEED: Script = Script::new("fenced_seed", include_str!("../scripts/fenced_seed.lua"));
static FENCED_INCR: Script = Script::new("fenced_incr", include_str!("../scripts/fenced_incr.lua"));

/// The largest fencing token a [`FencedStore`] accepts: Lua numbers are
/// doubles, exact up to 2^53.
pub const MAX_FENCING_TOKEN: u64 = 1 << 53;

/// The outcome of [`FencedStore::write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FencedWrite {
    /// Written: the token was not older than any token seen before.
    Written,
    /// Rejected: a write with the newer token `newest` already happened; the
    /// caller's lock is stale and its work must be dropped.
    Rejected {
        /// The newest token the value has seen.
        newest: u64,
    },
}

/// The value type of a [`FencedStore`] of raw bytes (the default): values
/// go in as anything `Into<Bytes>` and come out as [`Bytes`], no codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Raw;

/// Values in Redis that only accept writes carrying a fencing token not
/// older than the newest they have seen — the check Martin Kleppmann's
/// critique of lock services asks the *storage* to make: a holder that paused
/// past its TTL (GC, swap, a stalled VM) wakes up believing it holds the
/// lock; its write carries an old token and is rejected.
///
/// Two flavours, one layout:
///
/// - `FencedStore` (= `FencedStore<Raw>`, made by [`new`](FencedStore::new)):
///   values are bytes.
/// - `FencedStore<T, C>` (made by [`typed`](FencedStore::typed) with
///   MessagePack, or [`with_codec`](FencedStore::with_codec)): values are
///   `T`, encoded with the codec `C` as everywhere in fredkit (MessagePack
///   with named fields by default, so `T` may gain optional fields). A value
///   that does not decode as `T` is an
///   [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) error naming the
///   key, never a panic.
///
/// For a number that many holders add to (stock, a balance), use
/// [`FencedCounter`]: one script adds atomically on the server.
///
/// Value `name` lives in `p:{name}:value`, the newest token it has seen in
/// `p:{name}:seen` (same hash tag: one script, one node). Equal tokens are
/// accepted, so one holder may write several times. The store may share its
/// prefix with a [`LockManager`](crate::LockManager) (value named after the
/// resource): their keys never collide, so a fenced write never touches the
/// lock's fencing counter (`p:{r}:fence`).
///
/// **TTL.** With `ttl` `None` neither key expires: the token marker must
/// outlive every holder that could still write with an older token. With a
/// TTL both keys expire together; after that, any token is accepted again.
///
/// **Seeding without a lock** ([`seed`](FencedStore::seed)): writes a first
/// value only if the value was never written (neither key exists), without
/// a token. It is safe whenever the seed is a correct starting state no
/// matter which holder comes next — an initial stock level, a default
/// document — because it can never replace what a fenced write (or an
/// earlier seed) made, so many processes may seed the same value at start-up
/// at once: exactly one wins. It is **not** a way to reset or correct a
/// value (that is a fenced write under the lock), and a holder that read
/// "no value" before a seed and writes after it replaces the seed, as it
/// would without one.
///
/// | operation | round trips |
/// |---|---|
/// | `write` | 1 script |
/// | `read` | 1 `GET` |
/// | `seed` | 1 script |
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_lock::{FencedStore, FencedWrite, LockManager, LockOptions};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Report { lines: Vec<String> }
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let locks = LockManager::new(&redis, "app:locks")?;
/// let reports: FencedStore<Report> = FencedStore::typed(&redis, "app:fenced")?;
/// if let Some(guard) = locks.acquire("report", &LockOptions::default()).await? {
///     let report = Report { lines: vec!["computed while holding the lock".into()] };
///     match reports.write("report", &report, guard.fencing_token(), None).await? {
///         FencedWrite::Written => {}
///         FencedWrite::Rejected { newest } => eprintln!("stale lock: token {newest} already wrote"),
///         _ => {}
///     }
///     guard.release().await?;
/// }
/// let latest: Option<Report> = reports.read("report").await?;
/// # Ok(()) }
/// ```
pub struct FencedStore<T = Raw, C = MsgPack> {
    redis: Redis,
    keys: KeySpace,
    codec: C,
    values: PhantomData<fn() -> T>,
}

impl<T, C: Clone> Clone for FencedStore<T, C> {
    fn clone(&self) -> Self {
        FencedStore {
            redis: self.redis.clone(),
            keys: self.keys.clone(),
            codec: self.codec.clone(),
            values: PhantomData,
        }
    }
}

impl<T, C> fmt::Debug for FencedStore<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedStore")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// Checks a fencing token and a TTL; the token as Redis gets it.
fn check_write(fencing_token: u64, ttl: Option<Duration>) -> Result<(i64, i64)> {
    if fencing_token == 0 || fencing_token > MAX_FENCING_TOKEN {
        return Err(Error::invalid_input(format!(
            "fencing tokens run from 1 to 2^53, got {fencing_token}"
        )));
    }
    check_ttl(ttl)?;
    let token = i64::try_from(fencing_token)
        .map_err(|_| Error::invalid_input("fencing token too large"))?;
    Ok((token, ttl.map_or(0, |t| millis(t).max(1))))
}

fn check_ttl(ttl: Option<Duration>) -> Result<()> {
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(Error::invalid_input(
            "a fenced value's ttl must be non-zero (or None)",
        ));
    }
    Ok(())
}

/// The keys of fenced value `name`: (`p:{name}:<kind>`, `p:{name}:seen`).
fn fenced_keys(keys: &KeySpace, name: &str, kind: &str) -> Result<(Key, Key)> {
    if name.is_empty() {
        return Err(Error::invalid_input(
            "a fenced value's name must not be empty",
        ));
    }
    Ok((
        Key::from(keys.tagged(name, [kind])?),
        Key::from(keys.tagged(name, ["seen"])?),
    ))
}

/// Runs `fenced_seed.lua`: `true` when the value was written.
async fn seed_bytes(
    redis: &Redis,
    value_key: Key,
    seen_key: Key,
    value: Bytes,
    ttl: Option<Duration>,
) -> Result<bool> {
    check_ttl(ttl)?;
    let ttl_ms = ttl.map_or(0, |t| millis(t).max(1));
    let r: i64 = FENCED_SEED
        .exec(
            redis.client(),
            vec![value_key, seen_key],
            vec![Value::Bytes(value), Value::Integer(ttl_ms)],
        )
        .await?;
    Ok(r == 1)
}

impl<T, C> FencedStore<T, C> {
    fn value_key(&self, name: &str) -> Result<Key> {
        Ok(fenced_keys(&self.keys, name, "value")?.0)
    }

    async fn write_bytes(
        &self,
        name: &str,
        value: Bytes,
        fencing_token: u64,
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let (token, ttl_ms) = check_write(fencing_token, ttl)?;
        let (value_key, seen_key) = fenced_keys(&self.keys, name, "value")?;
        let r = FENCED_SET
            .exec(
                self.redis.client(),
                vec![value_key, seen_key],
                vec![
                    Value::Integer(token),
                    Value::Bytes(value),
                    Value::Integer(ttl_ms),
                ],
            )
            .await?;
        let r = reply::integer(FENCED_SET.name(), r)?;
        let outcome = if r == 0 {
            FencedWrite::Written
        } else {
            FencedWrite::Rejected {
                newest: r.unsigned_abs(),
            }
        };
        tracing::debug!(outcome = ?outcome, "fredkit.lock: fenced write");
        Ok(outcome)
    }

    async fn read_bytes(&self, name: &str) -> Result<Option<(Key, Bytes)>> {
        let key = self.value_key(name)?;
        let v: Option<Bytes> = self.redis.client().get(key.clone()).await?;
        Ok(v.map(|v| (key, v)))
    }

    async fn seed_raw(&self, name: &str, value: Bytes, ttl: Option<Duration>) -> Result<bool> {
        let (value_key, seen_key) = fenced_keys(&self.keys, name, "value")?;
        seed_bytes(&self.redis, value_key, seen_key, value, ttl).await
    }
}

impl FencedStore {
    /// A store of raw bytes under `prefix`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a bad prefix.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace) -> Result<FencedStore> {
        Ok(FencedStore {
            redis: redis.clone(),
            keys: prefix.into_key_space()?,
            codec: MsgPack,
            values: PhantomData,
        })
    }

    /// Writes `value` to `name` if `fencing_token` is not older than the
    /// newest token `name` has seen; records it as the newest. One round
    /// trip.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for
    /// an empty name, a token of 0 or above [`MAX_FENCING_TOKEN`], or a zero
    /// TTL; connection errors (the write may or may not have happened; retry
    /// with the same token is safe).
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) when the
    /// newest-token marker (`p:{name}:seen`) holds something this store never
    /// writes (another type, not a decimal number up to 2^53): the message
    /// names the key and how to repair it; nothing was written.
    pub async fn write(
        &self,
        name: &str,
        value: impl Into<Bytes>,
        fencing_token: u64,
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        self.write_bytes(name, value.into(), fencing_token, ttl)
            .await
    }

    /// The current value of `name` (one `GET`).
    ///
    /// # Errors
    ///
    /// An empty name; connection errors.
    pub async fn read(&self, name: &str) -> Result<Option<Bytes>> {
        Ok(self.read_bytes(name).await?.map(|(_, v)| v))
    }

    /// Writes `value` to `name` only if `name` was never written (see
    /// seeding in the [type docs](FencedStore) for
    /// when that is safe without a lock). `true` when seeded, `false` when a
    /// value (or its token marker) was already there — it is left alone. One
    /// round trip.
    ///
    /// # Errors
    ///
    /// An empty name, a zero TTL
    /// ([`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput));
    /// connection errors (retrying is safe: a seed never replaces a value).
    pub async fn seed(
        &self,
        name: &str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.seed_raw(name, value.into(), ttl).await
    }
}

impl<T> FencedStore<T, MsgPack>
where
    T: Serialize + DeserializeOwned,
{
    /// A store of `T` values under `prefix`, encoded with MessagePack (named
    /// fields), fredkit's default codec.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a bad prefix.
    pub fn typed(redis: &Redis, prefix: impl IntoKeySpace) -> Result<FencedStore<T, MsgPack>> {
        FencedStore::with_codec(redis, prefix, MsgPack)
    }
}

impl<T, C> FencedStore<T, C>
where
    T: Serialize + DeserializeOwned,
    C: Codec,
{
    /// A store of `T` values under `prefix`, encoded with `codec`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a bad prefix.
    pub fn with_codec(
        redis: &Redis,
        prefix: impl IntoKeySpace,
        codec: C,
    ) -> Result<FencedStore<T, C>> {
        Ok(FencedStore {
            redis: redis.clone(),
            keys: prefix.into_key_space()?,
            codec,
            values: PhantomData,
        })
    }

    /// Encodes `value` and writes it to `name` if `fencing_token` is not
    /// older than the newest token `name` has seen (see the raw
    /// [`FencedStore::write`]). One round trip.
    ///
    /// # Errors
    ///
    /// As the raw `write`, and
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) when `value`
    /// cannot be encoded (nothing was sent).
    pub async fn write(
        &self,
        name: &str,
        value: &T,
        fencing_token: u64,
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let bytes = self.codec.encode(value)?;
        self.write_bytes(name, bytes, fencing_token, ttl).await
    }

    /// The current value of `name`, decoded (one `GET`).
    ///
    /// # Errors
    ///
    /// An empty name; connection errors;
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) naming the key
    /// when what is stored does not decode as `T` (written with another type
    /// or codec, or by something else): write a new value under the lock,
    /// or delete the key.
    pub async fn read(&self, name: &str) -> Result<Option<T>> {
        let Some((key, bytes)) = self.read_bytes(name).await? else {
            return Ok(None);
        };
        self.codec.decode(&bytes).map(Some).map_err(|e| Error::Codec {
            op: "decode",
            codec: self.codec.name(),
            message: format!(
                "fenced value '{}' does not decode as {} ({e}); write a new value under the lock, or delete the key",
                String::from_utf8_lossy(key.as_bytes()),
                std::any::type_name::<T>()
            ),
        })
    }

    /// Encodes `value` and writes it to `name` only if `name` was never
    /// written (see seeding in the [type docs](FencedStore)). `true`
    /// when seeded. One round trip.
    ///
    /// # Errors
    ///
    /// As the raw [`FencedStore::seed`], and
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) when `value`
    /// cannot be encoded.
    pub async fn seed(&self, name: &str, value: &T, ttl: Option<Duration>) -> Result<bool> {
        let bytes = self.codec.encode(value)?;
        self.seed_raw(name, bytes, ttl).await
    }
}

/// The outcome of [`FencedCounter::incr_by`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FencedIncr {
    /// Added; the counter's new value.
    Written {
        /// The count after the addition.
        value: i64,
    },
    /// Rejected: a write with the newer token `newest` already happened;
    /// nothing was added, the caller's lock is stale.
    Rejected {
        /// The newest token the counter has seen.
        newest: u64,
    },
}

/// Integer counters in Redis that only accept changes carrying a fencing
/// token not older than the newest they have seen: stock levels, balances,
/// quotas changed by lock holders. Each change is **one script on the
/// server** — check the token, `INCRBY`, record the token — so holders never
/// read, parse and write back by hand, and a stale holder's change is
/// refused whole.
///
/// Counter `name` lives in `p:{name}:count` (a decimal integer, readable
/// with `GET` and `redis-cli`), the newest token it has seen in
/// `p:{name}:seen`, as for [`FencedStore`] (equal tokens are accepted; TTLs
/// as there). A counter and a [`FencedStore`] value of the same name under
/// the same prefix share the token marker: one stream of tokens fences both.
///
/// **Seeding without a lock** ([`seed`](Self::seed)): sets a starting count
/// only if the counter was never written, exactly as
/// [`FencedStore::seed`] — safe for an initial stock level that many
/// processes may seed at start-up (one wins); not a reset.
///
/// | operation | round trips |
/// |---|---|
/// | `incr_by`, `set`, `seed` | 1 script |
/// | `get` | 1 `GET` |
///
/// ```no_run
/// use fredkit_lock::{FencedCounter, FencedIncr, LockManager, LockOptions};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let locks = LockManager::new(&redis, "shop:locks")?;
/// let stock = FencedCounter::new(&redis, "shop:stock")?;
/// stock.seed("sku-42", 100, None).await?; // at start-up, by every instance
/// if let Some(guard) = locks.acquire("sku-42", &LockOptions::default()).await? {
///     if stock.get("sku-42").await?.unwrap_or(0) >= 3 {
///         match stock.incr_by("sku-42", -3, guard.fencing_token(), None).await? {
///             FencedIncr::Written { value } => println!("{value} left"),
///             _ => eprintln!("stale lock: not taken"),
///         }
///     }
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FencedCounter {
    redis: Redis,
    keys: KeySpace,
}

impl fmt::Debug for FencedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedCounter")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl FencedCounter {
    /// Counters under `prefix`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a bad prefix.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace) -> Result<FencedCounter> {
        Ok(FencedCounter {
            redis: redis.clone(),
            keys: prefix.into_key_space()?,
        })
    }

    /// Adds `delta` (may be negative) to counter `name` (a missing counter
    /// counts as 0) if `fencing_token` is not older than the newest token it
    /// has seen, and records the token: the new value, or
    /// [`FencedIncr::Rejected`] with nothing changed. One round trip.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for
    /// an empty name, a token of 0 or above [`MAX_FENCING_TOKEN`], or a zero
    /// TTL. [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming
    /// the key when the counter or its token marker holds what this crate
    /// never writes (another type, not a decimal integer); nothing was
    /// written. [`ErrorKind::Script`](fredkit_core::ErrorKind::Script) naming
    /// the key when the sum would overflow an `i64`; nothing was written.
    /// Connection errors: the change may or may not have happened — and a
    /// change fred sends again after a reconnect may be applied twice (an
    /// addition is not idempotent): read the counter under the lock before
    /// retrying.
    pub async fn incr_by(
        &self,
        name: &str,
        delta: i64,
        fencing_token: u64,
        ttl: Option<Duration>,
    ) -> Result<FencedIncr> {
        let (token, ttl_ms) = check_write(fencing_token, ttl)?;
        let (count_key, seen_key) = fenced_keys(&self.keys, name, "count")?;
        let r: Value = FENCED_INCR
            .exec(
                self.redis.client(),
                vec![count_key.clone(), seen_key],
                vec![
                    Value::Integer(token),
                    Value::Integer(delta),
                    Value::Integer(ttl_ms),
                ],
            )
            .await?;
        let outcome = match reply::pair(FENCED_INCR.name(), r)? {
            (1, v) => FencedIncr::Written {
                value: parse_count(&count_key, v.as_str().as_deref())?,
            },
            (0, v) => FencedIncr::Rejected {
                newest: v.as_u64().unwrap_or(0),
            },
            (k, _) => {
                return Err(Error::protocol(format!(
                    "script '{}' answered {k}, which it never does",
                    FENCED_INCR.name()
                )))
            }
        };
        tracing::debug!(outcome = ?outcome, "fredkit.lock: fenced increment");
        Ok(outcome)
    }

    /// Sets counter `name` to `value` if `fencing_token` is not older than
    /// the newest token it has seen (a fenced write, as
    /// [`FencedStore::write`]). One round trip.
    ///
    /// # Errors
    ///
    /// As [`FencedStore::write`].
    pub async fn set(
        &self,
        name: &str,
        value: i64,
        fencing_token: u64,
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let (token, ttl_ms) = check_write(fencing_token, ttl)?;
        let (count_key, seen_key) = fenced_keys(&self.keys, name, "count")?;
        let r = FENCED_SET
            .exec(
                self.redis.client(),
                vec![count_key, seen_key],
                vec![
                    Value::Integer(token),
                    Value::String(value.to_string().into()),
                    Value::Integer(ttl_ms),
                ],
            )
            .await?;
        Ok(match reply::integer(FENCED_SET.name(), r)? {
            0 => FencedWrite::Written,
            newest => FencedWrite::Rejected {
                newest: newest.unsigned_abs(),
            },
        })
    }

    /// The current value of counter `name`, `None` if it was never written
    /// (or expired). One `GET`.
    ///
    /// # Errors
    ///
    /// An empty name; connection errors;
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it does not hold a decimal `i64`.
    pub async fn get(&self, name: &str) -> Result<Option<i64>> {
        let (count_key, _) = fenced_keys(&self.keys, name, "count")?;
        let v: Option<String> = self.redis.client().get(count_key.clone()).await?;
        v.map(|v| parse_count(&count_key, Some(&v))).transpose()
    }

    /// Sets counter `name` to `value` only if it was never written (see
    /// seeding in the [type docs](FencedCounter)). `true` when seeded,
    /// `false` when the counter (or its token marker) already existed — it
    /// is left alone. One round trip.
    ///
    /// # Errors
    ///
    /// An empty name, a zero TTL; connection errors (retrying is safe).
    pub async fn seed(&self, name: &str, value: i64, ttl: Option<Duration>) -> Result<bool> {
        let (count_key, seen_key) = fenced_keys(&self.keys, name, "count")?;
        seed_bytes(
            &self.redis,
            count_key,
            seen_key,
            Bytes::from(value.to_string()),
            ttl,
        )
        .await
    }
}

/// A counter's value: a decimal `i64`, or a Protocol error naming the key.
fn parse_count(key: &Key, v: Option<&str>) -> Result<i64> {
    v.and_then(|s| s.parse::<i64>().ok()).ok_or_else(|| {
        Error::protocol(format!(
            "fenced counter '{}' holds {:?}, not a decimal integer, which fredkit-lock never writes; set it with FencedCounter::set under the lock, or delete it",
            String::from_utf8_lossy(key.as_bytes()),
            v.map(|s| s.chars().take(24).collect::<String>())
        ))
    })
}
