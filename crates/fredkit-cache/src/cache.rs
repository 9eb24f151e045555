//! [`Cache`]: cache-aside over Redis with single-flight, a fill lock,
//! fail-safe, eager refresh and an optional coherent L1.

use crate::envelope::{self, Stored};
use crate::invalidation::{self, Inv};
use crate::l1::{now as l1_now, Local, Ticket, L1};
use crate::metrics::{incr, CacheMetrics};
use crate::options::CacheOptions;
use bytes::Bytes;
use fred::interfaces::KeysInterface;
use fred::types::scan::Scanner;
use fred::types::{Expiration, Key, Value};
use fredkit_conn::{Redis, Topology};
use fredkit_core::{CircuitBreaker, Codec, Error, MsgPack, Result, Script};
use fredkit_pubsub::{Publisher, Subscriber};
use futures::{FutureExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

static FILL_ACQUIRE: Script =
    Script::new("fill_acquire", include_str!("../scripts/fill_acquire.lua"));
static FILL_STORE_RELEASE: Script = Script::new(
    "fill_store_release",
    include_str!("../scripts/fill_store_release.lua"),
);
static UNLINK_GARBAGE: Script = Script::new(
    "unlink_garbage",
    include_str!("../scripts/unlink_garbage.lua"),
);
static FILL_RELEASE: Script =
    Script::new("fill_release", include_str!("../scripts/fill_release.lua"));
static FILL_EXTEND: Script = Script::new("fill_extend", include_str!("../scripts/fill_extend.lua"));

/// What a value type must be to live in a [`Cache`].
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// Where a [`Fetched`] value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The in-process L1.
    L1,
    /// Redis.
    L2,
    /// This call's (or a concurrent caller's) factory.
    Factory,
}

/// A value returned by [`Cache::fetch`], with where it came from and whether
/// it is stale (served by fail-safe past its logical expiry).
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched<V> {
    /// The value; `None` is a (possibly cached) absence from an optional
    /// factory.
    pub value: Option<V>,
    /// Where it came from.
    pub origin: Origin,
    /// `true` when the value is past its logical expiry and was served
    /// because the factory failed or timed out or Redis was unreachable.
    pub stale: bool,
}

/// Why a `get_or_try_set`-style call produced no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FillError<E> {
    /// The factory failed and there was no stale value to serve. Nothing was
    /// cached.
    #[error("cache factory failed: {0}")]
    Factory(E),
    /// The factory did not answer within the hard timeout and there was no
    /// stale value. It goes on in the background; its result will be stored.
    #[error("cache factory did not answer within the hard timeout of {0:?} and no stale value was available; raise hard_timeout or make the source faster")]
    Timeout(Duration),
    /// The factory panicked (or another caller's factory did, for a waiter)
    /// and there was no stale value.
    #[error("cache factory panicked and no stale value was available")]
    Panicked,
    /// This call joined a concurrent call's fill of the same key (single
    /// flight) and that call's factory failed; there was no stale value.
    /// The error itself went to that caller. Nothing was cached; the next
    /// call tries again. (So a failing source sees one call per wave of
    /// concurrent misses, not one per caller.) Never the outcome of
    /// [`Cache::get_or_set`]: its factory cannot fail, so a `get_or_set`
    /// that joined a failed fill runs its own factory instead.
    #[error("the concurrent fill this call joined failed (its factory returned an error) and no stale value was available; retry later")]
    JoinedFillFailed,
    /// The call itself was invalid (an empty key).
    #[error(transparent)]
    Cache(Error),
}

/// The result a single flight hands to the callers that joined it.
#[derive(Clone)]
enum Shared<V> {
    Done(Fetched<V>),
    /// The leader's factory failed: followers fail too (or serve stale).
    Failed,
    /// The flight ended without a value for others (an eager refresh that
    /// was skipped): followers try on their own.
    Retry,
    Timeout(Duration),
    Panicked,
}

type FlightRx<V> = watch::Receiver<Option<Shared<V>>>;

enum Join<V: CacheValue, C: Codec + Clone> {
    Follow(FlightRx<V>),
    Lead(Flight<V, C>),
}

/// A leader's hold on a key's single flight. [`finish`](Flight::finish)
/// unregisters the flight and hands the outcome to its followers; dropped
/// unfinished (the task was aborted), it still unregisters, and followers see
/// a closed channel and retry: a flight can never be left dangling.
struct Flight<V: CacheValue, C: Codec + Clone> {
    inner: Arc<Inner<V, C>>,
    key: String,
    tx: watch::Sender<Option<Shared<V>>>,
}

impl<V: CacheValue, C: Codec + Clone> Flight<V, C> {
    fn finish(self, outcome: Shared<V>) {
        // Unregister first: a follower that retries must not find this
        // finished flight again.
        self.unregister();
        let _ = self.tx.send(Some(outcome));
    }

    fn unregister(&self) {
        let mut flights = self.inner.flights();
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            flights.remove(&self.key);
        }
    }
}

impl<V: CacheValue, C: Codec + Clone> Drop for Flight<V, C> {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// What a fill does when it runs.
#[derive(Clone, Copy)]
enum Mode {
    /// A miss: get a value, waiting for another process's fill if needed.
    Fill,
    /// Eager refresh of an entry created at `created_ms`: only if nobody else
    /// is refreshing; never waits.
    Refresh { created_ms: u64 },
}

/// A typed cache-aside cache over Redis, for one key prefix.
///
/// See the [crate docs](crate) for the model (logical vs physical expiry,
/// single-flight + fill lock, fail-safe, L1 + invalidation) and a tour of
/// every feature. Cheap to clone: clones share everything.
///
/// [`close`](Self::close) stops its background tasks (invalidation publisher
/// and listener) and closes the subscriber connection it opened; dropping
/// the last clone stops them too, but in the background (the connection's
/// close is not waited for). Fills already running finish on their own.
pub struct Cache<V, C = MsgPack>
where
    V: CacheValue,
    C: Codec + Clone,
{
    inner: Arc<Inner<V, C>>,
}

impl<V: CacheValue, C: Codec + Clone> Clone for Cache<V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<V, C> {
    redis: Redis,
    codec: C,
    opts: CacheOptions,
    breaker: CircuitBreaker,
    clustered: bool,
    local: Arc<Local<V>>,
    flights: Mutex<HashMap<String, FlightRx<V>>>,
    inv_tx: Option<mpsc::UnboundedSender<Inv>>,
    outbox: Option<Arc<invalidation::Outbox>>,
    /// The invalidation listener and publisher tasks, taken by `close`.
    tasks: Mutex<Option<Tasks>>,
    closed: std::sync::atomic::AtomicBool,
    /// Serialises `close` calls: a second waits for the first.
    closing: tokio::sync::Mutex<()>,
}

struct Tasks {
    listener: JoinHandle<()>,
    publisher: JoinHandle<()>,
    /// The subscriber the cache made for itself: its `gaps` sender goes
    /// with its last handle (after its connection is let go).
    own_subscriber_gone: Option<watch::Receiver<u64>>,
}

impl<V, C> Drop for Inner<V, C> {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tasks.take() {
            t.listener.abort();
        }
    }
}

impl<V: CacheValue, C: Codec + Clone> fmt::Debug for Cache<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.inner.opts.keys.prefix())
            .field("instance", &self.inner.local.instance)
            .field("l1", &self.inner.local.l1.is_some())
            .field("codec", &self.inner.codec.name())
            .finish()
    }
}

impl<V: CacheValue> Cache<V, MsgPack> {
    /// A cache with the MessagePack codec. See [`Cache::with_codec`].
    ///
    /// # Errors
    ///
    /// As [`Cache::with_codec`].
    pub async fn new(redis: &Redis, options: CacheOptions) -> Result<Self> {
        Self::with_codec(redis, MsgPack, options, None).await
    }
}

