//! Exponential backoff with full jitter: [`Backoff`].

use std::time::Duration;

use rand::Rng;

use crate::{Error, Result};

/// How long to wait before retry number `attempt`: exponential growth, a cap,
/// and (by default) full jitter.
///
/// Without jitter the delay for attempt `n` (counting from 0) is
/// `min(max, initial * multiplier^n)`. With full jitter — the default — it is
/// drawn uniformly from `[0, that]`, which spreads the retries of many clients
/// that failed at the same moment instead of having them hammer Redis in
/// lockstep (see "Exponential Backoff And Jitter", AWS Architecture Blog).
///
/// The computation saturates: any `attempt`, up to `u32::MAX`, gives at most
/// `max`, never an overflow or a panic.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use fredkit_core::Backoff;
///
/// let backoff = Backoff::builder()
///     .initial(Duration::from_millis(50)) // first retry waits up to 50 ms
///     .multiplier(2.0)                    // then up to 100 ms, 200 ms, …
///     .max(Duration::from_secs(2))        // but never more than 2 s
///     .build()?;
/// assert!(backoff.delay(0) <= Duration::from_millis(50));
/// assert!(backoff.delay(1_000) <= Duration::from_secs(2));
///
/// // The same schedule as an endless iterator.
/// for (attempt, delay) in backoff.iter().take(3).enumerate() {
///     assert!(delay <= Duration::from_millis(50) * 2u32.pow(attempt as u32));
/// }
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: bool,
}

impl Default for Backoff {
    /// 100 ms initial, multiplier 2, capped at 10 s, full jitter.
    fn default() -> Self {
        Backoff {
            initial: BackoffBuilder::DEFAULT_INITIAL,
            multiplier: BackoffBuilder::DEFAULT_MULTIPLIER,
            max: BackoffBuilder::DEFAULT_MAX,
            jitter: true,
        }
    }
}

impl Backoff {
    /// A builder starting from the defaults (100 ms, ×2, 10 s cap, jitter on).
    pub fn builder() -> BackoffBuilder {
        BackoffBuilder::default()
    }

    /// The delay before the first retry (attempt 0), before jitter.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The growth factor per attempt.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The cap on any delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Whether full jitter is applied.
    pub fn jitter(&self) -> bool {
        self.jitter
    }

    /// The upper bound of the delay for `attempt`:
    /// `min(max, initial * multiplier^attempt)`, saturating. Without jitter
    /// this is the delay itself.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let max_nanos = duration_nanos(self.max);
        let grown = duration_nanos(self.initial) as f64 * self.multiplier.powf(f64::from(attempt));
        // `grown` is finite and non-negative or +inf (validated inputs), never NaN.
        if grown >= max_nanos as f64 {
            Duration::from_nanos(max_nanos)
        } else {
            // In range of u64 because it is below `max_nanos`.
            Duration::from_nanos(grown.round() as u64)
        }
    }

    /// The delay before retry number `attempt` (0 for the first retry): the
    /// [`ceiling`](Self::ceiling), or with jitter a uniform draw from
    /// `[0, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        let nanos = rand::thread_rng().gen_range(0..=duration_nanos(ceiling));
        Duration::from_nanos(nanos)
    }

    /// The delays for attempts 0, 1, 2, … as an endless iterator (combine with
    /// `take` for a retry budget).
    pub fn iter(&self) -> BackoffIter {
        BackoffIter {
            backoff: *self,
            attempt: 0,
        }
    }
}

impl IntoIterator for Backoff {
    type Item = Duration;
    type IntoIter = BackoffIter;

    fn into_iter(self) -> BackoffIter {
        self.iter()
    }
}

impl IntoIterator for &Backoff {
    type Item = Duration;
    type IntoIter = BackoffIter;

    fn into_iter(self) -> BackoffIter {
        self.iter()
    }
}

/// The endless iterator of [`Backoff::iter`]. After `u32::MAX` attempts it
/// keeps yielding capped delays.
#[derive(Debug, Clone)]
pub struct BackoffIter {
    backoff: Backoff,
    attempt: u32,
}

impl BackoffIter {
    /// The attempt number the next delay is for.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl Iterator for BackoffIter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Some(delay)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

/// Builds a [`Backoff`]; every knob has a default, `build` validates.
#[must_use]
#[derive(Debug, Clone)]
pub struct BackoffBuilder {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: bool,
}

impl Default for BackoffBuilder {
    fn default() -> Self {
        BackoffBuilder {
            initial: Self::DEFAULT_INITIAL,
            multiplier: Self::DEFAULT_MULTIPLIER,
            max: Self::DEFAULT_MAX,
            jitter: true,
        }
    }
}

impl BackoffBuilder {
    const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
    const DEFAULT_MULTIPLIER: f64 = 2.0;
    const DEFAULT_MAX: Duration = Duration::from_secs(10);

