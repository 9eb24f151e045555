//! The measuring tools every suite uses.
//!
//! - [`measure`]: run an operation at concurrency C for a time window (after
//!   a warm-up) or for a fixed number of operations; returns a
//!   [`Measurement`] with ops/s and latency percentiles.
//! - [`interleave`] / [`interleave_with`]: compare contenders fairly by
//!   running them in turn (A, B, A, B, ...) for R rounds and taking the
//!   median of each, so that drift (CPU frequency, a noisy neighbour) hits all
//!   of them alike. [`Summary::ratio_to`] gives the `x_vs_raw` figures.
//! - [`Report`]: collects the figures of one run.

use anyhow::{anyhow, Result};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// One operation under test, called with a sequence number unique within a
/// measurement (handy for distinct keys). Build one with [`op`].
pub(crate) type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// Wraps an async closure into an [`Op`].
pub(crate) fn op<F, Fut>(f: F) -> Op
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// How long a measurement runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Load {
    /// Run for `warmup` (not counted), then count for `window`.
    For {
        /// Not counted.
        warmup: Duration,
        /// Counted.
        window: Duration,
    },
    /// Run exactly this many operations (no warm-up), timing all of them.
    #[allow(dead_code)] // for suites that need a fixed amount of work
    Ops(u64),
}

/// The outcome of one [`measure`].
#[derive(Clone, Debug)]
pub(crate) struct Measurement {
    /// Operations counted.
    pub(crate) ops: u64,
    /// The time they took.
    pub(crate) elapsed: Duration,
    /// Sorted latencies of the counted operations, in nanoseconds.
    latencies: Vec<u64>,
}

impl Measurement {
    /// Builds a measurement from raw figures (for suites that time things
    /// their own way, e.g. messages delivered per second).
    pub(crate) fn new(ops: u64, elapsed: Duration, mut latencies: Vec<u64>) -> Self {
        latencies.sort_unstable();
        Self {
            ops,
            elapsed,
            latencies,
        }
    }

    /// Operations per second.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The `p`-th percentile latency (`p` in 0..=100), zero without samples.
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// Nearest-rank percentile of sorted nanosecond samples.
pub(crate) fn percentile(sorted_nanos: &[u64], p: f64) -> Duration {
    if sorted_nanos.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted_nanos.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_nanos.len()) - 1;
    Duration::from_nanos(sorted_nanos[index])
}

/// The median of some values (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Runs `op` from `concurrency` tasks at once under `load`.
///
/// Every task loops: call, await, repeat. The first error aborts the
/// measurement (a benchmark that fails is not a result).
pub(crate) async fn measure(concurrency: usize, load: Load, op: Op) -> Result<Measurement> {
    let concurrency = concurrency.max(1);
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (count_from, deadline, limit) = match load {
        Load::For { warmup, window } => (start + warmup, Some(start + warmup + window), u64::MAX),
        Load::Ops(n) => (start, None, n),
    };

    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let op = Arc::clone(&op);
        let seq = Arc::clone(&seq);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut done = 0u64;
            loop {
                let t0 = Instant::now();
                if deadline.is_some_and(|d| t0 >= d) {
                    break;
                }
                let i = seq.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                op(i).await?;
                let t1 = Instant::now();
                if t0 >= count_from {
                    latencies.push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
                }
                // Throughput counts what completed inside the window.
                if t1 >= count_from && deadline.is_none_or(|d| t1 <= d) {
                    done += 1;
                }
            }
            Ok::<_, anyhow::Error>((done, latencies))
        });
    }

    let mut ops = 0;
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (done, mut l) = joined.map_err(|e| anyhow!("benchmark task failed: {e}"))??;
        ops += done;
        latencies.append(&mut l);
    }
    let elapsed = match load {
        Load::For { window, .. } => window,
        Load::Ops(_) => start.elapsed(),
    };
    Ok(Measurement::new(ops, elapsed, latencies))
}

/// The median results of one contender over the rounds of an interleaving.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    /// The contender's name.
    pub(crate) name: String,
    /// Median ops/s over the rounds.
    pub(crate) ops_per_sec: f64,
    /// Median p50 latency over the rounds.
    pub(crate) p50: Duration,
    /// Median p99 latency over the rounds.
    pub(crate) p99: Duration,
    /// Each round's measurement, in order.
    pub(crate) rounds: Vec<Measurement>,
}

