//! A circuit breaker over a rolling window and a run of consecutive
//! failures: [`CircuitBreaker`].

use std::{
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use crate::{Clock, Error, Result, SystemClock};

/// Number of buckets the sampling window is split into.
const BUCKETS: usize = 10;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; outcomes are sampled.
    Closed,
    /// Calls are refused with [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen)
    /// until the break duration has passed.
    Open,
    /// The break duration has passed: a limited number of trial calls go
    /// through; the first success closes the breaker, a failure opens it again.
    HalfOpen,
}

/// Stops calling Redis for a while after too many calls failed, so a dead or
/// overloaded server is not hammered and callers fail fast (or fall back)
/// instead of waiting for timeouts.
///
/// # The state machine
///
/// - **Closed.** Every outcome is recorded in a rolling window of
///   `sampling_duration`, kept as 10 buckets of a tenth each (so an outcome
///   stops counting between 0.9 and 1.0 `sampling_duration` after it
///   happened), and in a count of failures in a row (a success resets it).
///   The breaker opens on whichever rule trips first:
///   - **consecutive failures**: `consecutive_failures` failures reported in
///     a row (default 5; `0` turns the rule off). This is what opens it
///     quickly when a busy service loses Redis: the window is then full of
///     successes from before the outage, so the ratio would take seconds of
///     timed-out calls to cross;
///   - **failure ratio**: a failure brings the window to at least
///     `minimum_throughput` calls *and* a failure share of at least
///     `failure_ratio` (catches a server that fails some calls but not
///     several in a row).
/// - **Open.** [`try_acquire`](Self::try_acquire) refuses with
///   [`Error::CircuitOpen`] whose `retry_after` says when it will let a trial
///   through. After `break_duration` the next caller gets a trial permit and
///   the breaker is half-open.
/// - **Half-open.** At most `half_open_max_calls` trial permits are out at
///   once (one by default); other callers are refused with `retry_after` set
///   to `break_duration`. A trial success closes the breaker with an empty
///   window; a trial failure opens it for another `break_duration`.
///
/// Outcomes of permits handed out before the last state change are ignored:
/// a slow call that started while the breaker was closed cannot re-open it
/// after a trial closed it.
///
/// # Cost
///
/// `try_acquire` in the closed state is one atomic load and one `Arc` clone;
/// reporting an outcome takes an uncontended mutex for a few additions. The
/// breaker is `Clone` (clones share state), `Send` and `Sync`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use fredkit_core::{BreakerState, CircuitBreaker, Error, ErrorKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let breaker = CircuitBreaker::builder()
///     .name("cache")                              // shows in errors and logs
///     .failure_ratio(0.5)                         // open at 50 % failures…
///     .minimum_throughput(4)                      // …once 4 calls were seen…
///     .sampling_duration(Duration::from_secs(10)) // …in the last 10 s
///     .break_duration(Duration::from_secs(5))     // stay open 5 s
///     .build()?;
///
/// for _ in 0..4 {
///     let r: Result<(), Error> = breaker.call(async { Err(Error::timeout("GET")) }).await;
///     assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// let refused = breaker.call(async { Ok(()) }).await.unwrap_err();
/// assert_eq!(refused.kind(), ErrorKind::CircuitOpen);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    clock: Arc<dyn Clock>,
    origin: Instant,
    /// `(generation << 2) | state`, readable without the lock.
    fast: AtomicU64,
    machine: Mutex<Machine>,
    /// `fredkit_breaker_state{name}`: 0 closed, 1 half-open, 2 open
    /// (feature `metrics`; breakers sharing a name share the series).
    state_gauge: crate::metrics::Gauge,
    /// `fredkit_breaker_opened_total{name}`: times it opened.
    opened: crate::metrics::Counter,
}

#[derive(Debug, Clone)]
struct Config {
    name: String,
    failure_ratio: f64,
    minimum_throughput: u32,
    consecutive_failures: u32,
    sampling_duration: Duration,
    bucket_nanos: u128,
    break_duration: Duration,
    half_open_max_calls: u32,
}

#[derive(Debug)]
struct Machine {
    generation: u64,
    phase: Phase,
    window: Window,
    /// Failures reported in a row while closed; reset by a success and by
    /// every state change.
    consecutive: u32,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    index: u64,
    successes: u64,
    failures: u64,
}

