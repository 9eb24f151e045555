//! [`Limiter`]: one or more limits on an identity, checked in one round trip.

use fredkit_core::IntoKeySpace;
use std::{fmt, sync::Arc, time::Duration, time::Instant};

use async_trait::async_trait;
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::{
    traits::{Decision, RateLimiter},
    CircuitBreaker, Error, ErrorKind, FailMode, KeySpace, Result,
};
use tracing::Instrument;

use crate::{
    limit::{Algorithm, Limit},
    metrics::{Metrics, MetricsSnapshot},
};

/// How long a fail-closed decision tells the caller to wait when the
/// circuit breaker gives no better figure.
const FAIL_CLOSED_RETRY: Duration = Duration::from_secs(1);

/// Checks and consumes rate limits for identities (a user id, an IP, an API
/// key), using Redis and its clock.
///
/// A limiter holds one or more [`Limit`]s of the same [`Algorithm`]; one
/// [`check`](Self::check) checks all of them for an identity in **one round
/// trip** (one Lua script) and consumes the cost from all or from none.
/// Its keys are `prefix:{identity}:<limit name>:<algorithm>`: the identity is
/// the hash tag, so the keys of one identity share a cluster slot.
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_core::FailMode;
/// use fredkit_ratelimit::{Limit, Limiter};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let limiter = Limiter::builder(&redis, "app:rl")
///     .limit(Limit::gcra(10, Duration::from_secs(1)).burst(20).name("second"))
///     .limit(Limit::gcra(1000, Duration::from_secs(3600)).name("hour"))
///     .fail_mode(FailMode::Open) // while Redis is down, let requests through
///     .build()?;
///
/// let decision = limiter.check("user:42", 1).await?;
/// if !decision.allowed {
///     println!("slow down, retry in {:?}", decision.retry_after);
/// }
/// # Ok(()) }
/// ```
///
/// # Promises
///
/// - **Exact and atomic** across every process sharing the Redis: the
///   check-and-consume is one script, so concurrent callers never get more
///   than the policy admits (the sliding counter is approximate by design;
///   see the crate docs for its bound).
/// - **A denied request consumes nothing**, on any of the limits.
/// - **Server time**: every decision uses `TIME` (or key expiry) on the
///   Redis server holding the identity's keys; the caller's clock is never
///   read or sent.
/// - **Every key expires** at most one window after it was last written.
///
/// # Round trips
///
/// | call | round trips |
/// |---|---|
/// | [`check`](Self::check), [`check_all`](Self::check_all) | 1 (`EVALSHA`; 2 after a `SCRIPT FLUSH` or restart) |
/// | the same with the circuit breaker open | 0 |
/// | [`reset`](Self::reset) | 1 (`UNLINK` of the identity's keys) |
///
/// # Failure
///
/// When Redis is unreachable, times out, is busy, refuses writes (a replica
/// after a failover, `OOM`), or the circuit breaker is
/// open, a check returns `Ok` with the decision of the [`FailMode`] the
/// caller chose ([`Outcome::fallback`] says so): allowed for
/// [`FailMode::Open`], denied for [`FailMode::Closed`]. The breaker
/// ([`LimiterBuilder::breaker`]) stops sending checks to a dead server, so an
/// outage costs a timeout only until it opens. A check that timed out had
/// been sent: a stalled server may still run it when it recovers, so its
/// cost may end up consumed although the caller got the fail mode's answer
/// (a fail-closed denial included). Errors are left for misuse
/// (`InvalidInput`: a cost above a limit, an empty identity) and for Redis
/// answering something unexpected (`Script`, `Protocol`: for example a key
/// of this limiter overwritten with another type).
///
/// # Cancellation
///
/// Dropping a check's future halfway may or may not have consumed the cost
/// (the script may have run); dropping never consumes twice. A check whose
/// connection breaks after the server ran its script is sent again by fred
/// on the new connection and consumes its cost twice: stricter than the
/// limit, never looser (rare: it takes a connection lost within a round trip;
/// tested for every algorithm by losing the reply with `CLIENT KILL`: the
/// script runs twice, and the caller plus every later caller get at most
/// the quota).
///
/// # Closing
///
/// A limiter owns no connection and no task (its commands go through the
/// [`Redis`] handle it was built with), so it has no `close`: dropping it
/// frees it, and [`Redis::shutdown`] closes the handle.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    keys: KeySpace,
    limits: Vec<Limit>,
    /// Per-limit key parts: `[name, algorithm code]`.
    parts: Vec<[String; 2]>,
    /// Per-limit script arguments, flattened (after the cost).
    args: Vec<i64>,
    min_limit: u64,
    algorithm: Algorithm,
    fail_mode: FailMode,
    breaker: CircuitBreaker,
    timeout: Option<Duration>,
    metrics: Metrics,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("prefix", &self.inner.keys.prefix())
            .field("limits", &self.inner.limits)
            .field("fail_mode", &self.inner.fail_mode)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

