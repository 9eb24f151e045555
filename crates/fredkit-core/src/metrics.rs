//! The shared metrics layer: every fredkit crate records through these
//! handles, so one naming scheme holds across crates and a service plugs in
//! any exporter of the [`metrics`](https://docs.rs/metrics/0.24) facade
//! (e.g. `metrics-exporter-prometheus`).
//!
//! With the `metrics` feature off (the default) every type here is
//! zero-sized and every call is an empty inline function: no cost.
//! With it on, a handle is registered **once**, when the primitive is built
//! (a counter per outcome, a histogram per operation), so the hot path is
//! one atomic add on an already-resolved handle — never a name lookup or a
//! label allocation per call. Without an installed recorder the handles are
//! no-ops.
//!
//! # Naming scheme
//!
//! `fredkit_<crate>_<what>_<unit>`, Prometheus style: counters end in
//! `_total`, latency histograms in `_seconds`, gauges name their unit
//! (`_entries`, `_messages`) or none for a state. Labels: `prefix` (the
//! primitive's key prefix, which tells instances apart), `name` where a
//! primitive has one (a limit, a worker group), and `outcome` (a fixed,
//! small set per metric: `hit`/`miss`, `granted`/`refused`, `ok`/`error`).
//! Never a key, user id or other unbounded value as a label.
//!
//! ```
//! use fredkit_core::metrics::{Counter, Histogram, Labels};
//! use std::time::Instant;
//!
//! let labels = Labels::new().with("prefix", "shop:product");
//! let hits = Counter::new("fredkit_cache_get_total", &labels.clone().with("outcome", "hit"));
//! let latency = Histogram::new("fredkit_cache_get_seconds", &labels);
//!
//! let started = Instant::now();
//! // ... the operation ...
//! hits.increment(1);
//! latency.record_since(started);
//! ```

use std::time::{Duration, Instant};

/// Labels of a metric, fixed when its handle is registered.
///
/// Cheap to build once per primitive; values are copied into the handle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    #[cfg(feature = "metrics")]
    pairs: Vec<(&'static str, String)>,
}

impl Labels {
    /// No labels.
    pub fn new() -> Labels {
        Labels::default()
    }

    /// These labels and `key = value`. `value` must be bounded (a prefix, a
    /// configured name, an outcome), never per-request data.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables, unused_mut))]
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Labels {
        #[cfg(feature = "metrics")]
        self.pairs.push((key, value.into()));
        self
    }

    #[cfg(feature = "metrics")]
    fn to_metrics(&self) -> Vec<metrics::Label> {
        self.pairs
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.clone()))
            .collect()
    }
}

/// A monotonically increasing count (`…_total`).
#[derive(Clone, Default)]
pub struct Counter {
    #[cfg(feature = "metrics")]
    inner: Option<metrics::Counter>,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counter")
    }
}

impl Counter {
    /// Registers `name` with `labels` in the installed recorder (a no-op
    /// handle when none is installed or the feature is off).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(name: &'static str, labels: &Labels) -> Counter {
        Counter {
            #[cfg(feature = "metrics")]
            inner: Some(metrics::counter!(name, labels.to_metrics())),
        }
    }

    /// Adds `n`.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn increment(&self, n: u64) {
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.inner {
            c.increment(n);
        }
    }
}

/// A distribution of durations in seconds (`…_seconds`).
#[derive(Clone, Default)]
pub struct Histogram {
    #[cfg(feature = "metrics")]
    inner: Option<metrics::Histogram>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Histogram")
    }
}

impl Histogram {
    /// Registers `name` with `labels` (see [`Counter::new`]).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(name: &'static str, labels: &Labels) -> Histogram {
        Histogram {
            #[cfg(feature = "metrics")]
            inner: Some(metrics::histogram!(name, labels.to_metrics())),
        }
    }

    /// Records `d` in seconds.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn record(&self, d: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.record(d.as_secs_f64());
        }
    }

    /// Records the time since `started`. With the feature off this does not
    /// even read the clock.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn record_since(&self, started: Instant) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.record(started.elapsed().as_secs_f64());
        }
    }
}

