//! [`Cache`]: cache-aside over Redis with single-flight, a fill lock,
//! fail-safe, eager refresh and an optional coherent L1.

use crate::envelope::{self};
use crate::fill::{serve_stale, Mode};
use crate::flight::{FlightRx, Join, Shared};
use crate::invalidation::{self, Inv};
use crate::l1::{now as l1_now, Local, L1};
use crate::metrics::{incr, CacheMetrics};
use crate::options::{CacheOptions, EntryOptions};

/// The options of calls that take none.
static NO_ENTRY_OPTIONS: EntryOptions = EntryOptions {
    ttl: None,
    tags: Vec::new(),
    adapt: None,
};
use fred::interfaces::KeysInterface;
use fredkit_conn::{Redis, Topology};
use fredkit_core::{CircuitBreaker, Codec, Error, MsgPack, Result};
use fredkit_pubsub::{Publisher, Subscriber};
use futures::FutureExt;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

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
    pub(crate) inner: Arc<Inner<V, C>>,
}

impl<V: CacheValue, C: Codec + Clone> Clone for Cache<V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct Inner<V, C> {
    pub(crate) redis: Redis,
    pub(crate) codec: C,
    pub(crate) opts: CacheOptions,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) clustered: bool,
    pub(crate) local: Arc<Local<V>>,
    pub(crate) flights: Mutex<HashMap<String, FlightRx<V>>>,
    /// Eager refreshes held by another process (see `refresh.rs`).
    pub(crate) refresh_backoff: crate::refresh::RefreshBackoff,
    /// Removals and tag invalidations waiting for Redis (auto-recovery).
    pub(crate) recovery: crate::recovery::Recovery,
    /// The tracking task (`InvalidationMode::Tracking` / `Both`).
    pub(crate) tracking: Mutex<Option<JoinHandle<()>>>,
    /// Keys whose factory failed recently: until when to reuse the stale
    /// value served then (fail-safe throttle).
    pub(crate) throttle: Mutex<HashMap<String, (std::time::Instant, Fetched<V>)>>,
    pub(crate) inv_tx: Option<mpsc::UnboundedSender<Inv>>,
    pub(crate) outbox: Option<Arc<invalidation::Outbox>>,
    /// The invalidation listener and publisher tasks, taken by `close`.
    pub(crate) tasks: Mutex<Option<Tasks>>,
    pub(crate) closed: std::sync::atomic::AtomicBool,
    /// Serialises `close` calls: a second waits for the first.
    pub(crate) closing: tokio::sync::Mutex<()>,
}

pub(crate) struct Tasks {
    pub(crate) listener: JoinHandle<()>,
    pub(crate) publisher: JoinHandle<()>,
    /// The subscriber the cache made for itself: its `gaps` sender goes
    /// with its last handle (after its connection is let go).
    pub(crate) own_subscriber_gone: Option<watch::Receiver<u64>>,
}

