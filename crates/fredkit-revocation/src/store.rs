//! [`Revocations`]: the Redis revocation store.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fred::interfaces::KeysInterface;
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::traits::{RevocationStore, TokenClaims};
use fredkit_core::{BreakerState, Error, FailMode, Result, Script};
use tracing::Instrument;

use crate::metrics::{Counters, RevocationMetrics};
use crate::options::RevocationOptions;

static REVOKE_JTI: Script = Script::new("revoke_jti", include_str!("../scripts/revoke_jti.lua"));
static REVOKE_CUTOFF: Script = Script::new(
    "revoke_cutoff",
    include_str!("../scripts/revoke_cutoff.lua"),
);
static TRACK: Script = Script::new("track", include_str!("../scripts/track.lua"));
static LIST_ACTIVE: Script = Script::new("list_active", include_str!("../scripts/list_active.lua"));

/// What [`Revocations::revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Revoked {
    /// The token is now revoked until its expiry (new record, or an existing
    /// one moved to a later expiry).
    Now,
    /// It was already revoked until that expiry or later; nothing changed.
    Already,
    /// Its expiry (plus the leeway) has passed by the server's clock: it is
    /// invalid anyway and nothing was written.
    Expired,
}

/// The answer of [`Revocations::check_verdict`]: whether to refuse the
/// token, and whether that came from Redis (or the local cache) or from the
/// [`FailMode`] during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// Not revoked (read from Redis or the local cache).
    NotRevoked,
    /// Revoked by id, subject or organisation.
    Revoked,
    /// Redis was unavailable and the store fails open: treat as not revoked.
    FailOpen,
    /// Redis was unavailable and the store fails closed: refuse the token,
    /// but it is **not** known to be revoked (an HTTP service should answer
    /// 503, not 401, so clients retry instead of discarding the token).
    FailClosed,
}

impl Verdict {
    /// Whether the token must be refused: [`Revoked`](Self::Revoked) or
    /// [`FailClosed`](Self::FailClosed) — what [`Revocations::check`] returns.
    pub fn refuse(self) -> bool {
        matches!(self, Verdict::Revoked | Verdict::FailClosed)
    }
}

/// A token found by [`Revocations::list_active`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActiveToken {
    /// The token id.
    pub jti: String,
    /// When its tracking entry goes: its `exp` plus the store's leeway.
    pub expires_at: SystemTime,
}

/// Which cut-off a [`Revocations::revoke_subject`]-like call moves.
#[derive(Debug, Clone, Copy)]
enum Scope {
    Subject,
    Org,
}

impl Scope {
    fn part(self) -> &'static str {
        match self {
            Scope::Subject => "sub",
            Scope::Org => "org",
        }
    }
}

/// JWT revocation on Redis: by token id until the token expires, and by
/// subject or organisation with a "not before" cut-off, with one round trip
/// per check and an explicit [`FailMode`].
///
/// Cheap to clone (clones share the connection, counters, breaker and local
/// cache). See the [crate docs](crate) for the model, keys and guarantees.
///
/// # Round trips
///
/// | method | round trips |
/// |---|---|
/// | [`revoke`](Self::revoke) | 1 script + 1 `PUBLISH` of the event (none with `publish_events(false)`) |
/// | [`is_revoked`](Self::is_revoked) | 1 `EXISTS`; 0 when the local cache can answer |
/// | [`check`](Self::check) | 1 pipeline of `EXISTS` + `GET` (+ `GET`); 0 when the local cache can answer |
/// | [`revoke_subject`](Self::revoke_subject), [`revoke_org`](Self::revoke_org) and their `_now` forms | 1 script + 1 `PUBLISH` of the event (none with `publish_events(false)`) |
/// | [`track`](Self::track) | 1 script |
/// | [`track_many`](Self::track_many) | 1 pipeline of scripts |
/// | [`list_active`](Self::list_active) | 1 read-only script |
///
/// On a cluster, `check`'s two or three keys live in different slots; fred
/// sends each command of the pipeline to its node at once, so a check costs
/// one round trip to each of up to three nodes, in parallel.
///
/// # Failure
///
/// Reads (`is_revoked`, `check`) go through the circuit breaker; when Redis
/// is unavailable (connection error, timeout, busy, breaker open) they answer
/// according to the [`FailMode`] and count the decision. Writes return the
/// error: a revocation that failed did not happen.
///
/// # Cancellation
///
/// Dropping a read has no effect. Dropping a write leaves it done or not
/// done; writes are idempotent, call again to be sure.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    /// The pool's only client when it has one: skips the pool's shared
    /// round-robin counter on the hot path.
    single: Option<fred::clients::Client>,
    options: RevocationOptions,
    counters: Arc<Counters>,
    leeway_ms: i64,
    /// max token lifetime + leeway, in ms: how long a cut-off lives.
    keep_ms: i64,
    max_lifetime_secs: u64,
    /// Where revocation events go (`prefix:events`), unless turned off.
    events: Option<(fredkit_pubsub::Publisher, String)>,
    #[cfg(feature = "local-cache")]
    local: Option<Local>,
}