impl<V: CacheValue, C: Codec + Clone> Cache<V, C> {
    /// A cache storing values with `codec`.
    ///
    /// With invalidation on (the default) it subscribes to
    /// `prefix:invalidations` on `subscriber` (pass one to share its
    /// connection between caches; `None` opens a connection of its own) and
    /// starts its publisher task.
    ///
    /// **Start-up never needs Redis.** The subscription is made by a
    /// background task that retries with capped exponential backoff until
    /// Redis confirms it. When the Redis handle is connected, `new` waits for
    /// that confirmation (one round trip, at most the connect + command
    /// timeouts) so L1 serves from the first call; when it is not (Redis down
    /// or late at start-up), `new` returns at once. Until the subscription is
    /// confirmed **L1 is off** — nothing is read from or stored into it —
    /// because invalidations from other instances could be missed; reads go
    /// to Redis, or to the factory while Redis is down. When it is confirmed,
    /// L1 starts empty. [`is_ready`](Self::is_ready) and
    /// [`wait_ready`](Self::wait_ready) tell when that happened.
    ///
    /// ```no_run
    /// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
    /// use fredkit_cache::{Cache, CacheOptions};
    /// use fredkit_core::MsgPack;
    /// use fredkit_pubsub::Subscriber;
    /// // Many caches, one subscriber connection for all their invalidations.
    /// let subscriber = Subscriber::new(&redis).await?;
    /// let users: Cache<String> = Cache::with_codec(
    ///     &redis, MsgPack, CacheOptions::builder("app:user").build()?, Some(&subscriber),
    /// ).await?;
    /// let orders: Cache<u64> = Cache::with_codec(
    ///     &redis, MsgPack, CacheOptions::builder("app:order").build()?, Some(&subscriber),
    /// ).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A config error from the breaker options; [`ErrorKind::Permission`](fredkit_core::ErrorKind::Permission)
    /// when the server's ACL refuses the invalidation subscription (add the
    /// rule of [`acl_rule`](crate::acl_rule), or turn invalidation off). Never an
    /// error because Redis is unreachable.
    pub async fn with_codec(
        redis: &Redis,
        codec: C,
        options: CacheOptions,
        subscriber: Option<&Subscriber>,
    ) -> Result<Self> {
        let instance: u64 = rand::random();
        let l1 = options.l1.as_ref().map(|o| L1::new(o, options.max_stale));
        let local = Arc::new(Local::new(instance, l1));
        let breaker = match &options.breaker {
            Some(b) => b.clone(),
            None => CircuitBreaker::builder()
                .name(format!("cache:{}", options.keys.prefix()))
                .build()?,
        };
        let clustered = matches!(redis.config().topology(), Topology::Cluster(_));
        let (inv_tx, outbox, tasks) = if options.invalidation {
            let channel = options.keys.key(["invalidations"]);
            let mut own_subscriber_gone = None;
            let source = match subscriber {
                Some(s) => invalidation::Source::Shared(s.clone()),
                // Opens in the background (never waits for Redis); made
                // here so that `close` can wait for its connection to go.
                None => match Subscriber::new(redis).await {
                    Ok(s) => {
                        own_subscriber_gone = Some(s.gaps());
                        invalidation::Source::Owned(s)
                    }
                    Err(_) => invalidation::Source::Own(redis.clone()),
                },
            };
            let (refused_tx, mut refused) = tokio::sync::oneshot::channel();
            let listener = tokio::spawn(invalidation::subscribe_and_listen(
                Arc::clone(&local),
                source,
                channel.clone(),
                Some(refused_tx),
            ));
            let (tx, rx) = mpsc::unbounded_channel();
            let outbox = Arc::new(invalidation::Outbox {
                publisher: Publisher::new(redis),
                channel,
                breaker: breaker.clone(),
                seq: std::sync::atomic::AtomicU64::new(0),
            });
            let publisher = tokio::spawn(invalidation::publish_loop(
                Arc::clone(&outbox),
                Arc::clone(&local),
                rx,
            ));
            // Redis answers: wait for the subscription as before, so L1
            // serves from the first call. Redis not (yet) reachable: do not
            // wait; the subscription is made in the background.
            if fred::interfaces::ClientLike::is_connected(redis.client()) {
                let limit = redis
                    .config()
                    .connect_timeout()
                    .saturating_add(redis.config().command_timeout());
                let mut ready = local.ready_rx();
                let refusal = tokio::time::timeout(limit, async {
                    tokio::select! {
                        _ = ready.wait_for(|r| *r) => None,
                        e = &mut refused => e.ok(),
                    }
                })
                .await
                .ok()
                .flatten();
                if let Some(e) = refusal {
                    // The ACL refuses the subscription: a configuration error that waiting
                    // will not fix. Stop what was started and say so now.
                    listener.abort();
                    publisher.abort();
                    return Err(e);
                }
            }
            (
                Some(tx),
                Some(outbox),
                Some(Tasks {
                    listener,
                    publisher,
                    own_subscriber_gone,
                }),
            )
        } else {
            local.set_ready();
            (None, None, None)
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                codec,
                opts: options,
                breaker,
                clustered,
                local,
                flights: Mutex::new(HashMap::new()),
                inv_tx,
                outbox,
                tasks: Mutex::new(tasks),
                closed: std::sync::atomic::AtomicBool::new(false),
                closing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Closes what the cache owns, so a process can stop without fred
    /// logging reset connections and without a task of the cache left:
    ///
    /// - the invalidation listener task, and the subscriber connection the
    ///   cache opened for it (with [`with_codec`](Self::with_codec) given a
    ///   `subscriber`, that subscriber is the caller's and stays open; only
    ///   this cache's subscription ends);
    /// - the invalidation publisher task, after it published what was
    ///   queued.
    ///
    /// L1 is switched off and emptied (no invalidation could reach it any
    /// more). The cache stays usable on Redis alone: reads go to Redis,
    /// fills keep their single-flight and fill lock, and writes still
    /// publish their invalidations (each write its own `PUBLISH`, so other
    /// instances' L1 stay coherent). The [`Redis`] handle is the caller's
    /// and is **not** closed: call [`Redis::shutdown`] after closing the
    /// caches and other primitives that use it. Fills and refreshes already
    /// running finish on their own (they use the shared handle).
    ///
    /// Returns once both tasks have ended and the subscriber let go of its
    /// connection; that connection's `QUIT` completes in the background
    /// within one round trip (at most 2 s). Waits at most twice the command
    /// timeout (at least 2 s) for the publisher's last message and as long
    /// again for the subscriber. Idempotent: later calls (from any clone)
    /// return at once; concurrent ones wait for the first.
    ///
    /// Cancellation: dropping the future halfway leaves the cache closed for
    /// L1; what was not closed yet closes in the background when the last
    /// clone is dropped.
    pub async fn close(&self) {
        let inner = &self.inner;
        let _one_at_a_time = inner.closing.lock().await;
        inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(l1) = &inner.local.l1 {
            l1.go_dark();
        }
        let tasks = inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(tasks) = tasks else { return };
        let limit = inner
            .redis
            .config()
            .command_timeout()
            .saturating_mul(2)
            .max(Duration::from_secs(2));
        if let Some(tx) = &inner.inv_tx {
            let _ = tx.send(Inv::Close);
        }
        let publisher_abort = tasks.publisher.abort_handle();
        if tokio::time::timeout(limit, tasks.publisher).await.is_err() {
            publisher_abort.abort();
            tracing::debug!("fredkit-cache: close: the last invalidations were not published in time; receivers will see a sequence gap");
        }
        tasks.listener.abort();
        let _ = tasks.listener.await;
        // Again: the listener may have turned L1 on before it was stopped.
        if let Some(l1) = &inner.local.l1 {
            l1.go_dark();
        }
        if let Some(mut gone) = tasks.own_subscriber_gone {
            let _ =
                tokio::time::timeout(limit, async { while gone.changed().await.is_ok() {} }).await;
        }
    }

    /// Whether the invalidation subscription is confirmed, so L1 (if on)
    /// serves reads. Always `true` with invalidation off. Becomes `true` once
    /// and stays so (later reconnects are handled by flushing L1, see the
    /// [crate docs](crate)). One atomic load.
    pub fn is_ready(&self) -> bool {
        self.inner.local.is_ready()
    }

    /// Waits until [`is_ready`](Self::is_ready), at most `limit`. Useful after
    /// starting with Redis down, or before a warm-up that should fill L1.
    /// Works without it: until then reads skip L1.
    ///
    /// ```no_run
    /// # async fn run(c: fredkit_cache::Cache<u64>) -> fredkit_core::Result<()> {
    /// c.wait_ready(std::time::Duration::from_secs(5)).await?;
    /// assert!(c.is_ready());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`](fredkit_core::ErrorKind::Timeout) when the
    /// subscription is still not confirmed after `limit` (Redis unreachable);
    /// the cache keeps working, without L1, and keeps trying.
    pub async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let mut rx = self.inner.local.ready_rx();
        let ready = matches!(
            tokio::time::timeout(limit, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        );
        if ready {
            Ok(())
        } else {
            Err(Error::timeout(format!(
            "the cache's invalidation subscription was not confirmed within {limit:?} (is Redis reachable?); the cache works meanwhile, with L1 off"
        )))
        }
    }

    /// The options this cache was built with.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.opts
    }

    /// This instance's random id, as carried by its invalidation messages.
    pub fn instance_id(&self) -> u64 {
        self.inner.local.instance
    }

    /// A snapshot of the counters. A few relaxed atomic loads; never blocks.
    pub fn metrics(&self) -> CacheMetrics {
        self.inner.local.metrics.snapshot()
    }

    /// The circuit breaker guarding this cache's Redis calls.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// Drops every L1 copy of this instance (no Redis call). Other instances
    /// are not told; use [`invalidate_prefix`](Self::invalidate_prefix) with
    /// `""` for that.
    pub fn flush_l1(&self) {
        self.inner.local.flush_l1("flush_l1");
    }

    /// The fresh value under `key`, or `None` (absent, expired, a cached
    /// absence, undecodable, or Redis unreachable: caches fail open).
    ///
    /// Cost: 0 round trips on a fresh L1 copy, else one `GET`. An entry that
    /// does not decode is deleted (`UNLINK` in the background), logged as a
    /// warning and counted in `decode_failures`. Dropping the future has no
    /// effect.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// for an empty key; a Redis error other than unavailability (e.g. an ACL
    /// denial) is returned as is.
    pub async fn get(&self, key: &str) -> Result<Option<V>> {
        let inner = &self.inner;
        if let Some(l1) = &inner.local.l1 {
            let now = l1_now();
            if let Some(e) = l1.get(key, now) {
                if now < e.fresh_until {
                    inner.local.metrics.l1_hits.incr();
                    return Ok(e.value);
                }
            }
        }
        // The Redis path lives in its own (boxed) future so that the future
        // of an L1 hit stays small and cheap to create.
        Box::pin(self.get_l2(key)).await
    }

    async fn get_l2(&self, key: &str) -> Result<Option<V>> {
        let inner = &self.inner;
        let data_key = inner.data_key(key)?;
        let epoch = inner.local.l1.as_ref().map(|l1| l1.ticket(key));
        // Debug level: free unless enabled (the hit path must stay cheap).
        let span = tracing::debug_span!(
            "fredkit.cache.get",
            primitive = "cache",
            outcome = tracing::field::Empty
        );
        let reply = inner.l2_get(key, data_key).instrument(span.clone()).await;
        let (outcome, result) = match reply {
            Ok(Some(stored)) => {
                let now_ms = envelope::now_ms();
                if stored.is_fresh(now_ms) {
                    inner.local.metrics.l2_hits.incr();
                    inner.l1_insert_read(key, &stored, epoch, now_ms);
                    ("l2_hit", Ok(stored.value))
                } else {
                    incr(&inner.local.metrics.misses);
                    ("stale_miss", Ok(None))
                }
            }
            Ok(None) => {
                incr(&inner.local.metrics.misses);
                ("miss", Ok(None))
            }
            Err(e) if e.is_unavailable() => {
                incr(&inner.local.metrics.misses);
                ("redis_unavailable", Ok(None))
            }
            Err(e) => ("error", Err(e)),
        };
        if !span.is_disabled() {
            span.record("outcome", outcome);
        }
        result
    }

    /// Stores `value` under `key` for the default TTL (plus jitter); see
    /// [`set_with_ttl`](Self::set_with_ttl).
    ///
    /// # Errors
    ///
    /// As [`set_with_ttl`](Self::set_with_ttl).
    pub async fn set(&self, key: &str, value: &V) -> Result<()> {
        self.set_with_ttl(key, value, self.inner.opts.ttl).await
    }

    /// Stores `value` under `key`, fresh for `ttl` (plus jitter) and kept
    /// `max_stale` longer for fail-safe. Updates this instance's L1 and
    /// queues an invalidation for the other instances (published in the
    /// background, batched).
    ///
    /// Cost: one `SET … PX` (+ one `PUBLISH` shared with concurrent writes).
    /// If the future is dropped the write may or may not have happened; the
    /// invalidation is queued either way.
    ///
    /// # Errors
    ///
    /// A codec error (nothing written); `InvalidInput` for an empty key or a
    /// TTL under 1 ms or over 100 years (naming the key); Redis errors (unavailable included: the L1 copy is
    /// still updated, so a caller that treats the cache as optional may
    /// ignore the error).
    pub async fn set_with_ttl(&self, key: &str, value: &V, ttl: Duration) -> Result<()> {
        // Redis rejects expiry times that overflow; 100 years is "forever".
        crate::store::ttl_px(key, ttl)?;
        let data_key = self.inner.data_key(key)?;
        self.inner
            .store(key, &data_key, None, Some(value), ttl)
            .instrument(tracing::debug_span!(
                "fredkit.cache.set",
                primitive = "cache"
            ))
            .await
            .map(|_| ())
            .map_err(|e| e.naming("SET", &data_key))
    }

    /// Deletes `key` (`UNLINK`) from Redis and this instance's L1, and
    /// queues an invalidation for the other instances.
    ///
    /// Cost: one round trip. Dropping the future may leave the key in Redis.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty key; Redis errors.
    pub async fn remove(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        let data_key = inner.data_key(key)?;
        inner.local.remove_l1(key);
        let span = tracing::debug_span!("fredkit.cache.remove", primitive = "cache");
        let r = inner
            .redis_call(async {
                inner
                    .redis
                    .client()
                    .unlink::<i64, _>(data_key)
                    .await
                    .map_err(Error::from)
            })
            .instrument(span)
            .await;
        inner.local.remove_l1(key);
        inner.publish(Inv::Key(key.to_string()));
        r.map(|_| ())
    }

    /// The value under `key`; on a miss, `factory` computes it and it is
    /// stored. Never errors because of Redis: when Redis is unreachable the
    /// factory is called (and stale values are served if it fails).
    ///
    /// See [`fetch`](Self::fetch) for the full behaviour, cost and
    /// cancellation (a dropped call never cancels the fill).
    ///
    /// ```no_run
    /// # async fn run(redis: fredkit_conn::Redis) -> Result<(), Box<dyn std::error::Error>> {
    /// use fredkit_cache::{Cache, CacheOptions};
    /// let greetings: Cache<String> =
    ///     Cache::new(&redis, CacheOptions::builder("app:greeting").build()?).await?;
    /// let lang = "fr".to_string();
    /// let hello = greetings
    ///     .get_or_set(&lang.clone(), move || async move { format!("bonjour ({lang})") })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`FillError::Timeout`] / [`FillError::Panicked`] as in
    /// [`fetch`](Self::fetch) (mapped to `ErrorKind::Timeout` /
    /// `ErrorKind::Protocol`); `InvalidInput` for an empty key.
    pub async fn get_or_set<F, Fut>(&self, key: &str, factory: F) -> Result<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        let r = self
            .fetch_inner(
                key,
                move || factory().map(|v| Ok::<_, std::convert::Infallible>(Some(v))),
                false,
                true,
            )
            .await;
        match r {
            Ok(Fetched { value: Some(v), .. }) => Ok(v),
            Ok(Fetched { value: None, .. }) => Err(Error::protocol(
                "cache fill produced no value (bug: report it)",
            )),
            Err(FillError::Factory(never)) => match never {},
            Err(FillError::Timeout(d)) => Err(Error::timeout(format!(
                "cache factory for a key did not answer within the hard timeout of {d:?} and no stale value was available"
            ))),
            Err(FillError::Panicked) => Err(Error::protocol(
                "cache factory panicked and no stale value was available",
            )),
            Err(FillError::JoinedFillFailed) => Err(Error::protocol(
                "the concurrent fill this call joined failed and no stale value was available",
            )),
            Err(FillError::Cache(e)) => Err(e),
        }
    }

