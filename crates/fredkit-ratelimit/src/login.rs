//! [`LoginThrottle`]: count failed logins, lock out after N, reset on success.

use fredkit_core::IntoKeySpace;
use std::{fmt, sync::Arc, time::Duration};

use fred::interfaces::KeysInterface;
use fredkit_conn::Redis;
use fredkit_core::{CircuitBreaker, Error, FailMode, KeySpace, Result, Script};
use tracing::Instrument;

use crate::metrics::{Metrics, MetricsSnapshot};

static LOGIN_FAILURE: Script = Script::new(
    "ratelimit.login_failure",
    include_str!("../scripts/login_failure.lua"),
);
static LOGIN_STATUS: Script = Script::new(
    "ratelimit.login_status",
    include_str!("../scripts/login_status.lua"),
);

/// Brute-force protection for a login form: counts failed attempts per
/// identity (a user name, an e-mail, an IP) within a window and locks the
/// identity out for a while once they reach a threshold; a successful login
/// resets the count.
///
/// This is the `auth:failed:{id}` counter of the usual recipe, done right:
/// the count and its expiry are set by one script (an `INCR` followed by a
/// separate `EXPIRE` can leave a counter that never expires — a permanent
/// lockout — when the process dies in between), and the lockout is its own
/// key with its own TTL, so it ends on time whatever happens to the counter.
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_core::FailMode;
/// use fredkit_ratelimit::LoginThrottle;
///
/// # async fn verify(_: &str, _: &str) -> bool { true }
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// let throttle = LoginThrottle::builder(&redis, "auth:failed")
///     .max_failures(5)                          // lock after 5 failures…
///     .failure_window(Duration::from_secs(900)) // …within 15 minutes
///     .lockout(Duration::from_secs(900))        // for 15 minutes
///     .fail_mode(FailMode::Closed)              // Redis down: refuse logins
///     .build()?;
///
/// let user = "alice@example.com";
/// if throttle.status(user).await?.locked {
///     return Ok(()); // answer "too many attempts"
/// }
/// if verify(user, "password").await {
///     throttle.record_success(user).await?;
/// } else {
///     let status = throttle.record_failure(user).await?;
///     println!("{} attempts left", status.remaining_attempts);
/// }
/// # Ok(()) }
/// ```
///
/// Keys: `prefix:{identity}:f` (the failure counter, TTL = failure window)
/// and `prefix:{identity}:l` (the lockout, TTL = lockout).
///
/// # Round trips
///
/// | call | round trips |
/// |---|---|
/// | [`status`](Self::status) | 1 (a read-only script) |
/// | [`record_failure`](Self::record_failure) | 1 (one script) |
/// | [`record_success`](Self::record_success), [`unlock`](Self::unlock) | 1 (`UNLINK`) |
///
/// # Failure and cancellation
///
/// `status` and `record_failure` answer with the [`FailMode`] while Redis is
/// unavailable (or the breaker is open): `locked` for
/// [`FailMode::Closed`], not locked for [`FailMode::Open`], with
/// [`LoginStatus::fallback`] set. `record_success` and `unlock` return the
/// error. A dropped future may or may not have recorded its failure; never
/// twice. A `record_failure` whose connection breaks after the server ran
/// it is sent again by fred on the new connection and counts the failure
/// twice: the lockout comes one failure early, never late (tested by losing
/// the reply with `CLIENT KILL`).
#[derive(Clone)]
pub struct LoginThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    keys: KeySpace,
    max_failures: u32,
    failure_window: Duration,
    lockout: Duration,
    fail_mode: FailMode,
    breaker: CircuitBreaker,
    metrics: Metrics,
}

impl fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("prefix", &self.inner.keys.prefix())
            .field("max_failures", &self.inner.max_failures)
            .field("failure_window", &self.inner.failure_window)
            .field("lockout", &self.inner.lockout)
            .field("fail_mode", &self.inner.fail_mode)
            .finish()
    }
}

/// Builds a [`LoginThrottle`]: defaults 5 failures within 15 minutes lock
/// out for 15 minutes; the fail mode has no default.
#[derive(Debug)]
#[must_use]
pub struct LoginThrottleBuilder {
    redis: Redis,
    // A bad prefix is reported by build(); kept as its message so that the
    // builder stays Clone.
    prefix: std::result::Result<KeySpace, String>,
    max_failures: u32,
    failure_window: Duration,
    lockout: Duration,
    fail_mode: Option<FailMode>,
    breaker: Option<CircuitBreaker>,
}

