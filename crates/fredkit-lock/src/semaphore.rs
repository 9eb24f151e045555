//! [`Semaphore`]: a counting semaphore whose permits expire.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::types::{Key, Value};
use fredkit_core::{Error, Result, Script};
use tracing::Instrument;

use crate::grant::{attempt_from, check_ttl, new_token, spawn_release, undo, Shared};
use crate::metrics::Counters;
use crate::options::{millis, LockOptions};
use crate::reply;
use crate::waiters::{Attempt, Waited};

static SEM_ACQUIRE: Script = Script::new(
    "semaphore_acquire",
    include_str!("../scripts/sem_acquire.lua"),
);
static SEM_RELEASE: Script = Script::new(
    "semaphore_release",
    include_str!("../scripts/sem_release.lua"),
);
static SEM_HELD: Script = Script::new("semaphore_held", include_str!("../scripts/sem_held.lua"));
static SEM_EXTEND: Script = Script::new(
    "semaphore_extend",
    include_str!("../scripts/sem_extend.lua"),
);

/// A counting semaphore shared between processes: at most `permits` holders
/// at once, each permit expiring after its TTL unless extended, so a crashed
/// holder's permit comes back by itself.
///
/// Made by [`LockManager::semaphore`](crate::LockManager::semaphore). Permits are the members of one sorted
/// set, `p:sem:{name}:permits`, scored by their expiry on the server's clock;
/// every try first trims the expired ones. A waiter flag `p:sem:{name}:wait`
/// works as for locks (wake-ups through the manager's one subscription).
/// The set's TTL follows its longest-lived permit.
///
/// Every process must use the same `permits` for a name: the count is passed
/// with each try, not stored.
///
/// | operation | round trips |
/// |---|---|
/// | `acquire` (a permit free, or `wait` zero) | 1 script |
/// | `release`, `extend` | 1 script (`release` publishes only if someone waits) |
///
/// Options used from [`LockOptions`]: `ttl` (the permit's life) and `wait`;
/// the watchdog and replica confirmation are not available for permits
/// (extend long-lived permits yourself).
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_lock::{LockManager, LockOptions};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let locks = LockManager::new(&redis, "app:locks")?;
/// let exports = locks.semaphore("exports", 3)?; // at most 3 exports at once
/// let opts = LockOptions::builder().ttl(Duration::from_secs(60)).wait(Duration::from_secs(5)).build()?;
/// if let Some(permit) = exports.acquire(&opts).await? {
///     // ... run the export ...
///     permit.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    shared: Arc<Shared>,
    name: Arc<str>,
    permits: u32,
    set_key: Key,
    wait_key: Key,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

impl Semaphore {
    pub(crate) fn new(shared: Arc<Shared>, name: &str, permits: u32) -> Result<Semaphore> {
        if name.is_empty() {
            return Err(Error::invalid_input("a semaphore name must not be empty"));
        }
        if permits == 0 {
            return Err(Error::invalid_input(
                "a semaphore needs at least one permit",
            ));
        }
        let ks = shared.keys.child("sem")?;
        Ok(Semaphore {
            set_key: Key::from(ks.tagged(name, ["permits"])?),
            wait_key: Key::from(ks.tagged(name, ["wait"])?),
            name: Arc::from(name),
            permits,
            shared,
        })
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of permits.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Takes a permit, waiting up to `opts.wait()` when all are taken.
    /// `Ok(None)` when none became free in time. Waiting works as for
    /// [`LockManager::acquire`](crate::LockManager::acquire): a wake-up on release, a try when the
    /// earliest permit expires, and the fallback poll.
    ///
    /// # Errors
    ///
    /// Fails closed: Redis errors are returned, never a permit.
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) when
    /// `opts` asks for a watchdog or replica confirmation.
    /// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) when the
    /// permits key is not a sorted set (something else wrote it): the message
    /// names the key; the try wrote nothing.
    /// Cancellation: dropping the future mid-try may leave a permit granted
    /// to nobody; it expires after its TTL.
    pub async fn acquire(&self, opts: &LockOptions) -> Result<Option<Permit>> {
        if opts.watchdog || opts.replicas.is_some() {
            return Err(Error::invalid_input(
                "semaphore permits support neither the watchdog nor replica confirmation: extend permits yourself",
            ));
        }
        let span = tracing::debug_span!(
            "fredkit.lock.semaphore.acquire",
            primitive = "semaphore",
            outcome = tracing::field::Empty
        );
        let r = self.acquire_inner(opts).instrument(span.clone()).await;
        span.record(
            "outcome",
            match &r {
                Ok(Some(_)) => "acquired",
                Ok(None) => "busy",
                Err(_) => "error",
            },
        );
        r
    }

    async fn acquire_inner(&self, opts: &LockOptions) -> Result<Option<Permit>> {
        let token = new_token();
        if opts.wait.is_zero() {
            return match self.attempt(&token, opts, 0).await? {
                Attempt::Granted(_) => Ok(Some(self.permit(token, opts))),
                Attempt::Held(_) => {
                    Counters::add(&self.shared.counters.contended);
                    Ok(None)
                }
            };
        }
        let key = String::from_utf8_lossy(self.wait_key.as_bytes()).into_owned();
        let waited = self
            .shared
            .waiters
            .wait_for(&key, opts, |t| {
                self.attempt(&token, opts, millis(t.remaining).max(1))
            })
            .await?;
        match waited {
            Waited::Granted { .. } => Ok(Some(self.permit(token, opts))),
            Waited::TimedOut { .. } => Ok(None),
        }
    }

