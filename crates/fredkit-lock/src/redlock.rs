//! [`Redlock`]: one lock over N independent Redis servers.

use fredkit_core::IntoKeySpace;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::interfaces::KeysInterface;
use fred::types::{Expiration, Key, SetOptions, Value};
use fredkit_conn::Redis;
use fredkit_core::{Error, KeySpace, Result, Script};
use futures::future::join_all;
use rand::Rng;
use tokio::time::Instant;
use tracing::Instrument;

use crate::grant::{new_token, spawn_release, Background};
use crate::options::{millis, MAX_TTL};

static REDLOCK_RELEASE: Script = Script::new(
    "redlock_release",
    include_str!("../scripts/redlock_release.lua"),
);

/// Options of a [`Redlock`]. Build with [`RedlockOptions::builder`].
///
/// ```
/// use std::time::Duration;
/// use fredkit_lock::RedlockOptions;
///
/// let opts = RedlockOptions::builder()
///     .ttl(Duration::from_secs(10))               // lock life on each node (default 10 s)
///     .retries(3)                                 // extra rounds after a failed one (default 3)
///     .retry_delay(Duration::from_millis(200))    // random pause before a retry, up to this (default 200 ms)
///     .node_timeout(Duration::from_millis(50))    // give up on a node after this (default 50 ms)
///     .build()?;
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RedlockOptions {
    ttl: Duration,
    retries: u32,
    retry_delay: Duration,
    node_timeout: Duration,
}

impl Default for RedlockOptions {
    fn default() -> Self {
        RedlockOptions {
            ttl: Duration::from_secs(10),
            retries: 3,
            retry_delay: Duration::from_millis(200),
            node_timeout: Duration::from_millis(50),
        }
    }
}

impl RedlockOptions {
    /// A builder from the defaults.
    pub fn builder() -> RedlockOptionsBuilder {
        RedlockOptionsBuilder {
            opts: RedlockOptions::default(),
        }
    }

    /// The lock's TTL on each node.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The clock drift allowance subtracted from the validity: 1% of the TTL
    /// plus 2 ms.
    pub fn drift(&self) -> Duration {
        self.ttl / 100 + Duration::from_millis(2)
    }
}

/// The builder of [`RedlockOptions`].
#[must_use]
#[derive(Clone, Debug)]
pub struct RedlockOptionsBuilder {
    opts: RedlockOptions,
}

impl RedlockOptionsBuilder {
    /// The TTL set on every node. Default 10 s; 10 ms to 24 h.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.opts.ttl = ttl;
        self
    }

    /// Rounds tried after the first one fails. Default 3.
    pub fn retries(mut self, retries: u32) -> Self {
        self.opts.retries = retries;
        self
    }

    /// Before a retry, pause a random time in `[0, retry_delay]` so that
    /// competing clients do not split the nodes again. Default 200 ms.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.opts.retry_delay = delay;
        self
    }

    /// How long to wait for one node's answer: a dead node must not eat the
    /// validity. Default 50 ms; must be well under the TTL (at most a tenth).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.opts.node_timeout = timeout;
        self
    }

    /// Validates the options.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) for a TTL out of
    /// 10 ms..=24 h, or a node timeout that is zero or above a tenth of the TTL.
    pub fn build(self) -> Result<RedlockOptions> {
        let o = &self.opts;
        if o.ttl < Duration::from_millis(10) || o.ttl > MAX_TTL {
            return Err(Error::config(format!(
                "Redlock ttl must be between 10 ms and 24 h, got {:?}",
                o.ttl
            )));
        }
        if o.node_timeout.is_zero() || o.node_timeout > o.ttl / 10 {
            return Err(Error::config(format!(
                "Redlock node_timeout must be non-zero and at most ttl/10 ({:?}), got {:?}",
                o.ttl / 10,
                o.node_timeout
            )));
        }
        Ok(self.opts)
    }
}