impl LoginThrottleBuilder {
    /// Failures within the window that trigger a lockout. Default 5; ≥ 1.
    pub fn max_failures(mut self, n: u32) -> Self {
        self.max_failures = n;
        self
    }

    /// How long a failure is remembered: the counter expires this long after
    /// the first failure of a run. Default 15 minutes; at least 1 ms.
    pub fn failure_window(mut self, window: Duration) -> Self {
        self.failure_window = window;
        self
    }

    /// How long an identity stays locked out. Default 15 minutes; at least
    /// 1 ms.
    pub fn lockout(mut self, lockout: Duration) -> Self {
        self.lockout = lockout;
        self
    }

    /// What `status`/`record_failure` answer while Redis is unavailable.
    /// Required; [`FailMode::Closed`] (refuse logins) is the usual choice.
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = Some(mode);
        self
    }

    /// The circuit breaker. Default: one of its own named `"login"` with
    /// fredkit-core's defaults.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) for zero
    /// failures, a window or lockout under 1 ms, or no fail mode;
    /// `InvalidInput` for an invalid prefix.
    pub fn build(self) -> Result<LoginThrottle> {
        let keys = self.prefix.map_err(Error::invalid_input)?;
        let prefix = keys.prefix().to_string();
        if self.max_failures == 0 {
            return Err(Error::config("max_failures must be at least 1"));
        }
        if self.failure_window < Duration::from_millis(1) || self.lockout < Duration::from_millis(1)
        {
            return Err(Error::config(
                "the failure window and the lockout must be at least 1 ms",
            ));
        }
        let Some(fail_mode) = self.fail_mode else {
            return Err(Error::config(
                "choose a fail mode: FailMode::Closed refuses logins while Redis is unreachable, \
                 FailMode::Open lets them through unthrottled",
            ));
        };
        let breaker = match self.breaker {
            Some(b) => b,
            None => CircuitBreaker::builder().name("login").build()?,
        };
        Ok(LoginThrottle {
            inner: Arc::new(Inner {
                redis: self.redis,
                keys,
                max_failures: self.max_failures,
                failure_window: self.failure_window,
                lockout: self.lockout,
                fail_mode,
                breaker,
                metrics: Metrics::new("login", &prefix),
            }),
        })
    }
}

