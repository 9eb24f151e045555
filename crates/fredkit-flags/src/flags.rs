//! [`Flags`]: the in-process snapshot of a namespace, evaluated locally and
//! kept in sync through pub/sub.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes_ish::payload_parts;
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::Script;
use fredkit_core::{Backoff, Error, IntoKeySpace, Result};
use fredkit_pubsub::{Delivery, Subscriber, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::eval::{
    CodeDefault, Compiled, Context, Evaluation, Map, Reason, ServerClock, Snapshot, Variant,
};
use crate::keys::Keys;
use crate::metrics::{Counters, FlagsMetrics};
use crate::model::{parse_record, StoredFlag};

static SYNC: Script = Script::new("flags_sync", include_str!("../scripts/sync.lua"));

/// Options of a [`Flags`] instance. A builder: each method consumes and
/// returns the options.
///
/// ```
/// use std::time::Duration;
/// use fredkit_flags::FlagsOptions;
/// let options = FlagsOptions::default()
///     .default_enabled("new-checkout", false)          // answer when unknown, expired or Redis never seen
///     .default_value("theme", "light")                  // variant default
///     .snapshot_file("/var/lib/shop/flags.json")        // last-known snapshot for a start without Redis
///     .sync_interval(Duration::from_secs(5));           // version check + clock refresh (default)
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct FlagsOptions {
    defaults: Map<CodeDefault>,
    snapshot_file: Option<PathBuf>,
    sync_interval: Duration,
}

impl Default for FlagsOptions {
    /// No defaults (unknown flags are off, variants `None`), no snapshot
    /// file, sync every 5 s.
    fn default() -> Self {
        FlagsOptions {
            defaults: Map::default(),
            snapshot_file: None,
            sync_interval: Duration::from_secs(5),
        }
    }
}

impl FlagsOptions {
    /// What `is_enabled(name, ..)` answers when the flag is unknown (not in
    /// Redis, or Redis never reached) or expired. Default `false`.
    pub fn default_enabled(mut self, name: &str, enabled: bool) -> Self {
        self.defaults.entry(Box::from(name)).or_default().enabled = enabled;
        self
    }

    /// What `variant(name, ..)` serves when the flag is off for the
    /// context, unknown or expired, or on without a value. Default none.
    pub fn default_value(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.defaults.entry(Box::from(name)).or_default().value = Some(Arc::new(value.into()));
        self
    }

    /// A file the instance writes its snapshot to after every change, and
    /// starts from when Redis is unreachable at start-up (written to a
    /// temporary file beside it, then renamed, by the sync task: keep it
    /// on a local disk). Default none: a start without Redis serves the
    /// defaults from code.
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_file = Some(path.into());
        self
    }

    /// How often the instance checks the namespace version and the
    /// server's clock (one round trip, plus a full reload when the version
    /// differs): the bound on how long a change whose message was lost
    /// without a trace stays unseen, and how fresh the clock estimate for
    /// expiries is. Default 5 s; 10 ms to 1 hour.
    pub fn sync_interval(mut self, d: Duration) -> Self {
        self.sync_interval = d;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.sync_interval < Duration::from_millis(10)
            || self.sync_interval > Duration::from_secs(3600)
        {
            return Err(Error::config(format!(
                "fredkit-flags: sync_interval must be between 10 ms and 1 hour, got {:?}",
                self.sync_interval
            )));
        }
        Ok(())
    }
}

/// The snapshot file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct FileSnapshot {
    version: u64,
    flags: Vec<StoredFlag>,
}

/// Where the snapshot of a [`Flags`] instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// Loaded from Redis.
    Redis,
    /// Redis was unreachable at start-up: the snapshot file.
    File,
    /// Redis was unreachable at start-up and there was no snapshot file:
    /// the defaults in code.
    Defaults,
}