/// The Redlock algorithm over N independent Redis servers (no replication
/// between them): a lock is held when a majority of them granted it and the
/// time that took leaves some validity.
///
/// One round: a random token; `SET key token NX PX ttl` on every node
/// **concurrently** (each bounded by the node timeout); the lock is granted
/// when at least `N/2 + 1` nodes said yes and
/// `validity = ttl - elapsed - drift` is positive, with
/// `drift = 1% of ttl + 2 ms`. Otherwise the token is deleted on **all**
/// nodes (also those that did not answer: their `SET` may have landed) and,
/// after a random pause, another round runs, up to `retries` more.
///
/// # What Redlock assumes, and what it does not promise
///
/// - **Bounded clock drift and pauses.** Safety rests on every node's clock
///   running at about the same rate and on the holder noticing its validity
///   run out. A node whose clock jumps forward expires the key early; a
///   holder that pauses (GC, swap, VM stall) longer than its validity keeps
///   working on a lock that is no longer held.
/// - **Delayed restarts.** A node that restarts without persistence forgets
///   the key and may grant it again, so a majority can form twice. Restart
///   crashed nodes only after the longest TTL has passed (or run them with
///   `appendfsync always`).
/// - **No fencing token.** There is no single counter that every grant
///   passes through, so Redlock cannot hand out a strictly increasing
///   token; a paused holder therefore cannot be fenced off. For correctness
///   (not just efficiency: "don't do the work twice, usually"), use
///   [`LockManager`](crate::LockManager) on one primary with fencing tokens
///   and a [`FencedStore`](crate::FencedStore)-style check in the storage.
///
/// Fails closed: when fewer than a quorum of nodes answer at all, `acquire`
/// returns an error, never a lock.
///
/// | operation | round trips |
/// |---|---|
/// | `acquire` | 1 per round (all nodes in parallel); a failed round adds 1 to release |
/// | `release` | 1 (all nodes in parallel) |
///
/// ```no_run
/// use fredkit_lock::{Redlock, RedlockOptions};
///
/// # async fn run(nodes: Vec<fredkit_conn::Redis>) -> fredkit_core::Result<()> {
/// let redlock = Redlock::new(nodes, "app:redlock", RedlockOptions::default())?;
/// if let Some(lock) = redlock.acquire("nightly-report").await? {
///     // finish well within lock.validity()
///     lock.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<RedlockInner>,
}

struct RedlockInner {
    nodes: Vec<Redis>,
    keys: KeySpace,
    opts: RedlockOptions,
    /// Releases of dropped guards, waited for by `close`.
    background: Background,
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("nodes", &self.inner.nodes.len())
            .field("prefix", &self.inner.keys.prefix())
            .field("opts", &self.inner.opts)
            .finish()
    }
}

impl Redlock {
    /// A Redlock over `nodes` (independent servers, typically 5), keys under
    /// `prefix`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) without nodes;
    /// a bad prefix.
    pub fn new(
        nodes: Vec<Redis>,
        prefix: impl IntoKeySpace,
        opts: RedlockOptions,
    ) -> Result<Redlock> {
        if nodes.is_empty() {
            return Err(Error::config(
                "Redlock needs at least one node (5 independent servers is usual)",
            ));
        }
        Ok(Redlock {
            inner: Arc::new(RedlockInner {
                nodes,
                keys: prefix.into_key_space()?,
                opts,
                background: Background::default(),
            }),
        })
    }

    /// Waits for the background releases of dropped guards (at most twice
    /// the first node's command timeout, at least 2 s; what is still running
    /// then is stopped and its keys expire at their TTL). A Redlock opens no
    /// connection and starts no task of its own otherwise: the node handles
    /// are the caller's (close them with
    /// [`Redis::shutdown`](fredkit_conn::Redis::shutdown) afterwards).
    /// Idempotent; the Redlock stays usable.
    pub async fn close(&self) {
        let limit = self
            .inner
            .nodes
            .first()
            .map_or(Duration::from_secs(1), |n| n.config().command_timeout())
            .saturating_mul(2)
            .max(Duration::from_secs(2));
        self.inner.background.drain(limit).await;
    }