impl<V, C> Drop for Inner<V, C> {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tasks.take() {
            t.listener.abort();
        }
        let tracking = self.tracking.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tracking.take() {
            t.abort();
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
        let local = Arc::new(Local::new(instance, l1, options.keys.prefix()));
        if options.invalidation
            && options.invalidation_mode == crate::tracking::InvalidationMode::Both
        {
            local.add_gate(); // L1 serves once the backplane and tracking both are on
        }
        let breaker = match &options.breaker {
            Some(b) => b.clone(),
            None => CircuitBreaker::builder()
                .name(format!("cache:{}", options.keys.prefix()))
                .build()?,
        };
        let clustered = matches!(redis.config().topology(), Topology::Cluster(_));
        // Invalidation from any writer (RESP3 client tracking); started
        // first: with `Both`, L1 waits for it and the backplane.
        let tracking = if options.invalidation_mode != crate::tracking::InvalidationMode::Backplane
        {
            let ready_local = Arc::clone(&local);
            let task = tokio::spawn(crate::tracking::run(
                redis.clone(),
                Arc::clone(&local),
                options.keys.prefix().to_string(),
                move || ready_local.set_ready(),
            ));
            Some(task)
        } else {
            None
        };
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
            if options.invalidation_mode != crate::tracking::InvalidationMode::Tracking {
                local.set_ready();
            }
            (None, None, None)
        };
        if options.invalidation_mode == crate::tracking::InvalidationMode::Tracking
            && fred::interfaces::ClientLike::is_connected(redis.client())
        {
            // As for the backplane: with Redis up, L1 serves from the first call.
            let limit = redis
                .config()
                .connect_timeout()
                .saturating_add(redis.config().command_timeout());
            let mut ready = local.ready_rx();
            let _ = tokio::time::timeout(limit, ready.wait_for(|r| *r)).await;
        }
        Ok(Cache {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                codec,
                opts: options,
                breaker,
                clustered,
                local,
                flights: Mutex::new(HashMap::new()),
                refresh_backoff: Default::default(),
                recovery: Default::default(),
                tracking: Mutex::new(tracking),
                throttle: Mutex::new(HashMap::new()),
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
        let tracking = inner
            .tracking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = tracking {
            t.abort();
            let _ = t.await;
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
            if let Some(e) = l1.get(key, now).filter(|e| inner.local.tags.copy_ok(e)) {
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
        let inner_max_stale = self.inner.opts.max_stale;
        self.inner
            .store(
                key,
                &data_key,
                None,
                Some(value),
                (ttl, inner_max_stale),
                &[],
                0,
            )
            .instrument(tracing::debug_span!(
                "fredkit.cache.set",
                primitive = "cache"
            ))
            .await
            .map(|_| ())
            .map_err(|e| e.naming("SET", &data_key))
    }

    /// Stores `value` under `key` with per-entry options: tags (see
    /// [`invalidate_tag`](Self::invalidate_tag)) and a TTL of its own.
    /// Otherwise as [`set_with_ttl`](Self::set_with_ttl).
    ///
    /// ```no_run
    /// # async fn run(c: fredkit_cache::Cache<u64>) -> fredkit_core::Result<()> {
    /// use fredkit_cache::EntryOptions;
    /// c.set_with("p42", &4200, &EntryOptions::new().tags(["product:42", "category:7"])).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Cost: as `set`, plus, with tags, one `MGET` of the tags' versions
    /// (one per slot, pipelined) before the `SET`: the entry carries the
    /// versions current then.
    ///
    /// # Errors
    ///
    /// As [`set_with_ttl`](Self::set_with_ttl); `InvalidInput` for an
    /// empty or over-long tag, more than 64 tags, or a tagged entry's TTL
    /// over the cache's.
    pub async fn set_with(&self, key: &str, value: &V, options: &EntryOptions) -> Result<()> {
        let inner = &self.inner;
        let ttl = options.check(key, &inner.opts)?;
        crate::store::ttl_px(key, ttl)?;
        let data_key = inner.data_key(key)?;
        let stamp = if options.tags.is_empty() {
            Vec::new()
        } else {
            inner.tag_stamp(&options.tags).await?
        };
        inner
            .store(
                key,
                &data_key,
                None,
                Some(value),
                (ttl, inner.opts.max_stale),
                &stamp,
                0,
            )
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
        match &r {
            Ok(_) => inner.recovered_key(key),
            Err(e) if e.is_unavailable() => {
                inner.queue_for_recovery(crate::recovery::Op::Key(key.to_string()))
            }
            Err(_) => {}
        }
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
                &NO_ENTRY_OPTIONS,
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
            .fetch_inner(
                key,
                &NO_ENTRY_OPTIONS,
                move || factory().map(|r| r.map(Some)),
                false,
                false,
            )
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
        Ok(self
            .fetch_inner(key, &NO_ENTRY_OPTIONS, factory, true, false)
            .await?
            .value)
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
        self.fetch_inner(key, &NO_ENTRY_OPTIONS, factory, true, false)
            .await
    }

    /// [`fetch`](Self::fetch) with per-entry options for the value the
    /// factory produces: tags (see [`invalidate_tag`](Self::invalidate_tag))
    /// and a TTL of its own. An eager refresh started by this call writes
    /// with the same options.
    ///
    /// ```no_run
    /// # async fn price_from_db(sku: &str) -> Result<Option<u64>, std::io::Error> { Ok(None) }
    /// # async fn run(prices: fredkit_cache::Cache<u64>) -> Result<(), Box<dyn std::error::Error>> {
    /// use fredkit_cache::EntryOptions;
    /// let tagged = EntryOptions::new().tags(["category:7"]);
    /// let f = prices.fetch_with("tea-42", &tagged, || price_from_db("tea-42")).await?;
    /// prices.invalidate_tag("category:7").await?; // "tea-42" is a miss everywhere
    /// # Ok(()) }
    /// ```
    ///
    /// Cost: as `fetch`; a Redis read that finds a tagged entry adds one
    /// `MGET` of its tags' versions; a fill of a tagged entry reads the tags'
    /// versions concurrently with the fill lock (no extra latency).
    ///
    /// # Errors
    ///
    /// As [`fetch`](Self::fetch); [`FillError::Cache`] with `InvalidInput`
    /// for bad tags or a tagged entry's TTL over the cache's.
    pub async fn fetch_with<F, Fut, E>(
        &self,
        key: &str,
        options: &EntryOptions,
        factory: F,
    ) -> std::result::Result<Fetched<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        options
            .check(key, &self.inner.opts)
            .map_err(FillError::Cache)?;
        self.fetch_inner(key, options, factory, true, false).await
    }

    /// [`fetch_with`](Self::fetch_with) with an adaptive factory: it returns
    /// an [`Adapted`](crate::Adapted) value that also says, from the value
    /// itself, the entry's TTL, its fail-safe window, or not to cache it at
    /// all (FusionCache's adaptive caching). What it does not say comes from
    /// `options` and the cache's options. Eager refreshes started by this
    /// call adapt the same way.
    ///
    /// ```no_run
    /// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct Order { shipped: bool }
    /// # async fn load_order(id: &str) -> Result<Option<Order>, std::io::Error> { Ok(None) }
    /// # async fn run(orders: fredkit_cache::Cache<Order>) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use fredkit_cache::{Adapted, EntryOptions};
    /// let f = orders
    ///     .fetch_adaptive("o-17", &EntryOptions::new(), || async {
    ///         let order = load_order("o-17").await?;
    ///         // A shipped order no longer changes: keep it a day; others 10 s.
    ///         let ttl = match &order {
    ///             Some(o) if o.shipped => Duration::from_secs(86_400),
    ///             _ => Duration::from_secs(10),
    ///         };
    ///         Ok::<_, std::io::Error>(Adapted::new(order).ttl(ttl))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Cost: as `fetch_with`.
    ///
    /// # Errors
    ///
    /// As [`fetch_with`](Self::fetch_with).
    pub async fn fetch_adaptive<F, Fut, E>(
        &self,
        key: &str,
        options: &EntryOptions,
        factory: F,
    ) -> std::result::Result<Fetched<V>, FillError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<crate::Adapted<V>, E>> + Send + 'static,
        E: Send + 'static,
    {
        options
            .check(key, &self.inner.opts)
            .map_err(FillError::Cache)?;
        let slot: crate::options::AdaptSlot = Arc::new(Mutex::new(None));
        let mut with_slot = options.clone();
        with_slot.adapt = Some(Arc::clone(&slot));
        let adaptive = move || async move {
            let (value, decided) = factory().await?.split();
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(decided);
            Ok(value)
        };
        self.fetch_inner(key, &with_slot, adaptive, true, false)
            .await
    }

    /// `infallible`: the factory cannot fail (`get_or_set`), so a joined
    /// fill whose (fallible) factory failed is no reason to fail this call:
    /// it runs a fill of its own instead.
    async fn fetch_inner<F, Fut, E>(
        &self,
        key: &str,
        entry: &EntryOptions,
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
            if let Some(e) = l1.get(key, now).filter(|e| inner.local.tags.copy_ok(e)) {
                if usable(&e.value) {
                    if now < e.fresh_until {
                        inner.local.metrics.l1_hits.incr();
                        if e.refresh_at.is_some_and(|at| now >= at)
                            || inner.opts.xfetch_beta.is_some_and(|beta| {
                                let early = crate::refresh::xfetch_early(e.delta_ms, beta);
                                crate::l1::later(now, early) >= e.logical_end
                            })
                        {
                            self.start_refresh(key, factory, e.created_ms, accept_none, entry);
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
        Box::pin(self.fetch_l2(key, entry, factory, accept_none, infallible, stale)).await
    }

    async fn fetch_l2<F, Fut, E>(
        &self,
        key: &str,
        entry: &EntryOptions,
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
                    let fixed = inner.opts.eager_refresh.is_some_and(|f| {
                        let life = stored.fresh_until_ms.saturating_sub(stored.created_ms) as f64;
                        now_ms as f64 >= stored.created_ms as f64 + life * f
                    });
                    let xfetch = inner.opts.xfetch_beta.is_some_and(|beta| {
                        let early = crate::refresh::xfetch_early(stored.delta_ms, beta);
                        let early_ms = u64::try_from(early.as_millis()).unwrap_or(u64::MAX);
                        now_ms.saturating_add(early_ms) >= stored.fresh_until_ms
                    });
                    if fixed || xfetch {
                        self.start_refresh(key, factory, stored.created_ms, accept_none, entry);
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
        // Fail-safe throttle: the factory failed for this key a moment ago
        // and its stale value was served; reuse it instead of calling the
        // failing factory again.
        if let Some(value) = inner.throttled(key, &stale) {
            incr(&inner.local.metrics.stale_served);
            return Ok(value);
        }

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
                    let task_entry = entry.clone();
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
                                    task_entry,
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
                        Ok(r) => {
                            if let Ok(f) = &r {
                                if f.stale {
                                    inner.throttle(key, f);
                                }
                            }
                            r
                        }
                        Err(_) => Err(FillError::Panicked),
                    };
                }
            }
        }
    }
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    /// Records that a fill of `key` served `served` stale (its factory
    /// failed): reused for `fail_safe_throttle`.
    fn throttle(&self, key: &str, served: &Fetched<V>) {
        let Some(d) = self.opts.fail_safe_throttle else {
            return;
        };
        let now = std::time::Instant::now();
        let until = now.checked_add(d).unwrap_or(now);
        let mut map = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 4096 {
            map.retain(|_, (u, _)| *u > now);
        }
        map.insert(key.to_string(), (until, served.clone()));
    }

    /// The stale value to serve for `key` while its factory is throttled:
    /// the one found by this call if any, else the one served when the
    /// factory failed.
    fn throttled(&self, key: &str, stale: &Option<(Option<V>, Origin)>) -> Option<Fetched<V>> {
        self.opts.fail_safe_throttle?;
        let mut map = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        let (until, served) = map.get(key)?;
        if std::time::Instant::now() >= *until {
            map.remove(key);
            return None;
        }
        Some(match stale {
            Some((value, origin)) => Fetched {
                value: value.clone(),
                origin: *origin,
                stale: true,
            },
            None => served.clone(),
        })
    }
}
