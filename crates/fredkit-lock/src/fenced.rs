//! [`FencedStore`]: the storage-side check that makes fencing tokens useful.

use std::fmt;
use std::time::Duration;

use fred::bytes::Bytes;
use fred::interfaces::KeysInterface;
use fred::types::{Key, Value};
use fredkit_conn::Redis;
use fredkit_core::{Error, KeySpace, Result, Script};

use crate::options::millis;
use crate::reply;

static FENCED_SET: Script = Script::new("fenced_set", include_str!("../scripts/fenced_set.lua"));

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

/// Values in Redis that only accept writes carrying a fencing token not
/// older than the newest they have seen — the check Martin Kleppmann's
/// critique of lock services asks the *storage* to make: a holder that paused
/// past its TTL (GC, swap, a stalled VM) wakes up believing it holds the
/// lock; its write carries an old token and is rejected.
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
/// | operation | round trips |
/// |---|---|
/// | `write` | 1 script |
/// | `read` | 1 `GET` |
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_lock::{FencedStore, FencedWrite, LockManager, LockOptions};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let locks = LockManager::new(&redis, "app:locks")?;
/// let store = FencedStore::new(&redis, "app:fenced")?;
/// if let Some(guard) = locks.acquire("report", &LockOptions::default()).await? {
///     let report = b"...computed while holding the lock...".to_vec();
///     match store.write("report", report, guard.fencing_token(), None).await? {
///         FencedWrite::Written => {}
///         FencedWrite::Rejected { newest } => eprintln!("stale lock: token {newest} already wrote"),
///         _ => {}
///     }
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FencedStore {
    redis: Redis,
    keys: KeySpace,
}

impl fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedStore")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl FencedStore {
    /// A store under `prefix`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a bad prefix.
    pub fn new(redis: &Redis, prefix: &str) -> Result<FencedStore> {
        Ok(FencedStore {
            redis: redis.clone(),
            keys: KeySpace::new(prefix)?,
        })
    }

    fn value_key(&self, name: &str) -> Result<Key> {
        Ok(Key::from(self.keys.tagged(name, ["value"])?))
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
        if fencing_token == 0 || fencing_token > MAX_FENCING_TOKEN {
            return Err(Error::invalid_input(format!(
                "fencing tokens run from 1 to 2^53, got {fencing_token}"
            )));
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid_input(
                "a fenced value's ttl must be non-zero (or None)",
            ));
        }
        let value_key = self.value_key(name)?;
        let seen_key = Key::from(self.keys.tagged(name, ["seen"])?);
        let ttl_ms = ttl.map_or(0, |t| millis(t).max(1));
        let token = i64::try_from(fencing_token)
            .map_err(|_| Error::invalid_input("fencing token too large"))?;
        let r = FENCED_SET
            .exec(
                self.redis.client(),
                vec![value_key, seen_key],
                vec![
                    Value::Integer(token),
                    Value::Bytes(value.into()),
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

    /// The current value of `name` (one `GET`).
    ///
    /// # Errors
    ///
    /// An empty name; connection errors.
    pub async fn read(&self, name: &str) -> Result<Option<Bytes>> {
        let v: Option<Bytes> = self.redis.client().get(self.value_key(name)?).await?;
        Ok(v)
    }
}