/// The state of one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginStatus {
    /// Whether the identity is locked out (refuse the login attempt).
    pub locked: bool,
    /// Failures counted in the current window (the threshold while locked).
    pub failures: u32,
    /// Failures left before a lockout (0 while locked).
    pub remaining_attempts: u32,
    /// While locked: how long the lockout lasts; otherwise `None`.
    pub retry_after: Option<Duration>,
    /// `Some(mode)` when Redis was not asked and the status is the fail
    /// mode's.
    pub fallback: Option<FailMode>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl LoginThrottle {
    /// A builder whose keys live under `prefix`.
    pub fn builder(redis: &Redis, prefix: impl IntoKeySpace) -> LoginThrottleBuilder {
        LoginThrottleBuilder {
            redis: redis.clone(),
            prefix: prefix.into_key_space().map_err(|e| match e {
                Error::InvalidInput(message) => message,
                other => other.to_string(),
            }),
            max_failures: 5,
            failure_window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            fail_mode: None,
            breaker: None,
        }
    }

    fn keys(&self, identity: &str) -> Result<[String; 2]> {
        if identity.is_empty() {
            return Err(Error::invalid_input(
                "the login identity is empty: pass a user name, e-mail or IP address",
            ));
        }
        Ok([
            self.inner.keys.tagged(identity, ["f"])?,
            self.inner.keys.tagged(identity, ["l"])?,
        ])
    }

    /// The identity's state, without changing it. One round trip.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty identity; `Script`/`Protocol` for
    /// unexpected replies. Unavailability gives the fail mode's status.
    pub async fn status(&self, identity: &str) -> Result<LoginStatus> {
        let keys = self.keys(identity)?;
        let span = tracing::debug_span!(
            "fredkit.ratelimit.login_status",
            outcome = tracing::field::Empty
        );
        self.run(&LOGIN_STATUS, keys.to_vec(), Vec::new())
            .instrument(span)
            .await
    }

    /// Records a failed attempt; the one that reaches the threshold locks
    /// the identity out (and clears the count). While locked, failures are
    /// not counted and do not extend the lockout. One round trip, atomic.
    ///
    /// # Errors
    ///
    /// As [`status`](Self::status).
    pub async fn record_failure(&self, identity: &str) -> Result<LoginStatus> {
        let keys = self.keys(identity)?;
        let args = vec![
            i64::from(self.inner.max_failures),
            ms(self.inner.failure_window),
            ms(self.inner.lockout),
        ];
        let span = tracing::debug_span!(
            "fredkit.ratelimit.login_failure",
            outcome = tracing::field::Empty
        );
        self.run(&LOGIN_FAILURE, keys.to_vec(), args)
            .instrument(span)
            .await
    }

    /// Records a successful login: forgets the identity's failures. Does not
    /// lift an active lockout (check [`status`](Self::status) before
    /// verifying the password; use [`unlock`](Self::unlock) to lift one).
    /// One `UNLINK`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty identity; connection errors as they come
    /// (the fail mode does not apply).
    pub async fn record_success(&self, identity: &str) -> Result<()> {
        let [failures, _] = self.keys(identity)?;
        let _: i64 = self
            .inner
            .redis
            .client()
            .unlink(failures)
            .instrument(tracing::debug_span!("fredkit.ratelimit.login_success"))
            .await?;
        Ok(())
    }

    /// Lifts a lockout and forgets the failures (an administrator's or a
    /// password reset's action). One `UNLINK` of both keys.
    ///
    /// # Errors
    ///
    /// As [`record_success`](Self::record_success).
    pub async fn unlock(&self, identity: &str) -> Result<()> {
        let keys = self.keys(identity)?;
        let _: i64 = self
            .inner
            .redis
            .client()
            .unlink(keys.to_vec())
            .instrument(tracing::debug_span!("fredkit.ratelimit.login_unlock"))
            .await?;
        Ok(())
    }

    /// Counters: `allowed` counts answers "not locked", `denied` answers
    /// "locked", plus fail-open/closed and errors.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    async fn run(&self, script: &Script, keys: Vec<String>, args: Vec<i64>) -> Result<LoginStatus> {
        let inner = &*self.inner;
        let started = fredkit_core::metrics::ENABLED.then(std::time::Instant::now);
        let result = match inner.breaker.try_acquire() {
            Err(_) => Ok(self.fallback()),
            Ok(permit) => match script
                .exec::<_, Vec<i64>, _, _>(inner.redis.client(), keys, args)
                .await
            {
                Ok(v) => {
                    permit.success();
                    self.parse(&v)
                }
                Err(e) if crate::limiter::cannot_count(&e) => {
                    permit.failure();
                    tracing::warn!(error = %e, fail_mode = ?inner.fail_mode, "login throttle: Redis unavailable, using the fail mode");
                    Ok(self.fallback())
                }
                Err(e) => {
                    permit.success();
                    Err(e)
                }
            },
        };
        let m = &inner.metrics;
        let (outcome, counter) = match &result {
            Ok(s) if s.fallback == Some(FailMode::Open) => ("fail_open", &m.fail_open),
            Ok(s) if s.fallback == Some(FailMode::Closed) => ("fail_closed", &m.fail_closed),
            Ok(s) if s.locked => ("locked", &m.denied),
            Ok(_) => ("not_locked", &m.allowed),
            Err(_) => ("error", &m.errors),
        };
        Metrics::bump(counter);
        if let Some(started) = started {
            m.latency.record_since(started);
        }
        tracing::Span::current().record("outcome", outcome);
        result
    }

    fn parse(&self, v: &[i64]) -> Result<LoginStatus> {
        let [locked, failures, ttl] = v else {
            return Err(Error::protocol(format!(
                "login script returned {} values, expected 3",
                v.len()
            )));
        };
        let max = self.inner.max_failures;
        let locked = *locked == 1;
        let failures = u32::try_from(*failures).unwrap_or(0);
        let retry = if *ttl < 0 {
            self.inner.lockout
        } else {
            Duration::from_millis(u64::try_from(*ttl).unwrap_or(0))
        };
        Ok(LoginStatus {
            locked,
            failures: if locked { max } else { failures },
            remaining_attempts: if locked {
                0
            } else {
                max.saturating_sub(failures)
            },
            retry_after: locked.then_some(retry),
            fallback: None,
        })
    }

    fn fallback(&self) -> LoginStatus {
        let locked = !self.inner.fail_mode.lets_through();
        LoginStatus {
            locked,
            failures: 0,
            remaining_attempts: if locked { 0 } else { self.inner.max_failures },
            retry_after: locked.then_some(Duration::from_secs(1)),
            fallback: Some(self.inner.fail_mode),
        }
    }
}
