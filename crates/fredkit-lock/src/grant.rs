//! The grant and release machinery every primitive shares: the state a
//! manager hands to its guards and semaphores ([`Shared`]), the lock
//! scripts, key building, one try (with its undo when it got no answer),
//! release, extend, and background release for dropped guards.
//!
//! Dependencies run one way: the manager, guards, semaphores and Redlock use
//! this module; it uses only the leaves (`waiters`, `metrics`, `options`,
//! `reply`).

use fredkit_core::IntoKeySpace;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::clients::Client;
use fred::interfaces::{ClientLike, ServerInterface};
use fred::prelude::Options;
use fred::types::{ClusterHash, Key, Value};
use fredkit_conn::{Dedicated, Redis};
use fredkit_core::{Error, ErrorKind, KeySpace, Result, Script};
use tokio::task::JoinSet;

use crate::metrics::Counters;
use crate::options::{millis, LockOptions, MAX_TTL};
use crate::reply;
use crate::waiters::{Attempt, Waiters};

pub(crate) static ACQUIRE: Script =
    Script::new("lock_acquire", include_str!("../scripts/acquire.lua"));
pub(crate) static RELEASE: Script =
    Script::new("lock_release", include_str!("../scripts/release.lua"));
pub(crate) static EXTEND: Script =
    Script::new("lock_extend", include_str!("../scripts/extend.lua"));

/// The shared state of a manager, its guards and semaphores.
pub(crate) struct Shared {
    pub(crate) redis: Redis,
    pub(crate) keys: KeySpace,
    pub(crate) channel: Str,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) counters: Arc<Counters>,
    /// The connection for grants that need `WAIT` (blocking): made on first use.
    replica_conn: tokio::sync::Mutex<Option<Dedicated<Client>>>,
    /// Releases of dropped guards and permits, undos of unanswered tries.
    pub(crate) background: Background,
    /// Set by `close`: no connection is opened any more.
    closed: AtomicBool,
}

/// Background work (releases of dropped guards and permits, undos of
/// unanswered tries), tracked so that `close` can wait for it. Finished
/// tasks are reaped whenever a new one starts, so the set stays as small as
/// what is in flight.
#[derive(Default)]
pub(crate) struct Background {
    tasks: std::sync::Mutex<JoinSet<()>>,
}