impl Summary {
    fn of(name: String, rounds: Vec<Measurement>) -> Self {
        let ops: Vec<f64> = rounds.iter().map(Measurement::ops_per_sec).collect();
        let p50: Vec<f64> = rounds
            .iter()
            .map(|m| m.percentile(50.0).as_secs_f64())
            .collect();
        let p99: Vec<f64> = rounds
            .iter()
            .map(|m| m.percentile(99.0).as_secs_f64())
            .collect();
        Self {
            name,
            ops_per_sec: median(&ops),
            p50: Duration::from_secs_f64(median(&p50).max(0.0)),
            p99: Duration::from_secs_f64(median(&p99).max(0.0)),
            rounds,
        }
    }

    /// `self` ops/s divided by `base` ops/s: above 1 means faster than `base`.
    pub(crate) fn ratio_to(&self, base: &Summary) -> f64 {
        if base.ops_per_sec > 0.0 {
            self.ops_per_sec / base.ops_per_sec
        } else {
            f64::NAN
        }
    }

    /// The spread of the rounds: (max - min) / median ops/s. A large spread
    /// means the machine was noisy; the medians are still the figures.
    pub(crate) fn spread(&self) -> f64 {
        let ops: Vec<f64> = self.rounds.iter().map(Measurement::ops_per_sec).collect();
        let max = ops.iter().copied().fold(f64::MIN, f64::max);
        let min = ops.iter().copied().fold(f64::MAX, f64::min);
        if self.ops_per_sec > 0.0 && !ops.is_empty() {
            (max - min) / self.ops_per_sec
        } else {
            f64::NAN
        }
    }
}

/// One side of a comparison: an [`Op`] run at a concurrency.
#[derive(Clone)]
pub(crate) struct Contender {
    /// Name, used in the summaries.
    pub(crate) name: String,
    /// Tasks running `op` at once.
    pub(crate) concurrency: usize,
    /// The operation.
    pub(crate) op: Op,
}

impl Contender {
    /// A contender running `op` from `concurrency` tasks.
    pub(crate) fn new(name: impl Into<String>, concurrency: usize, op: Op) -> Self {
        Self {
            name: name.into(),
            concurrency,
            op,
        }
    }
}

/// Measures the contenders in turn (A, B, ..., A, B, ...) for `rounds`
/// rounds, each under `load`, and returns their medians in the same order.
/// A first, discarded round warms connections, allocators and caches up.
pub(crate) async fn interleave(
    rounds: usize,
    load: Load,
    contenders: &[Contender],
) -> Result<Vec<Summary>> {
    let runs: Vec<(String, Runner<'_>)> = contenders
        .iter()
        .map(|c| {
            let run: Runner<'_> =
                Box::new(move || Box::pin(measure(c.concurrency, load, Arc::clone(&c.op))));
            (c.name.clone(), run)
        })
        .collect();
    interleave_with(rounds, runs).await
}

/// Something producing one [`Measurement`] per call, for [`interleave_with`].
pub(crate) type Runner<'a> = Box<dyn FnMut() -> BoxFuture<'a, Result<Measurement>> + Send + 'a>;

/// The general form of [`interleave`]: each contender is a closure that
/// performs one measured run however it likes. Runs one discarded warm-up
/// round first.
pub(crate) async fn interleave_with(
    rounds: usize,
    mut contenders: Vec<(String, Runner<'_>)>,
) -> Result<Vec<Summary>> {
    let rounds = rounds.max(1);
    let mut results: Vec<Vec<Measurement>> = vec![Vec::with_capacity(rounds); contenders.len()];
    for (_, run) in contenders.iter_mut() {
        run().await?;
    }
    for _ in 0..rounds {
        for (i, (_, run)) in contenders.iter_mut().enumerate() {
            results[i].push(run().await?);
        }
    }
    let summaries: Vec<Summary> = contenders
        .into_iter()
        .zip(results)
        .map(|((name, _), rounds)| Summary::of(name, rounds))
        .collect();
    for s in &summaries {
        println!("   {s}");
    }
    Ok(summaries)
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rounds: Vec<String> = self
            .rounds
            .iter()
            .map(|m| format!("{:.0}", m.ops_per_sec()))
            .collect();
        write!(
            f,
            "{:<16} {:>10.0} ops/s  p50 {:>7.1} µs  p99 {:>7.1} µs  (rounds: {})",
            self.name,
            self.ops_per_sec,
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            rounds.join(", ")
        )
    }
}

/// What a figure measures (decides how it is printed and rounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Operations per second.
    OpsPerSec,
    /// Microseconds.
    Micros,
    /// Milliseconds, to the hundredth.
    Millis,
    /// A dimensionless ratio.
    Ratio,
    /// A plain number, printed with thousands separators.
    Count,
    /// A number printed as is (versions, timestamps).
    Plain,
    /// A fractional amount, to the hundredth (commands per job).
    Decimal,
}