    /// How many nodes must grant a lock: `N/2 + 1`.
    pub fn quorum(&self) -> usize {
        self.inner.nodes.len() / 2 + 1
    }

    /// Tries to take the lock on `resource` (see the type docs for the
    /// rounds). `Ok(None)` when others hold it on enough nodes through every
    /// round.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Connection`](fredkit_core::ErrorKind::Connection) when, in
    /// the last round, fewer than a quorum of nodes answered: not acquired.
    /// An empty resource is
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput).
    /// Cancellation: a dropped future may leave the key on some nodes until
    /// its TTL.
    pub async fn acquire(&self, resource: &str) -> Result<Option<RedlockGuard>> {
        if resource.is_empty() {
            return Err(Error::invalid_input(
                "a lock resource name must not be empty",
            ));
        }
        let span = tracing::debug_span!(
            "fredkit.lock.redlock.acquire",
            primitive = "redlock",
            outcome = tracing::field::Empty,
            rounds = tracing::field::Empty
        );
        let r = self.acquire_inner(resource).instrument(span.clone()).await;
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

    async fn acquire_inner(&self, resource: &str) -> Result<Option<RedlockGuard>> {
        let o = &self.inner.opts;
        let key = Key::from(self.inner.keys.tagged(resource, ["lock"])?);
        let n = self.inner.nodes.len();
        let quorum = self.quorum();
        let ttl_ms = millis(o.ttl);
        let mut last_error = None;
        for round in 0..=o.retries {
            tracing::Span::current().record("rounds", round + 1);
            let token = new_token();
            let started = Instant::now();
            let replies = join_all(self.inner.nodes.iter().map(|node| {
                let set = node.client().set::<Option<Str>, _, _>(
                    key.clone(),
                    Value::String(token.clone()),
                    Some(Expiration::PX(ttl_ms)),
                    Some(SetOptions::NX),
                    false,
                );
                tokio::time::timeout(o.node_timeout, set)
            }))
            .await;
            let elapsed = started.elapsed();
            let granted = replies
                .iter()
                .filter(|r| matches!(r, Ok(Ok(Some(_)))))
                .count();
            let answered = replies.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
            if let Some(validity) = granted_validity(granted, quorum, o.ttl, elapsed, o.drift()) {
                return Ok(Some(RedlockGuard {
                    redlock: self.clone(),
                    resource: resource.to_string(),
                    key,
                    token,
                    validity,
                    valid_until: started + validity,
                    runtime: tokio::runtime::Handle::try_current().ok(),
                    done: false,
                }));
            }
            self.release_all(&key, &token).await;
            last_error = (answered < quorum).then(|| {
                Error::connection(format!(
                    "Redlock: only {answered} of {n} nodes answered within {:?}; a lock needs {quorum}. Not acquired",
                    o.node_timeout
                ))
            });
            if round < o.retries {
                let pause = rand::thread_rng().gen_range(Duration::ZERO..=o.retry_delay);
                tokio::time::sleep(pause).await;
            }
        }
        match last_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Deletes `token`'s key on every node, concurrently; how many deleted it.
    async fn release_all(&self, key: &Key, token: &Str) -> usize {
        let timeout = self.inner.opts.node_timeout.max(Duration::from_millis(200));
        let replies = join_all(self.inner.nodes.iter().map(|node| {
            let del = REDLOCK_RELEASE.exec::<_, i64, _, _>(
                node.client(),
                key.clone(),
                Value::String(token.clone()),
            );
            tokio::time::timeout(timeout, del)
        }))
        .await;
        replies.iter().filter(|r| matches!(r, Ok(Ok(1)))).count()
    }
}

/// The decision at the end of a round: the lock's validity when `granted`
/// nodes (at least `quorum`) said yes and `ttl - elapsed - drift` is still
/// positive; `None` (refused: the caller releases on every node) otherwise.
/// A round whose acquisition ate the TTL less the drift allowance is
/// refused even though the keys may still live on the nodes.
fn granted_validity(
    granted: usize,
    quorum: usize,
    ttl: Duration,
    elapsed: Duration,
    drift: Duration,
) -> Option<Duration> {
    let validity = ttl.saturating_sub(elapsed).saturating_sub(drift);
    (granted >= quorum && !validity.is_zero()).then_some(validity)
}

/// A held Redlock. Dropping it releases on every node in the background
/// (on the runtime it was acquired on if dropped on a thread without one).
pub struct RedlockGuard {
    redlock: Redlock,
    resource: String,
    key: Key,
    token: Str,
    validity: Duration,
    valid_until: Instant,
    runtime: Option<tokio::runtime::Handle>,
    done: bool,
}

impl fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("resource", &self.resource)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl RedlockGuard {
    /// The locked resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The validity computed at the grant: `ttl - elapsed - drift`. Finish
    /// the protected work within it.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// What is left of the validity now (zero once it ran out).
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// Deletes the lock on every node (concurrently, compare-token) and
    /// returns on how many nodes it was still held. One round trip.
    ///
    /// # Errors
    ///
    /// None today (unreachable nodes let their key expire); the `Result`
    /// leaves room for stricter modes.
    pub async fn release(mut self) -> Result<usize> {
        self.done = true;
        Ok(self.redlock.release_all(&self.key, &self.token).await)
    }
}

impl Drop for RedlockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let redlock = self.redlock.clone();
        let key = self.key.clone();
        let token = self.token.clone();
        let tracked = self.redlock.clone();
        spawn_release(
            self.runtime.as_ref(),
            &tracked.inner.background,
            async move {
                redlock.release_all(&key, &token).await;
            },
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fredkit_core::ErrorKind;

    #[test]
    fn defaults_and_drift_follow_the_redlock_recipe() {
        let o = RedlockOptions::builder().build().unwrap();
        assert_eq!(o.ttl(), Duration::from_secs(10));
        // 1% of the TTL plus 2 ms.
        assert_eq!(o.drift(), Duration::from_millis(102));
        let short = RedlockOptions::builder()
            .ttl(Duration::from_millis(500))
            .node_timeout(Duration::from_millis(20))
            .build()
            .unwrap();
        assert_eq!(short.drift(), Duration::from_millis(7));
    }

    #[test]
    fn a_round_is_granted_only_with_a_quorum_and_validity_left_after_elapsed_and_drift() {
        let ttl = Duration::from_secs(10);
        let drift = Duration::from_millis(102);
        let ms = Duration::from_millis;
        // validity = ttl - elapsed - drift, exactly.
        assert_eq!(
            granted_validity(3, 3, ttl, ms(50), drift),
            Some(ttl - ms(50) - drift)
        );
        assert_eq!(granted_validity(5, 3, ttl, ms(9_897), drift), Some(ms(1)));
        // Acquisition took the TTL less the drift allowance, or more: refused,
        // although the keys still live for up to `drift` on the nodes.
        assert_eq!(granted_validity(5, 3, ttl, ms(9_898), drift), None);
        assert_eq!(granted_validity(5, 3, ttl, ms(9_950), drift), None);
        assert_eq!(granted_validity(5, 3, ttl, ttl * 2, drift), None);
        // No quorum: refused however fast.
        assert_eq!(granted_validity(2, 3, ttl, Duration::ZERO, drift), None);
    }

    #[test]
    fn invalid_options_fail_at_build() {
        for b in [
            RedlockOptions::builder().ttl(Duration::from_millis(5)),
            RedlockOptions::builder().ttl(MAX_TTL * 2),
            RedlockOptions::builder().node_timeout(Duration::ZERO),
            RedlockOptions::builder()
                .ttl(Duration::from_millis(100))
                .node_timeout(Duration::from_millis(50)),
        ] {
            assert_eq!(b.build().unwrap_err().kind(), ErrorKind::Config);
        }
    }
}
