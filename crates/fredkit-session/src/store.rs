//! [`Sessions`]: the store — load, per-field save, create, rotate, delete,
//! the per-user index and revoke-all.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use fred::{
    interfaces::{ClientLike, HashesInterface, KeysInterface, SortedSetsInterface},
    types::{ClusterHash, CustomCommand, Value},
};
use fredkit_conn::Redis;
use fredkit_core::{Codec, Error, ErrorKind, IntoKeySpace, KeySpace, MsgPack, Result, Script};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    id::{user_tag, SessionId},
    metrics::SessionMetrics,
    options::SessionOptions,
};

static SAVE: Script = Script::new("session_save", include_str!("../scripts/save.lua"));
static CREATE: Script = Script::new("session_create", include_str!("../scripts/create.lua"));
static REVOKE_ALL: Script = Script::new(
    "session_revoke_all",
    include_str!("../scripts/revoke_all.lua"),
);

/// Hash field prefix of a value (`.name`).
pub(crate) const VALUE: &str = ".";
/// Hash field prefix of a counter (`#name`).
pub(crate) const COUNTER: &str = "#";
const CREATED: &str = "~c";
const USER: &str = "~u";
const DEVICE: &str = "~d";

/// A store of web sessions in Redis: one hash per session, written per
/// field.
///
/// Values are MessagePack ([`fredkit_core::MsgPack`]); counters are decimal
/// integers changed server-side (`HINCRBY`). Cheap to clone (an `Arc`).
///
/// # Keys
///
/// | what | key | type | expires |
/// |---|---|---|---|
/// | a session | `<prefix>:{<tag>}:s:<handle>` | hash: `~c` created (server ms), `~u` user, `~d` device, `.<name>` values, `#<name>` counters | idle timeout, slid by every load and save; dead after the absolute timeout |
/// | a user's index | `<prefix>:{<user tag>}:idx:<user>` | sorted set: handle → created ms | absolute timeout after the last sign-in |
/// | cut-offs | `<prefix>:{<user tag>}:cut` | hash: user → cut-off ms | absolute timeout after the last `revoke_all` |
///
/// The tag is the first part of the [`SessionId`]: random for an anonymous
/// session, derived from the user for a signed-in one, so a user's sessions,
/// index and cut-off share one slot and one script checks them together.
/// The handle is a digest of the id's secret: no key name holds a usable id.
///
/// # Guarantees
///
/// - [`save`](Self::save) writes only the fields it is given (`HSET`/`HDEL`/`HINCRBY`
///   in one script): concurrent saves of different fields all persist; a
///   field saved by two requests ends with one of the two values.
/// - No resurrection: `save` writes only into a live session; a session
///   deleted, expired, revoked or past its absolute timeout stays gone.
/// - [`load`](Self::load) slides the expiry with one `PEXPIRE` pipelined
///   with the `HGETALL`: no data is rewritten and no extra round trip is paid.
/// - Garbage under a session key (not a hash, no creation time) is "no
///   session" and is removed. Nothing read from Redis panics.
/// - Every time decision uses the Redis server's clock (`TIME` in the scripts).
///
/// # Round trips
///
/// | operation | round trips | Redis commands |
/// |---|---|---|
/// | [`load`](Self::load) | 1 (+1 `UNLINK` when it finds garbage, a revoked or too old session) | pipelined, no script: `HGETALL`, `PEXPIRE`, `TIME`, and for a signed-in session `HGETALL` of its tag's cut-offs |
/// | [`save`](Self::save), [`set`](Self::set), [`increment`](Self::increment) | 1 | `EVALSHA` (`HGET`, `TIME`, `HDEL`, `HSET`, `HINCRBY`, `PEXPIRE`) |
/// | [`create`](Self::create) | 1 | `EVALSHA` (`EXISTS`, `TIME`, `HSET`, `PEXPIRE`; for a user `ZADD`, `ZREMRANGEBYRANK`, `PEXPIRE`) |
/// | [`cycle_id`](Self::cycle_id) | 2 | `create`, then `UNLINK` of the old key |
/// | [`delete`](Self::delete) | 1 | `UNLINK` |
/// | [`revoke_all`](Self::revoke_all) | 1 | `EVALSHA` (`TIME`, `HGET`, `HSET`, `PEXPIRE`, `UNLINK`) |
/// | [`sessions_of`](Self::sessions_of) | 2 (+1 to prune dead entries) | `ZRANGE`+`HGET`+`TIME`, then `HMGET`+`PTTL` per session (`ZREM`) |
///
/// (Plus one `EVAL` per script and node after a restart or `SCRIPT FLUSH`.)
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    space: KeySpace,
    options: SessionOptions,
    idle_ms: u64,
    absolute_ms: u64,
    metrics: SessionMetrics,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("space", &self.inner.space)
            .field("options", &self.inner.options)
            .finish()
    }
}

