//! [`TowerSessionStore`]: a `tower_sessions::SessionStore` on Redis hashes
//! (feature `tower-sessions`).

use std::fmt;

use async_trait::async_trait;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::{Error, IntoKeySpace, KeySpace, Result, Script};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tower_sessions_core::{
    session::{Id, Record},
    session_store, SessionStore,
};

use crate::store::VALUE;

static TS_CREATE: Script = Script::new(
    "session_ts_create",
    include_str!("../scripts/ts_create.lua"),
);
static TS_SAVE: Script = Script::new("session_ts_save", include_str!("../scripts/ts_save.lua"));
static TS_LOAD: Script = Script::new("session_ts_load", include_str!("../scripts/ts_load.lua"));

const EXPIRY: &str = "~e";

/// A [`tower_sessions::SessionStore`](SessionStore) (tower-sessions 0.15)
/// on Redis: switch from `tower-sessions-redis-store` by changing the store
/// you hand to `SessionManagerLayer::new`.
///
/// Each record is a hash (`<prefix>:{<digest of the id>}:r`): one field per
/// data entry (its JSON) and the expiry; the key expires at the record's
/// expiry (`PEXPIREAT`). Cluster-safe (one key per record, one slot per
/// script).
///
/// - `create` never overwrites: on an id collision it draws a new id
///   (`Id::default()`) and tries again.
/// - `save` writes only the entries that differ from the stored record and
///   deletes the ones the record no longer has (nothing at all when nothing
///   changed; the expiry only when it moved), and never brings back a
///   record that was deleted or expired (like `SET … XX`).
/// - `load` answers `None` for no record, and for garbage under the key
///   (which it removes).
/// - Key names and errors hold a SHA-256 digest of the id, never the id.
///
/// **Lost writes.** tower-sessions hands the store the whole record at the
/// end of a request, without saying which entries the request changed: two
/// concurrent requests that each change a different entry save two records,
/// and the second one's save deletes or reverts the first one's change. This
/// store narrows the window (it writes only the difference) but cannot close
/// it; [`SessionLayer`](crate::SessionLayer) with
/// [`Session`](crate::Session) can (only changed fields are sent).
///
/// | operation | round trips | Redis commands |
/// |---|---|---|
/// | `create` | 1 per attempt | `EVALSHA` (`EXISTS`, `HSET`, `PEXPIREAT`) |
/// | `save` | 1 | `EVALSHA` (`HGETALL`, then only `HSET`/`HDEL`/`PEXPIREAT` of what changed) |
/// | `load` | 1 | `EVALSHA` (`HGETALL`; `UNLINK` of garbage) |
/// | `delete` | 1 | `UNLINK` |
#[derive(Clone)]
pub struct TowerSessionStore {
    redis: Redis,
    space: KeySpace,
}

impl fmt::Debug for TowerSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerSessionStore")
            .field("space", &self.space)
            .finish()
    }
}

impl TowerSessionStore {
    /// A store under `prefix`. No I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a
    /// prefix [`KeySpace::new`] rejects.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace) -> Result<TowerSessionStore> {
        Ok(TowerSessionStore {
            redis: redis.clone(),
            space: prefix.into_key_space()?,
        })
    }

    /// The Redis key of record `id`.
    ///
    /// # Errors
    ///
    /// Never in practice (the tag is a non-empty digest).
    pub fn key(&self, id: &Id) -> Result<String> {
        let digest = Sha256::digest(id.0.to_le_bytes());
        let tag = URL_SAFE_NO_PAD.encode(digest.get(..16).unwrap_or(&digest[..]));
        self.space.tagged(&tag, ["r"])
    }

    fn args(record: &Record) -> session_store::Result<Vec<Value>> {
        let ns = record.expiry_date.unix_timestamp_nanos();
        let ms = i64::try_from(ns.div_euclid(1_000_000)).unwrap_or(i64::MAX);
        let mut args: Vec<Value> = vec![Value::Integer(ms), ns.to_string().into()];
        for (k, v) in &record.data {
            let json = serde_json::to_vec(v)
                .map_err(|e| session_store::Error::Encode(format!("entry {k:?}: {e}")))?;
            args.push(format!("{VALUE}{k}").into());
            args.push(Value::Bytes(json.into()));
        }
        Ok(args)
    }
}

fn backend(e: Error) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

#[async_trait]
impl SessionStore for TowerSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        for _ in 0..8 {
            let key = self.key(&record.id).map_err(backend)?;
            let created: i64 = TS_CREATE
                .exec(self.redis.client(), key, Self::args(record)?)
                .await
                .map_err(backend)?;
            if created == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(
            "fredkit-session drew 8 colliding session ids in a row".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let key = self.key(&record.id).map_err(backend)?;
        let _: i64 = TS_SAVE
            .exec(self.redis.client(), key, Self::args(record)?)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let key = self.key(session_id).map_err(backend)?;
        let v: Value = TS_LOAD
            .exec(self.redis.client(), key, ())
            .await
            .map_err(backend)?;
        let pairs = match v {
            Value::Array(a) => a,
            Value::Null => return Ok(None),
            _ => {
                tracing::warn!(
                    prefix = self.space.prefix(),
                    "fredkit-session removed garbage found under a tower-sessions record key"
                );
                return Ok(None);
            }
        };
        if pairs.is_empty() {
            return Ok(None);
        }
        let mut data = std::collections::HashMap::new();
        let mut expiry = None;
        let mut it = pairs.into_iter();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            let (Some(f), Some(v)) = (f.into_string(), v.into_bytes()) else {
                continue;
            };
            if f == EXPIRY {
                expiry = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<i128>().ok())
                    .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok());
            } else if let Some(k) = f.strip_prefix(VALUE) {
                match serde_json::from_slice(&v) {
                    Ok(json) => {
                        data.insert(k.to_owned(), json);
                    }
                    Err(e) => {
                        return Err(session_store::Error::Decode(format!(
                            "entry {k:?} of a session record: {e}"
                        )))
                    }
                }
            }
        }
        let Some(expiry_date) = expiry else {
            return Err(session_store::Error::Decode(
                "a session record has no valid expiry".into(),
            ));
        };
        if expiry_date <= OffsetDateTime::now_utc() {
            return Ok(None);
        }
        Ok(Some(Record {
            id: *session_id,
            data,
            expiry_date,
        }))
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let key = self.key(session_id).map_err(backend)?;
        let _: i64 = fred::interfaces::KeysInterface::unlink(self.redis.client(), key.as_str())
            .await
            .map_err(|e| backend(e.into()))?;
        Ok(())
    }
}
