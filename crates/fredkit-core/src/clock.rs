//! An injectable monotonic clock: [`Clock`], [`SystemClock`], [`ManualClock`].
//!
//! Only in-process timing goes through a [`Clock`] (the circuit breaker's
//! windows, local timeouts). Decisions shared between processes — lock
//! expiry, rate-limit windows — use the Redis server's `TIME` instead.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// A source of monotonic time.
///
/// Production code uses [`SystemClock`]; tests hand a [`ManualClock`] to the
/// component under test and move time by hand, so they assert state changes
/// without sleeping.
pub trait Clock: fmt::Debug + Send + Sync {
    /// The current instant. Never goes backwards.
    fn now(&self) -> Instant;
}

/// The real clock: [`Instant::now`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use fredkit_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let shared: Arc<dyn Clock> = Arc::new(clock.clone());
/// let before = shared.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(shared.now() - before, Duration::from_secs(5));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    start: Instant,
    elapsed_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at the moment it was created.
    pub fn new() -> ManualClock {
        ManualClock {
            start: Instant::now(),
            elapsed_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves time forward by `by` (saturating after about 584 years).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update with a saturating add; the closure always returns Some.
        let _ = self
            .elapsed_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// How far the clock has been advanced since it was created.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos.load(Ordering::Acquire))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let elapsed = self.elapsed();
        // Instant + Duration can overflow only after centuries of advancing.
        self.start.checked_add(elapsed).unwrap_or(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_stands_still_until_advanced() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - t0, Duration::from_millis(1500));
        assert_eq!(clock.elapsed(), Duration::from_millis(1500));
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::new();
        let b = a.clone();
        a.advance(Duration::from_secs(1));
        assert_eq!(a.now(), b.now());
    }

    #[test]
    fn manual_clock_advance_saturates_instead_of_overflowing() {
        let clock = ManualClock::new();
        clock.advance(Duration::MAX);
        clock.advance(Duration::MAX);
        assert_eq!(clock.elapsed(), Duration::from_nanos(u64::MAX));
        let _ = clock.now();
    }

    #[test]
    fn system_clock_is_monotonic() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(b >= a);
    }
}
