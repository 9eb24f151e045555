//! The rate limiter trait: [`RateLimiter`] and its [`Decision`].

use std::time::Duration;

use async_trait::async_trait;

use crate::Result;

/// The answer of a [`RateLimiter`], with the same meaning for every algorithm
/// (fixed window, sliding log, sliding counter, GCRA).
///
/// The fields map onto the HTTP headers `RateLimit-Limit`,
/// `RateLimit-Remaining`, `RateLimit-Reset` and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Whether the request may proceed. When `true` its cost has been
    /// consumed; when `false` nothing was consumed.
    pub allowed: bool,
    /// The most cost the policy admits at once: the quota per window, or the
    /// burst of a GCRA.
    pub limit: u64,
    /// How much more cost could be admitted right now, after this request
    /// (0 ≤ `remaining` ≤ `limit`).
    pub remaining: u64,
    /// How long until the limiter would be back to full capacity
    /// (`remaining == limit`) if no further request came.
    pub reset_after: Duration,
    /// When denied: the shortest wait after which the same request (same key,
    /// same cost) could be allowed, assuming no other request in between.
    /// `None` when allowed.
    pub retry_after: Option<Duration>,
}

/// Decides whether a request identified by a key may proceed, under a policy
/// fixed when the limiter was built.
///
/// # Contract
///
/// | method | promise | round trips (Redis implementations) |
/// |---|---|---|
/// | [`check`](Self::check) | an atomic check-and-consume of `cost` units for `key` | 1 (one script) |
///
/// - A **denied** request consumes nothing: a client hammering a closed limit
///   does not push its own reset further away.
/// - Check-and-consume is atomic across every process sharing the store:
///   concurrent callers never get more than the policy admits.
/// - Time is the store's clock (`TIME` in the script for Redis), so callers
///   with skewed clocks agree.
/// - Every key the limiter writes expires once it no longer matters.
/// - `cost` 0 consumes nothing and reports the current state (always
///   allowed). A `cost` above the limit can never be allowed and is an
///   [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error.
///
/// **Failure.** Implementations take a [`FailMode`](crate::FailMode). When
/// the store is unavailable they return `Ok` with the decision the fail mode
/// dictates — allowed for [`FailMode::Open`](crate::FailMode::Open), denied
/// for [`FailMode::Closed`](crate::FailMode::Closed) — with `limit` set to
/// the policy's limit and the other counts best-effort; the outage is logged
/// and counted. Errors are reserved for misuse (`InvalidInput`) and for
/// failures that are not about availability.
///
/// **Cancellation.** Dropping the future halfway may or may not have
/// consumed the cost (the script may have run); it is never consumed twice.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Checks, and when allowed consumes, `cost` units for `key`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a cost above the limit; otherwise only failures
    /// the [`FailMode`](crate::FailMode) does not cover.
    async fn check(&self, key: &str, cost: u32) -> Result<Decision>;
}