/// Builds a [`Limiter`]. The fail mode has no default: choose it.
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_core::{CircuitBreaker, FailMode};
/// use fredkit_ratelimit::{Limit, Limiter};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let limiter = Limiter::builder(&redis, "api:rl")       // key prefix
///     .limit(Limit::sliding_log(100, Duration::from_secs(60))) // one or more limits
///     .fail_mode(FailMode::Closed)                      // required
///     .timeout(Duration::from_millis(200))              // default: the connection's command timeout
///     .breaker(CircuitBreaker::builder().name("api-rl").build()?) // default: see breaker()
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct LimiterBuilder {
    redis: Redis,
    // A bad prefix is reported by build(); kept as its message so that the
    // builder stays Clone.
    prefix: std::result::Result<KeySpace, String>,
    limits: Vec<Limit>,
    fail_mode: Option<FailMode>,
    breaker: Option<CircuitBreaker>,
    timeout: Option<Duration>,
}

impl LimiterBuilder {
    /// Adds a limit. At least one is required; all must use the same
    /// [`Algorithm`] and have distinct names.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// What a check answers while Redis is unavailable: [`FailMode::Open`]
    /// allows, [`FailMode::Closed`] denies. Required (no default): it is a
    /// product decision, see [`FailMode`].
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = Some(mode);
        self
    }

    /// The circuit breaker that stops calling an unavailable Redis. Default:
    /// a breaker of its own named `"ratelimit"` with fredkit-core's defaults
    /// (opens at 50 % failures over at least 10 checks in 10 s, stays open
    /// 5 s). Pass a clone of a breaker to share it with other primitives.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// An upper bound for one check's wait on Redis, below the connection's
    /// command timeout (1 s with fredkit-conn's defaults). A check that runs
    /// out gets the fail-mode decision; its script may still run on the
    /// server. Default: none (the connection's command timeout applies).
    /// Must be non-zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Validates and builds the limiter.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when no limit or no fail mode was given, a
    /// limit is invalid (see [`Limit`]), two limits share a name, the limits
    /// mix algorithms, or the timeout is zero;
    /// [`ErrorKind::InvalidInput`] for an invalid prefix (see
    /// [`KeySpace::new`]).
    pub fn build(self) -> Result<Limiter> {
        let keys = self.prefix.map_err(Error::invalid_input)?;
        let prefix = keys.prefix().to_string();
        let Some(first) = self.limits.first() else {
            return Err(Error::config(
                "a limiter needs at least one limit: add one with .limit(Limit::gcra(..)) or another Limit constructor",
            ));
        };
        let algorithm = first.algorithm();
        for (i, limit) in self.limits.iter().enumerate() {
            limit.validate()?;
            if limit.algorithm() != algorithm {
                return Err(Error::config(format!(
                    "the limits of one limiter must share an algorithm (one script checks them all): \
                     '{}' is {} but '{}' is {}; use a second limiter",
                    first.policy_name(),
                    algorithm.name(),
                    limit.policy_name(),
                    limit.algorithm().name()
                )));
            }
            if self.limits[..i]
                .iter()
                .any(|l| l.policy_name() == limit.policy_name())
            {
                return Err(Error::config(format!(
                    "two limits are named '{}': give each its own name with Limit::name",
                    limit.policy_name()
                )));
            }
        }
        let Some(fail_mode) = self.fail_mode else {
            return Err(Error::config(
                "choose a fail mode: .fail_mode(FailMode::Open) allows requests while Redis is unreachable, \
                 .fail_mode(FailMode::Closed) denies them",
            ));
        };
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::config("the limiter timeout must be non-zero"));
        }
        let breaker = match self.breaker {
            Some(b) => b,
            None => CircuitBreaker::builder().name("ratelimit").build()?,
        };
        let parts = self
            .limits
            .iter()
            .map(|l| [l.policy_name().to_string(), algorithm.code().to_string()])
            .collect();
        let args = self.limits.iter().flat_map(|l| l.script_args()).collect();
        let min_limit = self.limits.iter().map(Limit::limit).min().unwrap_or(0);
        Ok(Limiter {
            inner: Arc::new(Inner {
                redis: self.redis,
                keys,
                limits: self.limits,
                parts,
                args,
                min_limit,
                algorithm,
                fail_mode,
                breaker,
                timeout: self.timeout,
                metrics: Metrics::new("limiter", &prefix),
            }),
        })
    }
}