#[cfg(feature = "local-cache")]
struct Local {
    cache: Arc<crate::local::LocalCache>,
    /// The event listener; `None` once closed.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The subscriber the events come through; `None` once closed.
    subscriber: std::sync::Mutex<Option<fredkit_pubsub::Subscriber>>,
    /// Whether the subscriber is the store's own (made by `new`), which
    /// `close` closes, or the caller's (`with_subscriber`), which it leaves
    /// open.
    owns_subscriber: bool,
}

#[cfg(feature = "local-cache")]
impl Drop for Local {
    fn drop(&mut self) {
        if let Some(task) = take(&self.task) {
            task.abort();
        }
    }
}

/// Takes the value out of a mutex-guarded option, whatever a panic
/// elsewhere left in the lock.
#[cfg(feature = "local-cache")]
fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Revocations");
        d.field("prefix", &self.inner.options.keys.prefix())
            .field("fail_mode", &self.inner.options.fail_mode)
            .field("breaker", &self.inner.options.breaker.state());
        #[cfg(feature = "local-cache")]
        d.field("local_cache", &self.inner.local.is_some());
        d.finish()
    }
}

/// A read sent to Redis: counted as unanswered (`read_failures`) when
/// dropped before [`answered`](Self::answered) — on an error, or when the
/// caller's future is cancelled mid-read — so `checks` counts only answers.
struct PendingRead<'a> {
    counters: &'a Counters,
    answered: bool,
    /// Set when metrics are recorded (feature `metrics`).
    sent_at: Option<std::time::Instant>,
}

impl PendingRead<'_> {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for PendingRead<'_> {
    fn drop(&mut self) {
        if !self.answered {
            Counters::add(&self.counters.read_failures);
        }
        if let Some(sent_at) = self.sent_at {
            self.counters.read_latency.record_since(sent_at);
        }
    }
}

fn unix_ms(t: SystemTime, what: &str) -> Result<i64> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::invalid_input(format!("{what} is before 1970; pass a Unix time")))?;
    i64::try_from(d.as_millis())
        .map_err(|_| Error::invalid_input(format!("{what} is too far in the future")))
}

/// Rejects an empty token id, subject or organisation: its key would be
/// the bare `prefix:jti:` (or `sub:` / `org:`), shared by every caller that
/// makes the same mistake.
fn non_empty(value: &str, what: &str, hint: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_input(format!(
            "revocation: the {what} is empty: {hint}"
        )));
    }
    Ok(())
}

fn jti_given(jti: &str) -> Result<()> {
    non_empty(
        jti,
        "token id (jti)",
        "pass the token's `jti` claim; a token without one cannot be revoked or checked by id",
    )
}

fn sub_given(sub: &str) -> Result<()> {
    non_empty(
        sub,
        "subject (sub)",
        "pass the token's `sub` claim (the user id)",
    )
}

fn org_given(org: &str) -> Result<()> {
    non_empty(
        org,
        "organisation (org)",
        "pass the token's `org` claim, or `None` in TokenClaims when it has none",
    )
}

fn claims_given(claims: &TokenClaims) -> Result<()> {
    jti_given(&claims.jti)?;
    sub_given(&claims.sub)?;
    claims.org.as_deref().map_or(Ok(()), org_given)
}

/// A cut-off as read by `GET`: absent, or whole Unix seconds. Anything else
/// was not written by this crate (`revoke_cutoff` writes integers only).
fn cutoff_value(value: Value, key: &str) -> Result<Option<i64>> {
    let text = match &value {
        Value::Null => return Ok(None),
        Value::Integer(i) => return Ok(Some(*i)),
        other => other.as_str().map(|s| s.trim().to_string()),
    };
    match text.as_deref().map(str::parse::<i64>) {
        Some(Ok(cut)) => Ok(Some(cut)),
        _ => Err(Error::protocol(format!(
            "revocation: the cut-off at key {key} holds {}, not whole Unix seconds \
             (not written by fredkit-revocation); revoke the subject or organisation again to \
             replace it, or delete the key",
            describe(&value)
        ))),
    }
}

/// A short, bounded description of a value read from Redis, for errors.
fn describe(value: &Value) -> String {
    match value.as_str() {
        Some(s) if s.chars().count() <= 32 => format!("{s:?}"),
        Some(s) => format!(
            "{:?}... ({} bytes)",
            s.chars().take(32).collect::<String>(),
            s.len()
        ),
        None => format!("a {:?} reply", value.kind()),
    }
}