/// One row of the results.
#[derive(Clone, Debug)]
pub(crate) struct Figure {
    /// `suite.name`.
    pub(crate) name: String,
    /// The value.
    pub(crate) value: f64,
    /// Its unit.
    pub(crate) unit: Unit,
    /// What it means.
    pub(crate) note: String,
}

impl Figure {
    /// The value as written to JSON (rounded to what is meaningful).
    pub(crate) fn json_value(&self) -> f64 {
        match self.unit {
            Unit::OpsPerSec | Unit::Count | Unit::Plain => self.value.round(),
            Unit::Micros => (self.value * 10.0).round() / 10.0,
            Unit::Millis | Unit::Decimal => (self.value * 100.0).round() / 100.0,
            Unit::Ratio => (self.value * 1000.0).round() / 1000.0,
        }
    }

    /// The value as printed in the table.
    pub(crate) fn display_value(&self) -> String {
        if !self.value.is_finite() {
            return "n/a".into();
        }
        match self.unit {
            Unit::OpsPerSec => format!("{} ops/s", thousands(self.value.round() as u64)),
            Unit::Count => thousands(self.value.round() as u64),
            Unit::Plain => format!("{}", self.value.round()),
            Unit::Micros => format!("{:.1} µs", self.value),
            Unit::Millis => format!("{:.2} ms", self.value),
            Unit::Decimal => format!("{:.2}", self.value),
            Unit::Ratio => format!("{:.3}×", self.value),
        }
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The figures of a run. Names are prefixed with the running suite's name.
#[derive(Debug, Default)]
pub(crate) struct Report {
    suite: String,
    figures: Vec<Figure>,
}

impl Report {
    /// Makes `suite` the prefix of the figures added next.
    pub(crate) fn begin_suite(&mut self, suite: &str) {
        self.suite = suite.to_string();
    }

    /// Adds `suite.name`.
    pub(crate) fn add(&mut self, name: &str, value: f64, unit: Unit, note: impl Into<String>) {
        let name = if self.suite.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.suite)
        };
        self.figures.push(Figure {
            name,
            value,
            unit,
            note: note.into(),
        });
    }

    /// Adds an ops/s figure.
    pub(crate) fn ops(&mut self, name: &str, ops_per_sec: f64, note: impl Into<String>) {
        self.add(name, ops_per_sec, Unit::OpsPerSec, note);
    }

    /// Adds a latency figure (in microseconds).
    pub(crate) fn micros(&mut self, name: &str, latency: Duration, note: impl Into<String>) {
        self.add(name, latency.as_secs_f64() * 1e6, Unit::Micros, note);
    }

    /// Adds a ratio figure.
    pub(crate) fn ratio(&mut self, name: &str, ratio: f64, note: impl Into<String>) {
        self.add(name, ratio, Unit::Ratio, note);
    }

    /// Adds `{name}_ops`, `{name}_p50_us` and `{name}_p99_us` from a summary.
    pub(crate) fn summary(&mut self, name: &str, s: &Summary, note: &str) {
        let spread = s.spread();
        let ops_note = if spread.is_finite() {
            format!(
                "{note}; median of {} rounds, spread {:.0}%",
                s.rounds.len(),
                spread * 100.0
            )
        } else {
            note.to_string()
        };
        self.ops(&format!("{name}_ops"), s.ops_per_sec, ops_note);
        self.micros(&format!("{name}_p50_us"), s.p50, "median latency");
        self.micros(&format!("{name}_p99_us"), s.p99, "99th percentile latency");
    }

    /// All figures, in the order they were added.
    pub(crate) fn figures(&self) -> &[Figure] {
        &self.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_nanos(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_nanos(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_nanos(100));
        assert_eq!(percentile(&samples, 0.0), Duration::from_nanos(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[tokio::test]
    async fn measure_counts_fixed_ops_and_interleaves() -> Result<()> {
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        let m = measure(
            4,
            Load::Ops(1000),
            op(move |_| {
                let c = Arc::clone(&c);
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }),
        )
        .await?;
        assert_eq!(m.ops, 1000);
        assert_eq!(count.load(Ordering::Relaxed), 1000);

        let fast = Contender::new("fast", 2, op(|_| async { Ok(()) }));
        let slow = Contender::new(
            "slow",
            2,
            op(|_| async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            }),
        );
        let load = Load::For {
            warmup: Duration::from_millis(5),
            window: Duration::from_millis(30),
        };
        let s = interleave(2, load, &[fast, slow]).await?;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].rounds.len(), 2);
        assert!(s[0].ratio_to(&s[1]) > 1.0);
        Ok(())
    }

    #[tokio::test]
    async fn measure_stops_at_the_first_error() {
        let r = measure(2, Load::Ops(10), op(|_| async { Err(anyhow!("boom")) })).await;
        assert!(r.is_err());
    }
}