#[derive(Debug, Default)]
struct Window {
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn record(&mut self, index: u64, success: bool) {
        let slot = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if slot.index != index {
            *slot = Bucket {
                index,
                successes: 0,
                failures: 0,
            };
        }
        if success {
            slot.successes = slot.successes.saturating_add(1);
        } else {
            slot.failures = slot.failures.saturating_add(1);
        }
    }

    /// `(calls, failures)` of the buckets still inside the window at `index`.
    fn totals(&self, index: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| b.index <= index && index - b.index < BUCKETS as u64)
            .fold((0u64, 0u64), |(calls, failures), b| {
                (
                    calls.saturating_add(b.successes).saturating_add(b.failures),
                    failures.saturating_add(b.failures),
                )
            })
    }

    fn clear(&mut self) {
        *self = Window::default();
    }
}

impl CircuitBreaker {
    /// A builder with the defaults: name `"redis"`, 5 consecutive failures,
    /// failure ratio 0.5, minimum throughput 10, sampling duration 10 s,
    /// break duration 5 s, one half-open trial, the system clock.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    /// A breaker with every default setting (see [`CircuitBreakerBuilder`])
    /// and this name; an empty name becomes `"redis"`. Infallible, for code
    /// that needs a breaker and has no error to return.
    pub fn named(name: impl Into<String>) -> CircuitBreaker {
        let name = name.into();
        let builder = CircuitBreakerBuilder::default();
        if name.is_empty() {
            builder.assemble()
        } else {
            builder.name(name).assemble()
        }
    }

    /// The breaker's name, as given to the builder.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The current state. An open breaker whose break duration has passed
    /// reports [`BreakerState::HalfOpen`]: the next call will be a trial.
    pub fn state(&self) -> BreakerState {
        let fast = self.inner.fast.load(Ordering::Acquire);
        if fast & STATE_MASK == CLOSED {
            return BreakerState::Closed;
        }
        let machine = self.inner.lock();
        match machine.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if self.inner.clock.now() >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make one call.
    ///
    /// Report the call's outcome on the returned [`Permit`] with
    /// [`Permit::success`] or [`Permit::failure`]. A permit dropped without
    /// either — the caller's future was cancelled, or the outcome says nothing
    /// about Redis — counts as neither; a dropped half-open trial permit frees
    /// its slot so another caller can try.
    ///
    /// # Errors
    ///
    /// [`Error::CircuitOpen`] when the breaker is open, or half-open with all
    /// trial slots taken. `retry_after` is the time left until the break
    /// duration ends, or the whole break duration while a trial is running.
    pub fn try_acquire(&self) -> Result<Permit> {
        let fast = self.inner.fast.load(Ordering::Acquire);
        if fast & STATE_MASK == CLOSED {
            return Ok(self.permit(fast >> STATE_BITS, false));
        }
        let mut machine = self.inner.lock();
        match machine.phase {
            Phase::Closed => Ok(self.permit(machine.generation, false)),
            Phase::Open { until } => {
                let now = self.inner.clock.now();
                if now < until {
                    return Err(self.inner.open_error(until - now));
                }
                self.inner
                    .transition(&mut machine, Phase::HalfOpen { in_flight: 1 });
                tracing::info!(
                    breaker = %self.inner.config.name,
                    "circuit breaker half-open: letting a trial call through"
                );
                Ok(self.permit(machine.generation, true))
            }
            Phase::HalfOpen { in_flight } => {
                if in_flight >= self.inner.config.half_open_max_calls {
                    return Err(self.inner.open_error(self.inner.config.break_duration));
                }
                machine.phase = Phase::HalfOpen {
                    in_flight: in_flight + 1,
                };
                Ok(self.permit(machine.generation, true))
            }
        }
    }

    /// Runs `fut` if the breaker lets a call through, and records its outcome.
    ///
    /// Only errors for which [`Error::is_unavailable`] is true (connection,
    /// timeout, busy, circuit open) count as failures; any other result —
    /// including a codec, configuration or script error, which are not Redis
    /// being unavailable — counts as a success. `fut` is not polled at all
    /// when the breaker refuses.
    ///
    /// Cancellation: dropping the returned future before `fut` completes
    /// records nothing (see [`try_acquire`](Self::try_acquire)).
    ///
    /// # Errors
    ///
    /// [`Error::CircuitOpen`] when refused; otherwise whatever `fut` returns.
    pub async fn call<F, T>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let permit = self.try_acquire()?;
        let result = fut.await;
        match &result {
            Err(e) if e.is_unavailable() => permit.failure(),
            _ => permit.success(),
        }
        result
    }