/// The answer of [`Limiter::check_all`]: the combined [`Decision`] and one
/// per limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    allowed: bool,
    decisions: Vec<Decision>,
    binding: usize,
    fallback: Option<FailMode>,
}

impl Outcome {
    /// Whether the request was allowed (its cost consumed from every limit).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The combined decision: the binding limit's (see
    /// [`binding`](Self::binding)). When denied its `retry_after` is the
    /// longest of the limits' waits, after which every limit admits the
    /// same request (if nothing else comes in between).
    pub fn decision(&self) -> Decision {
        self.decisions
            .get(self.binding)
            .copied()
            .unwrap_or(Decision {
                allowed: self.allowed,
                limit: 0,
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: None,
            })
    }

    /// One decision per limit, in the order the limits were added. Each
    /// carries the overall `allowed`; when denied, each `retry_after` is that
    /// limit's own wait (zero for a limit that would admit the request).
    pub fn per_limit(&self) -> &[Decision] {
        &self.decisions
    }

    /// The index of the limit that binds: when denied, the one with the
    /// longest wait; when allowed, the one with the least remaining.
    pub fn binding(&self) -> usize {
        self.binding
    }

    /// `Some(mode)` when Redis was not asked (unavailable, or the circuit
    /// breaker open) and the decision is the fail mode's; the counts are
    /// then made up: `remaining` is the limit when open and 0 when closed.
    pub fn fallback(&self) -> Option<FailMode> {
        self.fallback
    }
}

impl Limiter {
    /// A builder for a limiter whose keys live under `prefix` (validated by
    /// [`KeySpace::new`] in `build`).
    pub fn builder(redis: &Redis, prefix: impl IntoKeySpace) -> LimiterBuilder {
        LimiterBuilder {
            redis: redis.clone(),
            prefix: prefix.into_key_space().map_err(|e| match e {
                Error::InvalidInput(message) => message,
                other => other.to_string(),
            }),
            limits: Vec::new(),
            fail_mode: None,
            breaker: None,
            timeout: None,
        }
    }

    /// Checks, and when every limit allows it consumes, `cost` units for
    /// `identity`. Returns the combined decision (see
    /// [`Outcome::decision`]); [`check_all`](Self::check_all) gives the
    /// per-limit ones too. One round trip.
    ///
    /// `cost` 0 consumes nothing and reports the state (always allowed).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a cost above the smallest limit or an
    /// empty identity; `Script`/`Protocol` when Redis answers something
    /// unexpected. Unavailability is not an error: see the type docs.
    pub async fn check(&self, identity: &str, cost: u32) -> Result<Decision> {
        self.check_all(identity, cost).await.map(|o| o.decision())
    }