/// One session as loaded from Redis (or just created): its id, values,
/// counters, user, device and creation time.
///
/// `Debug` shows the field names, never the id.
#[derive(Clone)]
pub struct SessionRecord {
    id: SessionId,
    values: HashMap<String, Bytes>,
    counters: HashMap<String, Bytes>,
    user: Option<String>,
    device: Option<String>,
    created_ms: u64,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort();
        let mut counters: Vec<&String> = self.counters.keys().collect();
        counters.sort();
        f.debug_struct("SessionRecord")
            .field("id", &self.id)
            .field("values", &names)
            .field("counters", &counters)
            .field("signed_in", &self.user.is_some())
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

impl SessionRecord {
    /// The session's id (secret; see [`SessionId`]).
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Value `name`, decoded; `None` when the session has none.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`] naming the field when the stored bytes do not
    /// decode as `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.values.get(name).map(|b| decode(name, b)).transpose()
    }

    /// Value `name`'s stored bytes (MessagePack).
    pub fn get_raw(&self, name: &str) -> Option<&Bytes> {
        self.values.get(name)
    }

    /// Counter `name` (0 when it has never been incremented).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`] naming the counter when it holds no decimal
    /// `i64` (garbage written by something else).
    pub fn counter(&self, name: &str) -> Result<i64> {
        match self.counters.get(name) {
            None => Ok(0),
            Some(raw) => parse_i64(raw).ok_or_else(|| {
                Error::protocol(format!(
                    "session counter {name:?} holds no decimal integer; remove it"
                ))
            }),
        }
    }

    /// The names of the session's values.
    pub fn value_names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The names of the session's counters.
    pub fn counter_names(&self) -> impl Iterator<Item = &str> {
        self.counters.keys().map(String::as_str)
    }

    /// The signed-in user, if any (set by [`Sessions::create`] or
    /// [`Sessions::cycle_id`]).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The device label given at sign-in, if any.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// When the session was created (or last got a new id), Redis server
    /// clock.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_ms)
    }

    /// This record with `changes` applied locally (no I/O): what a save
    /// would leave, counters added to the loaded values.
    pub fn with_changes(&self, changes: &Changes) -> SessionRecord {
        let mut r = self.clone();
        for name in &changes.counter_removes {
            r.counters.remove(name);
        }
        for (name, v) in &changes.values {
            match v {
                Some(b) => {
                    r.values.insert(name.clone(), b.clone());
                }
                None => {
                    r.values.remove(name);
                }
            }
        }
        for (name, by) in &changes.increments {
            let now = r.counter(name).unwrap_or(0).saturating_add(*by);
            r.counters
                .insert(name.clone(), Bytes::from(now.to_string()));
        }
        r
    }
}

/// Changes to one session, to [`save`](Sessions::save) in one step: values
/// set or removed, counters incremented server-side. Only what is listed
/// here is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// name -> Some(new bytes) | None (removed)
    values: BTreeMap<String, Option<Bytes>>,
    /// Counters to delete before the increments.
    counter_removes: BTreeSet<String>,
    /// name -> amount to add.
    increments: BTreeMap<String, i64>,
}

impl Changes {
    /// No changes.
    pub fn new() -> Changes {
        Changes::default()
    }

    /// Sets value `name` to `value` (MessagePack).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`] when `value` cannot be encoded.
    pub fn set<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<&mut Self> {
        let bytes = MsgPack.encode(value).map_err(|e| codec_error(name, e))?;
        Ok(self.set_raw(name, bytes))
    }

    /// Sets value `name` to already encoded bytes (MessagePack, so that
    /// [`SessionRecord::get`] can read them).
    pub fn set_raw(&mut self, name: &str, bytes: impl Into<Bytes>) -> &mut Self {
        self.values.insert(name.to_owned(), Some(bytes.into()));
        self
    }