    fn permit(&self, generation: u64, trial: bool) -> Permit {
        Permit {
            inner: Arc::clone(&self.inner),
            generation,
            trial,
            settled: false,
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.config.name)
            .field("state", &self.state())
            .field("failure_ratio", &self.inner.config.failure_ratio)
            .field("minimum_throughput", &self.inner.config.minimum_throughput)
            .field(
                "consecutive_failures",
                &self.inner.config.consecutive_failures,
            )
            .field("sampling_duration", &self.inner.config.sampling_duration)
            .field("break_duration", &self.inner.config.break_duration)
            .field(
                "half_open_max_calls",
                &self.inner.config.half_open_max_calls,
            )
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        // No code panics while holding the lock; if it ever did, the counters
        // are still consistent enough to go on.
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn transition(&self, machine: &mut Machine, phase: Phase) {
        machine.generation = machine.generation.wrapping_add(1);
        machine.phase = phase;
        machine.consecutive = 0;
        let state = match phase {
            Phase::Closed => CLOSED,
            Phase::Open { .. } => OPEN,
            Phase::HalfOpen { .. } => HALF_OPEN,
        };
        self.fast.store(
            (machine.generation << STATE_BITS) | state,
            Ordering::Release,
        );
        let (level, opened) = match phase {
            Phase::Closed => (0.0, false),
            Phase::HalfOpen { .. } => (1.0, false),
            Phase::Open { .. } => (2.0, true),
        };
        self.state_gauge.set(level);
        if opened {
            self.opened.increment(1);
        }
    }

    fn open(&self, machine: &mut Machine, now: Instant) {
        // Only an absurd break duration overflows an Instant; stay open a year then.
        let until = now
            .checked_add(self.config.break_duration)
            .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(now);
        machine.window.clear();
        self.transition(machine, Phase::Open { until });
    }

    fn open_error(&self, retry_after: Duration) -> Error {
        Error::CircuitOpen {
            name: self.config.name.clone(),
            retry_after,
        }
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.config.bucket_nanos).unwrap_or(u64::MAX)
    }

    fn record(&self, generation: u64, trial: bool, success: bool) {
        let mut machine = self.lock();
        if machine.generation != generation {
            return; // handed out before the last state change: stale
        }
        match machine.phase {
            Phase::Closed if !trial => {
                let now = self.clock.now();
                let index = self.bucket_index(now);
                machine.window.record(index, success);
                if success {
                    machine.consecutive = 0;
                    return;
                }
                machine.consecutive = machine.consecutive.saturating_add(1);
                let in_a_row = machine.consecutive;
                if self.config.consecutive_failures != 0
                    && in_a_row >= self.config.consecutive_failures
                {
                    self.open(&mut machine, now);
                    tracing::warn!(
                        breaker = %self.config.name,
                        consecutive_failures = in_a_row,
                        break_duration = ?self.config.break_duration,
                        "circuit breaker opened: Redis calls failed {in_a_row} times in a row"
                    );
                    return;
                }
                let (calls, failures) = machine.window.totals(index);
                if calls >= u64::from(self.config.minimum_throughput)
                    && failures as f64 >= self.config.failure_ratio * calls as f64
                {
                    self.open(&mut machine, now);
                    tracing::warn!(
                        breaker = %self.config.name,
                        calls,
                        failures,
                        break_duration = ?self.config.break_duration,
                        "circuit breaker opened: too many Redis calls failed"
                    );
                }
            }
            Phase::HalfOpen { .. } if trial => {
                if success {
                    machine.window.clear();
                    self.transition(&mut machine, Phase::Closed);
                    tracing::info!(breaker = %self.config.name, "circuit breaker closed: trial call succeeded");
                } else {
                    self.open(&mut machine, self.clock.now());
                    tracing::warn!(
                        breaker = %self.config.name,
                        break_duration = ?self.config.break_duration,
                        "circuit breaker re-opened: trial call failed"
                    );
                }
            }
            _ => {}
        }
    }

    fn abandon(&self, generation: u64) {
        let mut machine = self.lock();
        if machine.generation != generation {
            return;
        }
        if let Phase::HalfOpen { in_flight } = machine.phase {
            machine.phase = Phase::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
            };
        }
    }
}

