//! Per-job options: id, schedule, priority, attempts, backoff, timeout,
//! retention.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fredkit_core::{Error, Result};

/// The longest delay (and the latest run-at time, as epoch milliseconds)
/// a job may have: 2^50 ms (about 35,000 years). Larger values would not
/// survive as sorted-set scores; they are [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput).
pub const MAX_DELAY: Duration = Duration::from_millis(1 << 50);

/// How long to wait before the next attempt after a failed one.
///
/// The delay of retry `n` (`n` = 1 after the first failed attempt) is, for
/// [`Fixed`](Self::Fixed), `delay`; for [`Exponential`](Self::Exponential),
/// `initial * 2^(n-1)` capped at `max`. With `jitter`, a random extra of up
/// to a quarter of that is added (then capped at `max`), so retries of
/// many jobs that failed together spread out; the delay is never below the
/// configured one (before the cap). Delays are measured on the Redis
/// server's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobBackoff {
    /// The same delay before every retry.
    Fixed(Duration),
    /// Doubling delays from `initial`, capped at `max`.
    Exponential {
        /// The delay before the first retry.
        initial: Duration,
        /// The cap.
        max: Duration,
        /// Add up to 25 % at random (capped at `max`).
        jitter: bool,
    },
}

impl Default for JobBackoff {
    /// Exponential from 1 s, capped at 1 h, with jitter.
    fn default() -> Self {
        JobBackoff::Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: true,
        }
    }
}

impl JobBackoff {
    /// The delay before retry `retry` (1 = after the first failed attempt).
    pub fn delay(&self, retry: u32) -> Duration {
        match *self {
            JobBackoff::Fixed(d) => d,
            JobBackoff::Exponential {
                initial,
                max,
                jitter,
            } => {
                let shift = retry.saturating_sub(1).min(40);
                let base = initial
                    .checked_mul(1u32 << shift.min(31))
                    .and_then(|d| {
                        if shift > 31 {
                            d.checked_mul(1u32 << (shift - 31))
                        } else {
                            Some(d)
                        }
                    })
                    .unwrap_or(max)
                    .min(max);
                if jitter {
                    let quarter = u64::try_from(base.as_millis() / 4).unwrap_or(u64::MAX);
                    let extra = if quarter == 0 {
                        0
                    } else {
                        rand::random::<u64>() % (quarter + 1)
                    };
                    base.saturating_add(Duration::from_millis(extra)).min(max)
                } else {
                    base
                }
            }
        }
    }

    pub(crate) fn encode(&self) -> (&'static str, u64, u64, bool) {
        match *self {
            JobBackoff::Fixed(d) => ("f", ms(d), ms(d), false),
            JobBackoff::Exponential {
                initial,
                max,
                jitter,
            } => ("e", ms(initial), ms(max), jitter),
        }
    }

    pub(crate) fn decode(kind: &str, delay: u64, max: u64, jitter: bool) -> JobBackoff {
        let (delay, max) = (Duration::from_millis(delay), Duration::from_millis(max));
        match kind {
            "f" => JobBackoff::Fixed(delay),
            _ => JobBackoff::Exponential {
                initial: delay,
                max,
                jitter,
            },
        }
    }
}

/// How many finished jobs (completed, or dead) to keep, and so for how long
/// their state, result and errors stay readable with
/// [`Queue::job`](crate::Queue::job) — and for how long enqueueing the same
/// id again is a no-op (a removed job's id can be used again).
///
/// Applied by the script that finishes a job (at most 100 removals per
/// call), so a queue never needs a sweeper; [`Queue::clean`](crate::Queue::clean)
/// removes by age on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Keep every finished job (until [`Queue::clean`](crate::Queue::clean)
    /// or [`Queue::remove`](crate::Queue::remove)).
    All,
    /// Keep the newest `n` (by finish time).
    Last(u64),
    /// Keep those finished within this long (server clock).
    For(Duration),
    /// Delete the job as soon as it finishes.
    None,
}

impl Keep {
    /// `(count, age ms)`, -1 for no limit; `(0, -1)` deletes at once.
    pub(crate) fn encode(&self) -> (i64, i64) {
        match *self {
            Keep::All => (-1, -1),
            Keep::Last(n) => (i64::try_from(n).unwrap_or(i64::MAX), -1),
            Keep::For(d) => (-1, i64::try_from(ms(d)).unwrap_or(i64::MAX).max(1)),
            Keep::None => (0, -1),
        }
    }
}