    /// Removes value `name` and counter `name`.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.values.insert(name.to_owned(), None);
        self.increments.remove(name);
        self.counter_removes.insert(name.to_owned());
        self
    }

    /// Adds `by` to counter `name`, server-side (`HINCRBY`): concurrent
    /// increments of many requests all count. Increments of one `Changes`
    /// add up (saturating).
    pub fn increment(&mut self, name: &str, by: i64) -> &mut Self {
        let e = self.increments.entry(name.to_owned()).or_insert(0);
        *e = e.saturating_add(by);
        self
    }

    /// Whether there is nothing to save.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.counter_removes.is_empty() && self.increments.is_empty()
    }

    /// The value set or removed under `name` by these changes:
    /// `Some(Some(bytes))` set, `Some(None)` removed, `None` untouched.
    pub fn value(&self, name: &str) -> Option<Option<&Bytes>> {
        self.values.get(name).map(Option::as_ref)
    }

    /// The amount these changes add to counter `name`, and whether they
    /// reset it first.
    pub fn counter_change(&self, name: &str) -> (bool, i64) {
        (
            self.counter_removes.contains(name),
            self.increments.get(name).copied().unwrap_or(0),
        )
    }

    /// The names of the counters these changes increment, in order.
    pub fn incremented(&self) -> impl Iterator<Item = &str> {
        self.increments.keys().map(String::as_str)
    }

    /// ARGV of save.lua after the first two.
    fn save_args(&self, args: &mut Vec<Value>) {
        let dels: Vec<String> = self
            .values
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| format!("{VALUE}{n}"))
            .chain(self.counter_removes.iter().map(|n| format!("{COUNTER}{n}")))
            .collect();
        args.push(Value::Integer(dels.len() as i64));
        args.extend(dels.into_iter().map(Value::from));
        let sets: Vec<(&String, &Bytes)> = self
            .values
            .iter()
            .filter_map(|(n, v)| v.as_ref().map(|b| (n, b)))
            .collect();
        args.push(Value::Integer(sets.len() as i64));
        for (n, b) in sets {
            args.push(format!("{VALUE}{n}").into());
            args.push(Value::Bytes(b.clone()));
        }
        args.push(Value::Integer(self.increments.len() as i64));
        for (n, by) in &self.increments {
            args.push(format!("{COUNTER}{n}").into());
            args.push(by.to_string().into());
        }
    }
}

/// What [`Sessions::save`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveOutcome {
    /// The changes are in Redis and the idle timeout restarted.
    Saved {
        /// The new value of every incremented counter.
        counters: BTreeMap<String, i64>,
    },
    /// The session is gone (deleted, expired, revoked, or garbage removed):
    /// nothing was written, and the session was not brought back.
    Gone,
}

/// One live session of a user, as [`Sessions::sessions_of`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's public handle ([`SessionId::handle`]), to
    /// [`revoke`](Sessions::revoke) it. Not the id: it gives no access.
    pub handle: String,
    /// The device label given at sign-in.
    pub device: Option<String>,
    /// When the session was created (signed in), server clock.
    pub created: SystemTime,
    /// When it was last loaded or saved (derived from its remaining TTL:
    /// exact to the millisecond, no write per request), server clock.
    pub last_seen: SystemTime,
}

