//! [`LockManager`]: acquire, wait, release, extend; the trait implementation.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::{ClientLike, ServerInterface};
use fred::prelude::Options;
use fred::types::{ClusterHash, Key, Value};
use fredkit_conn::{Dedicated, Redis};
use fredkit_core::traits::{DistributedLock, LockLease};
use fredkit_core::{Error, ErrorKind, KeySpace, Result, Script};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::guard::{self, LeaseState, LockGuard, LostSignal};
use crate::metrics::{Counters, LockMetrics};
use crate::options::{millis, LockOptions, MAX_TTL};
use crate::reply;
use crate::semaphore::Semaphore;
use crate::waiters::{wait_for, Waited, Waiters};

pub(crate) static ACQUIRE: Script =
    Script::new("lock_acquire", include_str!("../scripts/acquire.lua"));
pub(crate) static RELEASE: Script =
    Script::new("lock_release", include_str!("../scripts/release.lua"));
pub(crate) static EXTEND: Script =
    Script::new("lock_extend", include_str!("../scripts/extend.lua"));

/// The shared state of a manager, its guards and semaphores.
pub(crate) struct Inner {
    pub(crate) redis: Redis,
    pub(crate) keys: KeySpace,
    pub(crate) channel: Str,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) counters: Arc<Counters>,
    /// The connection for grants that need `WAIT` (blocking): made on first use.
    replica_conn: tokio::sync::Mutex<Option<Dedicated<Client>>>,
}

/// The keys of one resource's lock, both in the resource's hash slot.
pub(crate) struct LockKeys {
    pub(crate) lock: Key,
    pub(crate) fence: Key,
}

/// The outcome of one try.
pub(crate) enum Attempt {
    /// Granted with this fencing token (or, for a semaphore, permits held).
    Granted(u64),
    /// Held by someone else for about this much longer.
    Held(Duration),
}

/// How a try is made (ARGV[3] of `acquire.lua`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// One try; nothing recorded.
    Single = 0,
    /// A waiting caller's first try: record the waiter on a busy lock.
    FirstWait = 1,
    /// A waiting caller's retry: as `FirstWait`, and a won lock starts
    /// marked (other waiters may still be asleep).
    Retry = 2,
}

/// Decodes the reply of `acquire.lua` / `sem_acquire.lua`.
pub(crate) fn attempt_from(script: &str, r: i64) -> Result<Attempt> {
    match r {
        r if r >= 1 => Ok(Attempt::Granted(r.unsigned_abs())),
        r if r <= -1 => Ok(Attempt::Held(Duration::from_millis(
            (-1 - r).unsigned_abs(),
        ))),
        _ => Err(Error::protocol(format!(
            "script '{script}' returned 0, which it never does"
        ))),
    }
}

/// Undoes, in the background, a try that failed without an answer: its
/// script may still run (a stalled server has it in its input; fred may
/// resend it after a reconnect) and grant a lock or permit to a token nobody
/// holds, blocking everyone for a TTL. `release` is a compare-token script,
/// so it touches nothing but such a grant. It goes out on the same client
/// (connection) as the try, so a stalled server runs it right after the try;
/// it is sent twice more, a second apart, to cover a try resent on a new
/// connection. Only for errors after which the try may have run (timeouts,
/// connection errors). Without a runtime nothing is done (the grant, if
/// any, expires at its TTL).
pub(crate) fn undo<F, Fut>(client: &Client, error: &Error, release: F)
where
    F: Fn(Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    if !matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Connection) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client = client.clone();
    rt.spawn(async move {
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Err(e) = release(client.clone()).await {
                tracing::debug!(error = %e, "fredkit.lock: undo of an unanswered try failed (it is sent again)");
            }
        }
    });
}