struct Inner {
    snapshot: ArcSwap<Snapshot>,
    defaults: Map<CodeDefault>,
    clock: ServerClock,
    counters: Counters,
    warned: RwLock<HashSet<Box<str>>>,
    applied: watch::Sender<u64>,
    keys: Keys,
    redis: Redis,
    snapshot_file: Option<PathBuf>,
    sync_interval: Duration,
    /// Whether the last sync reached Redis (outages are counted on the edge).
    reachable: AtomicBool,
    source: Mutex<Source>,
    task: Mutex<Option<JoinHandle<()>>>,
    subscriber: Mutex<Option<Subscriber>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Feature flags of one namespace, evaluated in-process.
///
/// A `Flags` holds a snapshot of every flag of its namespace and answers
/// [`is_enabled`](Self::is_enabled) and [`variant`](Self::variant) from it:
/// **no round trip, no lock, no allocation** (one `arc-swap` load, one hash
/// lookup, the flag's precomputed sets and a hash of the user id).
///
/// It stays in sync by itself:
/// - every write through [`FlagAdmin`](crate::FlagAdmin) bumps the
///   namespace version and publishes the change; the instance applies a
///   change whose version follows its own at once (no round trip), usually
///   within milliseconds of the write;
/// - a version jump (a message missed), a resubscription
///   [`Gap`](fredkit_pubsub::Delivery::Gap) or a lagging receiver makes it
///   reload the whole snapshot (one script: `HGETALL` + `GET` + `TIME`);
/// - every [`sync_interval`](FlagsOptions::sync_interval) (5 s) one script
///   compares the version and measures the server's clock, reloading if
///   they differ — so even a change whose message vanished without a trace
///   is seen within that interval.
///
/// Expiries are absolute times on the server's clock (set by the write
/// script from `TIME`); each instance compares them with its estimate of
/// that clock (measured at every sync), so all instances revert together,
/// whatever their own clocks say.
///
/// Start-up and outages: [`new`](Self::new) loads the snapshot; when Redis
/// is unreachable it starts from the [snapshot file](FlagsOptions::snapshot_file)
/// or the defaults in code, logs a warning and counts it
/// ([`FlagsMetrics::fallback_starts`]), then loads the snapshot in the
/// background as soon as Redis answers. During an outage it keeps serving
/// the last snapshot ([`FlagsMetrics::outages`] counts the outage).
///
/// Clones share the snapshot, the subscriber and the task. Dropping the
/// last clone stops the task and closes the subscriber in the background;
/// [`close`](Self::close) does it and waits.
///
/// ```no_run
/// use fredkit_flags::{Context, Flags, FlagsOptions};
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let flags = Flags::with_options(&redis, "shop:flags",
///     FlagsOptions::default().default_enabled("new-checkout", false)).await?;
/// if flags.is_enabled("new-checkout", &Context::user("42").groups(&["beta"])) {
///     // the new checkout
/// }
/// let theme = flags.variant("theme", &Context::user("42"));
/// let theme = theme.as_str().unwrap_or("light");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Flags {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.inner.snapshot.load();
        f.debug_struct("Flags")
            .field("prefix", &self.inner.keys.space.prefix())
            .field("version", &snap.version)
            .field("flags", &snap.flags.len())
            .finish()
    }
}

impl Flags {
    /// The flags of the namespace `keys` with default options.
    /// See [`with_options`](Self::with_options).
    ///
    /// # Errors
    /// As [`with_options`](Self::with_options).
    pub async fn new(redis: &Redis, keys: impl IntoKeySpace) -> Result<Flags> {
        Self::with_options(redis, keys, FlagsOptions::default()).await
    }

