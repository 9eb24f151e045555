//! [`LockManager`]: acquire, wait, release, extend; the trait implementation.

use fredkit_core::IntoKeySpace;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::bytes_utils::Str;
use fredkit_conn::Redis;
use fredkit_core::traits::{DistributedLock, LockLease};
use fredkit_core::{KeySpace, Result};
use futures::future::join_all;
use tokio::time::Instant;
use tracing::Instrument;

use crate::grant::{self, check_ttl, new_token, LockKeys, Mode, Shared};
use crate::guard::{LockGuard, LostSignal};
use crate::metrics::{Counters, LockMetrics};
use crate::multi::LockSet;
use crate::options::{millis, LockOptions};
use crate::semaphore::Semaphore;
use crate::waiters::{Attempt, Waited};

/// Distributed locks under one key prefix, with fencing tokens, waiting
/// woken by pub/sub, an opt-in watchdog and optional replica confirmation.
///
/// Cheap to clone (an `Arc`); clones share one wake-up subscription and one
/// set of [counters](Self::metrics).
///
/// # Keys
///
/// For resource `r` under prefix `p`: `p:{r}:lock` (the holder's token, with
/// the TTL; a trailing `+` records that someone waits) and `p:{r}:fence`
/// (the fencing counter). Both share the hash tag `{r}`, so every script
/// runs on one node of a cluster. Wake-ups are published on `p:wake`.
///
/// **The fencing counter has no TTL, on purpose**: it holds the last token
/// granted, and tokens must keep growing across every grant for ever, also
/// after a quiet period longer than any TTL. It is one small integer per
/// resource ever locked. A grant draws `max(counter + 1, server time in µs)`,
/// so a counter lost (restart without persistence, eviction, deletion) or
/// behind (failover to a replica that missed the last grants) still yields a
/// token above every earlier one, given servers' clocks in sync (see the
/// [crate docs](crate#how-tokens-are-drawn-and-the-clock-they-rely-on)).
///
/// Locks are **not reentrant** (unlike Redisson's `RLock`): ownership is
/// the guard's token, not a task or thread, so a second `acquire` of a held
/// resource from the same task waits like anyone else's. Pass the guard (or
/// its [`LockContext`]) down instead of locking again.
///
/// # Round trips
///
/// | operation | round trips |
/// |---|---|
/// | `acquire` (free lock, or `wait` zero) | 1 script (`SET NX PX GET`, then `GET`, `TIME`, `SET` of the counter) |
/// | `acquire` while held | 1 per try; tries happen on wake-up, at the lock's expiry, or on the fallback poll |
/// | `acquire` with [`replicas`](crate::LockOptionsBuilder::replicas) | + 1 `WAIT` on the manager's own connection |
/// | `release`, `extend` | 1 script; `release` adds a `PUBLISH` inside the script only when someone waits |
/// | first waiting `acquire` of a manager | + 1 `SUBSCRIBE` (one subscription per manager, never per lock) |
/// | [`acquire_all`](Self::acquire_all) of N free locks | N scripts sent together (one round trip of latency) |
///
/// # Failure
///
/// Locks fail closed: any Redis error during `acquire` is returned as an
/// error, never as a granted lock.
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_lock::{LockManager, LockOptions};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let locks = LockManager::new(&redis, "app:locks")?;
/// let opts = LockOptions::builder()
///     .ttl(Duration::from_secs(10))
///     .wait(Duration::from_secs(2))
///     .build()?;
/// if let Some(guard) = locks.acquire("invoice:42", &opts).await? {
///     // ... do the work, passing guard.fencing_token() to the storage ...
///     let still_ours = guard.release().await?;
///     assert!(still_ours, "the lock expired during the work");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManager {
    shared: Arc<Shared>,
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("prefix", &self.shared.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// What the work of [`LockManager::with_lock`] gets.
#[derive(Clone, Debug)]
pub struct LockContext {
    /// The locked resource.
    pub resource: String,
    /// The grant's fencing token: pass it to the storage you protect.
    pub fencing_token: u64,
    /// Whether the lock is lost: check it, or select on
    /// [`LostSignal::lost`], to stop in time.
    pub lost: LostSignal,
}

impl LockManager {
    /// A manager for locks under `prefix` (e.g. `"app:locks"`). Opens no
    /// connection of its own until a caller waits for a busy lock (then one
    /// subscriber connection) or asks for replica confirmation (then one
    /// dedicated connection).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a prefix
    /// [`KeySpace::new`] rejects.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace) -> Result<LockManager> {
        Ok(LockManager {
            shared: Arc::new(Shared::new(redis, prefix)?),
        })
    }

    /// The key space of this manager.
    pub fn keys(&self) -> &KeySpace {
        &self.shared.keys
    }

    /// The pub/sub channel the release scripts publish wake-ups on.
    pub fn wake_channel(&self) -> &str {
        self.shared.waiters.channel()
    }

    /// Closes what this manager (with its clones and the
    /// [semaphores](Self::semaphore) made from it) owns, so that a process
    /// can stop without fred logging reset connections and without a task of
    /// the manager left:
    ///
    /// - the **wake-up subscription**: its dispatch task, and the subscriber
    ///   connection (unsubscribed, then `QUIT`; that `QUIT` completes in the
    ///   background within one round trip, at most 2 s);
    /// - the **replica-confirmation connection** (`QUIT`, in the background
    ///   as above), if
    ///   [`replicas`](crate::LockOptionsBuilder::replicas) ever made one;
    /// - the **background work**: releases of dropped guards and permits,
    ///   undos of unanswered tries — waited for; what is still running
    ///   after the limit is stopped, and its lock or permit expires at its
    ///   TTL.
    ///
    /// It does **not** close the [`Redis`] handle (the caller's: call
    /// [`Redis::shutdown`] after closing every primitive that uses it) and
    /// does not touch guards still alive: they keep their lock, their
    /// watchdog runs until they are released or dropped, and their release
    /// still works. Release them first for a clean stop.
    ///
    /// After `close` the manager still grants and releases locks (on the
    /// shared handle); a waiting `acquire` then waits by polling only (no
    /// subscription is made again), and an acquire with replica
    /// confirmation fails with
    /// [`ErrorKind::Connection`](fredkit_core::ErrorKind::Connection)
    /// (no connection of its own is opened again).
    ///
    /// Waits at most twice the command timeout (at least 2 s) for each of
    /// the three. Idempotent: a second call (from any clone) returns once
    /// the first has closed what it took. Cancellation: dropping the future
    /// halfway leaves the manager closed; what it had not closed yet closes
    /// when the last clone is dropped (connections) or ends on its own
    /// (background work).
    pub async fn close(&self) {
        self.shared.close().await;
    }

    /// This manager's counters.
    pub fn metrics(&self) -> LockMetrics {
        self.shared.counters.snapshot()
    }

    /// A counting semaphore named `name` with `permits` permits, sharing this
    /// manager's prefix, wake-up subscription and counters. See [`Semaphore`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for an empty name or zero permits.
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore> {
        Semaphore::new(self.shared.clone(), name, permits)
    }

    /// Takes the lock on `resource`, waiting up to `opts.wait()` if it is
    /// busy. `Ok(None)` when it stayed busy (with the default zero wait:
    /// when it was busy at the one try).
    ///
    /// Waiting costs no busy loop: a failed try marks the held lock as
    /// awaited (in the same script), the holder's release then publishes a
    /// wake-up, and this manager's one subscription wakes one local waiter.
    /// A try also happens when the lock's TTL runs out (a crashed holder)
    /// and on the fallback poll (capped backoff with jitter), which covers
    /// wake-ups lost to a reconnect. No fairness is promised.
    ///
    /// `opts.wait()` bounds the waiting, not a try already sent: a try is
    /// never abandoned half-way (that could leave the lock granted to
    /// nobody), so with a slow or stalled Redis the call can return up to
    /// one command timeout after the wait (plus the `WAIT` timeout with
    /// replica confirmation) — with an error, never a grant.
    ///
    /// Round trips: one script per try (see the [type docs](Self)).
    ///
    /// # Errors
    ///
    /// Fails closed: a connection error, timeout or script error is returned,
    /// never turned into a grant; the lock is then not held by this caller.
    /// A try that timed out may still run later (a stalled server has it in
    /// its input) and grant the lock to a token nobody holds: such a try is
    /// undone in the background (a compare-token release queued behind it on
    /// the same connection, sent again twice a second apart), so the lock is
    /// not blocked for a whole TTL. A try that fred sends again after a
    /// reconnect is the same grant, with the same fencing token, not "busy".
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for an
    /// empty resource.
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) when a key
    /// holds what this crate never writes — a fencing counter that is not a
    /// decimal number below 2^53, a lock key of another type or without
    /// expiry: the message names the key and what to do; the try wrote
    /// nothing (a waiting caller gets it at once). With replica confirmation,
    /// [`ErrorKind::Timeout`](fredkit_core::ErrorKind::Timeout) when too few
    /// replicas confirmed (the grant was undone).
    ///
    /// **Cancellation.** Dropping the future while a try is in flight may
    /// leave a lock granted to nobody; it expires after its TTL (keep TTLs
    /// short, or let the watchdog renew long work). Wrap `acquire` in your
    /// own timeout only if you accept that; `opts.wait()` and the command
    /// timeout already bound it.
    pub async fn acquire(&self, resource: &str, opts: &LockOptions) -> Result<Option<LockGuard>> {
        let span = tracing::debug_span!(
            "fredkit.lock.acquire",
            primitive = "lock",
            outcome = tracing::field::Empty,
            tries = tracing::field::Empty,
            duration_us = tracing::field::Empty
        );
        let started = std::time::Instant::now();
        let result = self
            .acquire_inner(resource, opts)
            .instrument(span.clone())
            .await;
        self.shared.counters.acquire_wait.record_since(started);
        span.record("duration_us", started.elapsed().as_micros() as u64);
        span.record(
            "outcome",
            match &result {
                Ok(Some(_)) => "acquired",
                Ok(None) => "busy",
                Err(_) => "error",
            },
        );
        result
    }

    async fn acquire_inner(&self, resource: &str, opts: &LockOptions) -> Result<Option<LockGuard>> {
        let keys = self.shared.lock_keys(resource)?;
        let token = new_token();
        if opts.wait.is_zero() {
            let started = Instant::now();
            return match self
                .shared
                .try_grant(&keys, &token, opts, Mode::Single)
                .await?
            {
                Attempt::Granted(fence) => Ok(Some(
                    self.guard(resource, keys, token, fence, opts, started),
                )),
                Attempt::Held(_) => {
                    Counters::add(&self.shared.counters.contended);
                    Ok(None)
                }
            };
        }

        let lock_key = String::from_utf8_lossy(keys.lock.as_bytes()).into_owned();
        let waited = self
            .shared
            .waiters
            .wait_for(&lock_key, opts, |t| {
                let mode = if t.retry {
                    Mode::Retry
                } else {
                    Mode::FirstWait
                };
                self.shared.try_grant(&keys, &token, opts, mode)
            })
            .await?;
        match waited {
            Waited::Granted { value, at, tries } => {
                tracing::Span::current().record("tries", tries);
                Ok(Some(self.guard(resource, keys, token, value, opts, at)))
            }
            Waited::TimedOut { tries } => {
                tracing::Span::current().record("tries", tries);
                Ok(None)
            }
        }
    }

    /// Takes the locks on every resource in `resources`, **all or nothing**,
    /// waiting up to `opts.wait()` in all: `Ok(Some(set))` holds every one
    /// of them (duplicates count once), `Ok(None)` holds none (some stayed
    /// busy). Each resource gets its own grant and **fencing token**; the
    /// [`LockSet`] releases them together. The resources may live on
    /// different hash slots (different nodes of a cluster): each lock is its
    /// own key, as with [`acquire`](Self::acquire).
    ///
    /// **Deadlock-free**: two callers never wait for each other in a cycle.
    /// The set is first tried at once without waiting (no caller waits
    /// while holding anything); if some resource is busy, what was taken is
    /// released and the locks are then taken one by one in **sorted order**
    /// (byte order of the names), each waiting at most what is left of
    /// `opts.wait()`. Every caller of `acquire_all` waits in the same order,
    /// so no cycle can form. Not covered: a caller that already holds a lock
    /// (from `acquire`) and then calls `acquire_all` on a set that sorts
    /// below it — take everything in one `acquire_all` instead (its wait
    /// still bounds such a wait). No fairness is promised.
    ///
    /// Round trips, for N resources:
    ///
    /// | case | round trips |
    /// |---|---|
    /// | all free | N scripts sent together: one round trip of latency (on a cluster, each node its share, in parallel) |
    /// | some busy | the above, + N' releases together (what the first pass took), + one script per resource per try, one resource after another |
    /// | `release` / `extend` of the set | N scripts sent together |
    ///
    /// Options apply to every lock: TTL, watchdog (one per lock), replica
    /// confirmation (one `WAIT` per lock, one after another). A set is
    /// never handed out with a lock already run out: if an early lock's TTL
    /// passes while a later one is awaited (a TTL shorter than the wait, no
    /// watchdog), everything is released and taken again while the wait
    /// lasts — give a TTL longer than the wait, or the watchdog.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for
    /// no resource or an empty name (checked before anything is tried).
    /// Otherwise as [`acquire`](Self::acquire): a Redis error during any try
    /// fails closed — the locks already taken are released first (a release
    /// that fails leaves its lock to expire at its TTL) and the first error
    /// is returned.
    ///
    /// **Cancellation.** Dropping the future releases in the background
    /// every lock already taken (their guards are dropped); a try in flight
    /// may still grant its lock to nobody, which expires at its TTL.
    pub async fn acquire_all<S: AsRef<str>>(
        &self,
        resources: &[S],
        opts: &LockOptions,
    ) -> Result<Option<LockSet>> {
        let span = tracing::debug_span!(
            "fredkit.lock.acquire_all",
            primitive = "lock",
            resources = resources.len(),
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty
        );
        let started = std::time::Instant::now();
        let result = self
            .acquire_all_inner(resources, opts)
            .instrument(span.clone())
            .await;
        span.record("duration_us", started.elapsed().as_micros() as u64);
        span.record(
            "outcome",
            match &result {
                Ok(Some(_)) => "acquired",
                Ok(None) => "busy",
                Err(_) => "error",
            },
        );
        result
    }

    async fn acquire_all_inner<S: AsRef<str>>(
        &self,
        resources: &[S],
        opts: &LockOptions,
    ) -> Result<Option<LockSet>> {
        let mut names: Vec<&str> = resources.iter().map(AsRef::as_ref).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Err(fredkit_core::Error::invalid_input(
                "acquire_all needs at least one resource",
            ));
        }
        for name in &names {
            self.shared.lock_keys(name)?;
        }
        let deadline = Instant::now() + opts.wait;

        // First pass: everything at once, nobody waits while holding.
        let mut once = opts.clone();
        once.wait = Duration::ZERO;
        let tries = join_all(names.iter().map(|r| self.acquire(r, &once))).await;
        let mut taken = Vec::with_capacity(names.len());
        let mut first_error = None;
        let mut busy = false;
        for t in tries {
            match t {
                Ok(Some(g)) => taken.push(g),
                Ok(None) => busy = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_none() && !busy {
            return Ok(Some(LockSet::new(taken)));
        }
        roll_back(taken).await;
        if let Some(e) = first_error {
            return Err(e);
        }
        if opts.wait.is_zero() {
            return Ok(None);
        }

        // Then one by one in sorted order, each waiting what is left. A
        // lock taken early may run out while a later one is awaited (a TTL
        // shorter than the wait, no watchdog): then the set is never handed
        // out; everything is released and taken again while the wait lasts.
        loop {
            let mut held: Vec<LockGuard> = Vec::with_capacity(names.len());
            for name in &names {
                let mut step = opts.clone();
                step.wait = deadline.saturating_duration_since(Instant::now());
                match self.acquire(name, &step).await {
                    Ok(Some(g)) => held.push(g),
                    Ok(None) => {
                        roll_back(held).await;
                        return Ok(None);
                    }
                    Err(e) => {
                        roll_back(held).await;
                        return Err(e);
                    }
                }
            }
            if !held.iter().any(LockGuard::is_lost) {
                return Ok(Some(LockSet::new(held)));
            }
            roll_back(held).await;
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn guard(
        &self,
        resource: &str,
        keys: LockKeys,
        token: Str,
        fencing_token: u64,
        opts: &LockOptions,
        requested_at: Instant,
    ) -> LockGuard {
        Counters::add(&self.shared.counters.acquired);
        LockGuard::new(
            self.shared.clone(),
            resource,
            keys.lock,
            token,
            fencing_token,
            opts,
            requested_at,
        )
    }

    /// Runs `work` under the lock on `resource` and releases the lock
    /// afterwards, whatever happens: when `work` completes (released at
    /// once), panics or is cancelled (the guard is dropped and releases in
    /// the background).
    ///
    /// `Ok(None)` when the lock could not be taken within `opts.wait()`
    /// (`work` did not run). `work` gets a [`LockContext`] with the fencing
    /// token and a [`LostSignal`]. If the lock was lost before `work`
    /// finished, its result is still returned (a warning is logged and
    /// [`LockMetrics::lost`] counts it): protect the storage with the fencing
    /// token and check `lost` inside `work`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire). A failed release is logged, not
    /// returned (the lock expires at its TTL).
    pub async fn with_lock<F, Fut, T>(
        &self,
        resource: &str,
        opts: &LockOptions,
        work: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce(LockContext) -> Fut,
        Fut: Future<Output = T>,
    {
        let Some(guard) = self.acquire(resource, opts).await? else {
            return Ok(None);
        };
        let ctx = LockContext {
            resource: resource.to_string(),
            fencing_token: guard.fencing_token(),
            lost: guard.lost_signal(),
        };
        let out = work(ctx).await;
        match guard.release().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("fredkit.lock: the lock expired before with_lock's work finished")
            }
            Err(e) => {
                tracing::warn!(error = %e, "fredkit.lock: release after with_lock failed; the lock expires at its TTL")
            }
        }
        Ok(Some(out))
    }
}

#[async_trait]
impl DistributedLock for LockManager {
    async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Option<LockLease>> {
        check_ttl(ttl)?;
        let keys = self.shared.lock_keys(resource)?;
        let token = new_token();
        let r = grant::attempt(
            self.shared.redis.client(),
            &self.shared.background,
            &keys,
            &token,
            millis(ttl).max(1),
            Mode::Single,
        )
        .await?;
        match r {
            Attempt::Granted(fencing_token) => {
                Counters::add(&self.shared.counters.acquired);
                Ok(Some(LockLease {
                    resource: resource.to_string(),
                    token: token.to_string(),
                    fencing_token,
                }))
            }
            Attempt::Held(_) => {
                Counters::add(&self.shared.counters.contended);
                Ok(None)
            }
        }
    }

    async fn release(&self, lease: &LockLease) -> Result<bool> {
        let keys = self.shared.lock_keys(&lease.resource)?;
        grant::release(&self.shared, &keys.lock, &Str::from(lease.token.as_str())).await
    }

    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool> {
        check_ttl(ttl)?;
        let keys = self.shared.lock_keys(&lease.resource)?;
        grant::extend(
            &self.shared,
            &keys.lock,
            &Str::from(lease.token.as_str()),
            millis(ttl).max(1),
        )
        .await
    }
}

/// Releases what a failed `acquire_all` took, all at once. A release that
/// fails leaves its lock to expire at its TTL.
async fn roll_back(taken: Vec<LockGuard>) {
    for r in join_all(taken.into_iter().map(LockGuard::release)).await {
        if let Err(e) = r {
            tracing::debug!(error = %e, "fredkit.lock: acquire_all: a lock taken before the failure was not released; it expires at its TTL");
        }
    }
}
