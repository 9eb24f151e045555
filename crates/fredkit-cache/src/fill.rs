//! The cross-process fill: the fill lock (take, wait, renew, release) and
//! the factory run with its soft / hard timeouts and fail-safe fallback.

use crate::cache::{CacheValue, Fetched, FillError, Inner, Origin};
use crate::envelope::{self, Stored};
use crate::l1::Ticket;
use crate::metrics::incr;
use crate::options::EntryOptions;
use fred::types::{Key, Value};
use fredkit_core::{Codec, Error, Result, Script};
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) static FILL_ACQUIRE: Script =
    Script::new("fill_acquire", include_str!("../scripts/fill_acquire.lua"));
pub(crate) static FILL_STORE_RELEASE: Script = Script::new(
    "fill_store_release",
    include_str!("../scripts/fill_store_release.lua"),
);
pub(crate) static FILL_RELEASE: Script =
    Script::new("fill_release", include_str!("../scripts/fill_release.lua"));
pub(crate) static FILL_EXTEND: Script =
    Script::new("fill_extend", include_str!("../scripts/fill_extend.lua"));

/// What a fill does when it runs.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// A miss: get a value, waiting for another process's fill if needed.
    Fill,
    /// Eager refresh of an entry created at `created_ms`: only if nobody else
    /// is refreshing; never waits.
    Refresh { created_ms: u64 },
}