    /// The flags of the namespace `keys` (the prefix the
    /// [`FlagAdmin`](crate::FlagAdmin) writes under).
    ///
    /// Opens a subscriber connection, subscribes to the namespace's change
    /// channel (one round trip) and loads the snapshot (one round trip);
    /// then starts the sync task. If Redis is unreachable (each step waits
    /// at most the command timeout), it starts from the snapshot file or
    /// the defaults instead (see [`source`](Self::source)) and does both in
    /// the background.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for invalid options,
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a bad
    /// prefix, [`ErrorKind::Permission`](crate::ErrorKind::Permission) when
    /// the ACL refuses the subscription or the load. Unavailability is not
    /// an error.
    ///
    /// Cancellation: dropping the future drops everything it made.
    pub async fn with_options(
        redis: &Redis,
        keys: impl IntoKeySpace,
        options: FlagsOptions,
    ) -> Result<Flags> {
        options.validate()?;
        let keys = Keys::new(redis, keys.into_key_space()?)?;
        let counters = Counters::new(keys.space.prefix());
        let (applied, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            defaults: options.defaults,
            clock: ServerClock::default(),
            counters,
            warned: RwLock::new(HashSet::new()),
            applied,
            keys,
            redis: redis.clone(),
            snapshot_file: options.snapshot_file,
            sync_interval: options.sync_interval,
            reachable: AtomicBool::new(true),
            source: Mutex::new(Source::Redis),
            task: Mutex::new(None),
            subscriber: Mutex::new(None),
        });
        let subscriber = Subscriber::new(redis).await?;
        *lock(&inner.subscriber) = Some(subscriber.clone());
        // Subscribe first, then load: a change written in between is in
        // the load or arrives as a message (ignored if already loaded).
        let first = match subscriber.subscribe_bytes(&inner.keys.channel).await {
            Ok(s) => match inner.reload().await {
                Ok(()) => Some(s),
                Err(e) if e.is_unavailable() => {
                    inner.fallback(&e);
                    Some(s)
                }
                Err(e) => return Err(e),
            },
            Err(e) if e.is_unavailable() => {
                inner.fallback(&e);
                None
            }
            Err(e) => return Err(e),
        };
        let weak = Arc::downgrade(&inner);
        let interval = inner.sync_interval;
        let channel = inner.keys.channel.clone();
        // Started without Redis: load as soon as it answers.
        let load = inner.source_now() != Source::Redis;
        let task = tokio::spawn(run(weak, subscriber, channel, first, interval, load));
        *lock(&inner.task) = Some(task);
        Ok(Flags { inner })
    }

    /// Whether `flag` is on for `ctx`. Local: no round trip, no lock, no
    /// allocation. An unknown or expired flag answers its default from
    /// code (`false` unless [`FlagsOptions::default_enabled`] said
    /// otherwise); an unknown one is counted and logged once per flag.
    #[inline]
    pub fn is_enabled(&self, flag: &str, ctx: &Context<'_>) -> bool {
        self.evaluate(flag, ctx).enabled
    }

    /// Whether `flag` is on for `ctx`, and why. Local, like
    /// [`is_enabled`](Self::is_enabled).
    pub fn evaluate(&self, flag: &str, ctx: &Context<'_>) -> Evaluation {
        let snap = self.inner.snapshot.load();
        match snap.flags.get(flag) {
            Some(c) => {
                let e = c.decide(ctx, &self.inner.clock);
                if e.reason == Reason::Expired {
                    Evaluation {
                        enabled: self.inner.default_enabled(flag),
                        reason: Reason::Expired,
                    }
                } else {
                    e
                }
            }
            None => {
                self.inner.unknown(flag);
                Evaluation {
                    enabled: self.inner.default_enabled(flag),
                    reason: Reason::Unknown,
                }
            }
        }
    }

    /// The value `flag` serves `ctx`: when the flag is on for `ctx`, its
    /// weighted variant (sticky per user) or its value; otherwise — off,
    /// unknown, expired, or on without a value — the default from code
    /// ([`FlagsOptions::default_value`]), or none. Local, like
    /// [`is_enabled`](Self::is_enabled); the returned [`Variant`] shares
    /// the value with the snapshot (no copy, no allocation).
    pub fn variant(&self, flag: &str, ctx: &Context<'_>) -> Variant {
        let snap = self.inner.snapshot.load();
        let default = || self.inner.defaults.get(flag).and_then(|d| d.value.clone());
        match snap.flags.get(flag) {
            Some(c) => {
                let e = c.decide(ctx, &self.inner.clock);
                if e.reason == Reason::Expired {
                    return Variant {
                        value: default(),
                        name: None,
                        reason: Reason::Expired,
                        enabled: self.inner.default_enabled(flag),
                    };
                }
                let (value, name) = if e.enabled {
                    let (v, n) = c.served(ctx);
                    (v.cloned(), n.cloned())
                } else {
                    (None, None)
                };
                Variant {
                    value: value.or_else(default),
                    name,
                    reason: e.reason,
                    enabled: e.enabled,
                }
            }
            None => {
                self.inner.unknown(flag);
                Variant {
                    value: default(),
                    name: None,
                    reason: Reason::Unknown,
                    enabled: self.inner.default_enabled(flag),
                }
            }
        }
    }

    /// Whether code gave `flag` a default ([`FlagsOptions::default_enabled`]
    /// or [`FlagsOptions::default_value`]).
    pub fn has_default(&self, flag: &str) -> bool {
        self.inner.defaults.contains_key(flag)
    }

    /// The namespace version of the snapshot in use (0: nothing loaded from
    /// Redis yet). It reaches [`Written::version`](crate::Written::version)
    /// once this instance has applied that write.
    pub fn version(&self) -> u64 {
        self.inner.snapshot.load().version
    }

    /// Waits until the snapshot's version is at least `version`, up to
    /// `timeout`; returns whether it got there.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The flag `name` as in the snapshot (a copy), or `None`.
    pub fn get(&self, name: &str) -> Option<StoredFlag> {
        self.inner
            .snapshot
            .load()
            .flags
            .get(name)
            .map(|c| c.stored.clone())
    }

    /// Every flag in the snapshot (copies), sorted by name.
    pub fn list(&self) -> Vec<StoredFlag> {
        let snap = self.inner.snapshot.load();
        let mut all: Vec<StoredFlag> = snap.flags.values().map(|c| c.stored.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Where the snapshot came from at start-up; [`Source::Redis`] again
    /// once a load from Redis succeeded.
    pub fn source(&self) -> Source {
        *lock(&self.inner.source)
    }

    /// The instance's estimate of the server's clock, Unix milliseconds
    /// (what expiries are compared with).
    pub fn server_now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Reloads the whole snapshot now (one round trip).
    ///
    /// # Errors
    /// Redis errors; the snapshot in use is kept.
    pub async fn reload(&self) -> Result<()> {
        self.inner.reload().await
    }

    /// The counters of this instance.
    pub fn metrics(&self) -> FlagsMetrics {
        self.inner.counters.snapshot()
    }

    /// The key space.
    pub fn keys(&self) -> &crate::KeySpace {
        &self.inner.keys.space
    }

    /// Stops the sync task and closes the subscriber connection, waiting
    /// for both. Evaluations go on answering from the last snapshot.
    pub async fn close(&self) {
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let subscriber = lock(&self.inner.subscriber).take();
        if let Some(s) = subscriber {
            s.close().await;
        }
    }
}

impl Inner {
    fn source_now(&self) -> Source {
        *lock(&self.source)
    }

    fn default_enabled(&self, flag: &str) -> bool {
        self.defaults.get(flag).is_some_and(|d| d.enabled)
    }

    #[cold]
    fn unknown(&self, flag: &str) {
        Counters::add(&self.counters.a.unknown_flags);
        self.counters.m.unknown_flags.increment(1);
        let seen = self.warned.read().map(|w| w.contains(flag)).unwrap_or(true);
        if !seen {
            if let Ok(mut w) = self.warned.write() {
                if w.len() < 10_000 && w.insert(Box::from(flag)) {
                    tracing::warn!(
                        flag,
                        prefix = self.keys.space.prefix(),
                        "fredkit-flags: unknown flag evaluated; answering its default from code (logged once per flag)"
                    );
                }
            }
        }
    }

    fn fallback(&self, e: &Error) {
        Counters::add(&self.counters.a.fallback_starts);
        Counters::add(&self.counters.a.outages);
        self.counters.m.outages.increment(1);
        self.reachable.store(false, Ordering::Relaxed);
        let from_file = self.snapshot_file.as_ref().and_then(|path| {
            let read = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<FileSnapshot>(&b).map_err(|e| e.to_string()));
            match read {
                Ok(s) => Some(s),
                Err(why) => {
                    tracing::warn!(path = %path.display(), error = %why, "fredkit-flags: the snapshot file cannot be used");
                    None
                }
            }
        });
        match from_file {
            Some(file) => {
                self.counters.m.fallback_file.increment(1);
                *lock(&self.source) = Source::File;
                tracing::warn!(error = %e, prefix = self.keys.space.prefix(), version = file.version,
                    "fredkit-flags: Redis unreachable at start-up; serving the last-known snapshot file until it answers");
                let mut flags = Map::default();
                for f in file.flags {
                    if f.def.validate().is_ok() {
                        flags.insert(Box::from(f.name.as_str()), Arc::new(Compiled::new(f)));
                    }
                }
                // Version 0: the first load from Redis replaces it whatever
                // its version.
                self.snapshot
                    .store(Arc::new(Snapshot { version: 0, flags }));
            }
            None => {
                self.counters.m.fallback_defaults.increment(1);
                *lock(&self.source) = Source::Defaults;
                tracing::warn!(error = %e, prefix = self.keys.space.prefix(),
                    "fredkit-flags: Redis unreachable at start-up; serving the defaults from code until it answers");
            }
        }
    }

    fn sync_failed(&self, e: &Error) {
        Counters::add(&self.counters.a.failed_syncs);
        self.counters.m.reloads_error.increment(1);
        if self.reachable.swap(false, Ordering::Relaxed) {
            Counters::add(&self.counters.a.outages);
            self.counters.m.outages.increment(1);
            tracing::warn!(error = %e, prefix = self.keys.space.prefix(),
                "fredkit-flags: Redis unreachable; serving the last snapshot until it answers");
        }
    }

    /// Runs the sync script: `since` = `None` forces the whole snapshot.
    /// Returns the version and, when it differs (or forced), the flags.
    async fn sync(&self, since: Option<u64>) -> Result<(u64, Option<Vec<(String, Vec<u8>)>>)> {
        Counters::add(&self.counters.a.round_trips);
        let before = ServerClock::local_now();
        let arg = since.map(|v| v.to_string()).unwrap_or_default();
        let reply: Vec<Value> = SYNC
            .exec(
                self.redis.client(),
                vec![self.keys.flags.clone(), self.keys.version.clone()],
                arg,
            )
            .await
            .map_err(|e| e.naming("EVALSHA flags_sync", &self.keys.flags))?;
        let after = ServerClock::local_now();
        let bad = || {
            Error::protocol(format!(
                "flags_sync on {} answered an unexpected reply",
                self.keys.flags
            ))
        };
        let num = |v: Option<&Value>| -> Option<u64> {
            match v? {
                Value::Integer(i) => u64::try_from(*i).ok(),
                other => other.as_string()?.parse().ok(),
            }
        };
        let secs = num(reply.first()).ok_or_else(bad)?;
        let micros = num(reply.get(1)).ok_or_else(bad)?;
        let version = num(reply.get(2)).ok_or_else(bad)?;
        self.clock.measured(
            secs.saturating_mul(1000).saturating_add(micros / 1000),
            before.saturating_add(after.saturating_sub(before) / 2),
        );
        self.reachable.store(true, Ordering::Relaxed);
        if since == Some(version) {
            return Ok((version, None));
        }
        let flat = match reply.into_iter().nth(3) {
            Some(Value::Array(items)) => items,
            Some(Value::Map(map)) => map
                .inner()
                .into_iter()
                .flat_map(|(k, v)| [Value::from(k), v])
                .collect(),
            _ => return Err(bad()),
        };
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let (Some(name), Some(raw)) = (k.as_string(), v.as_bytes().map(<[u8]>::to_vec)) else {
                continue;
            };
            pairs.push((name, raw));
        }
        Ok((version, Some(pairs)))
    }

    /// Loads the whole snapshot.
    async fn reload(&self) -> Result<()> {
        match self.sync(None).await {
            Ok((version, Some(pairs))) => {
                self.install(version, pairs);
                Ok(())
            }
            Ok((_, None)) => Ok(()),
            Err(e) => {
                self.sync_failed(&e);
                Err(e)
            }
        }
    }

    /// The periodic check: reloads when the version differs.
    async fn check(&self) -> Result<()> {
        let local = self.snapshot.load().version;
        match self.sync(Some(local)).await {
            Ok((version, Some(pairs))) => {
                tracing::info!(
                    local,
                    version,
                    "fredkit-flags: the periodic check found another version; snapshot reloaded"
                );
                self.install(version, pairs);
                Ok(())
            }
            Ok((_, None)) => Ok(()),
            Err(e) => {
                self.sync_failed(&e);
                Err(e)
            }
        }
    }

    fn install(&self, version: u64, pairs: Vec<(String, Vec<u8>)>) {
        let old = self.snapshot.load_full();
        let mut flags = Map::default();
        for (name, raw) in pairs {
            match parse_record(&name, &raw) {
                Ok(f) => {
                    flags.insert(Box::from(name.as_str()), Arc::new(Compiled::new(f)));
                }
                Err(why) => {
                    self.malformed(&name, &why);
                    if let Some(prev) = old.flags.get(name.as_str()) {
                        flags.insert(Box::from(name.as_str()), Arc::clone(prev));
                    }
                }
            }
        }
        Counters::add(&self.counters.a.reloads);
        self.counters.m.reloads_ok.increment(1);
        *lock(&self.source) = Source::Redis;
        self.publish(Snapshot { version, flags });
    }

    fn malformed(&self, name: &str, why: &str) {
        Counters::add(&self.counters.a.malformed_records);
        self.counters.m.malformed_records.increment(1);
        tracing::warn!(flag = %name, prefix = self.keys.space.prefix(), error = %why,
            "fredkit-flags: malformed flag record skipped; the previous value is kept");
    }

    fn publish(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(Arc::clone(&snapshot));
        self.counters.m.version.set(version as f64);
        self.applied.send_replace(version);
        if let Some(path) = &self.snapshot_file {
            write_file(path, &snapshot);
        }
    }

    /// A change message: `version \n name \n record` (record empty = deleted).
    /// Returns `false` when a reload is needed.
    fn apply(&self, payload: &[u8]) -> bool {
        let Some((version, name, record)) = payload_parts(payload) else {
            tracing::warn!(
                prefix = self.keys.space.prefix(),
                "fredkit-flags: undecodable change message; reloading"
            );
            return false;
        };
        let old = self.snapshot.load_full();
        if version <= old.version {
            return true; // already in the snapshot (a load raced it, or a duplicate)
        }
        if version != old.version.saturating_add(1) {
            tracing::info!(
                local = old.version,
                version,
                "fredkit-flags: version jump (a change was missed); reloading"
            );
            return false;
        }
        let mut flags = old.flags.clone();
        if record.is_empty() {
            flags.remove(name);
        } else {
            match parse_record(name, record) {
                Ok(f) => {
                    flags.insert(Box::from(name), Arc::new(Compiled::new(f)));
                }
                Err(why) => self.malformed(name, &why),
            }
        }
        Counters::add(&self.counters.a.changes_applied);
        self.counters.m.changes_applied.increment(1);
        self.publish(Snapshot { version, flags });
        true
    }
}