    /// Like [`get_or_set`](Self::get_or_set) with a fallible factory: a
    /// factory error is returned (nothing cached) unless a stale value can be
    /// served instead (fail-safe).
    ///
    /// # Errors
    ///
    /// [`FillError`].
    pub async fn get_or_try_set<F, Fut, E>(
        &self,
        key: &str,
        factory: F,
    ) -> std::result::Result<V, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Send + 'static,
    {
        let r = self
            .fetch_inner(key, move || factory().map(|r| r.map(Some)), false, false)
            .await?;
        r.value.ok_or(FillError::Panicked)
    }

    /// Like [`get_or_try_set`](Self::get_or_try_set) for sources that may
    /// find nothing: `Ok(None)` from the factory is cached as an absence for
    /// the negative TTL (so a missing row is not looked up on every call).
    ///
    /// ```no_run
    /// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User;
    /// # async fn find_user(id: u64) -> Result<Option<User>, std::io::Error> { Ok(None) }
    /// # async fn run(users: fredkit_cache::Cache<User>) -> Result<(), Box<dyn std::error::Error>> {
    /// // A missing user is looked up once per negative TTL, not on every request.
    /// let user: Option<User> = users
    ///     .get_or_try_set_optional("404", || find_user(404))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`FillError`].
    pub async fn get_or_try_set_optional<F, Fut, E>(
        &self,
        key: &str,
        factory: F,
    ) -> std::result::Result<Option<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        Ok(self.fetch_inner(key, factory, true, false).await?.value)
    }

    /// The general form of the `get_or_*` methods: returns the value with its
    /// [`Origin`] and stale flag. The factory returns `Ok(None)` for "no such
    /// value" (cached for the negative TTL).
    ///
    /// What happens, in order:
    ///
    /// 1. A fresh L1 copy answers (0 round trips).
    /// 2. One `GET`: a fresh entry answers; an undecodable one is deleted and
    ///    counted; a stale one is kept as the fail-safe fallback.
    /// 3. Single flight: concurrent callers for the key in this process join
    ///    one fill (the factory runs once per process).
    /// 4. The fill takes the cross-process fill lock and re-reads the entry
    ///    in one script (`SET NX PX` + `GET`). If another process holds the
    ///    lock, it waits for that process's value — woken by its
    ///    invalidation message, or polling with capped, jittered backoff — at
    ///    most `fill_wait`, then calls the factory itself. No recursion.
    /// 5. The factory runs in its own task; while it runs, the lock is renewed
    ///    every `lock_ttl / 3`. Its value is stored and the lock
    ///    released in one script (+ one invalidation `PUBLISH`). With a stale
    ///    value at hand, the soft timeout returns it early; the hard timeout
    ///    returns it (or [`FillError::Timeout`]); either way the factory goes
    ///    on and its result is stored. A factory error releases the lock
    ///    (compare-and-delete) and serves the stale value if any.
    /// 6. Past the eager-refresh point, a hit returns at once and starts one
    ///    background refresh.
    ///
    /// When Redis is unreachable (or the breaker is open) steps 2 and 4 are
    /// skipped: L1, then the factory, answer at full speed.
    ///
    /// Round trips: hit 0–1; miss 1 (`GET`) + 1 (lock + re-read) + 1 (store +
    /// release) + the factory; waiting adds one per poll.
    ///
    /// Cancellation: dropping the future never cancels the fill: it finishes
    /// for the other callers and stores its value.
    ///
    /// ```no_run
    /// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)] struct Price(u64);
    /// # async fn price_from_db(sku: &str) -> Result<Option<Price>, std::io::Error> { Ok(None) }
    /// # async fn run(prices: fredkit_cache::Cache<Price>) -> Result<(), Box<dyn std::error::Error>> {
    /// let f = prices.fetch("tea-42", || price_from_db("tea-42")).await?;
    /// if f.stale {
    ///     // The database failed or timed out: this is the last known price.
    ///     tracing::warn!(origin = ?f.origin, "serving a stale price");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`FillError`].
    pub async fn fetch<F, Fut, E>(
        &self,
        key: &str,
        factory: F,
    ) -> std::result::Result<Fetched<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        self.fetch_inner(key, factory, true, false).await
    }

    /// `infallible`: the factory cannot fail (`get_or_set`), so a joined
    /// fill whose (fallible) factory failed is no reason to fail this call:
    /// it runs a fill of its own instead.
    async fn fetch_inner<F, Fut, E>(
        &self,
        key: &str,
        factory: F,
        accept_none: bool,
        infallible: bool,
    ) -> std::result::Result<Fetched<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let inner = &self.inner;
        let usable = |v: &Option<V>| accept_none || v.is_some();
        // Fail-safe fallback: the best stale value seen on the way.
        let mut stale: Option<(Option<V>, Origin)> = None;
        if let Some(l1) = &inner.local.l1 {
            let now = l1_now();
            if let Some(e) = l1.get(key, now) {
                if usable(&e.value) {
                    if now < e.fresh_until {
                        inner.local.metrics.l1_hits.incr();
                        if e.refresh_at.is_some_and(|at| now >= at) {
                            self.start_refresh(key, factory, e.created_ms, accept_none);
                        }
                        return Ok(Fetched {
                            value: e.value,
                            origin: Origin::L1,
                            stale: false,
                        });
                    }
                    stale = Some((e.value, Origin::L1));
                }
            }
        }
        Box::pin(self.fetch_l2(key, factory, accept_none, infallible, stale)).await
    }

    async fn fetch_l2<F, Fut, E>(
        &self,
        key: &str,
        factory: F,
        accept_none: bool,
        infallible: bool,
        mut stale: Option<(Option<V>, Origin)>,
    ) -> std::result::Result<Fetched<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let inner = &self.inner;
        let usable = |v: &Option<V>| accept_none || v.is_some();
        let data_key = inner.data_key(key).map_err(FillError::Cache)?;
        let epoch = inner.local.l1.as_ref().map(|l1| l1.ticket(key));
        let mut redis_up = true;
        match inner.l2_get(key, data_key.clone()).await {
            Ok(Some(stored)) if usable(&stored.value) => {
                let now_ms = envelope::now_ms();
                if stored.is_fresh(now_ms) {
                    inner.local.metrics.l2_hits.incr();
                    inner.l1_insert_read(key, &stored, epoch, now_ms);
                    if let Some(f) = inner.opts.eager_refresh {
                        let life = stored.fresh_until_ms.saturating_sub(stored.created_ms) as f64;
                        if now_ms as f64 >= stored.created_ms as f64 + life * f {
                            self.start_refresh(key, factory, stored.created_ms, accept_none);
                        }
                    }
                    return Ok(Fetched {
                        value: stored.value,
                        origin: Origin::L2,
                        stale: false,
                    });
                }
                // Within this cache's own fail-safe window only (the writer
                // may keep entries longer, with a larger max_stale).
                let max_stale_ms =
                    u64::try_from(inner.opts.max_stale.as_millis()).unwrap_or(u64::MAX);
                if now_ms < stored.fresh_until_ms.saturating_add(max_stale_ms) {
                    stale = Some((stored.value, Origin::L2));
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !e.is_unavailable() {
                    tracing::warn!(error = %e, "fredkit-cache: GET failed; calling the factory");
                }
                redis_up = false;
            }
        }
        incr(&inner.local.metrics.misses);

        let mut factory = Some(factory);
        let mut joined = false;
        loop {
            match inner.join(key) {
                Join::Follow(mut rx) => {
                    if !joined {
                        joined = true;
                        incr(&inner.local.metrics.coalesced);
                    }
                    let shared = match rx.wait_for(Option::is_some).await {
                        Ok(v) => v.clone(),
                        Err(_) => None, // leader task gone: try again
                    };
                    match shared {
                        Some(Shared::Done(f)) if usable(&f.value) => return Ok(f),
                        Some(Shared::Timeout(d)) => {
                            return serve_stale(inner, stale, FillError::Timeout(d))
                        }
                        Some(Shared::Panicked) => {
                            return serve_stale(inner, stale, FillError::Panicked)
                        }
                        // The joined fill's factory failed but ours cannot:
                        // fill with ours rather than fail or serve stale.
                        Some(Shared::Failed) if infallible => continue,
                        Some(Shared::Failed) => {
                            return serve_stale(inner, stale, FillError::JoinedFillFailed)
                        }
                        // The flight gave nothing usable by this caller (an
                        // absence it cannot take, a skipped refresh, a
                        // vanished leader): lead a fill of our own.
                        _ => continue,
                    }
                }
                Join::Lead(flight) => {
                    let Some(factory) = factory.take() else {
                        return Err(FillError::Panicked);
                    };
                    let task_inner = Arc::clone(inner);
                    let task_key = key.to_string();
                    let span = tracing::debug_span!(
                        "fredkit.cache.fill",
                        primitive = "cache",
                        outcome = tracing::field::Empty
                    );
                    let task = tokio::spawn(
                        async move {
                            let r = task_inner
                                .fill(
                                    &task_key,
                                    data_key,
                                    factory,
                                    stale,
                                    redis_up,
                                    epoch,
                                    accept_none,
                                    Mode::Fill,
                                )
                                .await;
                            let shared = match &r {
                                Ok(f) => Shared::Done(f.clone()),
                                Err(FillError::Timeout(d)) => Shared::Timeout(*d),
                                Err(FillError::Panicked) => Shared::Panicked,
                                Err(_) => Shared::Failed,
                            };
                            tracing::Span::current()
                                .record("outcome", if r.is_ok() { "ok" } else { "error" });
                            flight.finish(shared);
                            r
                        }
                        .instrument(span),
                    );
                    return match task.await {
                        Ok(r) => r,
                        Err(_) => Err(FillError::Panicked),
                    };
                }
            }
        }
    }

    fn start_refresh<F, Fut, E>(&self, key: &str, factory: F, created_ms: u64, accept_none: bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let inner = &self.inner;
        let Join::Lead(flight) = inner.join(key) else {
            return; // a fill or refresh of this key is already running here
        };
        let Ok(data_key) = inner.data_key(key) else {
            return;
        };
        incr(&inner.local.metrics.eager_refreshes);
        let task_inner = Arc::clone(inner);
        let task_key = key.to_string();
        tokio::spawn(
            async move {
                let r = task_inner
                    .fill(
                        &task_key,
                        data_key,
                        factory,
                        None,
                        true,
                        None,
                        accept_none,
                        Mode::Refresh { created_ms },
                    )
                    .await;
                flight.finish(match r {
                    Ok(f) => Shared::Done(f),
                    Err(_) => Shared::Retry,
                });
            }
            .instrument(tracing::debug_span!(
                "fredkit.cache.refresh",
                primitive = "cache"
            )),
        );
    }

    /// The fresh values under `keys`, in order (`None` where absent, expired,
    /// undecodable, or Redis unreachable).
    ///
    /// Cost: fresh L1 copies answer first; the other keys are read with one
    /// `MGET` per hash slot (standalone: one `MGET` per 1000 keys), all in
    /// one pipeline — one round trip per node, concurrently. Undecodable
    /// entries are misses (deleted and counted, as in [`get`](Self::get)).
    /// Dropping the future has no effect.
    ///
    /// ```no_run
    /// # async fn run(c: fredkit_cache::Cache<u64>) -> fredkit_core::Result<()> {
    /// c.set_many(&[("a", 1), ("b", 2)]).await?;
    /// assert_eq!(c.get_many(&["a", "missing", "b"]).await?, vec![Some(1), None, Some(2)]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty key; Redis errors other than
    /// unavailability.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        let inner = &self.inner;
        let mut out: Vec<Option<V>> = vec![None; keys.len()];
        let mut todo: Vec<(usize, String, Option<Ticket>)> = Vec::new();
        let now = l1_now();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref();
            if let Some(l1) = &inner.local.l1 {
                if let Some(e) = l1.get(k, now) {
                    if now < e.fresh_until {
                        inner.local.metrics.l1_hits.incr();
                        out[i] = e.value;
                        continue;
                    }
                }
            }
            let epoch = inner.local.l1.as_ref().map(|l1| l1.ticket(k));
            todo.push((i, inner.data_key(k)?, epoch));
        }
        if todo.is_empty() {
            return Ok(out);
        }
        // Group by slot (cluster) so each MGET stays in one slot.
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (j, (_, data_key, _)) in todo.iter().enumerate() {
            let slot = if inner.clustered {
                fred::util::redis_keyslot(data_key.as_bytes())
            } else {
                (j / 1000) as u16 // standalone: chunks of 1000 keys
            };
            groups.entry(slot).or_default().push(j);
        }
        let replies = inner
            .redis_call(async {
                let pipe = inner.redis.client().pipeline();
                for idx in groups.values() {
                    let ks: Vec<Key> = idx.iter().map(|&j| Key::from(todo[j].1.as_str())).collect();
                    pipe.mget::<(), _>(ks).await?;
                }
                pipe.all::<Vec<Value>>().await.map_err(Error::from)
            })
            .instrument(tracing::debug_span!(
                "fredkit.cache.get_many",
                primitive = "cache",
                keys = todo.len()
            ))
            .await;
        let replies = match replies {
            Ok(r) => r,
            Err(e) if e.is_unavailable() => {
                for _ in &todo {
                    incr(&inner.local.metrics.misses);
                }
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let now_ms = envelope::now_ms();
        for (idx, reply) in groups.values().zip(replies) {
            let values = match reply {
                Value::Array(v) => v,
                other => vec![other],
            };
            for (&j, value) in idx.iter().zip(values) {
                let (i, data_key, epoch) = &todo[j];
                let user_key = keys[*i].as_ref();
                let stored = match value.into_bytes() {
                    Some(b) => {
                        inner.decode_or_unlink(user_key, || Key::from(data_key.as_str()), &b)
                    }
                    None => None,
                };
                match stored {
                    Some(s) if s.is_fresh(now_ms) => {
                        inner.local.metrics.l2_hits.incr();
                        inner.l1_insert_read(user_key, &s, *epoch, now_ms);
                        out[*i] = s.value;
                    }
                    _ => incr(&inner.local.metrics.misses),
                }
            }
        }
        Ok(out)
    }

    /// Stores every `(key, value)` for the default TTL (plus jitter per
    /// entry): one pipeline of `SET … PX` (one round trip per node), then
    /// L1 updates and one batched invalidation.
    ///
    /// # Errors
    ///
    /// Codec errors (nothing written), `InvalidInput` for an empty key, Redis
    /// errors (L1 is updated anyway). If the future is dropped, any subset of
    /// the writes may have happened.
    pub async fn set_many<K: AsRef<str>>(&self, items: &[(K, V)]) -> Result<()> {
        let inner = &self.inner;
        let mut prepared = Vec::with_capacity(items.len());
        for (k, v) in items {
            let k = k.as_ref();
            let data_key = inner.data_key(k)?;
            let (bytes, stored, px) = inner.envelope(Some(v), inner.opts.ttl)?;
            prepared.push((k, data_key, bytes, stored, px));
        }
        // Taken before the writes: a copy is not inserted if an invalidation
        // (maybe of a later write from elsewhere) arrives meanwhile.
        let mut tickets = Vec::with_capacity(prepared.len());
        for (k, ..) in &prepared {
            tickets.push(inner.local.l1.as_ref().map(|l1| l1.ticket(k)));
        }
        let r = inner
            .redis_call(async {
                let pipe = inner.redis.client().pipeline();
                for (_, data_key, bytes, _, px) in &prepared {
                    pipe.set::<(), _, _>(
                        data_key.as_str(),
                        bytes.clone(),
                        Some(Expiration::PX(*px)),
                        None,
                        false,
                    )
                    .await?;
                }
                pipe.all::<Vec<Value>>().await.map_err(Error::from)
            })
            .instrument(tracing::debug_span!(
                "fredkit.cache.set_many",
                primitive = "cache",
                keys = prepared.len()
            ))
            .await;
        let now_ms = envelope::now_ms();
        for ((k, _, _, stored, _), ticket) in prepared.iter().zip(tickets) {
            if let (Some(l1), Some(ticket)) = (&inner.local.l1, ticket) {
                l1.insert_write(k, stored, ticket, now_ms, inner.opts.eager_refresh);
            }
            inner.publish(Inv::Key(k.to_string()));
            inner.local.wake(k);
        }
        r.map(|_| ())
    }

    /// Deletes every entry whose key starts with `prefix` (`""` = the whole
    /// cache): `SCAN MATCH` in pages of 1000 on every primary (on a cluster,
    /// each primary is scanned) and `UNLINK` of each page, grouped by slot
    /// and pipelined. Never `KEYS`. Then every instance's L1 is flushed
    /// (this one at once, the others through an invalidation message).
    ///
    /// Returns the number of keys deleted. Entries written while the scan
    /// runs may survive. Cost: one round trip per page per node, plus one
    /// per page for the deletes. If the future is dropped, some pages may
    /// have been deleted; L1s are flushed only at the end.
    ///
    /// ```no_run
    /// # async fn run(c: fredkit_cache::Cache<u64>) -> fredkit_core::Result<()> {
    /// // Every entry whose key starts with "user:42:" (keys are user keys,
    /// // not Redis key names).
    /// let deleted = c.invalidate_prefix("user:42:").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Redis errors (the scan stops; already deleted keys stay deleted).
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        let inner = &self.inner;
        let span = tracing::debug_span!(
            "fredkit.cache.invalidate_prefix",
            primitive = "cache",
            deleted = tracing::field::Empty
        );
        async {
            let pattern = inner.scan_pattern(prefix);
            let client = inner.redis.client().clone();
            let mut deleted = 0u64;
            let mut pages = if inner.clustered {
                client.scan_cluster(pattern, Some(1000), None).boxed()
            } else {
                client.scan(pattern, Some(1000), None).boxed()
            };
            let mut result = Ok(());
            while let Some(page) = pages.next().await {
                let mut page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        result = Err(Error::from(e));
                        break;
                    }
                };
                let keys = page.take_results().unwrap_or_default();
                page.next();
                if keys.is_empty() {
                    continue;
                }
                match inner.unlink_grouped(keys).await {
                    Ok(n) => deleted += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            inner.local.flush_l1("invalidate_prefix");
            inner.publish(Inv::All);
            tracing::Span::current().record("deleted", deleted);
            result.map(|_| deleted)
        }
        .instrument(span)
        .await
    }
}