pub(crate) fn serve_stale<V, E>(
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

/// How the factory ended.
pub(crate) enum Produced<V, E> {
    Value(Option<V>),
    Failed(E),
    Panicked,
}

impl<V: CacheValue, C: Codec + Clone> Inner<V, C> {
    pub(crate) fn release(self: &Arc<Self>, lock_key: String, token: String) {
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
    pub(crate) fn spawn_lock_watchdog(
        self: &Arc<Self>,
        lock_key: String,
        token: String,
    ) -> JoinHandle<()> {
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

    /// `SET NX PX` the lock and `GET` the entry, in one script. Also
    /// returns how long the lock has left (another filler's, when not
    /// acquired).
    pub(crate) async fn acquire(
        &self,
        key: &str,
        data_key: &str,
        lock_key: &str,
        token: &str,
    ) -> Result<Acquired<V>> {
        let lock_ms = i64::try_from(self.opts.lock_ttl.as_millis()).unwrap_or(i64::MAX);
        let reply: Value = self
            .redis_call(FILL_ACQUIRE.exec(
                self.redis.client(),
                vec![data_key.to_string(), lock_key.to_string()],
                vec![Value::from(token), Value::Integer(lock_ms)],
            ))
            .await?;
        let Value::Array(parts) = reply else {
            return Err(Error::protocol("fill_acquire: expected a 3-element array"));
        };
        let [acquired, data, left]: [Value; 3] = parts
            .try_into()
            .map_err(|_| Error::protocol("fill_acquire: expected a 3-element array"))?;
        let acquired = matches!(acquired, Value::Integer(1));
        let mut stored = data
            .into_bytes()
            .and_then(|b| self.decode_or_unlink(key, || Key::from(data_key), &b));
        if let Some(s) = &stored {
            if !self.tags_current_in_redis(&s.tags).await? {
                stored = None; // under a tag invalidated since: a miss
            }
        }
        let lock_left = match left {
            Value::Integer(ms) if ms > 0 => Duration::from_millis(ms.unsigned_abs()),
            // No TTL on the lock (-1, not ours) or gone (-2): assume a full one.
            _ => self.opts.lock_ttl,
        };
        Ok(Acquired {
            acquired,
            stored,
            lock_left,
        })
    }

    /// A fill (or eager refresh), run in its own task by the flight leader.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fill<F, Fut, E>(
        self: &Arc<Self>,
        key: &str,
        data_key: String,
        factory: F,
        stale: Option<(Option<V>, Origin)>,
        redis_up: bool,
        epoch: Option<Ticket>,
        accept_none: bool,
        mode: Mode,
        entry: EntryOptions,
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
        let ttl = entry.ttl.unwrap_or(self.opts.ttl);
        // The tags' versions are read before the factory runs (concurrently
        // with the lock): an invalidate_tag after this point makes the
        // value written a miss, never a stale hit.
        let mut stamp = Vec::new();
        if !redis_up && !entry.tags.is_empty() {
            stamp = self.tag_stamp_local(&entry.tags);
        }
        if redis_up {
            let (acquired, versions) = if entry.tags.is_empty() {
                (self.acquire(key, &data_key, &lock_key, &token).await, None)
            } else {
                let (a, v) = tokio::join!(
                    self.acquire(key, &data_key, &lock_key, &token),
                    self.tag_stamp(&entry.tags)
                );
                (a, Some(v))
            };
            stamp = match versions {
                None => Vec::new(),
                Some(Ok(s)) => s,
                Some(Err(_)) => self.tag_stamp_local(&entry.tags),
            };
            match acquired {
                Ok(Acquired {
                    acquired,
                    stored,
                    lock_left,
                }) => {
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
                        if let Mode::Refresh { created_ms } = mode {
                            // Another process is refreshing it: back off
                            // until the entry changes or its lock expires,
                            // instead of retrying on every hit.
                            incr(&self.local.metrics.eager_refresh_skips);
                            self.refresh_backoff(key, created_ms, lock_left);
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
        match mode {
            Mode::Fill => incr(&self.local.metrics.loads),
            Mode::Refresh { .. } => incr(&self.local.metrics.eager_refreshes),
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
            ttl,
            stamp,
            entry.adapt,
        )
        .await
    }

    pub(crate) async fn wait_for_fill(
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
                Ok(Acquired {
                    acquired, stored, ..
                }) => {
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

    pub(crate) async fn release_now(&self, lock_key: &str, token: &str) {
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_factory<F, Fut, E>(
        self: &Arc<Self>,
        key: &str,
        data_key: String,
        lock: Option<(String, String)>,
        factory: F,
        stale: Option<(Option<V>, Origin)>,
        redis_up: bool,
        value_ttl: Duration,
        stamp: Vec<(String, u64)>,
        adapt: Option<crate::options::AdaptSlot>,
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
            let began = std::time::Instant::now();
            let outcome = AssertUnwindSafe(async move { factory().await })
                .catch_unwind()
                .await;
            // XFetch's delta: what computing the value took (at least 1 ms).
            let delta_ms = u32::try_from(began.elapsed().as_millis())
                .unwrap_or(u32::MAX)
                .max(1);
            if let Some(w) = watchdog {
                w.abort();
            }
            let produced = match outcome {
                Ok(Ok(value)) => {
                    // An adaptive factory's decisions about this entry.
                    let adapted = adapt
                        .as_ref()
                        .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take())
                        .unwrap_or_default();
                    let mut ttl = if value.is_some() {
                        adapted.ttl.unwrap_or(value_ttl)
                    } else {
                        this.opts.negative_ttl
                    };
                    if !stamp.is_empty() {
                        ttl = ttl.min(this.opts.ttl); // tags' versions outlive it
                    }
                    let ttl = ttl.max(Duration::from_millis(1));
                    let max_stale = adapted.max_stale.unwrap_or(this.opts.max_stale);
                    let lock_ref = lock.as_ref().map(|(k, t)| (k.as_str(), t.as_str()));
                    if adapted.skip {
                        // Not cached: the value goes to this fill's callers.
                        if let Some((k, t)) = lock.clone() {
                            this.release(k, t);
                        }
                    } else if !redis_up {
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
                                tags: (!stamp.is_empty()).then(|| stamp.as_slice().into()),
                                delta_ms,
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
                        .store(
                            &task_key,
                            &data_key,
                            lock_ref,
                            value.as_ref(),
                            (ttl, max_stale),
                            &stamp,
                            delta_ms,
                        )
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

    pub(crate) fn produced<E>(
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
}

/// What `fill_acquire` answered.
pub(crate) struct Acquired<V> {
    pub(crate) acquired: bool,
    pub(crate) stored: Option<Stored<V>>,
    /// The lock's remaining life (another filler's, when not acquired).
    pub(crate) lock_left: Duration,
}

pub(crate) enum Waited<V> {
    Found(Stored<V>),
    Acquired,
    TimedOut,
    Unavailable,
}