fn write_file(path: &std::path::Path, snapshot: &Snapshot) {
    let file = FileSnapshot {
        version: snapshot.version,
        flags: snapshot.flags.values().map(|c| c.stored.clone()).collect(),
    };
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(&file)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "fredkit-flags: cannot write the snapshot file");
    }
}

mod bytes_ish {
    /// Splits `version \n name \n record`.
    pub(super) fn payload_parts(p: &[u8]) -> Option<(u64, &str, &[u8])> {
        let mut parts = p.splitn(3, |b| *b == b'\n');
        let version = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let name = std::str::from_utf8(parts.next()?).ok()?;
        let record = parts.next()?;
        Some((version, name, record))
    }
}

/// The sync task: applies change messages, reloads on gaps and version
/// jumps, checks the version every `interval`, resubscribes when the
/// subscription ends. Holds the instance weakly: it ends with the last
/// `Flags` clone.
async fn run(
    weak: Weak<Inner>,
    subscriber: Subscriber,
    channel: String,
    first: Option<Subscription<bytes::Bytes>>,
    interval: Duration,
    load: bool,
) {
    let mut sub = first;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let backoff = Backoff::default();
    let mut attempt = 0u32;
    let mut needs_reload = load;
    loop {
        if sub.is_none() {
            match subscriber.subscribe_bytes(&channel).await {
                Ok(s) => {
                    sub = Some(s);
                    attempt = 0;
                    needs_reload = true;
                }
                Err(e) => {
                    if let Some(inner) = weak.upgrade() {
                        inner.sync_failed(&e);
                    } else {
                        return;
                    }
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            }
        }
        if needs_reload {
            let Some(inner) = weak.upgrade() else { return };
            needs_reload = inner.reload().await.is_err();
        }
        let Some(events) = sub.as_mut() else { continue };
        tokio::select! {
            delivery = events.next() => {
                let Some(inner) = weak.upgrade() else { return };
                match delivery {
                    Some(Delivery::Message(m)) => match m.payload {
                        Ok(p) => needs_reload = !inner.apply(&p),
                        Err(_) => needs_reload = true,
                    },
                    Some(Delivery::Gap) | Some(Delivery::Lagged(_)) => {
                        Counters::add(&inner.counters.a.gaps);
                        inner.counters.m.gaps.increment(1);
                        tracing::info!(prefix = inner.keys.space.prefix(), "fredkit-flags: change messages may have been lost (resubscribed or lagged); reloading");
                        needs_reload = true;
                    }
                    Some(_) => needs_reload = true,
                    None => {
                        tracing::warn!(prefix = inner.keys.space.prefix(), "fredkit-flags: change subscription ended; resubscribing");
                        sub = None;
                    }
                }
            }
            _ = ticker.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                if !needs_reload {
                    let _ = inner.check().await;
                }
            }
        }
    }
}