    /// One try; one that got no answer is undone in the background (see
    /// `grant::undo`): it may still take a permit for a token nobody holds.
    async fn attempt(&self, token: &Str, opts: &LockOptions, wait_ms: i64) -> Result<Attempt> {
        let client = self.shared.redis.client();
        let r: Result<Value> = SEM_ACQUIRE
            .exec(
                client,
                vec![self.set_key.clone(), self.wait_key.clone()],
                vec![
                    Value::String(token.clone()),
                    Value::Integer(opts.ttl_ms()),
                    Value::Integer(i64::from(self.permits)),
                    Value::Integer(wait_ms),
                ],
            )
            .await;
        match r {
            Ok(r) => attempt_from(SEM_ACQUIRE.name(), reply::integer(SEM_ACQUIRE.name(), r)?),
            Err(e) => {
                let keys = vec![self.set_key.clone(), self.wait_key.clone()];
                let args = vec![
                    Value::String(token.clone()),
                    Value::String(self.shared.channel.clone()),
                ];
                undo(client, &self.shared.background, &e, move |c| {
                    let (keys, args) = (keys.clone(), args.clone());
                    async move {
                        SEM_RELEASE
                            .exec::<_, i64, _, _>(&c, keys, args)
                            .await
                            .map(|_| ())
                    }
                });
                Err(e)
            }
        }
    }

    fn permit(&self, token: Str, opts: &LockOptions) -> Permit {
        Counters::add(&self.shared.counters.acquired);
        Permit {
            shared: self.shared.clone(),
            set_key: self.set_key.clone(),
            wait_key: self.wait_key.clone(),
            token,
            ttl: opts.ttl,
            runtime: tokio::runtime::Handle::try_current().ok(),
            done: false,
        }
    }

    /// How many unexpired permits are held right now (one round trip,
    /// `ZCOUNT` from the server's time; read-only, for monitoring).
    ///
    /// # Errors
    ///
    /// Connection errors; [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol)
    /// naming the permits key when it is not a sorted set.
    pub async fn held(&self) -> Result<u64> {
        let n = SEM_HELD
            .exec(self.shared.redis.client(), self.set_key.clone(), ())
            .await?;
        Ok(reply::integer(SEM_HELD.name(), n)?.unsigned_abs())
    }
}

/// A held semaphore permit. Dropping it gives the permit back in the
/// background (also when dropped on a thread without a tokio runtime: on
/// the runtime it was acquired on); a permit that is never given back (crashed holder, leaked
/// guard) expires after its TTL.
pub struct Permit {
    shared: Arc<Shared>,
    set_key: Key,
    wait_key: Key,
    token: Str,
    ttl: Duration,
    runtime: Option<tokio::runtime::Handle>,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The TTL the permit was taken with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Resets the permit's life to `ttl` from now (server time) if it is
    /// still held. `Ok(false)`: it had expired and may be someone else's now.
    /// One round trip.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for a
    /// `ttl` outside 1 ms ..= 24 h; connection errors (the permit ends at its
    /// old expiry).
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl(ttl)?;
        let r: i64 = SEM_EXTEND
            .exec(
                self.shared.redis.client(),
                self.set_key.clone(),
                vec![
                    Value::String(self.token.clone()),
                    Value::Integer(millis(ttl)),
                ],
            )
            .await?;
        if r != 1 {
            Counters::add(&self.shared.counters.lost);
        }
        Ok(r == 1)
    }

    /// Gives the permit back. `Ok(false)`: it had already expired. One round
    /// trip (publishes a wake-up only if someone waits).
    ///
    /// # Errors
    ///
    /// Connection errors: the permit expires at its TTL.
    pub async fn release(mut self) -> Result<bool> {
        self.done = true;
        release(&self.shared, &self.set_key, &self.wait_key, &self.token).await
    }
}

async fn release(shared: &Shared, set_key: &Key, wait_key: &Key, token: &Str) -> Result<bool> {
    let r: i64 = SEM_RELEASE
        .exec(
            shared.redis.client(),
            vec![set_key.clone(), wait_key.clone()],
            vec![
                Value::String(token.clone()),
                Value::String(shared.channel.clone()),
            ],
        )
        .await?;
    if r > 0 {
        Counters::add(&shared.counters.released);
    } else {
        Counters::add(&shared.counters.release_not_held);
    }
    Ok(r > 0)
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = self.shared.clone();
        let set_key = self.set_key.clone();
        let wait_key = self.wait_key.clone();
        let token = self.token.clone();
        let tracked = self.shared.clone();
        spawn_release(self.runtime.as_ref(), &tracked.background, async move {
            if let Err(e) = release(&shared, &set_key, &wait_key, &token).await {
                tracing::warn!(error = %e, "fredkit.lock: background permit release failed; it expires at its TTL");
            }
        });
    }
}