/// A value that goes up and down (L1 entries, queue depth, breaker state).
#[derive(Clone, Default)]
pub struct Gauge {
    #[cfg(feature = "metrics")]
    inner: Option<metrics::Gauge>,
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauge")
    }
}

impl Gauge {
    /// Registers `name` with `labels` (see [`Counter::new`]).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn new(name: &'static str, labels: &Labels) -> Gauge {
        Gauge {
            #[cfg(feature = "metrics")]
            inner: Some(metrics::gauge!(name, labels.to_metrics())),
        }
    }

    /// Sets the value.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn set(&self, value: f64) {
        #[cfg(feature = "metrics")]
        if let Some(g) = &self.inner {
            g.set(value);
        }
    }
}

/// A count a primitive keeps for its own snapshot (its `metrics()` method)
/// and, with the feature on, also records as a [`Counter`] under the naming
/// scheme: one call updates both, so the two never disagree.
///
/// `Tally::default()` keeps only the local count (nothing registered).
#[derive(Debug, Default)]
pub struct Tally {
    value: std::sync::atomic::AtomicU64,
    counter: Counter,
}

impl Tally {
    /// A zero count recorded as `name` with `labels` (see [`Counter::new`]).
    pub fn new(name: &'static str, labels: &Labels) -> Tally {
        Tally {
            value: std::sync::atomic::AtomicU64::new(0),
            counter: Counter::new(name, labels),
        }
    }

    /// Adds `n` (wrapping at `u64::MAX`, never panicking).
    #[inline]
    pub fn add(&self, n: u64) {
        self.value
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.counter.increment(n);
    }

    /// The local count.
    #[inline]
    pub fn get(&self) -> u64 {
        self.value.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether this build records metrics (the `metrics` feature).
pub const ENABLED: bool = cfg!(feature = "metrics");

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// Handles registered once record every call under the scheme's name and
    /// labels (fails if a handle drops its labels or records nothing).
    #[test]
    fn handles_record_under_their_name_and_labels() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let labels = Labels::new().with("prefix", "app:x");
            let hits = Counter::new(
                "fredkit_test_get_total",
                &labels.clone().with("outcome", "hit"),
            );
            let latency = Histogram::new("fredkit_test_get_seconds", &labels);
            let size = Gauge::new("fredkit_test_l1_entries", &labels);
            for _ in 0..3 {
                hits.increment(1);
                latency.record(Duration::from_millis(2));
            }
            size.set(7.0);
        });
        let mut seen = 0;
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            assert!(
                labels.contains(&("prefix".into(), "app:x".into())),
                "{labels:?}"
            );
            match (key.name(), value) {
                ("fredkit_test_get_total", DebugValue::Counter(n)) => {
                    assert_eq!(n, 3);
                    assert!(labels.contains(&("outcome".into(), "hit".into())));
                    seen += 1;
                }
                ("fredkit_test_get_seconds", DebugValue::Histogram(samples)) => {
                    assert_eq!(samples.len(), 3);
                    seen += 1;
                }
                ("fredkit_test_l1_entries", DebugValue::Gauge(v)) => {
                    assert_eq!(v.into_inner(), 7.0);
                    seen += 1;
                }
                other => panic!("unexpected metric {other:?}"),
            }
        }
        assert_eq!(seen, 3);
    }
}

#[cfg(all(test, not(feature = "metrics")))]
mod tests {
    use super::*;

    /// Off means zero-sized: nothing to store, nothing to do per call.
    #[test]
    fn handles_are_zero_sized_without_the_feature() {
        assert_eq!(std::mem::size_of::<Counter>(), 0);
        assert_eq!(std::mem::size_of::<Histogram>(), 0);
        assert_eq!(std::mem::size_of::<Gauge>(), 0);
        assert_eq!(std::mem::size_of::<Labels>(), 0);
    }
}