fn serve_stale<V, E>(
    inner: &Inner<V, impl Codec>,
    stale: Option<(Option<V>, Origin)>,
    err: FillError<E>,
) -> std::result::Result<Fetched<V>, FillError<E>> {
    match stale {
        Some((value, origin)) => {
            incr(&inner.local.metrics.stale_served);
            Ok(Fetched {
                value,
                origin,
                stale: true,
            })
        }
        None => Err(err),
    }
}

fn non_empty_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid_input(
            "cache key is empty: pass the entry's key, e.g. \"user:42\" (the cache adds its prefix)",
        ));
    }
    Ok(())
}

/// How the factory ended.
enum Produced<V, E> {
    Value(Option<V>),
    Failed(E),
    Panicked,
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    /// Every entry point builds its keys here (an empty key never reaches
    /// L1 either: nothing is stored under one), so all refuse an empty key
    /// with the same message — not the `KeySpace` one about hash tags, which
    /// names an implementation detail the caller never chose.
    fn data_key(&self, key: &str) -> Result<String> {
        non_empty_key(key)?;
        self.opts.keys.tagged(key, [""; 0])
    }

    fn lock_key(&self, key: &str) -> Result<String> {
        non_empty_key(key)?;
        self.opts.lock_keys.tagged(key, [""; 0])
    }