/// Permission to make one call through a [`CircuitBreaker`].
///
/// Report the outcome with [`success`](Self::success) or
/// [`failure`](Self::failure). Dropping the permit without reporting counts as
/// neither (and frees a half-open trial slot). A permit is `Send` and may be
/// moved into a spawned task.
#[must_use = "report the outcome with success() or failure(); a dropped permit counts as neither"]
pub struct Permit {
    inner: Arc<Inner>,
    generation: u64,
    trial: bool,
    settled: bool,
}

impl Permit {
    /// The call succeeded (Redis answered).
    pub fn success(mut self) {
        self.settled = true;
        self.inner.record(self.generation, self.trial, true);
    }

    /// The call failed because Redis was unreachable, slow or busy.
    pub fn failure(mut self) {
        self.settled = true;
        self.inner.record(self.generation, self.trial, false);
    }

    /// Whether this is a half-open trial: its outcome decides whether the
    /// breaker closes or opens again.
    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.trial {
            self.inner.abandon(self.generation);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.inner.config.name)
            .field("trial", &self.trial)
            .finish()
    }
}

/// Builds a [`CircuitBreaker`]; every knob has a default, `build` validates.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use fredkit_core::{CircuitBreaker, ManualClock};
///
/// let breaker = CircuitBreaker::builder()
///     .name("ratelimit")                          // default "redis"
///     .failure_ratio(0.25)                        // default 0.5
///     .minimum_throughput(20)                     // default 10
///     .consecutive_failures(3)                    // default 5; 0 = off
///     .sampling_duration(Duration::from_secs(30)) // default 10 s
///     .break_duration(Duration::from_secs(2))     // default 5 s
///     .half_open_max_calls(1)                     // default 1
///     .clock(Arc::new(ManualClock::new()))        // default the system clock
///     .build()?;
/// assert_eq!(breaker.name(), "ratelimit");
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct CircuitBreakerBuilder {
    name: String,
    failure_ratio: f64,
    minimum_throughput: u32,
    consecutive_failures: u32,
    sampling_duration: Duration,
    break_duration: Duration,
    half_open_max_calls: u32,
    clock: Arc<dyn Clock>,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        CircuitBreakerBuilder {
            name: "redis".to_string(),
            failure_ratio: 0.5,
            minimum_throughput: 10,
            consecutive_failures: 5,
            sampling_duration: Duration::from_secs(10),
            break_duration: Duration::from_secs(5),
            half_open_max_calls: 1,
            clock: Arc::new(SystemClock),
        }
    }
}

