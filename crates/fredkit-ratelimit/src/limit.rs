//! Policies: [`Limit`] and its [`Algorithm`].

use std::time::Duration;

use fredkit_core::{Error, Result, Script};

static FIXED_WINDOW: Script = Script::new(
    "ratelimit.fixed_window",
    include_str!("../scripts/fixed_window.lua"),
);
static SLIDING_LOG: Script = Script::new(
    "ratelimit.sliding_log",
    include_str!("../scripts/sliding_log.lua"),
);
static SLIDING_COUNTER: Script = Script::new(
    "ratelimit.sliding_counter",
    include_str!("../scripts/sliding_counter.lua"),
);
static GCRA: Script = Script::new("ratelimit.gcra", include_str!("../scripts/gcra.lua"));

/// The longest window (or GCRA period) a [`Limit`] accepts: 400 days. Keeps
/// every microsecond figure the scripts compute exact in Lua's doubles.
pub const MAX_WINDOW: Duration = Duration::from_secs(400 * 24 * 3600);

/// The largest quota (or GCRA rate or burst) a [`Limit`] accepts: 10^15.
/// The scripts count in Lua's doubles, exact up to 2^53 (~9 × 10^15), and
/// Redis turns a script's number above `i64::MAX` into a negative integer.
pub const MAX_QUOTA: u64 = 1_000_000_000_000_000;

/// The most units a sliding-log limit accepts per window (it stores one
/// sorted-set member per unit).
pub const MAX_SLIDING_LOG_QUOTA: u64 = 100_000;

/// How a [`Limit`] counts. See the crate docs for a comparison (accuracy,
/// memory per key, burst behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// A counter per window; the window starts with the first request and
    /// ends by Redis expiring the counter. Exact within a window, but a
    /// client can get up to twice the quota across a window boundary.
    FixedWindow,
    /// Every admitted unit is a sorted-set member with its time: an exact
    /// sliding window, memory proportional to the quota.
    SlidingLog,
    /// The current and the previous window's counts, the previous one
    /// weighted by its share still inside the sliding window: approximate,
    /// constant memory.
    SlidingCounter,
    /// The generic cell rate algorithm (a token bucket kept as one
    /// timestamp): a steady rate with a burst allowance, constant memory,
    /// exact `retry_after`.
    Gcra,
}

impl Algorithm {
    /// The algorithm's name: `fixed_window`, `sliding_log`,
    /// `sliding_counter` or `gcra`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingCounter => "sliding_counter",
            Algorithm::Gcra => "gcra",
        }
    }

    /// The Lua script that implements it (its header documents `KEYS`,
    /// `ARGV` and the reply). Exposed for benchmarks and debugging; a
    /// [`Limiter`](crate::Limiter) runs it for you.
    pub fn script(self) -> &'static Script {
        match self {
            Algorithm::FixedWindow => &FIXED_WINDOW,
            Algorithm::SlidingLog => &SLIDING_LOG,
            Algorithm::SlidingCounter => &SLIDING_COUNTER,
            Algorithm::Gcra => &GCRA,
        }
    }

    /// The short key part that keeps keys of different algorithms apart.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingLog => "sl",
            Algorithm::SlidingCounter => "sc",
            Algorithm::Gcra => "g",
        }
    }
}

/// One rate-limit policy: an algorithm, a quota and a window, and a name.
///
/// ```
/// use std::time::Duration;
/// use fredkit_ratelimit::Limit;
///
/// // 100 requests per minute, counted exactly over any 60 s.
/// let per_minute = Limit::sliding_log(100, Duration::from_secs(60)).name("minute");
/// // 10 per second on average, bursts of up to 20.
/// let steady = Limit::gcra(10, Duration::from_secs(1)).burst(20);
/// assert_eq!(steady.limit(), 20);
/// assert_eq!(steady.window(), Duration::from_secs(2)); // 20 units refill in 2 s
/// assert_eq!(per_minute.policy_name(), "minute");
/// ```
///
/// Validation happens in [`LimiterBuilder::build`](crate::LimiterBuilder::build):
/// a quota of 1 to [`MAX_QUOTA`] (at most [`MAX_SLIDING_LOG_QUOTA`] for a
/// sliding log), a window from 1 ms to [`MAX_WINDOW`], a GCRA rate whose emission
/// interval (period / rate) is at least 1 µs, a burst of at least 1 (only
/// for GCRA), and a name of 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct Limit {
    name: String,
    algorithm: Algorithm,
    quota: u64,
    window: Duration,
    burst: Option<u64>,
}

