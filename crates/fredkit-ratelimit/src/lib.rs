//! Exact Redis rate limits in one round trip, on the server's clock.
//!
//! - Four algorithms, each one Lua script: [`Limit::fixed_window`],
//!   [`Limit::sliding_log`] (exact), [`Limit::sliding_counter`]
//!   (approximate, constant memory) and [`Limit::gcra`] (rate + burst).
//!   Every check is **one round trip**, takes a `cost`, and a **denied
//!   request consumes nothing**.
//! - A [`Limiter`] checks several limits on one identity (10/s *and*
//!   1000/h) atomically: all allow and all consume, or nothing is consumed.
//!   The identity is the keys' hash tag, so it works on a cluster.
//! - Time is the Redis server's (`TIME` in the scripts, key expiry): the
//!   callers' clocks never matter.
//! - Every key expires at most one window after it was written.
//! - A [`FailMode`] the caller chooses, and a
//!   [`CircuitBreaker`](fredkit_core::CircuitBreaker), so an outage does not
//!   add a timeout to every request.
//! - [`LoginThrottle`]: count failed logins, lock out after N, reset on
//!   success, atomically.
//! - Feature `tower`: `tower::RateLimitLayer` for axum and other tower
//!   stacks, with 429 + `Retry-After`, the IETF draft `RateLimit-Policy` /
//!   `RateLimit` headers and optional `X-RateLimit-*`, keyed by client IP
//!   (proxies trusted only when named), a header, or a closure. Feature
//!   `axum` also reads axum's `ConnectInfo`.
//!
//! [`Limiter`] implements fredkit-core's object-safe
//! [`RateLimiter`] trait.
//!
//! ```no_run
//! use std::time::Duration;
//! use fredkit_core::FailMode;
//! use fredkit_ratelimit::{Limit, Limiter};
//!
//! # async fn run() -> fredkit_core::Result<()> {
//! let redis = fredkit_conn::Redis::from_url("redis://127.0.0.1:6379").await?;
//! let limiter = Limiter::builder(&redis, "app:rl")
//!     .limit(Limit::gcra(100, Duration::from_secs(60))) // 100/min, bursts of 100
//!     .fail_mode(FailMode::Open)
//!     .build()?;
//! let d = limiter.check("user:42", 1).await?;
//! println!("allowed={} remaining={} retry_after={:?}", d.allowed, d.remaining, d.retry_after);
//! # Ok(()) }
//! ```
//!
//! # Choosing an algorithm
//!
//! | | fixed window | sliding log | sliding counter | GCRA |
//! |---|---|---|---|---|
//! | accuracy | exact per window; up to 2× the quota across a boundary | exact over any window | approximate (bound below) | exact rate + burst |
//! | memory per identity and limit | one counter (~90 B) | one entry per admitted unit (quota 100: ~3.7 KB) | one small hash (~120 B) | one timestamp (~90 B) |
//! | bursts | the whole quota at once, then again right after the window ends | the whole quota at once, then as entries age out | like sliding log, smoothed | `burst` at once, then one unit per `period / rate` |
//! | `redis.call`s per check | 2–3 | 5–6 | 3–4 | 2–3 |
//!
//! (Memory as measured by the `ratelimit` bench suite with `MEMORY USAGE`
//! after 100 requests, key names of ~35 bytes included.)
//!
//! **Sliding counter error bound.** The estimate is
//! `previous × (1 − elapsed/window) + current`. It is exact while the
//! previous window is empty (so a burst inside one window admits exactly the
//! quota). Otherwise it assumes the previous window's requests were spread
//! evenly: requests bunched at the end of the previous window are
//! under-weighted, and in the worst case (the whole quota in the last
//! instant of one window, then steady traffic) any sliding window can hold
//! up to twice the quota, like a fixed window. A burst of duration `D` that
//! straddles a window boundary is admitted at most `quota × D / window`
//! units more than the quota. Windows start with the first request of an
//! idle identity (not at fixed clock times), and the counters expire one
//! window after the last admitted request, when the true count is zero.
//!
//! **Fixed window** windows also start with the first request of an idle
//! identity and end when Redis expires the counter (millisecond precision):
//! `window` ms after the start of the first request's millisecond (2 ms for
//! a 1 ms window, as Redis has no `PX 0`).
//!
//! **GCRA** keeps the theoretical arrival time in microseconds of the
//! server clock; `retry_after` is exact: the same request sent
//! `retry_after` after a denial (by the server's clock) is allowed.
//!
//! # Round trips
//!
//! | operation | round trips |
//! |---|---|
//! | [`Limiter::check`] / [`Limiter::check_all`], any number of limits | 1 |
//! | the same while the circuit breaker is open | 0 |
//! | [`LoginThrottle`] status / failure / success / unlock | 1 each |
//! | `tower::RateLimitLayer` per request | 1 (the check) |
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
#[cfg(feature = "tower")]
mod client_ip;
mod limit;
mod limiter;
mod login;
mod metrics;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use fredkit_core::traits::{Decision, RateLimiter};
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use limit::{Algorithm, Limit, MAX_QUOTA, MAX_SLIDING_LOG_QUOTA, MAX_WINDOW};
pub use limiter::{Limiter, LimiterBuilder, Outcome};
pub use login::{LoginStatus, LoginThrottle, LoginThrottleBuilder};
pub use metrics::MetricsSnapshot;
