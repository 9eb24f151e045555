//! Counters a user can read ([`FlagsMetrics`]) and their `metrics` facade
//! twins (feature `metrics`). Evaluations are not counted (a shared counter
//! bumped by every evaluation would cost more than the evaluation); only
//! the unusual paths are.

use std::sync::atomic::{AtomicU64, Ordering};

use fredkit_core::metrics::{Counter, Gauge, Labels};

use crate::admin::AdminError;

/// A snapshot of a [`Flags`](crate::Flags) instance's counters, counted
/// since it was created (clones share them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagsMetrics {
    /// Commands this instance sent to Redis (snapshot loads and the
    /// periodic sync check; the subscription's own traffic is not counted).
    /// Evaluations never add to it.
    pub round_trips: u64,
    /// Full snapshot loads that succeeded (start-up, gap, version jump,
    /// periodic check finding a different version).
    pub reloads: u64,
    /// Loads or sync checks that failed (Redis unreachable...): the
    /// instance kept serving its snapshot.
    pub failed_syncs: u64,
    /// Times the instance lost Redis (a failed sync after a good one, or a
    /// start without Redis): counted once per outage.
    pub outages: u64,
    /// Starts without Redis, from the defaults in code or the snapshot file.
    pub fallback_starts: u64,
    /// Change messages applied without a round trip.
    pub changes_applied: u64,
    /// Resubscription gaps or lagged receivers (each triggers a reload).
    pub gaps: u64,
    /// Evaluations of flags missing from the snapshot (answered with the
    /// default from code).
    pub unknown_flags: u64,
    /// Records skipped because they could not be parsed or validated (the
    /// previous value of the flag was kept).
    pub malformed_records: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Atomics {
    pub(crate) round_trips: AtomicU64,
    pub(crate) reloads: AtomicU64,
    pub(crate) failed_syncs: AtomicU64,
    pub(crate) outages: AtomicU64,
    pub(crate) fallback_starts: AtomicU64,
    pub(crate) changes_applied: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) unknown_flags: AtomicU64,
    pub(crate) malformed_records: AtomicU64,
}

/// The `metrics` facade handles, registered once.
#[derive(Debug, Default)]
pub(crate) struct Handles {
    pub(crate) reloads_ok: Counter,
    pub(crate) reloads_error: Counter,
    pub(crate) outages: Counter,
    pub(crate) fallback_defaults: Counter,
    pub(crate) fallback_file: Counter,
    pub(crate) changes_applied: Counter,
    pub(crate) gaps: Counter,
    pub(crate) unknown_flags: Counter,
    pub(crate) malformed_records: Counter,
    pub(crate) version: Gauge,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) a: Atomics,
    pub(crate) m: Handles,
}

impl Counters {
    pub(crate) fn new(prefix: &str) -> Counters {
        let l = Labels::new().with("prefix", prefix);
        let o = |outcome: &'static str| l.clone().with("outcome", outcome);
        Counters {
            a: Atomics::default(),
            m: Handles {
                reloads_ok: Counter::new("fredkit_flags_reloads_total", &o("ok")),
                reloads_error: Counter::new("fredkit_flags_reloads_total", &o("error")),
                outages: Counter::new("fredkit_flags_outages_total", &l),
                fallback_defaults: Counter::new(
                    "fredkit_flags_fallback_starts_total",
                    &o("defaults"),
                ),
                fallback_file: Counter::new("fredkit_flags_fallback_starts_total", &o("file")),
                changes_applied: Counter::new("fredkit_flags_changes_applied_total", &l),
                gaps: Counter::new("fredkit_flags_gaps_total", &l),
                unknown_flags: Counter::new("fredkit_flags_unknown_flag_total", &l),
                malformed_records: Counter::new("fredkit_flags_malformed_records_total", &l),
                version: Gauge::new("fredkit_flags_snapshot_version", &l),
            },
        }
    }

    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> FlagsMetrics {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let a = &self.a;
        FlagsMetrics {
            round_trips: g(&a.round_trips),
            reloads: g(&a.reloads),
            failed_syncs: g(&a.failed_syncs),
            outages: g(&a.outages),
            fallback_starts: g(&a.fallback_starts),
            changes_applied: g(&a.changes_applied),
            gaps: g(&a.gaps),
            unknown_flags: g(&a.unknown_flags),
            malformed_records: g(&a.malformed_records),
        }
    }
}

/// The admin API's write counters (`fredkit_flags_admin_writes_total`,
/// outcome `ok`/`conflict`/`invalid`/`error`).
#[derive(Debug, Clone, Default)]
pub(crate) struct AdminCounters {
    ok: Counter,
    conflict: Counter,
    invalid: Counter,
    error: Counter,
}

impl AdminCounters {
    pub(crate) fn new(prefix: &str) -> AdminCounters {
        let o = |outcome: &'static str| {
            Labels::new()
                .with("prefix", prefix)
                .with("outcome", outcome)
        };
        let c = |outcome| Counter::new("fredkit_flags_admin_writes_total", &o(outcome));
        AdminCounters {
            ok: c("ok"),
            conflict: c("conflict"),
            invalid: c("invalid"),
            error: c("error"),
        }
    }

    pub(crate) fn count<T>(&self, result: &Result<T, AdminError>) {
        match result {
            Ok(_) => self.ok.increment(1),
            Err(AdminError::Conflict { .. }) => self.conflict.increment(1),
            Err(AdminError::Invalid { .. } | AdminError::UnknownFlag { .. }) => {
                self.invalid.increment(1)
            }
            Err(_) => self.error.increment(1),
        }
    }
}