/// A random 128-bit holder token, as 32 hex digits.
pub(crate) fn new_token() -> Str {
    Str::from(format!("{:032x}", rand::random::<u128>()))
}

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
/// | `acquire` (free lock, or `wait` zero) | 1 script (`GET`s, `TIME`, `SET PX`, `SET` of the counter) |
/// | `acquire` while held | 1 per try; tries happen on wake-up, at the lock's expiry, or on the fallback poll |
/// | `acquire` with [`replicas`](crate::LockOptionsBuilder::replicas) | + 1 `WAIT` on the manager's own connection |
/// | `release`, `extend` | 1 script; `release` adds a `PUBLISH` inside the script only when someone waits |
/// | first waiting `acquire` of a manager | + 1 `SUBSCRIBE` (one subscription per manager, never per lock) |
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
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("prefix", &self.inner.keys.prefix())
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
    pub fn new(redis: &Redis, prefix: &str) -> Result<LockManager> {
        let keys = KeySpace::new(prefix)?;
        let channel = keys.key(["wake"]);
        Ok(LockManager {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                waiters: Arc::new(Waiters::new(channel.clone())),
                channel: Str::from(channel),
                keys,
                counters: Arc::new(Counters::default()),
                replica_conn: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The key space of this manager.
    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The pub/sub channel the release scripts publish wake-ups on.
    pub fn wake_channel(&self) -> &str {
        self.inner.waiters.channel()
    }

    /// This manager's counters.
    pub fn metrics(&self) -> LockMetrics {
        self.inner.counters.snapshot()
    }

    /// A counting semaphore named `name` with `permits` permits, sharing this
    /// manager's prefix, wake-up subscription and counters. See [`Semaphore`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for an empty name or zero permits.
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore> {
        Semaphore::new(self.clone(), name, permits)
    }

    pub(crate) fn lock_keys(&self, resource: &str) -> Result<LockKeys> {
        if resource.is_empty() {
            return Err(Error::invalid_input(
                "a lock resource name must not be empty",
            ));
        }
        let ks = &self.inner.keys;
        Ok(LockKeys {
            lock: Key::from(ks.tagged(resource, ["lock"])?),
            fence: Key::from(ks.tagged(resource, ["fence"])?),
        })
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
        let keys = self.lock_keys(resource)?;
        let token = new_token();
        if opts.wait.is_zero() {
            let started = Instant::now();
            return match self.try_grant(&keys, &token, opts, Mode::Single).await? {
                Attempt::Granted(fence) => Ok(Some(
                    self.guard(resource, keys, token, fence, opts, started),
                )),
                Attempt::Held(_) => {
                    Counters::add(&self.inner.counters.contended);
                    Ok(None)
                }
            };
        }

        let lock_key = String::from_utf8_lossy(keys.lock.as_bytes()).into_owned();
        let waited = wait_for(&self.inner, &lock_key, opts, |t| {
            let mode = if t.retry {
                Mode::Retry
            } else {
                Mode::FirstWait
            };
            self.try_grant(&keys, &token, opts, mode)
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

    /// One try, on the shared connection or, with replica confirmation, on
    /// the manager's own connection followed by `WAIT`.
    async fn try_grant(
        &self,
        keys: &LockKeys,
        token: &Str,
        opts: &LockOptions,
        mode: Mode,
    ) -> Result<Attempt> {
        let Some((replicas, timeout)) = opts.replicas else {
            return self
                .attempt(self.inner.redis.client(), keys, token, opts.ttl_ms(), mode)
                .await;
        };
        let mut conn = self.inner.replica_conn.lock().await;
        if conn.is_none() {
            *conn = Some(self.inner.redis.dedicated()?);
        }
        let Some(client) = conn.as_ref() else {
            return Err(Error::connection(
                "no dedicated connection for replica confirmation",
            ));
        };
        let attempt = match self
            .attempt(client.client(), keys, token, opts.ttl_ms(), mode)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                if e.kind() == ErrorKind::Timeout {
                    // Silent connection (a paused server, a dead host, a
                    // primary failed over without closing it): the next try
                    // opens a new one, which also re-reads a Sentinel or
                    // cluster topology. Dropping this one QUITs it behind the
                    // undo already queued on it.
                    *conn = None;
                }
                return Err(e);
            }
        };
        if let Attempt::Granted(_) = attempt {
            let options = Options {
                cluster_hash: Some(ClusterHash::Custom(fred::util::redis_keyslot(
                    keys.lock.as_bytes(),
                ))),
                timeout: Some(timeout + self.inner.redis.config().command_timeout()),
                ..Options::default()
            };
            let acked: Result<i64> = client
                .with_options(&options)
                .wait::<i64>(i64::from(replicas), millis(timeout))
                .await
                .map_err(Error::from);
            if matches!(&acked, Err(e) if e.kind() == ErrorKind::Timeout) {
                // WAIT unanswered past its own timeout plus a command
                // timeout: the connection is silent; the next try opens a
                // new one (see above).
                *conn = None;
            }
            drop(conn);
            match acked {
                Ok(n) if n >= i64::from(replicas) => {}
                other => {
                    // Undo the grant: fail closed.
                    let undone = guard::release(&self.inner, &keys.lock, token).await;
                    let why = match other {
                        Ok(n) => format!(
                            "only {n} of {replicas} replicas confirmed the lock within {timeout:?}"
                        ),
                        Err(e) => format!("WAIT failed: {e}"),
                    };
                    return Err(Error::timeout(format!(
                        "{why}; the grant was undone{} (add replicas, raise the timeout, or drop replica confirmation)",
                        if undone.is_err() { " (the undo failed: the lock expires at its TTL)" } else { "" }
                    )));
                }
            }
        }
        Ok(attempt)
    }

    /// One run of `acquire.lua`. A try that fails without an answer (a
    /// timeout: the server may be stalled with the script still in its
    /// input) may yet grant the lock to this token, which nobody will hold:
    /// an undo is queued behind it on the same connection (see [`undo`]).
    async fn attempt(
        &self,
        client: &Client,
        keys: &LockKeys,
        token: &Str,
        ttl_ms: i64,
        mode: Mode,
    ) -> Result<Attempt> {
        let r: Result<Value> = ACQUIRE
            .exec(
                client,
                vec![keys.lock.clone(), keys.fence.clone()],
                vec![
                    Value::String(token.clone()),
                    Value::Integer(ttl_ms),
                    Value::Integer(mode as i64),
                ],
            )
            .await;
        match r {
            Ok(r) => attempt_from(ACQUIRE.name(), reply::integer(ACQUIRE.name(), r)?),
            Err(e) => {
                let (lock, token) = (keys.lock.clone(), token.clone());
                undo(client, &e, move |c| {
                    let (lock, token) = (lock.clone(), token.clone());
                    async move {
                        RELEASE
                            .exec::<_, i64, _, _>(&c, lock, Value::String(token))
                            .await
                            .map(|_| ())
                    }
                });
                Err(e)
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
        Counters::add(&self.inner.counters.acquired);
        let (state, _) = watch::channel(LeaseState {
            lost: false,
            valid_until: requested_at + opts.ttl,
        });
        let state = Arc::new(state);
        let watchdog = opts.watchdog.then(|| {
            tokio::spawn(guard::watchdog(
                self.inner.clone(),
                keys.lock.clone(),
                token.clone(),
                opts.ttl,
                state.clone(),
            ))
            .abort_handle()
        });
        LockGuard {
            inner: self.inner.clone(),
            resource: resource.to_string(),
            lock_key: keys.lock,
            token,
            fencing_token,
            ttl: opts.ttl,
            state,
            watchdog,
            runtime: tokio::runtime::Handle::try_current().ok(),
            done: false,
        }
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

pub(crate) fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::invalid_input(format!(
            "lock ttl must be between 1 ms and 24 h, got {ttl:?}"
        )));
    }
    Ok(())
}

#[async_trait]
impl DistributedLock for LockManager {
    async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Option<LockLease>> {
        check_ttl(ttl)?;
        let keys = self.lock_keys(resource)?;
        let token = new_token();
        let r = self
            .attempt(
                self.inner.redis.client(),
                &keys,
                &token,
                millis(ttl).max(1),
                Mode::Single,
            )
            .await?;
        match r {
            Attempt::Granted(fencing_token) => {
                Counters::add(&self.inner.counters.acquired);
                Ok(Some(LockLease {
                    resource: resource.to_string(),
                    token: token.to_string(),
                    fencing_token,
                }))
            }
            Attempt::Held(_) => {
                Counters::add(&self.inner.counters.contended);
                Ok(None)
            }
        }
    }

    async fn release(&self, lease: &LockLease) -> Result<bool> {
        let keys = self.lock_keys(&lease.resource)?;
        guard::release(&self.inner, &keys.lock, &Str::from(lease.token.as_str())).await
    }

    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool> {
        check_ttl(ttl)?;
        let keys = self.lock_keys(&lease.resource)?;
        let r: i64 = EXTEND
            .exec(
                self.inner.redis.client(),
                keys.lock,
                vec![
                    Value::from(lease.token.as_str()),
                    Value::Integer(millis(ttl).max(1)),
                ],
            )
            .await?;
        Ok(r == 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn acquire_replies_decode_to_grants_and_remaining_ttls() {
        assert!(matches!(attempt_from("a", 1).unwrap(), Attempt::Granted(1)));
        assert!(matches!(
            attempt_from("a", 42).unwrap(),
            Attempt::Granted(42)
        ));
        assert!(matches!(attempt_from("a", -1).unwrap(), Attempt::Held(d) if d.is_zero()));
        assert!(
            matches!(attempt_from("a", -1501).unwrap(), Attempt::Held(d) if d == Duration::from_millis(1500))
        );
        assert_eq!(
            attempt_from("a", 0).err().map(|e| e.kind()),
            Some(fredkit_core::ErrorKind::Protocol)
        );
    }

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn modes_match_the_script_contract() {
        assert_eq!(Mode::Single as i64, 0);
        assert_eq!(Mode::FirstWait as i64, 1);
        assert_eq!(Mode::Retry as i64, 2);
    }
}