    /// The delay ceiling of the first retry. Default 100 ms; must be non-zero.
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// The growth factor per attempt. Default 2.0; must be finite and ≥ 1.0
    /// (1.0 gives a constant delay).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The cap on every delay. Default 10 s; must be ≥ `initial` and at most
    /// `u64::MAX` nanoseconds (about 584 years).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Full jitter (uniform in `[0, ceiling]`). Default on; turn it off only
    /// when one client retries alone, or in tests.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `initial` is zero,
    /// `multiplier` is not a finite number ≥ 1, or `max` is below `initial` or
    /// above `u64::MAX` nanoseconds.
    pub fn build(self) -> Result<Backoff> {
        if self.initial.is_zero() {
            return Err(Error::config(
                "backoff initial delay must be greater than zero",
            ));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(Error::config(format!(
                "backoff multiplier must be a finite number >= 1.0, got {}",
                self.multiplier
            )));
        }
        if self.max < self.initial {
            return Err(Error::config(format!(
                "backoff max delay ({:?}) must not be below the initial delay ({:?})",
                self.max, self.initial
            )));
        }
        if self.max.as_nanos() > u128::from(u64::MAX) {
            return Err(Error::config(format!(
                "backoff max delay ({:?}) is too large; keep it below 584 years",
                self.max
            )));
        }
        Ok(Backoff {
            initial: self.initial,
            multiplier: self.multiplier,
            max: self.max,
            jitter: self.jitter,
        })
    }
}

/// Nanoseconds of a validated duration (at most `u64::MAX`), saturating.
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use rstest::rstest;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn exact(initial: u64, multiplier: f64, max: u64) -> Backoff {
        Backoff::builder()
            .initial(ms(initial))
            .multiplier(multiplier)
            .max(ms(max))
            .jitter(false)
            .build()
            .unwrap()
    }

    #[test]
    fn defaults_are_100ms_times_two_capped_at_10s_with_jitter() {
        let b = Backoff::builder().build().unwrap();
        assert_eq!(b, Backoff::default());
        assert_eq!(b.initial(), ms(100));
        assert_eq!(b.multiplier(), 2.0);
        assert_eq!(b.max(), Duration::from_secs(10));
        assert!(b.jitter());
    }

    #[rstest]
    #[case(0, 100)]
    #[case(1, 200)]
    #[case(2, 400)]
    #[case(3, 800)]
    #[case(6, 6_400)]
    #[case(7, 10_000)]
    #[case(40, 10_000)]
    fn without_jitter_delay_is_the_exact_capped_exponential(
        #[case] attempt: u32,
        #[case] want: u64,
    ) {
        assert_eq!(exact(100, 2.0, 10_000).delay(attempt), ms(want));
    }

    #[test]
    fn fractional_multiplier_grows_exactly() {
        let b = exact(1_000, 1.5, 60_000);
        assert_eq!(b.delay(1), ms(1_500));
        assert_eq!(b.delay(2), ms(2_250));
    }

    #[test]
    fn multiplier_one_gives_a_constant_delay() {
        let b = exact(250, 1.0, 1_000);
        assert!((0..100).all(|a| b.delay(a) == ms(250)));
    }

    #[test]
    fn jittered_delay_never_exceeds_the_cap() {
        let b = Backoff::builder().max(ms(500)).build().unwrap();
        for attempt in (0..200).chain([u32::MAX - 1, u32::MAX]) {
            assert!(b.delay(attempt) <= ms(500), "attempt {attempt}");
        }
    }

    #[test]
    fn jittered_first_delay_is_bounded_by_initial() {
        let b = Backoff::builder().initial(ms(30)).build().unwrap();
        assert!((0..1_000).all(|_| b.delay(0) <= ms(30)));
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff::builder()
            .initial(Duration::from_secs(1))
            .build()
            .unwrap();
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| b.delay(0)).collect();
        assert!(distinct.len() > 40, "{distinct:?}");
    }

    #[rstest]
    #[case(u32::MAX)]
    #[case(u32::MAX / 2)]
    #[case(1_100)]
    fn huge_attempts_saturate_at_the_cap(#[case] attempt: u32) {
        assert_eq!(exact(100, 2.0, 10_000).delay(attempt), ms(10_000));
        let max = Backoff::builder()
            .initial(Duration::from_secs(1))
            .multiplier(1e300)
            .max(Duration::from_nanos(u64::MAX))
            .jitter(false)
            .build()
            .unwrap();
        assert_eq!(max.delay(attempt), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn iterator_yields_the_same_schedule_and_saturates_its_counter() {
        let b = exact(10, 3.0, 1_000);
        let got: Vec<_> = b.iter().take(6).collect();
        assert_eq!(got, [ms(10), ms(30), ms(90), ms(270), ms(810), ms(1_000)]);
        let mut it = BackoffIter {
            backoff: b,
            attempt: u32::MAX,
        };
        assert_eq!(it.next(), Some(ms(1_000)));
        assert_eq!(it.attempt(), u32::MAX);
        assert_eq!(it.next(), Some(ms(1_000)));
    }

    #[rstest]
    #[case::zero_initial(Backoff::builder().initial(Duration::ZERO))]
    #[case::multiplier_below_one(Backoff::builder().multiplier(0.5))]
    #[case::nan_multiplier(Backoff::builder().multiplier(f64::NAN))]
    #[case::infinite_multiplier(Backoff::builder().multiplier(f64::INFINITY))]
    #[case::max_below_initial(Backoff::builder().initial(ms(10)).max(ms(5)))]
    #[case::max_too_large(Backoff::builder().max(Duration::MAX))]
    fn invalid_settings_are_config_errors_at_build(#[case] builder: BackoffBuilder) {
        assert_eq!(builder.build().unwrap_err().kind(), ErrorKind::Config);
    }
}