fn secs_i64(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

impl Revocations {
    /// A store on `redis` with `options`.
    ///
    /// Costs nothing without the local cache. With it, opens one subscriber
    /// connection, subscribes to `prefix:events` (one round trip) and starts
    /// a background task that applies events; until the subscription is
    /// confirmed nothing is answered "not revoked" from the cache.
    ///
    /// Start-up never needs Redis: if Redis is unavailable, the subscription
    /// costs at most the command timeout here and is then made in the
    /// background (with backoff); until it is, every check that the cache
    /// cannot answer "revoked" reads Redis (or takes the fail mode).
    ///
    /// # Errors
    ///
    /// With the local cache: a subscription refused for another reason than
    /// Redis being unavailable.
    pub async fn new(redis: &Redis, options: RevocationOptions) -> Result<Revocations> {
        Self::build(redis, options, None).await
    }

    /// A store whose local cache listens for events on `subscriber` instead
    /// of a subscriber connection of its own: share one connection between
    /// stores (and caches) on the same Redis. The subscriber's
    /// [`PubSubOptions::receiver_capacity`](fredkit_pubsub::PubSubOptions::receiver_capacity)
    /// bounds how many events may queue for this store before it lags —
    /// and a lag flushes the local cache, like a gap. Without
    /// [`local_cache`](crate::RevocationOptionsBuilder::local_cache) the
    /// subscriber is not used. Otherwise as [`new`](Self::new), minus the
    /// connection it would open.
    ///
    /// ```no_run
    /// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
    /// use fredkit_core::FailMode;
    /// use fredkit_pubsub::Subscriber;
    /// use fredkit_revocation::{LocalCacheOptions, RevocationOptions, Revocations};
    /// let subscriber = Subscriber::new(&redis).await?;
    /// let options = RevocationOptions::builder(FailMode::Closed)
    ///     .local_cache(LocalCacheOptions::default())
    ///     .build()?;
    /// let store = Revocations::with_subscriber(&redis, options, &subscriber).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    #[cfg(feature = "local-cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "local-cache")))]
    pub async fn with_subscriber(
        redis: &Redis,
        options: RevocationOptions,
        subscriber: &fredkit_pubsub::Subscriber,
    ) -> Result<Revocations> {
        Self::build(redis, options, Some(subscriber)).await
    }

    #[cfg_attr(not(feature = "local-cache"), allow(unused_variables))]
    async fn build(
        redis: &Redis,
        options: RevocationOptions,
        subscriber: Option<&fredkit_pubsub::Subscriber>,
    ) -> Result<Revocations> {
        let leeway_ms = i64::try_from(options.expiry_leeway.as_millis()).unwrap_or(i64::MAX);
        let lifetime_ms = i64::try_from(options.max_token_lifetime.as_millis()).unwrap_or(i64::MAX);
        let counters = Arc::new(Counters::new(options.keys.prefix()));
        #[cfg(feature = "local-cache")]
        let local = match &options.local_cache {
            Some(cache_options) => Some(
                Self::start_local(redis, &options, cache_options, &counters, subscriber).await?,
            ),
            None => None,
        };
        Ok(Revocations {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                single: match redis.pool().clients() {
                    [only] => Some(only.clone()),
                    _ => None,
                },
                leeway_ms,
                keep_ms: lifetime_ms.saturating_add(leeway_ms),
                max_lifetime_secs: options.max_token_lifetime.as_secs(),
                events: options.publish_events.then(|| {
                    (
                        fredkit_pubsub::Publisher::new(redis),
                        options.keys.key(["events"]),
                    )
                }),
                options,
                counters,
                #[cfg(feature = "local-cache")]
                local,
            }),
        })
    }

    #[cfg(feature = "local-cache")]
    async fn start_local(
        redis: &Redis,
        options: &RevocationOptions,
        cache_options: &crate::LocalCacheOptions,
        counters: &Arc<Counters>,
        shared: Option<&fredkit_pubsub::Subscriber>,
    ) -> Result<Local> {
        use crate::local::{Event, LocalCache};
        use fredkit_pubsub::{Delivery, Subscriber};
        use futures::StreamExt;

        let channel = options.keys.key(["events"]);
        let cache = Arc::new(LocalCache::new(cache_options, Arc::clone(counters)));
        let subscriber = match shared {
            Some(s) => s.clone(),
            None => Subscriber::new(redis).await?,
        };
        // Start-up never needs Redis: if the subscription cannot be made now
        // (Redis down or late: at most the command timeout is spent), the
        // task below makes it, with backoff; until then the cache is not in
        // sync and answers only "revoked" (every "not revoked" reads Redis).
        let first = match subscriber.subscribe::<Event>(&channel).await {
            Ok(events) => {
                cache.start();
                Some(events)
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "fredkit-revocation: Redis unavailable at start; the local cache subscribes in the background and reads Redis until then");
                None
            }
            Err(e) => return Err(e),
        };
        let weak = Arc::downgrade(&cache);
        let task_counters = Arc::clone(counters);
        let task_subscriber = subscriber.clone();
        let task = tokio::spawn(async move {
            let mut events = match first {
                Some(events) => events,
                None => {
                    let backoff = fredkit_core::Backoff::default();
                    let mut attempt = 0u32;
                    loop {
                        match task_subscriber.subscribe::<Event>(&channel).await {
                            Ok(events) => {
                                let Some(cache) = weak.upgrade() else { return };
                                cache.start();
                                tracing::info!("fredkit-revocation: event channel subscribed; the local cache is in sync");
                                break events;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "fredkit-revocation: subscribing to the event channel failed; retrying");
                            }
                        }
                        tokio::time::sleep(backoff.delay(attempt)).await;
                        attempt = attempt.saturating_add(1);
                    }
                }
            };
            drop(task_subscriber);
            while let Some(delivery) = events.next().await {
                let Some(cache) = weak.upgrade() else { return };
                match delivery {
                    Delivery::Message(m) => match m.payload {
                        Ok(event) => {
                            if !cache.apply(&event) {
                                tracing::warn!(
                                    kind = %event.kind,
                                    "fredkit-revocation: unknown event kind (newer version?); flushing the local cache"
                                );
                                cache.flush();
                            }
                            // Counted once applied: whoever sees the count
                            // grow finds the event in the cache.
                            Counters::add(&task_counters.events_received);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "fredkit-revocation: undecodable event; flushing the local cache");
                            cache.flush();
                        }
                    },
                    Delivery::Gap => {
                        tracing::info!("fredkit-revocation: resubscribed after a gap; flushing the local cache");
                        cache.flush();
                    }
                    Delivery::Lagged(n) => {
                        tracing::warn!(
                            skipped = n,
                            "fredkit-revocation: event receiver lagged; flushing the local cache"
                        );
                        cache.flush();
                    }
                    _ => cache.flush(),
                }
            }
            if let Some(cache) = weak.upgrade() {
                tracing::warn!("fredkit-revocation: event subscription ended; the local cache answers only \"revoked\" from now on");
                cache.disable();
            }
        });
        Ok(Local {
            cache,
            task: std::sync::Mutex::new(Some(task)),
            subscriber: std::sync::Mutex::new(Some(subscriber)),
            owns_subscriber: shared.is_none(),
        })
    }

    /// Closes what the store owns: with the local cache, its event
    /// listener task and — when the store made it ([`new`](Self::new)) —
    /// its subscriber connection and that subscriber's tasks (with
    /// `with_subscriber` the caller's subscriber
    /// stays open; only this store's subscription to the event channel
    /// ends). Without the local cache the store owns nothing (its commands
    /// go through the caller's [`Redis`] handle) and this returns at once.
    ///
    /// Returns once the listener task has ended and the subscriber has
    /// stopped its tasks and let go of its connection; the connection's
    /// `QUIT` then completes in the background within one round trip (at
    /// most 2 s), so nothing of the store is left running and a process can
    /// exit without fred logging a reset connection (tested: no task left,
    /// no warning logged through the runtime's shutdown).
    ///
    /// The store stays usable: after `close` every read goes to Redis (the
    /// local cache answers nothing any more), and revocations are still
    /// written and published. The [`Redis`] handle is the caller's and is
    /// **not** closed: call [`Redis::shutdown`] for that, after closing
    /// the stores and other primitives that use it.
    ///
    /// Idempotent: a second call (from any clone) returns at once. Waits at
    /// most twice the command timeout (at least 2 s) for the subscriber.
    ///
    /// Cancellation: dropping the future halfway leaves the listener
    /// stopped; whatever of the subscriber was not closed yet is closed in
    /// the background, as when the store is dropped.
    pub async fn close(&self) {
        #[cfg(feature = "local-cache")]
        if let Some(local) = &self.inner.local {
            // Nothing is answered from memory once the events stop.
            local.cache.disable();
            if let Some(task) = take(&local.task) {
                task.abort();
                let _ = task.await;
            }
            if let Some(subscriber) = take(&local.subscriber) {
                if local.owns_subscriber {
                    let limit = self
                        .inner
                        .redis
                        .config()
                        .command_timeout()
                        .saturating_mul(2)
                        .max(std::time::Duration::from_secs(2));
                    let mut gone = subscriber.gaps();
                    drop(subscriber);
                    // The sender goes with the subscriber's last handle,
                    // once its pending unsubscribe has run.
                    let _ = tokio::time::timeout(limit, async {
                        while gone.changed().await.is_ok() {}
                    })
                    .await;
                }
            }
        }
    }

    /// The options the store was built with.
    pub fn options(&self) -> &RevocationOptions {
        &self.inner.options
    }

    /// The counters so far.
    pub fn metrics(&self) -> RevocationMetrics {
        self.inner.counters.snapshot()
    }

    /// The state of the circuit breaker the store's calls go through.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.options.breaker.state()
    }

    /// Whether the local cache is on (feature `local-cache` and
    /// [`RevocationOptionsBuilder::local_cache`](crate::RevocationOptionsBuilder)).
    pub fn has_local_cache(&self) -> bool {
        #[cfg(feature = "local-cache")]
        {
            self.inner.local.is_some()
        }
        #[cfg(not(feature = "local-cache"))]
        {
            false
        }
    }

    /// The client for the next command.
    fn client(&self) -> &fred::clients::Client {
        match &self.inner.single {
            Some(c) => c,
            None => self.inner.redis.client(),
        }
    }

    fn jti_key(&self, jti: &str) -> String {
        self.inner.options.keys.key(["jti", jti])
    }

    fn cutoff_key(&self, scope: Scope, id: &str) -> String {
        self.inner.options.keys.key([scope.part(), id])
    }

    fn active_key(&self, sub: &str) -> String {
        self.inner.options.keys.key(["active", sub])
    }

    /// Runs a call through the breaker.
    async fn guarded<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.inner.options.breaker.call(fut).await
    }

    /// A read could not reach Redis: answer by the fail mode.
    fn unavailable(&self, op: &'static str, e: &Error) -> bool {
        let c = &self.inner.counters;
        let revoked = match self.inner.options.fail_mode {
            FailMode::Open => {
                Counters::add(&c.fail_open);
                false
            }
            FailMode::Closed => {
                Counters::add(&c.fail_closed);
                true
            }
        };
        if matches!(e, Error::CircuitOpen { .. }) {
            tracing::debug!(op, error = %e, revoked, "fredkit-revocation: breaker open, answering by fail mode");
        } else {
            tracing::warn!(op, error = %e, revoked, fail_mode = ?self.inner.options.fail_mode, "fredkit-revocation: Redis unavailable, answering by fail mode");
        }
        revoked
    }

    fn answered(&self, revoked: bool) -> bool {
        if revoked {
            Counters::add(&self.inner.counters.revoked_hits);
        }
        revoked
    }

    /// Counts a read sent to Redis; until [`PendingRead::answered`] it
    /// counts as unanswered (error, or dropped before the reply).
    fn read_sent(&self) -> PendingRead<'_> {
        Counters::add(&self.inner.counters.redis_reads);
        PendingRead {
            counters: &self.inner.counters,
            answered: false,
            sent_at: fredkit_core::metrics::ENABLED.then(std::time::Instant::now),
        }
    }

    /// Applies a revocation to this store's local cache and publishes it to
    /// the other instances' (whether or not this one caches: an admin
    /// service that only revokes must still reach the caching ones).
    async fn publish(&self, event: crate::event::Event) {
        #[cfg(feature = "local-cache")]
        if let Some(local) = &self.inner.local {
            local.cache.apply(&event);
        }
        if let Some((publisher, channel)) = &self.inner.events {
            if let Err(e) = publisher.publish(channel, &event).await {
                Counters::add(&self.inner.counters.publish_failures);
                tracing::warn!(error = %e, kind = %event.kind, "fredkit-revocation: revocation stored but its event was not published; other instances' local caches learn of it within their ttl");
            }
        }
    }

    /// Revokes token `jti` until `expires_at` (its `exp`) plus the leeway.
    ///
    /// The record is written with `SET … PXAT`, so it expires exactly then,
    /// never earlier; a second call with an earlier expiry never shortens
    /// it. Whether the token has already expired is decided by the Redis
    /// server's clock inside the script: if so nothing is written and the
    /// answer is [`Revoked::Expired`] (a record would expire at once anyway).
    ///
    /// The revocation is published to the other instances' local caches
    /// (and applied at once to this store's, if it has one).
    ///
    /// Two round trips: the script, then the `PUBLISH` of the event (one
    /// with [`publish_events(false)`](crate::RevocationOptionsBuilder::publish_events)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty `jti` or an `expires_at` before 1970 (nothing sent); connection, timeout or circuit-open
    /// errors when Redis could not be written — the token is then **not**
    /// known to be revoked. A failed publish is not an error (it is logged
    /// and counted in `publish_failures`).
    ///
    /// Cancellation: the token is revoked or not; calling again is safe.
    pub async fn revoke(&self, jti: &str, expires_at: SystemTime) -> Result<Revoked> {
        jti_given(jti)?;
        let until = unix_ms(expires_at, "expires_at")?.saturating_add(self.inner.leeway_ms);
        let key = self.jti_key(jti);
        let span =
            tracing::debug_span!("fredkit.revocation.revoke", outcome = tracing::field::Empty);
        async move {
            tracing::debug!(key = %key, until, "revoking token");
            // Names this call in the record: run twice (a reply lost and
            // the script resent), the second run knows its own record.
            let call_id = format!("{:032x}", rand::random::<u128>());
            let status: i64 = self
                .guarded(REVOKE_JTI.exec(
                    self.client(),
                    key,
                    vec![Value::from(until), Value::from(call_id)],
                ))
                .await?;
            let outcome = match status {
                0 => Revoked::Expired,
                2 => Revoked::Already,
                _ => Revoked::Now,
            };
            tracing::Span::current().record("outcome", tracing::field::debug(outcome));
            if outcome != Revoked::Expired {
                self.publish(crate::event::Event {
                    kind: "jti".into(),
                    id: jti.to_string(),
                    value: 1,
                })
                .await;
            }
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    /// Whether token `jti` was revoked by id (not by subject: use
    /// [`check`](Self::check) for that).
    ///
    /// One `EXISTS`, or no round trip when the local cache can answer. When
    /// Redis is unavailable the answer follows the fail mode (open: `false`,
    /// closed: `true`) and is counted.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty `jti` (nothing sent); otherwise only errors the fail
    /// mode does not cover (an unexpected reply).
    ///
    /// Cancellation: no effect.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool> {
        jti_given(jti)?;
        #[cfg(feature = "local-cache")]
        let start = match &self.inner.local {
            Some(local) => {
                if let Some(revoked) = local.cache.is_revoked(jti) {
                    Counters::add(&self.inner.counters.local_answers);
                    return Ok(self.answered(revoked));
                }
                Some(local.cache.read_start())
            }
            None => None,
        };
        let span = tracing::debug_span!(
            "fredkit.revocation.is_revoked",
            outcome = tracing::field::Empty
        );
        let recorder = span.clone();
        async move {
            let permit = match self.inner.options.breaker.try_acquire() {
                Ok(p) => p,
                Err(e) => return Ok(self.unavailable("is_revoked", &e)),
            };
            let pending = self.read_sent();
            let reply: Result<i64> = self
                .client()
                .exists(self.jti_key(jti))
                .await
                .map_err(Error::from);
            let revoked = match reply {
                Ok(n) => {
                    permit.success();
                    pending.answered();
                    n > 0
                }
                Err(e) if e.is_unavailable() => {
                    permit.failure();
                    return Ok(self.unavailable("is_revoked", &e));
                }
                Err(e) => {
                    permit.success();
                    return Err(e);
                }
            };
            #[cfg(feature = "local-cache")]
            if let (Some(local), Some(start)) = (&self.inner.local, start) {
                local.cache.record_jti(jti, revoked, start);
            }
            recorder.record("outcome", revoked);
            Ok(self.answered(revoked))
        }
        .instrument(span)
        .await
    }

    fn token_iat(&self, claims: &TokenClaims) -> Result<i64> {
        claims_given(claims)?;
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime > self.inner.max_lifetime_secs {
            return Err(Error::invalid_input(format!(
                "token lives {lifetime} s (exp - iat), longer than the store's max_token_lifetime of {} s: \
                 its subject cut-off could expire before it does; raise max_token_lifetime",
                self.inner.max_lifetime_secs
            )));
        }
        Ok(secs_i64(claims.iat))
    }

    /// `true` when the token must be refused: revoked by id, or issued
    /// (`iat`) at or before the cut-off of its subject or of its
    /// organisation.
    ///
    /// One round trip: `EXISTS` on the id key and `GET` on the subject (and
    /// organisation) cut-off, pipelined — or none when the local cache can
    /// answer. When Redis is unavailable the answer follows the fail mode
    /// and is counted.
    ///
    /// This does not validate the token (signature, `exp`, audience): that
    /// stays your JWT library's job, done before this call.
    ///
    /// **Tokens without `iat`.** A cut-off can only be compared with an
    /// issue time, so `claims.iat` is required. If your tokens carry none
    /// but have a fixed lifetime, pass `exp - lifetime` (when they were
    /// issued). Do not pass 0: `exp - 0` exceeds `max_token_lifetime`, so
    /// the token is refused with `InvalidInput` (401 from the layer).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// when `exp - iat` exceeds the store's `max_token_lifetime` (its
    /// cut-offs could expire before the token does);
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) when a
    /// cut-off key holds something that is not a number (the message names
    /// the key; revoking that subject or organisation again replaces it);
    /// `InvalidInput` for an empty `jti` or `sub`, or an `org` of `Some("")`
    /// (nothing sent).
    ///
    /// Cancellation: no effect.
    pub async fn check(&self, claims: &TokenClaims) -> Result<bool> {
        self.check_verdict(claims).await.map(Verdict::refuse)
    }

    /// [`check`](Self::check), telling also whether the answer is the fail
    /// mode's ([`Verdict::FailOpen`], [`Verdict::FailClosed`]) rather than
    /// Redis's: a caller can then refuse a fail-closed token as "try again"
    /// (HTTP 503) rather than "revoked" (401), as
    /// `RevocationLayer` (feature `tower`) does. Same cost, errors
    /// and cancellation as `check`.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub async fn check_verdict(&self, claims: &TokenClaims) -> Result<Verdict> {
        let iat = self.token_iat(claims)?;
        #[cfg(feature = "local-cache")]
        let start = match &self.inner.local {
            Some(local) => {
                if let Some(revoked) = local.cache.check(claims, iat) {
                    Counters::add(&self.inner.counters.local_answers);
                    return Ok(Self::verdict(self.answered(revoked)));
                }
                Some(local.cache.read_start())
            }
            None => None,
        };
        let span =
            tracing::debug_span!("fredkit.revocation.check", outcome = tracing::field::Empty);
        let recorder = span.clone();
        async move {
            let permit = match self.inner.options.breaker.try_acquire() {
                Ok(p) => p,
                Err(e) => return Ok(self.outage("check", &e)),
            };
            let pending = self.read_sent();
            let reply = self.read_check(claims).await;
            let (by_id, sub_cut, org_cut) = match reply {
                Ok(r) => {
                    permit.success();
                    pending.answered();
                    r
                }
                Err(e) if e.is_unavailable() => {
                    permit.failure();
                    return Ok(self.outage("check", &e));
                }
                Err(e) => {
                    permit.success();
                    return Err(e);
                }
            };
            #[cfg(feature = "local-cache")]
            if let (Some(local), Some(start)) = (&self.inner.local, start) {
                local
                    .cache
                    .record_check(claims, by_id, sub_cut, org_cut, start);
            }
            let revoked = by_id
                || sub_cut.is_some_and(|cut| iat <= cut)
                || org_cut.is_some_and(|cut| iat <= cut);
            recorder.record("outcome", revoked);
            Ok(Self::verdict(self.answered(revoked)))
        }
        .instrument(span)
        .await
    }

    fn verdict(revoked: bool) -> Verdict {
        if revoked {
            Verdict::Revoked
        } else {
            Verdict::NotRevoked
        }
    }

    /// [`unavailable`](Self::unavailable) as a [`Verdict`].
    fn outage(&self, op: &'static str, e: &Error) -> Verdict {
        if self.unavailable(op, e) {
            Verdict::FailClosed
        } else {
            Verdict::FailOpen
        }
    }

    async fn read_check(&self, claims: &TokenClaims) -> Result<(bool, Option<i64>, Option<i64>)> {
        let pipe = self.client().pipeline();
        let () = pipe.exists(self.jti_key(&claims.jti)).await?;
        let sub_key = self.cutoff_key(Scope::Subject, &claims.sub);
        let () = pipe.get(sub_key.as_str()).await?;
        // Cut-offs are read as raw values: one that is not a number fails
        // with an error naming its key (fred's conversion names none).
        match &claims.org {
            Some(org) => {
                let org_key = self.cutoff_key(Scope::Org, org);
                let () = pipe.get(org_key.as_str()).await?;
                let (n, sub, org): (i64, Value, Value) = pipe.all().await?;
                Ok((
                    n > 0,
                    cutoff_value(sub, &sub_key)?,
                    cutoff_value(org, &org_key)?,
                ))
            }
            None => {
                let (n, sub): (i64, Value) = pipe.all().await?;
                Ok((n > 0, cutoff_value(sub, &sub_key)?, None))
            }
        }
    }

    async fn revoke_cutoff(&self, scope: Scope, id: &str, at: Option<SystemTime>) -> Result<u64> {
        match scope {
            Scope::Subject => sub_given(id)?,
            Scope::Org => org_given(id)?,
        }
        let cut_arg = match at {
            Some(at) => Value::from(unix_ms(at, "at")?.div_euclid(1000)),
            None => Value::from("now"),
        };
        let key = self.cutoff_key(scope, id);
        let span = tracing::debug_span!(
            "fredkit.revocation.revoke_cutoff",
            scope = scope.part(),
            cut = tracing::field::Empty
        );
        async move {
            tracing::debug!(key = %key, "moving cut-off");
            let (cut, _status): (i64, i64) = self
                .guarded(REVOKE_CUTOFF.exec(
                    self.client(),
                    key,
                    vec![cut_arg, Value::from(self.inner.keep_ms)],
                ))
                .await?;
            tracing::Span::current().record("cut", cut);
            self.publish(crate::event::Event {
                kind: scope.part().into(),
                id: id.to_string(),
                value: cut,
            })
            .await;
            Ok(u64::try_from(cut).unwrap_or(0))
        }
        .instrument(span)
        .await
    }

    /// Revokes every token of subject `sub` issued at or before `at`
    /// (log out everywhere, password change, compromised account).
    ///
    /// **The cut-off.** JWT `iat` is in whole seconds, so the cut-off is
    /// the second of `at` (rounded down): a token with `iat <= cut-off` is
    /// revoked, `iat > cut-off` is not. A token issued later within the same
    /// second as `at` is therefore revoked too — the safe side: no token
    /// issued before `at` can slip through. Cut-offs only move forward; an
    /// earlier `at` than the one in force changes nothing. The record lives
    /// until `cut-off + max_token_lifetime + leeway` (server clock), when
    /// every token it covers has expired; if that is already past, nothing
    /// is written.
    ///
    /// Returns the cut-off now in force, in Unix seconds. Two round trips:
    /// the script, then the `PUBLISH` of the event (one with
    /// [`publish_events(false)`](crate::RevocationOptionsBuilder::publish_events)).
    ///
    /// # Errors
    ///
    /// As [`revoke`](Self::revoke): the subject is **not** known to be
    /// revoked when this fails. `InvalidInput` for an empty `sub` (or `org`
    /// for the organisation forms; nothing sent).
    pub async fn revoke_subject(&self, sub: &str, at: SystemTime) -> Result<u64> {
        self.revoke_cutoff(Scope::Subject, sub, Some(at)).await
    }

    /// [`revoke_subject`](Self::revoke_subject) at the Redis server's
    /// current second (read inside the script), so that app servers with
    /// skewed clocks agree. Tokens must then be issued by a clock close to
    /// the server's: a token issuer whose clock runs behind sees its new
    /// tokens revoked until it catches up; one that runs ahead could see
    /// tokens issued just before the call slip through.
    ///
    /// # Errors
    ///
    /// As [`revoke_subject`](Self::revoke_subject).
    pub async fn revoke_subject_now(&self, sub: &str) -> Result<u64> {
        self.revoke_cutoff(Scope::Subject, sub, None).await
    }

    /// Like [`revoke_subject`](Self::revoke_subject) for every token whose
    /// `org` claim is `org` (a tenant locked out, a compromised
    /// organisation). Same cut-off rule, lifetime, cost and errors.
    ///
    /// # Errors
    ///
    /// As [`revoke_subject`](Self::revoke_subject).
    pub async fn revoke_org(&self, org: &str, at: SystemTime) -> Result<u64> {
        self.revoke_cutoff(Scope::Org, org, Some(at)).await
    }

    /// [`revoke_org`](Self::revoke_org) at the Redis server's current second.
    ///
    /// # Errors
    ///
    /// As [`revoke_subject`](Self::revoke_subject).
    pub async fn revoke_org_now(&self, org: &str) -> Result<u64> {
        self.revoke_cutoff(Scope::Org, org, None).await
    }

    fn track_args(&self, claims: &TokenClaims) -> Result<(String, Vec<Value>)> {
        self.token_iat(claims)?;
        let exp_ms = secs_i64(claims.exp)
            .saturating_mul(1000)
            .saturating_add(self.inner.leeway_ms);
        Ok((
            self.active_key(&claims.sub),
            vec![Value::from(claims.jti.as_str()), Value::from(exp_ms)],
        ))
    }

    /// Tracks a token of `claims.sub` for [`list_active`](Self::list_active).
    ///
    /// The subject's set is a sorted set scored by `exp` (plus leeway); every
    /// call removes the members that have expired (server clock) and moves
    /// the set's expiry to its latest member's, so it never holds dead tokens
    /// for long and disappears with its last token. A token already expired
    /// is not added. Returns how many live tokens the subject has.
    ///
    /// One round trip.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for a token living longer than `max_token_lifetime`, or with an empty
    /// `jti` or `sub` or an `org` of `Some("")` (nothing sent);
    /// connection, timeout or circuit-open errors: the token may not be
    /// tracked.
    pub async fn track(&self, claims: &TokenClaims) -> Result<u64> {
        let (key, args) = self.track_args(claims)?;
        let n: i64 = self
            .guarded(TRACK.exec(self.client(), key, args))
            .instrument(tracing::debug_span!("fredkit.revocation.track"))
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// [`track`](Self::track) for many tokens in one pipeline (one round
    /// trip; on a cluster, one per node, in parallel).
    ///
    /// # Errors
    ///
    /// `InvalidInput` as [`track`](Self::track) for any token (nothing
    /// sent); otherwise the first error of any call, the others may have
    /// been tracked.
    pub async fn track_many(&self, tokens: &[TokenClaims]) -> Result<()> {
        let calls = tokens
            .iter()
            .map(|c| self.track_args(c))
            .collect::<Result<Vec<(String, Vec<Value>)>>>()?;
        let permit = self.inner.options.breaker.try_acquire()?;
        let results: Vec<Result<i64>> = TRACK
            .exec_pipelined(self.client(), calls)
            .instrument(tracing::debug_span!(
                "fredkit.revocation.track_many",
                tokens = tokens.len()
            ))
            .await;
        let first_error = results.into_iter().find_map(|r| r.err());
        match &first_error {
            Some(e) if e.is_unavailable() => permit.failure(),
            _ => permit.success(),
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The tracked tokens of `sub` that have not expired (server clock),
    /// earliest expiry first. Revoked tokens are listed until they expire:
    /// combine with [`check`](Self::check) to show their state.
    ///
    /// One round trip (a read-only script, so it may run on a replica).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty `sub` (nothing sent); connection, timeout
    /// or circuit-open errors;
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) for a
    /// malformed reply.
    pub async fn list_active(&self, sub: &str) -> Result<Vec<ActiveToken>> {
        sub_given(sub)?;
        let flat: Vec<Value> = self
            .guarded(LIST_ACTIVE.exec(self.client(), self.active_key(sub), ()))
            .instrument(tracing::debug_span!("fredkit.revocation.list_active"))
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut items = flat.into_iter();
        while let (Some(jti), Some(score)) = (items.next(), items.next()) {
            let jti = jti
                .as_string()
                .ok_or_else(|| Error::protocol("list_active: a member is not a string"))?;
            let ms = score
                .as_f64()
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .ok_or_else(|| Error::protocol("list_active: a score is not a number"))?;
            out.push(ActiveToken {
                jti,
                expires_at: UNIX_EPOCH + Duration::from_millis(ms as u64),
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl RevocationStore for Revocations {
    async fn revoke(&self, jti: &str, expires_at: SystemTime) -> Result<()> {
        Revocations::revoke(self, jti, expires_at).await.map(|_| ())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        Revocations::is_revoked(self, jti).await
    }

    async fn revoke_subject(&self, sub: &str, at: SystemTime) -> Result<()> {
        Revocations::revoke_subject(self, sub, at).await.map(|_| ())
    }

    async fn check(&self, claims: &TokenClaims) -> Result<bool> {
        Revocations::check(self, claims).await
    }
}