impl Sessions {
    /// A store under `prefix` (e.g. `"app:session"`). No I/O.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a prefix [`KeySpace::new`] rejects or
    /// options out of range (a timeout under 1 ms, an index limit of 0).
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace, options: SessionOptions) -> Result<Self> {
        let space = prefix.into_key_space()?;
        let (idle_ms, absolute_ms) = options.checked_ms()?;
        let metrics = SessionMetrics::new(space.prefix());
        Ok(Sessions {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                space,
                options,
                idle_ms,
                absolute_ms,
                metrics,
            }),
        })
    }

    /// The key space.
    pub fn key_space(&self) -> &KeySpace {
        &self.inner.space
    }

    /// The options.
    pub fn options(&self) -> &SessionOptions {
        &self.inner.options
    }

    pub(crate) fn metrics(&self) -> &SessionMetrics {
        &self.inner.metrics
    }

    /// The Redis key of session `id` (it holds the id's handle, not the id).
    ///
    /// # Errors
    ///
    /// Never for an id this crate made; kept fallible like [`KeySpace::tagged`].
    pub fn key(&self, id: &SessionId) -> Result<String> {
        self.inner.space.tagged(id.tag(), ["s", &id.handle()])
    }

    fn key_of(&self, tag: &str, handle: &str) -> Result<String> {
        self.inner.space.tagged(tag, ["s", handle])
    }

    fn cut_key(&self, tag: &str) -> Result<String> {
        self.inner.space.tagged(tag, ["cut"])
    }

    fn index_key(&self, user: &str) -> Result<String> {
        self.inner.space.tagged(&user_tag(user), ["idx", user])
    }

    fn client(&self) -> &fred::clients::Client {
        self.inner.redis.client()
    }

    fn ms_arg(ms: u64) -> Value {
        Value::Integer(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Loads session `id` and slides its idle timeout, in one round trip
    /// (a pipeline in the session's slot, no script): the touch is a
    /// `PEXPIRE`, never a rewrite. `None` when there is no such
    /// live session: never created, expired, past its absolute timeout,
    /// revoked by [`revoke_all`](Self::revoke_all), or garbage under its key
    /// (which is removed).
    ///
    /// One round trip. Cancellation: if dropped, the touch may or may not have
    /// happened; nothing else is written.
    ///
    /// # Errors
    ///
    /// Connection errors, timeouts and `NOPERM` ([`ErrorKind::Permission`]) as
    /// they are; the error never holds the id.
    pub async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        let started = Instant::now();
        let m = &self.inner.metrics;
        let r = self.load_inner(id).await;
        m.load_latency.record_since(started);
        match &r {
            Ok(LoadReply::Found(_)) => m.load_found.increment(1),
            Ok(LoadReply::None) => m.load_none.increment(1),
            Ok(LoadReply::Revoked) => m.load_revoked.increment(1),
            Ok(LoadReply::Garbage) => {
                m.load_garbage.increment(1);
                tracing::warn!(
                    prefix = self.inner.space.prefix(),
                    "fredkit-session removed garbage found under a session key (not a session hash); the request gets a fresh session"
                );
            }
            Err(_) => m.load_error.increment(1),
        }
        r.map(|r| match r {
            LoadReply::Found(rec) => Some(rec),
            _ => None,
        })
    }

    async fn load_inner(&self, id: &SessionId) -> Result<LoadReply> {
        // One round trip, no script: HGETALL, the touch (PEXPIRE: a live
        // session's idle timeout restarts; nothing is rewritten), the
        // server's clock, and for a signed-in session's tag its cut-offs —
        // all in the session's slot, pipelined. The rare verdicts "garbage",
        // "past its absolute timeout" and "revoked" cost a second round trip
        // (UNLINK).
        let key = self.key(id)?;
        let signed_in = id.tag().starts_with('u');
        let pipe = self.client().pipeline();
        let () = pipe.hgetall(key.as_str()).await?;
        let () = pipe
            .pexpire(key.as_str(), self.inner.idle_ms as i64, None)
            .await?;
        let time = CustomCommand::new_static(
            "TIME",
            ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes())),
            false,
        );
        let () = pipe.custom(time, Vec::<Value>::new()).await?;
        if signed_in {
            let () = pipe.hgetall(self.cut_key(id.tag())?.as_str()).await?;
        }
        let mut replies = pipe.try_all::<Value>().await.into_iter();
        let mut next = || {
            replies.next().unwrap_or_else(|| {
                Err(fred::error::Error::new(
                    fred::error::ErrorKind::Protocol,
                    "missing reply",
                ))
            })
        };
        let (all, touched, time) = (next(), next(), next());
        let cuts = if signed_in { Some(next()) } else { None };
        // Connection errors and NOPERM fail the load; WRONGTYPE is garbage.
        let pairs = match all {
            Ok(v) => array(v)?,
            Err(e) => {
                let e = Error::from(e);
                if e.kind() == ErrorKind::Protocol && e.to_string().contains("WRONGTYPE") {
                    self.unlink_quietly(&key).await?;
                    return Ok(LoadReply::Garbage);
                }
                return Err(e);
            }
        };
        touched.map_err(Error::from)?;
        if pairs.is_empty() {
            return Ok(LoadReply::None);
        }
        let now = server_ms(time.map_err(Error::from)?)?;
        let record = record_from_pairs(id.clone(), pairs)?;
        if record.created_ms == 0 {
            self.unlink_quietly(&key).await?;
            return Ok(LoadReply::Garbage);
        }
        if now.saturating_sub(record.created_ms as i64) >= self.inner.absolute_ms as i64 {
            self.unlink_quietly(&key).await?;
            return Ok(LoadReply::None);
        }
        if let (Some(user), Some(cuts)) = (&record.user, cuts) {
            let cuts = array(cuts.map_err(|e| redact(e.into()))?)?;
            let mut it = cuts.into_iter();
            while let (Some(u), Some(cut)) = (it.next(), it.next()) {
                if u.as_str().as_deref() == Some(user.as_str()) {
                    let cut = cut.into_bytes().and_then(|b| parse_i64(&b));
                    if cut.is_some_and(|cut| record.created_ms as i64 <= cut) {
                        self.unlink_quietly(&key).await?;
                        return Ok(LoadReply::Revoked);
                    }
                }
            }
        }
        Ok(LoadReply::Found(record))
    }

    /// Removes a dead session's key (garbage, revoked, too old).
    async fn unlink_quietly(&self, key: &str) -> Result<()> {
        let _: i64 = self
            .client()
            .unlink(key)
            .await
            .map_err(|e| redact(e.into()))?;
        Ok(())
    }

    /// Writes `changes` to session `id`, atomically, in one script: values
    /// set (`HSET`) or removed (`HDEL`), counters incremented server-side
    /// (`HINCRBY`), and the idle timeout restarted. Fields not in `changes`
    /// are not touched, so concurrent saves of different fields all persist.
    ///
    /// Only a live session is written: [`SaveOutcome::Gone`] when it was
    /// deleted, expired or revoked meanwhile (nothing written, nothing
    /// brought back). Empty `changes` are still one round trip (a touch).
    ///
    /// Cancellation: if dropped, the script ran entirely or not at all.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`] when a counter to increment holds no decimal
    /// integer (nothing written) or would overflow `i64`; connection errors,
    /// timeouts and `NOPERM` as they are. No error holds the id.
    pub async fn save(&self, id: &SessionId, changes: &Changes) -> Result<SaveOutcome> {
        let started = Instant::now();
        let m = &self.inner.metrics;
        let r = self.save_inner(id, changes).await;
        m.saved(started);
        match &r {
            Ok(SaveOutcome::Saved { .. }) => m.save_saved.increment(1),
            Ok(SaveOutcome::Gone) => m.save_gone.increment(1),
            Err(_) => m.save_error.increment(1),
        }
        r
    }

    async fn save_inner(&self, id: &SessionId, changes: &Changes) -> Result<SaveOutcome> {
        let keys = vec![self.key(id)?, self.cut_key(id.tag())?];
        let mut args = vec![
            Self::ms_arg(self.inner.idle_ms),
            Self::ms_arg(self.inner.absolute_ms),
        ];
        changes.save_args(&mut args);
        let v: Value = SAVE.exec(self.client(), keys, args).await.map_err(redact)?;
        let mut items = array(v)?.into_iter();
        match items.next().and_then(|v| v.as_i64()) {
            Some(1) => {
                let mut counters = BTreeMap::new();
                for name in changes.incremented() {
                    let n = items
                        .next()
                        .and_then(|v| v.into_bytes())
                        .and_then(|b| parse_i64(&b))
                        .ok_or_else(|| {
                            Error::protocol(format!(
                                "fredkit-session's save script returned no value for counter {name:?}"
                            ))
                        })?;
                    counters.insert(name.to_owned(), n);
                }
                Ok(SaveOutcome::Saved { counters })
            }
            Some(0) | Some(-1) => Ok(SaveOutcome::Gone),
            other => Err(Error::protocol(format!(
                "fredkit-session's save script answered status {other:?}"
            ))),
        }
    }

    /// Sets value `name` of session `id` alone: [`save`](Self::save) with one
    /// change.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save), and [`ErrorKind::Codec`] when `value` cannot
    /// be encoded.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        id: &SessionId,
        name: &str,
        value: &T,
    ) -> Result<SaveOutcome> {
        let mut c = Changes::new();
        c.set(name, value)?;
        self.save(id, &c).await
    }

    /// Adds `by` to counter `name` of session `id`, server-side; its new
    /// value, or `None` when the session is gone.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save).
    pub async fn increment(&self, id: &SessionId, name: &str, by: i64) -> Result<Option<i64>> {
        let mut c = Changes::new();
        c.increment(name, by);
        Ok(match self.save(id, &c).await? {
            SaveOutcome::Saved { counters } => counters.get(name).copied(),
            SaveOutcome::Gone => None,
        })
    }

    /// Creates a session with a fresh id (a new id is drawn if it ever
    /// collides) holding `changes` (values set, counters set to their
    /// increments), for `user` when given (indexed in
    /// [`sessions_of`](Self::sessions_of), tagged into the user's slot) or
    /// anonymous.
    ///
    /// One round trip. Cancellation: if dropped, the session may exist in
    /// Redis without anyone holding its id; it expires after the idle timeout.
    ///
    /// # Errors
    ///
    /// Connection errors, timeouts and `NOPERM` as they are;
    /// [`ErrorKind::InvalidInput`] for an empty user.
    pub async fn create(
        &self,
        user: Option<&str>,
        device: Option<&str>,
        changes: &Changes,
    ) -> Result<SessionRecord> {
        if user == Some("") {
            return Err(Error::invalid_input(
                "fredkit-session: the user of a session must not be empty",
            ));
        }
        let base = SessionRecord {
            id: SessionId::new_anonymous(),
            values: HashMap::new(),
            counters: HashMap::new(),
            user: user.map(str::to_owned),
            device: device.map(str::to_owned),
            created_ms: 0,
        }
        .with_changes(changes);
        self.create_record(base).await
    }

    /// Writes `record` (its values, counters, user and device) under a fresh
    /// id; returns it with the id and creation time.
    async fn create_record(&self, mut record: SessionRecord) -> Result<SessionRecord> {
        let started = Instant::now();
        let mut fields: Vec<Value> = Vec::new();
        for (n, b) in &record.values {
            fields.push(format!("{VALUE}{n}").into());
            fields.push(Value::Bytes(b.clone()));
        }
        for (n, b) in &record.counters {
            fields.push(format!("{COUNTER}{n}").into());
            fields.push(Value::Bytes(b.clone()));
        }
        for _attempt in 0..4 {
            let id = match &record.user {
                Some(u) => SessionId::new_for_user(u),
                None => SessionId::new_anonymous(),
            };
            let key = self.key(&id)?;
            let index = match &record.user {
                Some(u) => self.index_key(u)?,
                None => key.clone(),
            };
            let mut args: Vec<Value> = vec![
                Self::ms_arg(self.inner.idle_ms),
                Self::ms_arg(self.inner.absolute_ms),
                Value::Integer(i64::from(self.inner.options.max_per_user())),
                record.user.clone().unwrap_or_default().into(),
                record.device.clone().unwrap_or_default().into(),
                id.handle().into(),
                Value::Integer((fields.len() / 2) as i64),
            ];
            args.extend(fields.iter().cloned());
            let v: Value = CREATE
                .exec(self.client(), vec![key, index], args)
                .await
                .map_err(redact)?;
            let mut items = array(v)?.into_iter();
            if items.next().and_then(|v| v.as_i64()) == Some(1) {
                let created = items
                    .next()
                    .and_then(|v| v.into_bytes())
                    .and_then(|b| parse_i64(&b))
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0);
                record.id = id;
                record.created_ms = created;
                self.inner.metrics.created.increment(1);
                self.inner.metrics.saved(started);
                return Ok(record);
            }
        }
        Err(Error::protocol(
            "fredkit-session drew 4 colliding session ids in a row: the random number generator \
             is broken",
        ))
    }

    /// Gives the session of `record` a new id (stops session fixation: call
    /// it at sign-in and privilege changes), optionally signing it in as
    /// `user` (`Some`) with a device label, and returns the new record. The
    /// old id is dead afterwards.
    ///
    /// The new session holds the record's values and counters as given (apply
    /// pending [`Changes`] first with [`SessionRecord::with_changes`]); its
    /// creation time (for the absolute timeout and
    /// [`revoke_all`](Self::revoke_all)) is now. A signed-in session keeps
    /// its user unless `user` names another one.
    ///
    /// Two round trips (create the new key, then `UNLINK` the old one: they
    /// are in different slots). A write to the old id between the two is lost
    /// with the old id.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create); if the old key cannot be removed the new
    /// session exists and the error says so.
    pub async fn cycle_id(
        &self,
        record: &SessionRecord,
        user: Option<&str>,
        device: Option<&str>,
    ) -> Result<SessionRecord> {
        if user == Some("") {
            return Err(Error::invalid_input(
                "fredkit-session: the user of a session must not be empty",
            ));
        }
        let mut next = record.clone();
        if let Some(u) = user {
            next.user = Some(u.to_owned());
        }
        if let Some(d) = device {
            next.device = Some(d.to_owned());
        }
        let created = self.create_record(next).await?;
        self.delete(record.id()).await.map_err(|e| {
            Error::protocol(format!(
                "fredkit-session gave the session a new id but could not remove the old one ({e}); \
                 it expires by itself after the idle timeout"
            ))
        })?;
        Ok(created)
    }

    /// Deletes session `id` (sign-out). `true` when it existed. One round
    /// trip (`UNLINK`); the user's index drops the entry lazily
    /// ([`sessions_of`](Self::sessions_of) prunes it).
    ///
    /// # Errors
    ///
    /// Connection errors, timeouts and `NOPERM` as they are.
    pub async fn delete(&self, id: &SessionId) -> Result<bool> {
        let key = self.key(id)?;
        let n: i64 = self
            .client()
            .unlink(key.as_str())
            .await
            .map_err(|e| redact(e.into()))?;
        Ok(n > 0)
    }

    /// Ends session `handle` of `user` (a "sign out that device" button fed
    /// by [`sessions_of`](Self::sessions_of)). `true` when it existed and
    /// belonged to `user`. One round trip (`UNLINK` and `ZREM`, pipelined: they
    /// share the user's slot).
    ///
    /// # Errors
    ///
    /// Connection errors, timeouts and `NOPERM` as they are;
    /// [`ErrorKind::InvalidInput`] for an empty user or handle.
    pub async fn revoke(&self, user: &str, handle: &str) -> Result<bool> {
        if user.is_empty() || handle.is_empty() {
            return Err(Error::invalid_input(
                "fredkit-session revoke: the user and the handle must not be empty",
            ));
        }
        let tag = user_tag(user);
        let key = self.key_of(&tag, handle)?;
        let index = self.index_key(user)?;
        let pipe = self.client().pipeline();
        let () = pipe.zrem(index.as_str(), handle).await?;
        let () = pipe.unlink(key.as_str()).await?;
        let (listed, n): (i64, i64) = pipe.all().await?;
        Ok(listed > 0 && n > 0)
    }

    /// Ends every session of `user`, on every instance, at once: sets the
    /// user's cut-off to now (server clock); any of the user's sessions
    /// created at or before it is dead at its next load or save (and removed
    /// then). O(1): one script, no scan, whatever the number of sessions.
    /// Other users' sessions are untouched. Returns the cut-off.
    ///
    /// A session the user signs in to afterwards (a later
    /// [`create`](Self::create) or [`cycle_id`](Self::cycle_id)) lives.
    ///
    /// # Errors
    ///
    /// Connection errors, timeouts and `NOPERM` as they are;
    /// [`ErrorKind::InvalidInput`] for an empty user.
    pub async fn revoke_all(&self, user: &str) -> Result<SystemTime> {
        if user.is_empty() {
            return Err(Error::invalid_input(
                "fredkit-session revoke_all: the user must not be empty",
            ));
        }
        let tag = user_tag(user);
        let keys = vec![self.cut_key(&tag)?, self.index_key(user)?];
        let args: Vec<Value> = vec![user.into(), Self::ms_arg(self.inner.absolute_ms)];
        let v: Value = REVOKE_ALL.exec(self.client(), keys, args).await?;
        let ms = v
            .into_bytes()
            .and_then(|b| parse_i64(&b))
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                Error::protocol("fredkit-session's revoke_all script returned no time")
            })?;
        Ok(UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// The live sessions of `user` (newest first, at most
    /// [`max_sessions_per_user`](SessionOptions::max_sessions_per_user)):
    /// device, creation and last use. Entries of sessions that have ended
    /// are pruned from the index on the way.
    ///
    /// Two round trips (the index, the user's cut-off and the server time;
    /// then each session's creation, device and remaining TTL), a third when
    /// there is something to prune.
    ///
    /// # Errors
    ///
    /// Connection errors, timeouts and `NOPERM` as they are;
    /// [`ErrorKind::InvalidInput`] for an empty user.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<SessionInfo>> {
        if user.is_empty() {
            return Err(Error::invalid_input(
                "fredkit-session sessions_of: the user must not be empty",
            ));
        }
        let tag = user_tag(user);
        let index = self.index_key(user)?;
        let cut_key = self.cut_key(&tag)?;
        let pipe = self.client().pipeline();
        let () = pipe
            .zrange(index.as_str(), 0, -1, None, true, None, false)
            .await?;
        let () = pipe.hget(cut_key.as_str(), user).await?;
        // The server's clock, from the node of the user's slot.
        let time = CustomCommand::new_static(
            "TIME",
            ClusterHash::Custom(fred::util::redis_keyslot(index.as_bytes())),
            false,
        );
        let () = pipe.custom(time, Vec::<Value>::new()).await?;
        let (handles, cut, time): (Value, Value, Value) = pipe.all().await?;
        let handles: Vec<String> = array(handles)?
            .into_iter()
            .filter_map(|v| v.into_string())
            .collect();
        let cut = cut.into_bytes().and_then(|b| parse_i64(&b));
        let now = server_ms(time)?;
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.client().pipeline();
        for h in &handles {
            let key = self.key_of(&tag, h)?;
            let () = pipe
                .hmget(key.as_str(), vec![CREATED, DEVICE, USER])
                .await?;
            let () = pipe.pttl(key.as_str()).await?;
        }
        let replies: Vec<Value> = pipe.all().await?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        let mut it = replies.into_iter();
        for h in handles {
            let (meta, pttl) = (it.next(), it.next());
            let meta = meta
                .map(array)
                .transpose()
                .ok()
                .flatten()
                .unwrap_or_default();
            let mut meta = meta.into_iter();
            let created = meta
                .next()
                .and_then(|v| v.into_bytes())
                .and_then(|b| parse_i64(&b));
            let device = meta.next().and_then(|v| v.into_string());
            let owner = meta.next().and_then(|v| v.into_string());
            let pttl = pttl.and_then(|v| v.as_i64()).unwrap_or(-2);
            let alive = match created {
                Some(c) => {
                    pttl > 0
                        && owner.as_deref() == Some(user)
                        && cut.is_none_or(|cut| c > cut)
                        && now.saturating_sub(c) < self.inner.absolute_ms as i64
                }
                None => false,
            };
            if !alive {
                dead.push(h);
                continue;
            }
            let c = created.and_then(|c| u64::try_from(c).ok()).unwrap_or(0);
            let idle = self.inner.idle_ms as i64;
            let seen = now.saturating_sub(idle.saturating_sub(pttl)).max(0) as u64;
            live.push(SessionInfo {
                handle: h,
                device,
                created: UNIX_EPOCH + Duration::from_millis(c),
                last_seen: UNIX_EPOCH + Duration::from_millis(seen),
            });
        }
        if !dead.is_empty() {
            let _: i64 = self.client().zrem(index.as_str(), dead).await?;
        }
        live.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(live)
    }

    /// Whether the client is connected now (no I/O).
    pub fn is_connected(&self) -> bool {
        self.client().is_connected()
    }
}

