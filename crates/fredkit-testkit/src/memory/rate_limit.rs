//! [`MemoryRateLimiter`]: a [`RateLimiter`] in a map.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fredkit_core::traits::{Decision, RateLimiter};
use fredkit_core::{Clock, Error, Result};

use super::{lock, micros, Sweep, Timebase};

/// A [`RateLimiter`] in process memory, with the same algorithms and the same
/// [`Decision`]s as fredkit-ratelimit's scripts (fixed window, sliding log, GCRA),
/// for unit tests of code that checks a limit.
///
/// Keeps the trait's contract: check-and-consume is atomic across clones (one mutex), so
/// concurrent callers never get more than the policy admits — exactly; a denied request
/// consumes nothing; `cost` 0 reports the state; a cost above the limit or an empty key is
/// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput); a key's state is
/// dropped once it no longer matters. Time is the limiter's [`Clock`], counted in whole
/// microseconds like the scripts' server time.
///
/// Clones share the counts. There is no [`FailMode`](fredkit_core::FailMode): an
/// in-memory check never meets an outage (see the [module docs](crate::memory)).
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use fredkit_core::{traits::RateLimiter, ManualClock};
/// use fredkit_testkit::memory::MemoryRateLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fredkit_core::Result<()> {
/// let clock = ManualClock::new();
/// let limiter = MemoryRateLimiter::gcra(2, Duration::from_secs(1), 2)?
///     .with_clock(Arc::new(clock.clone()));
/// assert!(limiter.check("user:1", 1).await?.allowed);
/// assert!(limiter.check("user:1", 1).await?.allowed);
/// let denied = limiter.check("user:1", 1).await?;
/// assert!(!denied.allowed);
/// assert_eq!(denied.retry_after, Some(Duration::from_millis(500)));
/// clock.advance(Duration::from_millis(500));
/// assert!(limiter.check("user:1", 1).await?.allowed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryRateLimiter {
    policy: Policy,
    state: Arc<Mutex<State>>,
    time: Timebase,
}

#[derive(Clone, Copy, Debug)]
enum Policy {
    /// `quota` per window starting with the first request, in µs.
    FixedWindow { quota: u64, window: u64 },
    /// `quota` in any window, exactly, in µs.
    SlidingLog { quota: u64, window: u64 },
    /// Emission interval and tolerance (`interval × burst`), in µs; `burst` is the limit.
    Gcra { interval: u64, burst: u64 },
}