    fn scan_pattern(&self, prefix: &str) -> String {
        // `prefix:{<escaped user prefix>` then `*`; the escaping is per
        // character, so the escaped prefix is a prefix of every escaped key.
        let mut head = self.opts.keys.prefix().to_string();
        head.push_str(":{");
        if let Ok(tagged) = self.opts.keys.tagged(&format!("{prefix}x"), [""; 0]) {
            // escaped(prefix + "x") minus "x}" = escaped(prefix)
            let start = self.opts.keys.prefix().len() + 2;
            if let Some(esc) = tagged.get(start..tagged.len().saturating_sub(2)) {
                head.push_str(esc);
            }
        }
        let mut pattern = String::with_capacity(head.len() + 8);
        for c in head.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }

    fn publish(&self, inv: Inv) {
        let Some(tx) = &self.inv_tx else { return };
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            self.publish_closed(inv);
        } else if let Err(mpsc::error::SendError(inv)) = tx.send(inv) {
            // The publisher task stopped taking messages (closed).
            self.publish_closed(inv);
        }
    }

    /// After `close`: the write publishes its own invalidation (one short
    /// task, one `PUBLISH`). Sequences may then arrive out of order, which
    /// receivers treat as a gap (a flush): safe.
    fn publish_closed(&self, inv: Inv) {
        let Some(outbox) = &self.outbox else { return };
        let (keys, all) = match inv {
            Inv::Key(k) => (vec![k], false),
            Inv::All => (Vec::new(), true),
            Inv::Close => return,
        };
        let outbox = Arc::clone(outbox);
        let local = Arc::clone(&self.local);
        tokio::spawn(async move { outbox.send(&local, keys, all).await });
    }

    /// Runs a Redis call through the breaker, counting unavailability.
    async fn redis_call<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let r = self.breaker.call(fut).await;
        if let Err(e) = &r {
            if e.is_unavailable() {
                incr(&self.local.metrics.redis_errors);
            }
        }
        r
    }

    /// One `GET`; garbage is deleted, counted and reported as absent.
    async fn l2_get(&self, key: &str, data_key: String) -> Result<Option<Stored<V>>> {
        let permit = match self.breaker.try_acquire() {
            Ok(p) => p,
            Err(e) => {
                incr(&self.local.metrics.redis_errors);
                return Err(e);
            }
        };
        // The key's bytes move into fred's `Key` without a copy; clones of
        // it are reference counts.
        let data_key = Key::from(data_key);
        let reply = self
            .redis
            .client()
            .get::<Option<Bytes>, _>(data_key.clone())
            .await;
        match reply {
            Ok(Some(bytes)) => {
                permit.success();
                Ok(self.decode_or_unlink(key, || data_key, &bytes))
            }
            Ok(None) => {
                permit.success();
                Ok(None)
            }
            Err(e) => {
                let e = Error::from(e);
                if e.is_unavailable() {
                    permit.failure();
                    incr(&self.local.metrics.redis_errors);
                    Err(e)
                } else {
                    permit.success();
                    if e.to_string().contains("WRONGTYPE") {
                        self.garbage(key, data_key, Bytes::new(), "not a string (WRONGTYPE)");
                        Ok(None)
                    } else {
                        Err(e)
                    }
                }
            }
        }
    }

    fn decode_or_unlink(
        &self,
        key: &str,
        data_key: impl FnOnce() -> Key,
        bytes: &Bytes,
    ) -> Option<Stored<V>> {
        match envelope::decode::<V, C>(&self.codec, bytes, self.opts.max_value_bytes) {
            Ok(s) => Some(s),
            Err(g) => {
                self.garbage(key, data_key(), bytes.clone(), &g.0);
                None
            }
        }
    }

    /// An entry that does not decode: count, warn, delete in the background.
    /// `read` is what was read: the entry is deleted only if it still holds
    /// exactly that (a value written meanwhile survives).
    fn garbage(&self, key: &str, data_key: Key, read: Bytes, why: &str) {
        incr(&self.local.metrics.decode_failures);
        tracing::warn!(
            prefix = self.opts.keys.prefix(),
            reason = why,
            "fredkit-cache: undecodable entry treated as a miss and deleted"
        );
        tracing::debug!(key, "fredkit-cache: undecodable entry key");
        self.local.remove_l1(key);
        let client = self.redis.client().clone();
        let breaker = self.breaker.clone();
        tokio::spawn(async move {
            let _ = breaker
                .call(UNLINK_GARBAGE.exec::<_, i64, _, _>(&client, data_key, Value::Bytes(read)))
                .await;
        });
    }

    fn l1_insert_read(&self, key: &str, stored: &Stored<V>, epoch: Option<Ticket>, now_ms: u64) {
        if let (Some(l1), Some(epoch)) = (&self.local.l1, epoch) {
            l1.insert_read(key, stored, epoch, now_ms, self.opts.eager_refresh);
        }
    }

    /// Envelope bytes, the stored form, and the physical TTL in ms.
    fn envelope(&self, value: Option<&V>, ttl: Duration) -> Result<(Bytes, Stored<V>, i64)> {
        let jitter = if self.opts.ttl_jitter.is_zero() || value.is_none() {
            0
        } else {
            rand::random::<u64>() % (self.opts.ttl_jitter.as_millis() as u64).max(1)
        };
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX / 4)
            .saturating_add(jitter);
        let now = envelope::now_ms();
        let fresh_until = now.saturating_add(ttl_ms);
        let stale_ms = if value.is_some() {
            u64::try_from(self.opts.max_stale.as_millis()).unwrap_or(u64::MAX / 4)
        } else {
            0
        };
        let px = i64::try_from(ttl_ms.saturating_add(stale_ms)).unwrap_or(i64::MAX);
        let bytes = envelope::encode(
            &self.codec,
            value,
            now,
            fresh_until,
            self.opts.compress_above,
        )?;
        let stored = Stored {
            value: value.cloned(),
            created_ms: now,
            fresh_until_ms: fresh_until,
            size: envelope::plain_size(&bytes),
        };
        Ok((bytes, stored, px))
    }

    /// Writes an entry (releasing `lock` = (lock key, token) in the same
    /// script if given), updates L1, queues the invalidation, wakes a local
    /// waiter. Returns the stored form.
    async fn store(
        &self,
        key: &str,
        data_key: &str,
        lock: Option<(&str, &str)>,
        value: Option<&V>,
        ttl: Duration,
    ) -> Result<Stored<V>> {
        let (bytes, stored, px) = self.envelope(value, ttl)?;
        // Before the write: see `L1::insert_write`.
        let ticket = self.local.l1.as_ref().map(|l1| l1.ticket(key));
        let r = self
            .redis_call(async {
                match lock {
                    Some((lock_key, token)) => FILL_STORE_RELEASE
                        .exec::<_, i64, _, _>(
                            self.redis.client(),
                            vec![data_key.to_string(), lock_key.to_string()],
                            vec![Value::Bytes(bytes), Value::Integer(px), Value::from(token)],
                        )
                        .await
                        .map(|_| ()),
                    None => self
                        .redis
                        .client()
                        .set::<(), _, _>(data_key, bytes, Some(Expiration::PX(px)), None, false)
                        .await
                        .map_err(Error::from),
                }
            })
            .await;
        if let (Some(l1), Some(ticket)) = (&self.local.l1, ticket) {
            l1.insert_write(
                key,
                &stored,
                ticket,
                envelope::now_ms(),
                self.opts.eager_refresh,
            );
        }
        self.publish(Inv::Key(key.to_string()));
        self.local.wake(key);
        r.map(|_| stored)
    }

    fn release(self: &Arc<Self>, lock_key: String, token: String) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _ = this
                .redis_call(FILL_RELEASE.exec::<_, i64, _, _>(this.redis.client(), lock_key, token))
                .await;
        });
    }

    /// Renews the fill lock every third of `lock_ttl` while it is ours, for
    /// at most `fill_wait` (waiters elsewhere give up after that anyway; a
    /// factory hung in this process must not hold the key's lock forever);
    /// stops when it is not ours (expired and maybe taken by another filler)
    /// or when aborted. Redis errors are retried at the next period.
    fn spawn_lock_watchdog(self: &Arc<Self>, lock_key: String, token: String) -> JoinHandle<()> {
        let this = Arc::clone(self);
        let ttl_ms = i64::try_from(self.opts.lock_ttl.as_millis()).unwrap_or(i64::MAX);
        let period = (self.opts.lock_ttl / 3).max(Duration::from_millis(1));
        let until = tokio::time::Instant::now() + self.opts.fill_wait;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if tokio::time::Instant::now() >= until {
                    return;
                }
                let r = this
                    .redis_call(FILL_EXTEND.exec::<_, i64, _, _>(
                        this.redis.client(),
                        vec![lock_key.clone()],
                        vec![Value::from(token.as_str()), Value::Integer(ttl_ms)],
                    ))
                    .await;
                if matches!(r, Ok(0)) {
                    tracing::debug!("fredkit-cache: fill lock lost while the factory ran");
                    return;
                }
            }
        })
    }

    /// `SET NX PX` the lock and `GET` the entry, in one script.
    async fn acquire(
        &self,
        key: &str,
        data_key: &str,
        lock_key: &str,
        token: &str,
    ) -> Result<(bool, Option<Stored<V>>)> {
        let lock_ms = i64::try_from(self.opts.lock_ttl.as_millis()).unwrap_or(i64::MAX);
        let reply: Value = self
            .redis_call(FILL_ACQUIRE.exec(
                self.redis.client(),
                vec![data_key.to_string(), lock_key.to_string()],
                vec![Value::from(token), Value::Integer(lock_ms)],
            ))
            .await?;
        let Value::Array(mut parts) = reply else {
            return Err(Error::protocol("fill_acquire: expected a 2-element array"));
        };
        if parts.len() != 2 {
            return Err(Error::protocol("fill_acquire: expected a 2-element array"));
        }
        let data = parts.pop().and_then(Value::into_bytes);
        let acquired = matches!(parts.pop(), Some(Value::Integer(1)));
        let stored = data.and_then(|b| self.decode_or_unlink(key, || Key::from(data_key), &b));
        Ok((acquired, stored))
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<String, FlightRx<V>>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join(self: &Arc<Self>, key: &str) -> Join<V, C> {
        let mut flights = self.flights();
        if let Some(rx) = flights.get(key) {
            return Join::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key.to_string(), rx);
        Join::Lead(Flight {
            inner: Arc::clone(self),
            key: key.to_string(),
            tx,
        })
    }

    /// A fill (or eager refresh), run in its own task by the flight leader.
    #[allow(clippy::too_many_arguments)]
    async fn fill<F, Fut, E>(
        self: &Arc<Self>,
        key: &str,
        data_key: String,
        factory: F,
        stale: Option<(Option<V>, Origin)>,
        redis_up: bool,
        epoch: Option<Ticket>,
        accept_none: bool,
        mode: Mode,
    ) -> std::result::Result<Fetched<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let usable =
            |s: &Stored<V>, now_ms: u64| s.is_fresh(now_ms) && (accept_none || s.value.is_some());
        let lock_key = self.lock_key(key).map_err(FillError::Cache)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut locked = false;
        if redis_up {
            match self.acquire(key, &data_key, &lock_key, &token).await {
                Ok((acquired, stored)) => {
                    locked = acquired;
                    let now_ms = envelope::now_ms();
                    if let Some(s) = stored {
                        let newer = match mode {
                            Mode::Fill => usable(&s, now_ms),
                            Mode::Refresh { created_ms } => {
                                s.created_ms > created_ms && usable(&s, now_ms)
                            }
                        };
                        if newer {
                            if acquired {
                                self.release(lock_key, token);
                            }
                            self.l1_insert_read(key, &s, epoch, now_ms);
                            return Ok(Fetched {
                                value: s.value,
                                origin: Origin::L2,
                                stale: false,
                            });
                        }
                    }
                    if !acquired {
                        if let Mode::Refresh { .. } = mode {
                            // Someone else is refreshing it.
                            return Err(FillError::Panicked);
                        }
                        incr(&self.local.metrics.fill_lock_waits);
                        match self
                            .wait_for_fill(
                                key,
                                &data_key,
                                &lock_key,
                                &token,
                                stale.is_some(),
                                accept_none,
                            )
                            .await
                        {
                            Waited::Found(s) => {
                                let now_ms = envelope::now_ms();
                                self.l1_insert_read(key, &s, epoch, now_ms);
                                return Ok(Fetched {
                                    value: s.value,
                                    origin: Origin::L2,
                                    stale: false,
                                });
                            }
                            Waited::Acquired => locked = true,
                            Waited::TimedOut => {
                                incr(&self.local.metrics.fill_wait_timeouts);
                                if stale.is_some() && self.opts.soft_timeout.is_some() {
                                    return serve_stale(self, stale, FillError::Panicked);
                                }
                                // The wait ran out at the hard timeout: the
                                // caller's budget is spent. Calling the
                                // factory now would only add a run per
                                // waiting process (a stampede).
                                if let Some(hard) = self.opts.hard_timeout {
                                    if hard < self.opts.fill_wait {
                                        return serve_stale(self, stale, FillError::Timeout(hard));
                                    }
                                }
                                tracing::debug!(
                                    "fredkit-cache: fill wait ran out; calling the factory"
                                );
                            }
                            Waited::Unavailable => {}
                        }
                    }
                }
                Err(e) => {
                    if !e.is_unavailable() {
                        tracing::warn!(error = %e, "fredkit-cache: fill lock script failed; calling the factory");
                    }
                }
            }
        }
        if let Mode::Fill = mode {
            incr(&self.local.metrics.loads);
        }
        self.run_factory(
            key,
            data_key,
            if locked {
                Some((lock_key, token))
            } else {
                None
            },
            factory,
            stale,
            redis_up,
        )
        .await
    }

    async fn wait_for_fill(
        &self,
        key: &str,
        data_key: &str,
        lock_key: &str,
        token: &str,
        have_stale: bool,
        accept_none: bool,
    ) -> Waited<V> {
        let mut bound = self.opts.fill_wait;
        // The hard timeout bounds waiting for another process's factory too.
        if let Some(hard) = self.opts.hard_timeout {
            bound = bound.min(hard);
        }
        if have_stale {
            if let Some(soft) = self.opts.soft_timeout {
                bound = bound.min(soft);
            }
        }
        let deadline = tokio::time::Instant::now() + bound;
        let notify = self.local.register_waiter(key);
        let mut backoff = Duration::from_millis(5);
        let result = loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break Waited::TimedOut;
            }
            // Full jitter in [backoff/2, backoff], capped by the deadline.
            let half = backoff.as_micros() as u64 / 2;
            let pause = Duration::from_micros(half + rand::random::<u64>() % half.max(1))
                .min(deadline - now);
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(200));
            match self.acquire(key, data_key, lock_key, token).await {
                Ok((acquired, stored)) => {
                    let now_ms = envelope::now_ms();
                    if let Some(s) = stored {
                        if s.is_fresh(now_ms) && (accept_none || s.value.is_some()) {
                            if acquired {
                                self.release_now(lock_key, token).await;
                            }
                            break Waited::Found(s);
                        }
                    }
                    if acquired {
                        break Waited::Acquired;
                    }
                }
                Err(_) => break Waited::Unavailable,
            }
        };
        self.local.unregister_waiter(key);
        result
    }

    async fn release_now(&self, lock_key: &str, token: &str) {
        let _ = self
            .redis_call(FILL_RELEASE.exec::<_, i64, _, _>(
                self.redis.client(),
                lock_key.to_string(),
                token.to_string(),
            ))
            .await;
    }

    /// Runs the factory in its own task (so it can outlive timeouts and a
    /// dropped caller), stores its result, and applies soft/hard timeouts.
    async fn run_factory<F, Fut, E>(
        self: &Arc<Self>,
        key: &str,
        data_key: String,
        lock: Option<(String, String)>,
        factory: F,
        stale: Option<(Option<V>, Origin)>,
        redis_up: bool,
    ) -> std::result::Result<Fetched<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        incr(&self.local.metrics.factory_calls);
        let (tx, mut rx) = oneshot::channel::<Produced<V, E>>();
        let this = Arc::clone(self);
        let task_key = key.to_string();
        // While the factory runs, the lock is renewed (watchdog): a factory
        // slower than `lock_ttl` must not let the lock expire and another
        // process run the factory too. Stopped when the factory ends (or
        // panics); a dead process stops renewing and its lock expires.
        let watchdog = lock
            .as_ref()
            .map(|(k, t)| self.spawn_lock_watchdog(k.clone(), t.clone()));
        tokio::spawn(async move {
            // For the L1 copy of a value not written to Redis (Redis down):
            // dropped if an invalidation arrives while the factory runs.
            let ticket = this.local.l1.as_ref().map(|l1| l1.ticket(&task_key));
            let outcome = AssertUnwindSafe(async move { factory().await })
                .catch_unwind()
                .await;
            if let Some(w) = watchdog {
                w.abort();
            }
            let produced = match outcome {
                Ok(Ok(value)) => {
                    let ttl = if value.is_some() {
                        this.opts.ttl
                    } else {
                        this.opts.negative_ttl
                    };
                    let lock_ref = lock.as_ref().map(|(k, t)| (k.as_str(), t.as_str()));
                    if !redis_up {
                        // Redis just failed to answer the GET: do not make the
                        // caller wait for a write that would fail too. L1
                        // keeps the value; Redis is unchanged, so no other
                        // instance needs an invalidation.
                        if let (Some(l1), Some(ticket)) = (&this.local.l1, ticket) {
                            let now = envelope::now_ms();
                            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 4);
                            let stored = Stored {
                                value: value.clone(),
                                created_ms: now,
                                fresh_until_ms: now.saturating_add(ttl_ms),
                                // Not encoded (Redis is down): the in-memory
                                // size stands in for the L1 weight.
                                size: std::mem::size_of::<V>(),
                            };
                            l1.insert_write(
                                &task_key,
                                &stored,
                                ticket,
                                now,
                                this.opts.eager_refresh,
                            );
                        }
                    } else if let Err(e) = this
                        .store(&task_key, &data_key, lock_ref, value.as_ref(), ttl)
                        .await
                    {
                        tracing::debug!(error = %e, "fredkit-cache: could not store the factory's value");
                        if let Some((k, t)) = lock {
                            this.release(k, t);
                        }
                    }
                    Produced::Value(value)
                }
                Ok(Err(e)) => {
                    incr(&this.local.metrics.factory_errors);
                    if let Some((k, t)) = lock {
                        this.release(k, t);
                    }
                    Produced::Failed(e)
                }
                Err(_) => {
                    incr(&this.local.metrics.factory_errors);
                    tracing::warn!("fredkit-cache: cache factory panicked");
                    if let Some((k, t)) = lock {
                        this.release(k, t);
                    }
                    Produced::Panicked
                }
            };
            let _ = tx.send(produced);
        });

        let started = tokio::time::Instant::now();
        if stale.is_some() {
            if let Some(soft) = self.opts.soft_timeout {
                match tokio::time::timeout(soft, &mut rx).await {
                    Ok(r) => return self.produced(r.ok(), stale),
                    Err(_) => {
                        incr(&self.local.metrics.factory_timeouts);
                        return serve_stale(self, stale, FillError::Panicked);
                    }
                }
            }
        }
        if let Some(hard) = self.opts.hard_timeout {
            let left = hard.saturating_sub(started.elapsed());
            return match tokio::time::timeout(left, &mut rx).await {
                Ok(r) => self.produced(r.ok(), stale),
                Err(_) => {
                    incr(&self.local.metrics.factory_timeouts);
                    serve_stale(self, stale, FillError::Timeout(hard))
                }
            };
        }
        let r = rx.await.ok();
        self.produced(r, stale)
    }

    fn produced<E>(
        &self,
        r: Option<Produced<V, E>>,
        stale: Option<(Option<V>, Origin)>,
    ) -> std::result::Result<Fetched<V>, FillError<E>> {
        match r {
            Some(Produced::Value(value)) => Ok(Fetched {
                value,
                origin: Origin::Factory,
                stale: false,
            }),
            Some(Produced::Failed(e)) => serve_stale(self, stale, FillError::Factory(e)),
            Some(Produced::Panicked) | None => serve_stale(self, stale, FillError::Panicked),
        }
    }

    /// `UNLINK`s keys grouped by slot, pipelined.
    async fn unlink_grouped(&self, keys: Vec<Key>) -> Result<u64> {
        let mut groups: BTreeMap<u16, Vec<Key>> = BTreeMap::new();
        for k in keys {
            let slot = if self.clustered {
                fred::util::redis_keyslot(k.as_bytes())
            } else {
                0
            };
            groups.entry(slot).or_default().push(k);
        }
        self.redis_call(async {
            let pipe = self.redis.client().pipeline();
            for (_, ks) in groups {
                pipe.unlink::<(), _>(ks).await?;
            }
            let counts: Vec<i64> = pipe.all().await?;
            Ok(counts.into_iter().map(|n| n.max(0) as u64).sum())
        })
        .await
    }
}

enum Waited<V> {
    Found(Stored<V>),
    Acquired,
    TimedOut,
    Unavailable,
}