    /// Like [`check`](Self::check), with every limit's decision.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub async fn check_all(&self, identity: &str, cost: u32) -> Result<Outcome> {
        let inner = &*self.inner;
        let span = tracing::debug_span!(
            "fredkit.ratelimit.check",
            algorithm = inner.algorithm.name(),
            limits = inner.limits.len(),
            cost,
            outcome = tracing::field::Empty,
            elapsed_us = tracing::field::Empty,
        );
        // Timing only when someone listens: the hot path stays lean.
        let started = (fredkit_core::metrics::ENABLED || !span.is_disabled()).then(Instant::now);
        let result = self
            .check_inner(identity, cost)
            .instrument(span.clone())
            .await;
        let m = &inner.metrics;
        let (outcome, counter) = match &result {
            Ok(o) => match o.fallback {
                Some(FailMode::Open) => ("fail_open", &m.fail_open),
                Some(FailMode::Closed) => ("fail_closed", &m.fail_closed),
                None if o.allowed => ("allowed", &m.allowed),
                None => ("denied", &m.denied),
            },
            Err(_) => ("error", &m.errors),
        };
        Metrics::bump(counter);
        if let Some(started) = started {
            m.latency.record_since(started);
            span.record("outcome", outcome);
            span.record(
                "elapsed_us",
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
        }
        result
    }