/// The options of one job. Start from [`JobOptions::new`] (or a queue's
/// defaults) and change what you need:
///
/// ```
/// use std::time::Duration;
/// use fredkit_jobs::{JobBackoff, JobOptions};
///
/// let opts = JobOptions::new()
///     .id("invoice-2026-0042")          // enqueue is idempotent by id
///     .delay(Duration::from_secs(60))   // due in 60 s by the server's clock
///     .priority(10)                     // higher starts first
///     .max_attempts(5)
///     .backoff(JobBackoff::Fixed(Duration::from_secs(30)))
///     .timeout(Duration::from_secs(120));
/// assert_eq!(opts.get_id(), Some("invoice-2026-0042"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOptions {
    pub(crate) id: Option<String>,
    pub(crate) delay: Option<Duration>,
    pub(crate) run_at: Option<SystemTime>,
    pub(crate) priority: u16,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: JobBackoff,
    pub(crate) timeout: Option<Duration>,
    pub(crate) keep_completed: Keep,
    pub(crate) keep_dead: Keep,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions::new()
    }
}

impl JobOptions {
    /// The defaults: a generated id, due now, priority 0, 3 attempts,
    /// [`JobBackoff::default`], no attempt timeout, keep the last 10,000
    /// completed jobs and dead jobs for 7 days.
    pub fn new() -> JobOptions {
        JobOptions {
            id: None,
            delay: None,
            run_at: None,
            priority: 0,
            max_attempts: 3,
            backoff: JobBackoff::default(),
            timeout: None,
            keep_completed: Keep::Last(10_000),
            keep_dead: Keep::For(Duration::from_secs(7 * 86_400)),
        }
    }

    /// The job's id. Enqueueing a job whose id exists (in any state, while
    /// it is retained: see [`Keep`]) does nothing and says so: "no duplicate
    /// invoice". Any non-empty text; without one a random 128-bit id is
    /// generated.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The id set with [`id`](Self::id), if any.
    pub fn get_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Due this long after the server receives the enqueue (its clock).
    /// Replaces a [`run_at`](Self::run_at).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self.run_at = None;
        self
    }

    /// Due at this wall-clock time, compared with the server's clock.
    /// Replaces a [`delay`](Self::delay).
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self.delay = None;
        self
    }

    /// Priority: among waiting jobs, a higher one starts first; equal ones
    /// start in the order they became due. Default 0.
    pub fn priority(mut self, priority: u16) -> Self {
        self.priority = priority;
        self
    }

    /// Attempts in all (at least 1; 0 is taken as 1). A stalled attempt
    /// (its worker died) counts. Default 3.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The delay between attempts. Default [`JobBackoff::default`].
    pub fn backoff(mut self, backoff: JobBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The most one attempt may take: the handler's future is dropped after
    /// it and the attempt fails. Default: the worker's
    /// [`WorkerConfig::timeout`](crate::WorkerConfig::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retention of the job once completed. Default `Keep::Last(10_000)`.
    pub fn keep_completed(mut self, keep: Keep) -> Self {
        self.keep_completed = keep;
        self
    }

    /// Retention of the job once dead. Default `Keep::For(7 days)`.
    pub fn keep_dead(mut self, keep: Keep) -> Self {
        self.keep_dead = keep;
        self
    }

    /// `(delay ms, run-at epoch ms or -1)`, checked against [`MAX_DELAY`].
    pub(crate) fn schedule(&self) -> Result<(u64, i64)> {
        let max = ms(MAX_DELAY);
        if let Some(d) = self.delay {
            let d = ms(d);
            if d > max {
                return Err(Error::invalid_input(format!(
                    "a job delay of {d} ms is longer than Redis can hold as a score (at most {max} ms)"
                )));
            }
            return Ok((d, -1));
        }
        if let Some(at) = self.run_at {
            let at = at.duration_since(UNIX_EPOCH).map(ms).unwrap_or(0);
            if at > max {
                return Err(Error::invalid_input(format!(
                    "a job run-at time of {at} ms after the epoch is later than Redis can hold as a score (at most {max})"
                )));
            }
            return Ok((0, i64::try_from(at).unwrap_or(0)));
        }
        Ok((0, -1))
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_and_is_capped() {
        let b = JobBackoff::Exponential {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            jitter: false,
        };
        let d: Vec<u64> = (1..=6).map(|n| ms(b.delay(n))).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(1000));
        let j = JobBackoff::Exponential {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(150),
            jitter: true,
        };
        for n in 1..50 {
            let d = ms(j.delay(n));
            assert!((100..=150).contains(&d), "{d}");
        }
    }

    #[test]
    fn delays_beyond_a_score_are_invalid_input() {
        let e = JobOptions::new()
            .delay(Duration::from_secs(u64::MAX / 4))
            .schedule();
        assert_eq!(
            e.err().map(|e| e.kind()),
            Some(crate::ErrorKind::InvalidInput)
        );
        assert_eq!(JobOptions::new().schedule().ok(), Some((0, -1)));
    }
}
