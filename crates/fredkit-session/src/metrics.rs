//! The metrics of a [`Sessions`](crate::Sessions) store, registered once.

use std::time::Instant;

use fredkit_core::metrics::{Counter, Histogram, Labels};

/// Counters and histograms of one store (one key prefix).
#[derive(Clone, Debug)]
pub(crate) struct SessionMetrics {
    pub(crate) load_found: Counter,
    pub(crate) load_none: Counter,
    pub(crate) load_revoked: Counter,
    pub(crate) load_garbage: Counter,
    pub(crate) load_error: Counter,
    pub(crate) save_saved: Counter,
    pub(crate) save_gone: Counter,
    pub(crate) save_error: Counter,
    pub(crate) created: Counter,
    pub(crate) unavailable_refused: Counter,
    pub(crate) unavailable_passed: Counter,
    pub(crate) load_latency: Histogram,
    pub(crate) save_latency: Histogram,
}

impl SessionMetrics {
    pub(crate) fn new(prefix: &str) -> SessionMetrics {
        let labels = Labels::new().with("prefix", prefix);
        let with = |name: &'static str, outcome: &'static str| {
            Counter::new(name, &labels.clone().with("outcome", outcome))
        };
        const LOAD: &str = "fredkit_session_load_total";
        const SAVE: &str = "fredkit_session_save_total";
        const UNAV: &str = "fredkit_session_unavailable_total";
        SessionMetrics {
            load_found: with(LOAD, "found"),
            load_none: with(LOAD, "none"),
            load_revoked: with(LOAD, "revoked"),
            load_garbage: with(LOAD, "garbage"),
            load_error: with(LOAD, "error"),
            save_saved: with(SAVE, "saved"),
            save_gone: with(SAVE, "gone"),
            save_error: with(SAVE, "error"),
            created: Counter::new("fredkit_session_created_total", &labels),
            unavailable_refused: with(UNAV, "refused"),
            unavailable_passed: with(UNAV, "passed"),
            load_latency: Histogram::new("fredkit_session_load_seconds", &labels),
            save_latency: Histogram::new("fredkit_session_save_seconds", &labels),
        }
    }

    pub(crate) fn saved(&self, started: Instant) {
        self.save_latency.record_since(started);
    }
}