enum LoadReply {
    Found(SessionRecord),
    None,
    Revoked,
    Garbage,
}

fn record_from_pairs(id: SessionId, pairs: Vec<Value>) -> Result<SessionRecord> {
    let mut r = SessionRecord {
        id,
        values: HashMap::new(),
        counters: HashMap::new(),
        user: None,
        device: None,
        created_ms: 0,
    };
    let mut it = pairs.into_iter();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        let Some(f) = f.into_string() else { continue };
        let Some(v) = v.into_bytes() else { continue };
        if let Some(n) = f.strip_prefix(VALUE) {
            r.values.insert(n.to_owned(), v);
        } else if let Some(n) = f.strip_prefix(COUNTER) {
            r.counters.insert(n.to_owned(), v);
        } else if f == CREATED {
            r.created_ms = parse_i64(&v)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
        } else if f == USER {
            r.user = String::from_utf8(v.to_vec()).ok();
        } else if f == DEVICE {
            r.device = String::from_utf8(v.to_vec()).ok();
        }
    }
    Ok(r)
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(Vec::new()),
        other => Err(Error::protocol(format!(
            "fredkit-session expected an array reply, got {:?}",
            other.kind()
        ))),
    }
}

fn server_ms(time: Value) -> Result<i64> {
    let a = array(time)?;
    let secs = a.first().and_then(|v| v.as_i64());
    let micros = a.get(1).and_then(|v| v.as_i64());
    match (secs, micros) {
        (Some(s), Some(us)) => Ok(s.saturating_mul(1000).saturating_add(us / 1000)),
        _ => Err(Error::protocol("TIME returned no time")),
    }
}

pub(crate) fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

pub(crate) fn decode<T: DeserializeOwned>(name: &str, b: &[u8]) -> Result<T> {
    MsgPack.decode(b).map_err(|e| codec_error(name, e))
}

fn codec_error(name: &str, e: Error) -> Error {
    match e {
        Error::Codec { op, codec, message } => Error::Codec {
            op,
            codec,
            message: format!("session value {name:?}: {message}"),
        },
        other => other,
    }
}

/// Errors of our scripts name their keys, and a session key holds the
/// session's handle (not its id): keep the message, but say garbage plainly.
fn redact(e: Error) -> Error {
    if e.kind() == ErrorKind::Script {
        let text = e.to_string();
        if let Some(i) = text.find("CORRUPT ") {
            let msg = text.get(i + "CORRUPT ".len()..).unwrap_or(&text);
            return Error::protocol(format!("fredkit-session found garbage: {msg}"));
        }
    }
    e
}