impl Limit {
    fn new(algorithm: Algorithm, quota: u64, window: Duration) -> Limit {
        Limit {
            name: "default".to_string(),
            algorithm,
            quota,
            window,
            burst: None,
        }
    }

    /// At most `quota` units per fixed `window` (see
    /// [`Algorithm::FixedWindow`]).
    pub fn fixed_window(quota: u64, window: Duration) -> Limit {
        Limit::new(Algorithm::FixedWindow, quota, window)
    }

    /// At most `quota` units in any `window`, exactly (see
    /// [`Algorithm::SlidingLog`]).
    pub fn sliding_log(quota: u64, window: Duration) -> Limit {
        Limit::new(Algorithm::SlidingLog, quota, window)
    }

    /// About `quota` units in any `window` (see
    /// [`Algorithm::SlidingCounter`] and the crate docs for the error bound).
    pub fn sliding_counter(quota: u64, window: Duration) -> Limit {
        Limit::new(Algorithm::SlidingCounter, quota, window)
    }

    /// `rate` units per `period` on average, with a burst of `rate` units by
    /// default (change it with [`burst`](Self::burst)); see
    /// [`Algorithm::Gcra`]. The emission interval `period / rate` is rounded
    /// to whole microseconds.
    pub fn gcra(rate: u64, period: Duration) -> Limit {
        Limit::new(Algorithm::Gcra, rate, period)
    }

    /// The GCRA burst: the most units admitted at once after an idle
    /// period. Default: the rate. Only valid on a GCRA limit
    /// (`build()` rejects it on the others).
    pub fn burst(mut self, burst: u64) -> Limit {
        self.burst = Some(burst);
        self
    }

    /// The policy's name, used in its Redis key and in the `RateLimit`
    /// headers. Default `"default"`; every limit of one limiter needs its
    /// own name.
    pub fn name(mut self, name: impl Into<String>) -> Limit {
        self.name = name.into();
        self
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &str {
        &self.name
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The most cost admitted at once: the quota per window, or the GCRA
    /// burst. A `cost` above it is an error.
    pub fn limit(&self) -> u64 {
        match self.algorithm {
            Algorithm::Gcra => self.burst.unwrap_or(self.quota),
            _ => self.quota,
        }
    }

    /// The window: for GCRA, the time the full burst takes to refill
    /// (`burst × period / rate`, with the emission interval in whole
    /// microseconds).
    pub fn window(&self) -> Duration {
        match self.algorithm {
            Algorithm::Gcra => {
                Duration::from_micros(self.emission_interval_us().saturating_mul(self.limit()))
            }
            _ => self.window,
        }
    }

    /// GCRA: the rate's period as given (for the others: the window).
    pub fn period(&self) -> Duration {
        self.window
    }

    /// GCRA: the time one unit takes to refill, in µs (rounded to nearest,
    /// at least 1).
    fn emission_interval_us(&self) -> u64 {
        let period = u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX);
        let rate = self.quota.max(1);
        (period.saturating_add(rate / 2) / rate).max(1)
    }

    /// The per-limit script arguments (after the cost).
    pub(crate) fn script_args(&self) -> [i64; 2] {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let window_us = u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX);
        match self.algorithm {
            Algorithm::FixedWindow => [clamp(self.quota), clamp(window_us.div_ceil(1000).max(1))],
            Algorithm::SlidingLog | Algorithm::SlidingCounter => {
                [clamp(self.quota), clamp(window_us)]
            }
            Algorithm::Gcra => [clamp(self.emission_interval_us()), clamp(self.limit())],
        }
    }

