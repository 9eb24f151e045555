//! [`Presence`]: who is online, from heartbeats, with no background sweeper.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::{Error, IntoKeySpace, KeySpace, Result, Script};

use crate::common::{script_error, ttl_ms, OpMetrics};

static PRESENCE: Script = Script::new("presence", include_str!("../scripts/presence.lua"));

/// Online members per room (a site, a document, a chat), from heartbeats:
/// a member is online while its last [`heartbeat`](Self::heartbeat) is less
/// than `window` old by the Redis server's clock.
///
/// # Keys
///
/// `<prefix>:{<room>}:online`: a sorted set, member → server time (ms) of its
/// last heartbeat. One slot per room.
///
/// # Guarantees
///
/// - Every call is one Lua script that reads `TIME` and first removes the
///   members whose last heartbeat is `window` or more old
///   (`ZREMRANGEBYSCORE`), so a lapsed member is never reported and the set
///   never grows beyond the members seen within one window: no sweeper task
///   per client. (So the read calls write too: they need a primary.)
/// - The key expires one window after the last heartbeat.
/// - Callers' clocks never matter.
/// - Garbage (the key is not a sorted set) is an
///   [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) error naming
///   the key; nothing is written.
///
/// # Round trips
///
/// Every operation: 1 (`EVALSHA`: `TYPE`, `TIME`, `ZREMRANGEBYSCORE`, then
/// `ZADD`+`PEXPIRE`, `ZREM`, `ZCARD`, `ZREVRANGE` or `ZSCORE`).
#[derive(Clone, Debug)]
pub struct Presence {
    redis: Redis,
    space: KeySpace,
    window_ms: u64,
    metrics: Arc<OpMetrics>,
}

impl Presence {
    /// Rooms under `prefix` where a member stays online for `window` after
    /// its last heartbeat. No I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for a prefix [`KeySpace::new`] rejects or a window under 1 ms.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace, window: Duration) -> Result<Presence> {
        let space = prefix.into_key_space()?;
        let window_ms = ttl_ms(&format!("Presence {space}"), window)?;
        let metrics = Arc::new(OpMetrics::new("presence", space.prefix()));
        Ok(Presence {
            redis: redis.clone(),
            space,
            window_ms,
            metrics,
        })
    }

    /// The Redis key of room `room`: `<prefix>:{<room>}:online`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty room.
    pub fn key(&self, room: &str) -> Result<String> {
        self.space.tagged(room, ["online"])
    }

    /// The window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    async fn run(&self, room: &str, op: &str, member: &str) -> Result<Value> {
        let started = Instant::now();
        let r = async {
            let key = self.key(room)?;
            let args: Vec<Value> = vec![
                op.into(),
                Value::Integer(i64::try_from(self.window_ms).unwrap_or(i64::MAX)),
                member.into(),
            ];
            PRESENCE
                .exec::<_, Value, _, _>(self.redis.client(), key, args)
                .await
                .map_err(script_error)
        }
        .await;
        self.metrics.record(started, &r);
        r
    }

    fn count_of(&self, op: &str, v: &Value) -> Result<u64> {
        v.as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| Error::protocol(format!("script presence answered {v:?} to {op}")))
    }

    /// Marks `member` online in `room` now (server time) and returns how many
    /// members are online. One round trip.
    ///
    /// Cancellation: a dropped future has recorded the heartbeat or not.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) naming the
    /// key when it is not a sorted set; connection errors and timeouts.
    pub async fn heartbeat(&self, room: &str, member: &str) -> Result<u64> {
        let v = self.run(room, "beat", member).await?;
        self.count_of("beat", &v)
    }

    /// Marks `member` offline in `room` at once; returns how many members
    /// are online. One round trip.
    ///
    /// # Errors
    ///
    /// As [`heartbeat`](Self::heartbeat).
    pub async fn leave(&self, room: &str, member: &str) -> Result<u64> {
        let v = self.run(room, "leave", member).await?;
        self.count_of("leave", &v)
    }

    /// The members of `room` online now, most recent heartbeat first. One
    /// round trip; O(members online).
    ///
    /// # Errors
    ///
    /// As [`heartbeat`](Self::heartbeat).
    pub async fn online(&self, room: &str) -> Result<Vec<String>> {
        let v = self.run(room, "online", "").await?;
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .into_iter()
                .map(|m| {
                    m.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .ok_or_else(|| {
                            Error::protocol(format!("script presence returned member {m:?}"))
                        })
                })
                .collect(),
            other => Err(Error::protocol(format!(
                "script presence answered {other:?} to online"
            ))),
        }
    }

    /// How many members of `room` are online now. One round trip.
    ///
    /// # Errors
    ///
    /// As [`heartbeat`](Self::heartbeat).
    pub async fn count(&self, room: &str) -> Result<u64> {
        let v = self.run(room, "count", "").await?;
        self.count_of("count", &v)
    }

    /// Whether `member` is online in `room` now. One round trip.
    ///
    /// # Errors
    ///
    /// As [`heartbeat`](Self::heartbeat).
    pub async fn is_online(&self, room: &str, member: &str) -> Result<bool> {
        let v = self.run(room, "is_online", member).await?;
        Ok(self.count_of("is_online", &v)? == 1)
    }
}