    async fn check_inner(&self, identity: &str, cost: u32) -> Result<Outcome> {
        let inner = &*self.inner;
        if u64::from(cost) > inner.min_limit {
            return Err(Error::invalid_input(format!(
                "a cost of {cost} can never be allowed: the smallest limit of this limiter admits {} at once",
                inner.min_limit
            )));
        }
        let keys = self.keys(identity)?;
        let permit = match inner.breaker.try_acquire() {
            Ok(p) => p,
            Err(e) => return Ok(self.fallback(&e)),
        };
        let mut args = Vec::with_capacity(1 + inner.args.len());
        args.push(i64::from(cost));
        args.extend_from_slice(&inner.args);
        let script = inner.algorithm.script();
        let run = script.exec::<_, Value, _, _>(inner.redis.client(), keys, args);
        let reply = match inner.timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(format!(
                    "rate-limit check took longer than the limiter timeout of {limit:?}"
                ))),
            },
            None => run.await,
        };
        match reply {
            Ok(reply) => {
                permit.success();
                self.parse(reply, cost)
            }
            Err(e) if cannot_count(&e) => {
                permit.failure();
                tracing::warn!(error = %e, fail_mode = ?inner.fail_mode, "rate limiter: Redis unavailable, using the fail mode");
                Ok(self.fallback(&e))
            }
            Err(e) => {
                permit.success();
                Err(e)
            }
        }
    }

    fn parse(&self, reply: Value, cost: u32) -> Result<Outcome> {
        let limits = &self.inner.limits;
        if let (Value::Integer(d), [limit]) = (&reply, limits.as_slice()) {
            if self.inner.algorithm == Algorithm::Gcra {
                return Ok(gcra_single(limit, *d, cost));
            }
        }
        let values: Vec<i64> = reply.convert().map_err(|e| {
            Error::protocol(format!(
                "rate-limit script '{}' returned something other than integers: {}",
                self.inner.algorithm.script().name(),
                e.details()
            ))
        })?;
        if values.len() != 1 + 3 * limits.len() {
            return Err(Error::protocol(format!(
                "rate-limit script '{}' returned {} values, expected {}",
                self.inner.algorithm.script().name(),
                values.len(),
                1 + 3 * limits.len()
            )));
        }
        let allowed = values[0] == 1;
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let decisions: Vec<Decision> = limits
            .iter()
            .zip(values[1..].chunks_exact(3))
            .map(|(limit, v)| Decision {
                allowed,
                limit: limit.limit(),
                remaining: u64::try_from(v[0]).unwrap_or(0).min(limit.limit()),
                reset_after: micros(v[1]),
                retry_after: (!allowed).then(|| micros(v[2])),
            })
            .collect();
        let binding = binding(allowed, &decisions);
        Ok(Outcome {
            allowed,
            decisions,
            binding,
            fallback: None,
        })
    }

    /// The fail mode's outcome, for callers that cannot use an error (the
    /// tower layer).
    #[cfg(feature = "tower")]
    pub(crate) fn fallback_outcome(&self) -> Outcome {
        self.fallback(&Error::protocol("rate-limit check failed"))
    }

    fn fallback(&self, error: &Error) -> Outcome {
        let mode = self.inner.fail_mode;
        let allowed = mode.lets_through();
        let retry = match error {
            Error::CircuitOpen { retry_after, .. } if !retry_after.is_zero() => *retry_after,
            _ => FAIL_CLOSED_RETRY,
        };
        let decisions = self
            .inner
            .limits
            .iter()
            .map(|l| Decision {
                allowed,
                limit: l.limit(),
                remaining: if allowed { l.limit() } else { 0 },
                reset_after: Duration::ZERO,
                retry_after: (!allowed).then_some(retry),
            })
            .collect();
        if error.kind() == ErrorKind::CircuitOpen {
            tracing::debug!(fail_mode = ?mode, "rate limiter: circuit open, using the fail mode");
        }
        Outcome {
            allowed,
            decisions,
            binding: 0,
            fallback: Some(mode),
        }
    }

    /// The Redis keys of `identity`, one per limit, in the order of the
    /// limits (for inspection and tooling; the limiter builds them itself).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when `identity` is empty.
    pub fn keys(&self, identity: &str) -> Result<Vec<String>> {
        if identity.is_empty() {
            return Err(Error::invalid_input(
                "the rate-limit identity is empty: pass a user id, IP address or API key",
            ));
        }
        self.inner
            .parts
            .iter()
            .map(|p| self.inner.keys.tagged(identity, p))
            .collect()
    }

    /// Forgets every limit's state for `identity` (an administrator's
    /// reset): one `UNLINK` of its keys, one round trip. Not subject to the
    /// fail mode.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty identity; connection errors as they come.
    pub async fn reset(&self, identity: &str) -> Result<()> {
        use fred::interfaces::KeysInterface;
        let keys = self.keys(identity)?;
        let _: i64 = self
            .inner
            .redis
            .client()
            .unlink(keys)
            .instrument(tracing::debug_span!("fredkit.ratelimit.reset"))
            .await?;
        Ok(())
    }

    /// The limits, in the order they were added.
    pub fn limits(&self) -> &[Limit] {
        &self.inner.limits
    }

    /// The algorithm every limit uses.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The fail mode.
    pub fn fail_mode(&self) -> FailMode {
        self.inner.fail_mode
    }

    /// The circuit breaker (shared by the limiter's clones).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// The counters (allowed, denied, fail-open, fail-closed, errors),
    /// shared by the limiter's clones.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }
}

/// Whether `e` means Redis cannot count right now, so the fail mode
/// applies: unreachable, timed out or busy, or it answered but refuses
/// writes — a replica (`READONLY`: a failover the client has not followed
/// yet), out of memory (`OOM`), or without the replicas its
/// `min-replicas-to-write` asks for (`NOREPLICAS`, `MASTERDOWN`).
pub(crate) fn cannot_count(e: &Error) -> bool {
    const REFUSES_WRITES: [&str; 4] = ["READONLY", "OOM", "NOREPLICAS", "MASTERDOWN"];
    if e.is_unavailable() {
        return true;
    }
    let (Error::Script { message, .. } | Error::Protocol { message, .. }) = e else {
        return false;
    };
    // Redis 7 puts the code first; older servers wrap it ("... -READONLY ...").
    REFUSES_WRITES
        .iter()
        .any(|code| message.starts_with(code) || message.contains(&format!("-{code} ")))
}