    /// Checks the policy; the message says what to change.
    pub(crate) fn validate(&self) -> Result<()> {
        let name = &self.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(Error::config(format!(
                "limit name {name:?} is not allowed: use 1 to 64 characters from A-Z a-z 0-9 _ - ."
            )));
        }
        if self.quota == 0 {
            return Err(Error::config(format!(
                "limit '{name}': the quota (or GCRA rate) must be at least 1"
            )));
        }
        if self.quota > MAX_QUOTA || self.burst.is_some_and(|b| b > MAX_QUOTA) {
            return Err(Error::config(format!(
                "limit '{name}': quotas, rates and bursts are at most {MAX_QUOTA} (10^15), \
                 so counts stay exact in the scripts; for \"no limit\" use no limiter"
            )));
        }
        if self.window < Duration::from_millis(1) || self.window > MAX_WINDOW {
            return Err(Error::config(format!(
                "limit '{name}': the window (or GCRA period) must be between 1 ms and 400 days, got {:?}",
                self.window
            )));
        }
        match self.algorithm {
            Algorithm::Gcra => {
                if self.burst == Some(0) {
                    return Err(Error::config(format!(
                        "limit '{name}': the GCRA burst must be at least 1"
                    )));
                }
                let period_us = self.window.as_micros();
                if u128::from(self.quota) > period_us {
                    return Err(Error::config(format!(
                        "limit '{name}': a rate of {} per {:?} is more than one per microsecond; \
                         use a longer period with a proportionally larger rate",
                        self.quota, self.window
                    )));
                }
                if self.window() > MAX_WINDOW {
                    return Err(Error::config(format!(
                        "limit '{name}': the burst takes {:?} to refill, more than 400 days; lower the burst",
                        self.window()
                    )));
                }
            }
            other => {
                if self.burst.is_some() {
                    return Err(Error::config(format!(
                        "limit '{name}': burst() only applies to GCRA limits, not to {}",
                        other.name()
                    )));
                }
                if other == Algorithm::SlidingLog && self.quota > MAX_SLIDING_LOG_QUOTA {
                    return Err(Error::config(format!(
                        "limit '{name}': a sliding log keeps one entry per unit; a quota of {} is above \
                         the maximum of {MAX_SLIDING_LOG_QUOTA}: use a sliding counter or GCRA",
                        self.quota
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_window_is_the_burst_refill_time() {
        let l = Limit::gcra(100, Duration::from_secs(60));
        assert_eq!(l.limit(), 100);
        assert_eq!(l.window(), Duration::from_secs(60));
        assert_eq!(l.script_args(), [600_000, 100]);
        let l = l.burst(10);
        assert_eq!(l.window(), Duration::from_secs(6));
    }

    #[test]
    fn fixed_window_sends_whole_milliseconds() {
        let l = Limit::fixed_window(5, Duration::from_micros(1500));
        assert_eq!(l.script_args(), [5, 2]);
    }

    #[test]
    fn invalid_policies_are_rejected_with_a_reason() {
        let cases = [
            Limit::fixed_window(0, Duration::from_secs(1)),
            Limit::fixed_window(1, Duration::from_micros(10)),
            Limit::sliding_log(1, MAX_WINDOW + Duration::from_secs(1)),
            Limit::sliding_log(MAX_SLIDING_LOG_QUOTA + 1, Duration::from_secs(1)),
            Limit::sliding_counter(1, Duration::from_secs(1)).burst(3),
            Limit::gcra(1, Duration::from_secs(1)).burst(0),
            Limit::gcra(2_000_000, Duration::from_secs(1)),
            Limit::gcra(1, Duration::from_secs(1)).name("has space"),
            Limit::gcra(1, Duration::from_secs(1)).name(""),
            // Counts above 2^53 are not exact in Lua's doubles, and Redis
            // turns a reply above i64::MAX into i64::MIN.
            Limit::fixed_window(1 << 60, Duration::from_secs(1)),
            Limit::sliding_counter(u64::MAX, Duration::from_secs(1)),
        ];
        for l in cases {
            let e = l.validate().unwrap_err();
            assert_eq!(e.kind(), fredkit_core::ErrorKind::Config, "{l:?}");
        }
        Limit::gcra(1_000_000, Duration::from_secs(1))
            .name("ok-name_1.x")
            .validate()
            .unwrap();
    }
}