impl Policy {
    fn limit(self) -> u64 {
        match self {
            Policy::FixedWindow { quota, .. } | Policy::SlidingLog { quota, .. } => quota,
            Policy::Gcra { burst, .. } => burst,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, KeyState>,
    sweep: Sweep,
}

#[derive(Debug)]
enum KeyState {
    /// Window end (µs) and units used in it.
    Window { end: u64, used: u64 },
    /// Admissions (time in µs, units), oldest first.
    Log(VecDeque<(u64, u64)>),
    /// Theoretical arrival time, µs.
    Tat(u64),
}

impl KeyState {
    /// Whether the state still matters at `now` (otherwise it equals a fresh key's).
    fn live(&self, now: u64, policy: Policy) -> bool {
        match (self, policy) {
            (KeyState::Window { end, .. }, _) => *end > now,
            (KeyState::Log(log), Policy::SlidingLog { window, .. }) => log
                .back()
                .is_some_and(|(t, _)| t.saturating_add(window) > now),
            (KeyState::Tat(tat), _) => *tat > now,
            _ => false,
        }
    }
}

/// The longest window or period accepted: 400 days, as fredkit-ratelimit.
const MAX_WINDOW: Duration = Duration::from_secs(400 * 24 * 3600);

fn check_window(window: Duration) -> Result<u64> {
    if window < Duration::from_millis(1) || window > MAX_WINDOW {
        return Err(Error::config(format!(
            "rate-limit window {window:?} is out of range: use 1 ms to 400 days"
        )));
    }
    Ok(micros(window))
}

fn check_quota(quota: u64, what: &str) -> Result<u64> {
    if quota == 0 {
        return Err(Error::config(format!(
            "rate-limit {what} must be at least 1"
        )));
    }
    Ok(quota)
}

impl MemoryRateLimiter {
    fn with_policy(policy: Policy) -> MemoryRateLimiter {
        MemoryRateLimiter {
            policy,
            state: Arc::default(),
            time: Timebase::default(),
        }
    }

    /// At most `quota` units per fixed `window`, the window starting with the first
    /// request after the previous one ended (fredkit-ratelimit's `Limit::fixed_window`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) for a zero quota or a window
    /// outside 1 ms..=400 days.
    pub fn fixed_window(quota: u64, window: Duration) -> Result<MemoryRateLimiter> {
        Ok(Self::with_policy(Policy::FixedWindow {
            quota: check_quota(quota, "quota")?,
            window: check_window(window)?,
        }))
    }

    /// At most `quota` units in any `window`, exactly (`Limit::sliding_log`).
    ///
    /// # Errors
    ///
    /// As [`fixed_window`](Self::fixed_window).
    pub fn sliding_log(quota: u64, window: Duration) -> Result<MemoryRateLimiter> {
        Ok(Self::with_policy(Policy::SlidingLog {
            quota: check_quota(quota, "quota")?,
            window: check_window(window)?,
        }))
    }

    /// `rate` units per `period` on average, at most `burst` at once (`Limit::gcra(rate,
    /// period).burst(burst)`); the emission interval `period / rate` is rounded to whole
    /// microseconds, at least 1.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) for a zero rate or burst or a
    /// period outside 1 ms..=400 days.
    pub fn gcra(rate: u64, period: Duration, burst: u64) -> Result<MemoryRateLimiter> {
        let rate = check_quota(rate, "rate")?;
        let period = check_window(period)?;
        let burst = check_quota(burst, "burst")?;
        let interval = (period.saturating_add(rate / 2) / rate).max(1);
        Ok(Self::with_policy(Policy::Gcra { interval, burst }))
    }

    /// The same limiter reading time from `clock` (a
    /// [`ManualClock`](fredkit_core::ManualClock) lets a test refill it by advancing).
    /// Call it before checking.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MemoryRateLimiter {
        self.time = Timebase::new(clock);
        self
    }

    /// The most cost the policy admits at once ([`Decision::limit`]).
    pub fn limit(&self) -> u64 {
        self.policy.limit()
    }

    /// Forgets `key`'s state (an administrator's reset).
    pub fn reset(&self, key: &str) {
        lock(&self.state).keys.remove(key);
    }

    fn decide(&self, key: &str, cost: u64) -> Result<Decision> {
        let limit = self.policy.limit();
        if key.is_empty() {
            return Err(Error::invalid_input(
                "the rate-limit key is empty: pass a user id, IP address or API key",
            ));
        }
        if cost > limit {
            return Err(Error::invalid_input(format!(
                "a cost of {cost} can never be allowed: this limiter admits {limit} at once"
            )));
        }
        let now = self.time.micros();
        let policy = self.policy;
        let mut state = lock(&self.state);
        let st = &mut *state;
        let entry = st.keys.get_mut(key).filter(|k| k.live(now, policy));
        let us = Duration::from_micros;
        let (decision, write) = match policy {
            Policy::FixedWindow { quota, window } => {
                let (end, used) = match entry {
                    Some(KeyState::Window { end, used }) => (*end, *used),
                    _ => (now, 0),
                };
                let reset = end.saturating_sub(now);
                if cost > 0 && used.saturating_add(cost) > quota {
                    let d = Decision {
                        allowed: false,
                        limit,
                        remaining: quota.saturating_sub(used),
                        reset_after: us(reset),
                        retry_after: Some(us(reset)),
                    };
                    (d, None)
                } else if cost == 0 {
                    let d = Decision {
                        allowed: true,
                        limit,
                        remaining: quota.saturating_sub(used),
                        reset_after: us(reset),
                        retry_after: None,
                    };
                    (d, None)
                } else {
                    let end = if used == 0 {
                        now.saturating_add(window)
                    } else {
                        end
                    };
                    let used = used.saturating_add(cost);
                    let d = Decision {
                        allowed: true,
                        limit,
                        remaining: quota.saturating_sub(used),
                        reset_after: us(end.saturating_sub(now)),
                        retry_after: None,
                    };
                    (d, Some(KeyState::Window { end, used }))
                }
            }
            Policy::SlidingLog { quota, window } => {
                let mut log = match entry {
                    Some(KeyState::Log(log)) => std::mem::take(log),
                    _ => VecDeque::new(),
                };
                // An admission at t counts while now < t + window.
                while log
                    .front()
                    .is_some_and(|(t, _)| t.saturating_add(window) <= now)
                {
                    log.pop_front();
                }
                let used: u64 = log.iter().map(|(_, n)| *n).sum();
                let reset = log
                    .back()
                    .map_or(0, |(t, _)| t.saturating_add(window).saturating_sub(now));
                if cost > 0 && used.saturating_add(cost) > quota {
                    // Enough units leave when the one making room for `cost` leaves.
                    let mut must_leave = used.saturating_add(cost).saturating_sub(quota);
                    let mut retry = 0;
                    for (t, n) in &log {
                        retry = t.saturating_add(window).saturating_sub(now);
                        if *n >= must_leave {
                            break;
                        }
                        must_leave -= n;
                    }
                    let d = Decision {
                        allowed: false,
                        limit,
                        remaining: quota.saturating_sub(used),
                        reset_after: us(reset),
                        retry_after: Some(us(retry)),
                    };
                    (d, Some(KeyState::Log(log)))
                } else if cost == 0 {
                    let d = Decision {
                        allowed: true,
                        limit,
                        remaining: quota.saturating_sub(used),
                        reset_after: us(reset),
                        retry_after: None,
                    };
                    (d, Some(KeyState::Log(log)))
                } else {
                    log.push_back((now, cost));
                    let d = Decision {
                        allowed: true,
                        limit,
                        remaining: quota.saturating_sub(used.saturating_add(cost)),
                        reset_after: us(window),
                        retry_after: None,
                    };
                    (d, Some(KeyState::Log(log)))
                }
            }
            Policy::Gcra { interval, burst } => {
                let tolerance = interval.saturating_mul(burst);
                let tat = match entry {
                    Some(KeyState::Tat(tat)) => (*tat).max(now),
                    _ => now,
                };
                let remaining_at = |tat: u64| {
                    tolerance
                        .saturating_sub(tat.saturating_sub(now))
                        .checked_div(interval)
                        .unwrap_or(0)
                };
                let next = tat.saturating_add(interval.saturating_mul(cost));
                if cost > 0 && next.saturating_sub(tolerance) <= now {
                    let d = Decision {
                        allowed: true,
                        limit,
                        remaining: remaining_at(next).min(limit),
                        reset_after: us(next.saturating_sub(now)),
                        retry_after: None,
                    };
                    (d, Some(KeyState::Tat(next)))
                } else {
                    let d = Decision {
                        allowed: cost == 0,
                        limit,
                        remaining: remaining_at(tat).min(limit),
                        reset_after: us(tat.saturating_sub(now)),
                        retry_after: (cost > 0)
                            .then(|| us(next.saturating_sub(tolerance).saturating_sub(now))),
                    };
                    (d, None)
                }
            }
        };
        if let Some(write) = write {
            st.keys.insert(key.to_string(), write);
        }
        let len = st.keys.len();
        if st.sweep.due(len) {
            st.keys.retain(|_, k| k.live(now, policy));
            let len = st.keys.len();
            st.sweep.swept(len);
        }
        Ok(decision)
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, cost: u32) -> Result<Decision> {
        self.decide(key, u64::from(cost))
    }
}