/// Decodes the one-limit GCRA reply: `d >= 0` allowed with `TAT - now = d`
/// after the request; `d < 0` denied with `TAT - now = -d - 1` (see
/// `scripts/gcra.lua`). All in server microseconds.
fn gcra_single(limit: &Limit, d: i64, cost: u32) -> Outcome {
    let [ei, burst] = limit.script_args();
    let ei = ei.max(1);
    let tol = ei.saturating_mul(burst);
    let allowed = d >= 0;
    // `-1 - d` cannot overflow, even for an absurd stored TAT that Redis
    // replies as i64::MIN.
    let ahead = if allowed {
        d
    } else {
        (-1_i64).saturating_sub(d)
    }
    .max(0);
    let remaining = u64::try_from((tol - ahead).div_euclid(ei)).unwrap_or(0);
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let retry = ahead.saturating_add(ei.saturating_mul(i64::from(cost))) - tol;
    Outcome {
        allowed,
        decisions: vec![Decision {
            allowed,
            limit: limit.limit(),
            remaining: remaining.min(limit.limit()),
            reset_after: us(ahead),
            retry_after: (!allowed).then(|| us(retry)),
        }],
        binding: 0,
        fallback: None,
    }
}

/// The limit that decides: the longest wait when denied, the least
/// remaining (then the longest reset) when allowed.
fn binding(allowed: bool, decisions: &[Decision]) -> usize {
    let mut best = 0;
    for (i, d) in decisions.iter().enumerate().skip(1) {
        let b = &decisions[best];
        let better = if allowed {
            (d.remaining, std::cmp::Reverse(d.reset_after))
                < (b.remaining, std::cmp::Reverse(b.reset_after))
        } else {
            d.retry_after > b.retry_after
        };
        if better {
            best = i;
        }
    }
    best
}

/// The [`RateLimiter`] contract: `key` is the identity.
#[async_trait]
impl RateLimiter for Limiter {
    async fn check(&self, key: &str, cost: u32) -> Result<Decision> {
        Limiter::check(self, key, cost).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(remaining: u64, reset: u64, retry: Option<u64>) -> Decision {
        Decision {
            allowed: retry.is_none(),
            limit: 10,
            remaining,
            reset_after: Duration::from_secs(reset),
            retry_after: retry.map(Duration::from_secs),
        }
    }

    #[test]
    fn refused_writes_are_an_outage_other_script_errors_are_not() {
        let script = |m: &str| Error::Script {
            script: "ratelimit.gcra",
            message: m.to_string(),
            source: None,
        };
        for outage in [
            "READONLY You can't write against a read only replica.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "NOREPLICAS Not enough good replicas to write.",
            "ERR Error running script (call to f_1): @user_script:31: -READONLY You can't write",
        ] {
            assert!(cannot_count(&script(outage)), "{outage}");
        }
        assert!(cannot_count(&Error::timeout("slow")));
        for error in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR value is not an integer or out of range",
        ] {
            assert!(!cannot_count(&script(error)), "{error}");
        }
        assert!(!cannot_count(&Error::invalid_input("cost")));
    }

    #[test]
    fn binding_limit_is_the_longest_wait_or_the_least_remaining() {
        assert_eq!(
            binding(true, &[d(5, 1, None), d(2, 1, None), d(3, 9, None)]),
            1
        );
        assert_eq!(binding(true, &[d(2, 1, None), d(2, 9, None)]), 1);
        assert_eq!(
            binding(
                false,
                &[d(0, 1, Some(1)), d(4, 1, Some(0)), d(0, 9, Some(7))]
            ),
            2
        );
    }
}