impl CircuitBreakerBuilder {
    /// The name shown in errors and logs. Default `"redis"`; must not be empty.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The failure share in the window at which the breaker opens. Default
    /// 0.5; must be in `(0, 1]`.
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio;
        self
    }

    /// The number of calls the window must hold before the breaker may open,
    /// so a single early failure cannot trip it. Default 10; must be ≥ 1.
    pub fn minimum_throughput(mut self, calls: u32) -> Self {
        self.minimum_throughput = calls;
        self
    }

    /// How many failures in a row open the breaker, whatever the failure
    /// ratio of the window. Default 5; `0` turns this rule off (only the
    /// ratio rule remains).
    ///
    /// "In a row" is in the order outcomes are reported, across all callers:
    /// any success in between starts the count again. With Redis gone, every
    /// call fails, so the breaker opens as soon as the first `n` in-flight
    /// calls have timed out; a server that answers most calls keeps it
    /// closed. Outcomes of permits issued before the last state change do
    /// not count.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// The length of the rolling window outcomes are counted in (kept as 10
    /// buckets). Default 10 s; must be non-zero.
    pub fn sampling_duration(mut self, duration: Duration) -> Self {
        self.sampling_duration = duration;
        self
    }

    /// How long the breaker stays open before letting a trial through.
    /// Default 5 s; must be non-zero.
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// How many trial calls may be in flight while half-open. Default 1; must
    /// be ≥ 1.
    pub fn half_open_max_calls(mut self, calls: u32) -> Self {
        self.half_open_max_calls = calls;
        self
    }

    /// The clock; tests pass a [`ManualClock`](crate::ManualClock). Default
    /// [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the name is empty,
    /// the failure ratio is outside `(0, 1]`, a duration is zero, or the
    /// minimum throughput or half-open call count is zero.
    pub fn build(self) -> Result<CircuitBreaker> {
        let invalid = |what: String| Err(Error::config(format!("circuit breaker: {what}")));
        if self.name.is_empty() {
            return invalid("name must not be empty".into());
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return invalid(format!(
                "failure_ratio must be in (0, 1], got {}",
                self.failure_ratio
            ));
        }
        if self.minimum_throughput == 0 {
            return invalid("minimum_throughput must be at least 1".into());
        }
        if self.sampling_duration.is_zero() {
            return invalid("sampling_duration must be greater than zero".into());
        }
        if self.break_duration.is_zero() {
            return invalid("break_duration must be greater than zero".into());
        }
        if self.half_open_max_calls == 0 {
            return invalid("half_open_max_calls must be at least 1".into());
        }
        Ok(self.assemble())
    }

    /// Builds without validating; only for settings known to be valid.
    fn assemble(self) -> CircuitBreaker {
        let bucket_nanos = (self.sampling_duration.as_nanos() / BUCKETS as u128).max(1);
        let origin = self.clock.now();
        let labels = crate::metrics::Labels::new().with("name", self.name.clone());
        let state_gauge = crate::metrics::Gauge::new("fredkit_breaker_state", &labels);
        state_gauge.set(0.0);
        let opened = crate::metrics::Counter::new("fredkit_breaker_opened_total", &labels);
        CircuitBreaker {
            inner: Arc::new(Inner {
                config: Config {
                    name: self.name,
                    failure_ratio: self.failure_ratio,
                    minimum_throughput: self.minimum_throughput,
                    consecutive_failures: self.consecutive_failures,
                    sampling_duration: self.sampling_duration,
                    bucket_nanos,
                    break_duration: self.break_duration,
                    half_open_max_calls: self.half_open_max_calls,
                },
                clock: self.clock,
                origin,
                fast: AtomicU64::new(CLOSED),
                machine: Mutex::new(Machine {
                    generation: 0,
                    phase: Phase::Closed,
                    window: Window::default(),
                    consecutive: 0,
                }),
                state_gauge,
                opened,
            }),
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod metrics_tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// The state gauge follows closed -> open -> half-open -> closed and the
    /// opened counter counts the opening (fails if `transition` stops
    /// recording).
    #[test]
    fn state_gauge_and_opened_counter_follow_the_breaker() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let clock = Arc::new(crate::ManualClock::new());
        metrics::with_local_recorder(&recorder, || {
            let b = CircuitBreaker::builder()
                .name("payments")
                .consecutive_failures(2)
                .break_duration(Duration::from_secs(5))
                .clock(clock.clone())
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..2 {
                if let Ok(p) = b.try_acquire() {
                    p.failure();
                }
            }
            assert_eq!(b.state(), BreakerState::Open);
        });
        // One snapshot: reading resets the debugging recorder's values.
        let snapshot = snapshotter.snapshot().into_vec();
        let read = |name: &str| {
            snapshot
                .iter()
                .find(|(k, _, _, _)| k.key().name() == name)
                .map(|(_, _, _, v)| v)
        };
        assert!(
            matches!(read("fredkit_breaker_state"), Some(DebugValue::Gauge(g)) if g.into_inner() == 2.0)
        );
        assert!(matches!(
            read("fredkit_breaker_opened_total"),
            Some(DebugValue::Counter(1))
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, ManualClock};
    use rstest::rstest;
    use BreakerState::*;

    /// One step of a breaker scenario.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// `n` calls that succeed.
        Pass(u32),
        /// `n` calls that fail.
        Fail(u32),
        /// Advance the clock by this many milliseconds.
        Wait(u64),
        /// The breaker reports this state.
        Is(BreakerState),
        /// `try_acquire` is refused, with this `retry_after` in ms.
        Refuses(u64),
        /// `try_acquire` succeeds; the permit is held (is it a trial?).
        Hold(bool),
        /// Report success on the oldest held permit.
        HeldOk,
        /// Report failure on the oldest held permit.
        HeldFail,
        /// Drop the oldest held permit without reporting.
        HeldDrop,
    }
    use Step::*;

    /// ratio 0.5, minimum throughput 4, window 10 s (1 s buckets), break 5 s;
    /// the consecutive-failures rule off, so the ratio rule is seen alone.
    fn breaker(clock: &ManualClock, half_open_max_calls: u32) -> CircuitBreaker {
        CircuitBreaker::builder()
            .name("test")
            .failure_ratio(0.5)
            .minimum_throughput(4)
            .consecutive_failures(0)
            .sampling_duration(Duration::from_secs(10))
            .break_duration(Duration::from_secs(5))
            .half_open_max_calls(half_open_max_calls)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap()
    }

    fn run(steps: &[Step], half_open_max_calls: u32) {
        let clock = ManualClock::new();
        let b = breaker(&clock, half_open_max_calls);
        run_on(&b, &clock, steps);
    }

    fn run_on(b: &CircuitBreaker, clock: &ManualClock, steps: &[Step]) {
        let mut held: std::collections::VecDeque<Permit> = Default::default();
        for (i, step) in steps.iter().enumerate() {
            let at = format!("step {i} {step:?} of {steps:?}");
            match *step {
                Pass(n) => (0..n).for_each(|_| b.try_acquire().expect(&at).success()),
                Fail(n) => (0..n).for_each(|_| b.try_acquire().expect(&at).failure()),
                Wait(ms) => clock.advance(Duration::from_millis(ms)),
                Is(state) => assert_eq!(b.state(), state, "{at}"),
                Refuses(ms) => match b.try_acquire() {
                    Err(Error::CircuitOpen { name, retry_after }) => {
                        assert_eq!(name, "test", "{at}");
                        assert_eq!(retry_after, Duration::from_millis(ms), "{at}");
                    }
                    other => panic!("{at}: expected CircuitOpen, got {other:?}"),
                },
                Hold(trial) => {
                    let permit = b.try_acquire().expect(&at);
                    assert_eq!(permit.is_trial(), trial, "{at}");
                    held.push_back(permit);
                }
                HeldOk => held.pop_front().expect(&at).success(),
                HeldFail => held.pop_front().expect(&at).failure(),
                HeldDrop => drop(held.pop_front().expect(&at)),
            }
        }
    }

    #[rstest]
    #[case::trips_at_ratio_with_enough_throughput(&[Pass(2), Fail(1), Is(Closed), Fail(1), Is(Open)])]
    #[case::stays_closed_below_ratio(&[Pass(3), Fail(1), Fail(1), Is(Closed), Fail(1), Is(Open)])]
    #[case::successes_never_trip(&[Pass(1000), Is(Closed)])]
    #[case::does_not_trip_below_minimum_throughput(&[Fail(3), Is(Closed), Fail(1), Is(Open)])]
    #[case::old_failures_age_out_of_the_window(&[Fail(3), Wait(10_000), Fail(1), Is(Closed), Fail(2), Is(Closed), Fail(1), Is(Open)])]
    #[case::failures_inside_the_window_still_count(&[Fail(3), Wait(9_500), Fail(1), Is(Open)])]
    #[case::window_slides_bucket_by_bucket(&[Fail(2), Wait(5_000), Fail(1), Wait(5_000), Fail(2), Is(Closed), Fail(1), Is(Open)])]
    #[case::open_rejects_until_break_duration(&[Fail(4), Refuses(5_000), Wait(4_999), Refuses(1), Wait(1), Is(HalfOpen), Hold(true)])]
    #[case::half_open_admits_exactly_one_trial(&[Fail(4), Wait(5_000), Hold(true), Is(HalfOpen), Refuses(5_000), Refuses(5_000)])]
    #[case::trial_success_closes(&[Fail(4), Wait(5_000), Hold(true), HeldOk, Is(Closed), Hold(false)])]
    #[case::closing_starts_with_an_empty_window(&[Fail(4), Wait(5_000), Pass(1), Is(Closed), Fail(3), Is(Closed), Fail(1), Is(Open)])]
    #[case::trial_failure_reopens_for_another_break(&[Fail(4), Wait(5_000), Hold(true), HeldFail, Is(Open), Refuses(5_000), Wait(4_999), Refuses(1), Wait(1), Hold(true)])]
    #[case::dropped_trial_frees_its_slot(&[Fail(4), Wait(5_000), Hold(true), Refuses(5_000), HeldDrop, Is(HalfOpen), Hold(true)])]
    #[case::dropped_closed_permit_counts_as_neither(&[Hold(false), HeldDrop, Fail(3), Is(Closed)])]
    #[case::stale_permit_cannot_reopen_a_closed_breaker(&[Hold(false), Fail(4), Wait(5_000), Pass(1), Is(Closed), HeldFail, Fail(3), Is(Closed)])]
    #[case::stale_permit_cannot_close_an_open_breaker(&[Hold(false), Fail(4), HeldOk, Is(Open)])]
    fn state_machine(#[case] steps: &[Step]) {
        run(steps, 1);
    }

    /// Opens after 3 failures in a row; the ratio rule is out of reach
    /// (minimum throughput u32::MAX), so this rule is seen alone.
    fn consecutive_breaker(clock: &ManualClock) -> CircuitBreaker {
        CircuitBreaker::builder()
            .name("test")
            .consecutive_failures(3)
            .minimum_throughput(u32::MAX)
            .break_duration(Duration::from_secs(5))
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap()
    }

    #[rstest]
    #[case::opens_after_n_failures_in_a_row(&[Fail(2), Is(Closed), Fail(1), Is(Open), Refuses(5_000)])]
    #[case::a_success_starts_the_count_again(&[Fail(2), Pass(1), Fail(2), Is(Closed), Fail(1), Is(Open)])]
    #[case::a_run_is_a_run_however_slow(&[Fail(1), Wait(60_000), Fail(1), Wait(60_000), Fail(1), Is(Open)])]
    #[case::dropped_permit_neither_breaks_nor_extends_the_run(&[Fail(2), Hold(false), HeldDrop, Is(Closed), Fail(1), Is(Open)])]
    #[case::half_open_after_the_break(&[Fail(3), Wait(4_999), Refuses(1), Wait(1), Is(HalfOpen), Hold(true), Refuses(5_000)])]
    #[case::trial_success_closes_and_the_count_restarts(&[Fail(3), Wait(5_000), Hold(true), HeldOk, Is(Closed), Fail(2), Is(Closed), Fail(1), Is(Open)])]
    #[case::trial_failure_reopens_for_another_break(&[Fail(3), Wait(5_000), Hold(true), HeldFail, Is(Open), Refuses(5_000), Wait(5_000), Hold(true), HeldOk, Is(Closed)])]
    #[case::stale_failures_do_not_count_after_closing(&[Hold(false), Hold(false), Fail(3), Wait(5_000), Pass(1), Is(Closed), HeldFail, HeldFail, Fail(2), Is(Closed), Fail(1), Is(Open)])]
    fn consecutive_failures_state_machine(#[case] steps: &[Step]) {
        let clock = ManualClock::new();
        run_on(&consecutive_breaker(&clock), &clock, steps);
    }

    /// The outage of issue #14: a busy service's window is full of successes
    /// when Redis goes away. The ratio rule alone needs as many failures as
    /// there were successes; the default breaker opens after 5.
    #[test]
    fn default_breaker_opens_after_five_failures_despite_a_window_of_successes() {
        let clock = ManualClock::new();
        let b = CircuitBreaker::builder()
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        run_on(
            &b,
            &clock,
            &[Pass(10_000), Fail(4), Is(Closed), Fail(1), Is(Open)],
        );

        let ratio_only = CircuitBreaker::builder()
            .consecutive_failures(0)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        run_on(
            &ratio_only,
            &clock,
            &[Pass(10_000), Fail(9_999), Is(Closed), Fail(1), Is(Open)],
        );
    }

    #[rstest]
    #[case::admits_up_to_the_limit(&[Fail(4), Wait(5_000), Hold(true), Hold(true), Hold(true), Refuses(5_000)])]
    #[case::any_trial_failure_reopens(&[Fail(4), Wait(5_000), Hold(true), Hold(true), HeldFail, Is(Open), HeldOk, Is(Open)])]
    #[case::first_trial_success_closes(&[Fail(4), Wait(5_000), Hold(true), Hold(true), HeldOk, Is(Closed), HeldFail, Is(Closed)])]
    fn state_machine_with_three_trials(#[case] steps: &[Step]) {
        run(steps, 3);
    }

    #[tokio::test]
    async fn call_counts_only_unavailability_as_failure() {
        let clock = ManualClock::new();
        let b = breaker(&clock, 1);
        for _ in 0..10 {
            let r: Result<()> = b.call(async { Err(Error::protocol("WRONGTYPE")) }).await;
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Protocol);
            let r: Result<()> = b
                .call(async {
                    Err(Error::Codec {
                        op: "decode",
                        codec: "msgpack",
                        message: "bad".into(),
                    })
                })
                .await;
            assert_eq!(r.unwrap_err().kind(), ErrorKind::Codec);
        }
        assert_eq!(b.state(), Closed);
        for _ in 0..20 {
            let _ = b.call(async { Err::<(), _>(Error::timeout("GET")) }).await;
        }
        assert_eq!(b.state(), Open);
    }

    #[tokio::test]
    async fn call_does_not_poll_the_future_when_open() {
        let clock = ManualClock::new();
        let b = breaker(&clock, 1);
        for _ in 0..4 {
            let _ = b
                .call(async { Err::<(), _>(Error::connection("reset")) })
                .await;
        }
        let mut polled = false;
        let r = b
            .call(async {
                polled = true;
                Ok(())
            })
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::CircuitOpen);
        assert!(!polled);
    }

    #[tokio::test]
    async fn cancelled_trial_call_frees_the_trial_slot() {
        let clock = ManualClock::new();
        let b = breaker(&clock, 1);
        for _ in 0..4 {
            let _ = b
                .call(async { Err::<(), _>(Error::connection("reset")) })
                .await;
        }
        clock.advance(Duration::from_secs(5));
        let pending = b.call(std::future::pending::<Result<()>>());
        let cancelled = tokio::time::timeout(Duration::from_millis(1), pending).await;
        assert!(cancelled.is_err());
        assert!(b.try_acquire().unwrap().is_trial());
    }

    #[test]
    fn concurrent_callers_see_a_consistent_breaker() {
        let clock = ManualClock::new();
        let b = breaker(&clock, 1);
        std::thread::scope(|s| {
            for t in 0..4 {
                let b = b.clone();
                s.spawn(move || {
                    for i in 0..10_000 {
                        if let Ok(p) = b.try_acquire() {
                            if (i + t) % 10 == 0 {
                                p.failure()
                            } else {
                                p.success()
                            }
                        }
                    }
                });
            }
        });
        // One call in ten fails: far below the 0.5 ratio in every prefix.
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn named_breaker_has_the_default_settings_and_its_name() {
        let b = CircuitBreaker::named("cache-store");
        assert_eq!(b.name(), "cache-store");
        assert_eq!(b.state(), Closed);
        assert_eq!(CircuitBreaker::named("").name(), "redis");
    }

    #[test]
    fn builder_defaults_are_documented_values() {
        let b = CircuitBreaker::builder().build().unwrap();
        let c = &b.inner.config;
        assert_eq!(c.name, "redis");
        assert_eq!(c.failure_ratio, 0.5);
        assert_eq!(c.minimum_throughput, 10);
        assert_eq!(c.consecutive_failures, 5);
        assert_eq!(c.sampling_duration, Duration::from_secs(10));
        assert_eq!(c.break_duration, Duration::from_secs(5));
        assert_eq!(c.half_open_max_calls, 1);
        assert_eq!(b.state(), Closed);
    }

    #[rstest]
    #[case::empty_name(CircuitBreaker::builder().name(""))]
    #[case::zero_ratio(CircuitBreaker::builder().failure_ratio(0.0))]
    #[case::negative_ratio(CircuitBreaker::builder().failure_ratio(-0.5))]
    #[case::ratio_above_one(CircuitBreaker::builder().failure_ratio(1.01))]
    #[case::nan_ratio(CircuitBreaker::builder().failure_ratio(f64::NAN))]
    #[case::zero_throughput(CircuitBreaker::builder().minimum_throughput(0))]
    #[case::zero_sampling(CircuitBreaker::builder().sampling_duration(Duration::ZERO))]
    #[case::zero_break(CircuitBreaker::builder().break_duration(Duration::ZERO))]
    #[case::zero_trials(CircuitBreaker::builder().half_open_max_calls(0))]
    fn invalid_settings_are_config_errors_at_build(#[case] builder: CircuitBreakerBuilder) {
        assert_eq!(builder.build().unwrap_err().kind(), ErrorKind::Config);
    }

    #[test]
    fn ratio_of_one_trips_only_when_every_call_failed() {
        let clock = ManualClock::new();
        let b = CircuitBreaker::builder()
            .failure_ratio(1.0)
            .minimum_throughput(2)
            .consecutive_failures(0)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        b.try_acquire().unwrap().success();
        for _ in 0..10 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), Closed);
        clock.advance(Duration::from_secs(10));
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), Open);
    }
}