impl Background {
    fn set(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` on `rt`, tracked.
    pub(crate) fn spawn_on<F>(&self, rt: &tokio::runtime::Handle, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut set = self.set();
        while set.try_join_next().is_some() {}
        set.spawn_on(work, rt);
    }

    /// Waits up to `limit` for the tracked work to finish, then aborts what
    /// is left (a release not done then leaves its lock to expire at its
    /// TTL) and waits for the aborted tasks to end.
    pub(crate) async fn drain(&self, limit: Duration) {
        let mut set = std::mem::take(&mut *self.set());
        if tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::debug!("fredkit.lock: close: background releases still running were stopped; their locks expire at their TTL");
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }
}

/// The keys of one resource's lock, both in the resource's hash slot.
pub(crate) struct LockKeys {
    pub(crate) lock: Key,
    pub(crate) fence: Key,
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

impl Shared {
    /// The state of a manager under `prefix`; wake-ups on `p:wake`.
    pub(crate) fn new(redis: &Redis, prefix: impl IntoKeySpace) -> Result<Shared> {
        let keys = prefix.into_key_space()?;
        let channel = keys.key(["wake"]);
        let counters = Arc::new(Counters::new(keys.prefix()));
        Ok(Shared {
            redis: redis.clone(),
            waiters: Arc::new(Waiters::new(
                channel.clone(),
                redis.clone(),
                counters.clone(),
            )),
            channel: Str::from(channel),
            keys,
            counters,
            replica_conn: tokio::sync::Mutex::new(None),
            background: Background::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// The longest `close` waits for each thing it closes: twice the command
    /// timeout, at least 2 s.
    fn close_limit(&self) -> Duration {
        self.redis
            .config()
            .command_timeout()
            .saturating_mul(2)
            .max(Duration::from_secs(2))
    }

    /// Closes the wake-up subscription, the replica-confirmation connection
    /// and the background work (see `LockManager::close`). Idempotent.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let limit = self.close_limit();
        self.waiters.close(limit).await;
        let conn = self.replica_conn.lock().await.take();
        // Dropping it sends QUIT in the background (fredkit-conn), which
        // completes within one round trip; a QUIT of our own first would make
        // that one log a warning (fred: "quit client that was already
        // stopped").
        drop(conn);
        self.background.drain(limit).await;
    }

    /// The keys of `resource`'s lock.
    pub(crate) fn lock_keys(&self, resource: &str) -> Result<LockKeys> {
        if resource.is_empty() {
            return Err(Error::invalid_input(
                "a lock resource name must not be empty",
            ));
        }
        Ok(LockKeys {
            lock: Key::from(self.keys.tagged(resource, ["lock"])?),
            fence: Key::from(self.keys.tagged(resource, ["fence"])?),
        })
    }

    /// One try, on the shared connection or, with replica confirmation, on
    /// the manager's own connection followed by `WAIT`.
    pub(crate) async fn try_grant(
        &self,
        keys: &LockKeys,
        token: &Str,
        opts: &LockOptions,
        mode: Mode,
    ) -> Result<Attempt> {
        let Some((replicas, timeout)) = opts.replicas else {
            return attempt(
                self.redis.client(),
                &self.background,
                keys,
                token,
                opts.ttl_ms(),
                mode,
            )
            .await;
        };
        let mut conn = self.replica_conn.lock().await;
        if conn.is_none() {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::connection(format!(
                    "the lock manager under '{}' was closed: replica confirmation needs its own connection, which a closed manager does not open again; nothing was tried (make a new manager)",
                    self.keys.prefix()
                )));
            }
            *conn = Some(self.redis.dedicated()?);
        }
        let Some(client) = conn.as_ref() else {
            return Err(Error::connection(
                "no dedicated connection for replica confirmation",
            ));
        };
        // A connection still coming up has, on a cluster, no routing state:
        // fred fails its commands ("Missing cluster routing state") instead
        // of queueing them, so the first try of a manager always failed.
        let connect_timeout = self.redis.config().connect_timeout();
        if let Err(e) = client.wait_connected(connect_timeout).await {
            *conn = None;
            return Err(Error::timeout(format!(
                "replica confirmation: the manager's own connection did not come up within {connect_timeout:?} ({e}); nothing was tried (check that Redis is reachable, or raise connect_timeout)"
            )));
        }
        let attempt = match attempt(
            client.client(),
            &self.background,
            keys,
            token,
            opts.ttl_ms(),
            mode,
        )
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
                timeout: Some(timeout + self.redis.config().command_timeout()),
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
                    let undone = release(self, &keys.lock, token).await;
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

/// One run of `acquire.lua`. A try that fails without an answer (a
/// timeout: the server may be stalled with the script still in its
/// input) may yet grant the lock to this token, which nobody will hold:
/// an undo is queued behind it on the same connection (see [`undo`]).
pub(crate) async fn attempt(
    client: &Client,
    background: &Background,
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
            undo(client, background, &e, move |c| {
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
pub(crate) fn undo<F, Fut>(client: &Client, background: &Background, error: &Error, release: F)
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
    background.spawn_on(&rt, async move {
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

/// Runs the release script and counts the outcome.
pub(crate) async fn release(shared: &Shared, lock_key: &Key, token: &Str) -> Result<bool> {
    let r: i64 = RELEASE
        .exec(
            shared.redis.client(),
            lock_key.clone(),
            Value::String(token.clone()),
        )
        .await?;
    if r > 0 {
        Counters::add(&shared.counters.released);
        Ok(true)
    } else {
        Counters::add(&shared.counters.release_not_held);
        Ok(false)
    }
}

/// Runs the extend script: `true` when `token` still held the lock and its
/// TTL is now `ttl_ms`.
pub(crate) async fn extend(
    shared: &Shared,
    lock_key: &Key,
    token: &Str,
    ttl_ms: i64,
) -> Result<bool> {
    let r: i64 = EXTEND
        .exec(
            shared.redis.client(),
            lock_key.clone(),
            vec![Value::String(token.clone()), Value::Integer(ttl_ms)],
        )
        .await?;
    Ok(r == 1)
}

/// Runs `release` in the background for a guard being dropped: on the
/// current runtime, or, when dropped on a thread without one, on the runtime
/// the guard was made on (`made_on`), tracked by `background`. If neither
/// runtime runs any more, the lock (or permit) expires at its TTL.
pub(crate) fn spawn_release<F>(
    made_on: Option<&tokio::runtime::Handle>,
    background: &Background,
    release: F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => background.spawn_on(&rt, release),
        Err(_) => match made_on {
            Some(rt) => background.spawn_on(rt, release),
            None => tracing::debug!(
                "fredkit.lock: dropped outside a runtime; the lock expires at its TTL"
            ),
        },
    }
}

/// A random 128-bit holder token, as 32 hex digits.
pub(crate) fn new_token() -> Str {
    Str::from(format!("{:032x}", rand::random::<u128>()))
}

pub(crate) fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::invalid_input(format!(
            "lock ttl must be between 1 ms and 24 h, got {ttl:?}"
        )));
    }
    Ok(())
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
