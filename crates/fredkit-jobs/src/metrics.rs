//! Counters a user can read, and the `metrics` facade handles.

use std::sync::atomic::{AtomicU64, Ordering};

use fredkit_core::metrics::{Counter, Histogram, Labels};

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Counters of one [`Worker`](crate::Worker).
#[derive(Debug, Default)]
pub(crate) struct WorkerMetrics {
    pub(crate) started: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) stalled_recovered: AtomicU64,
    pub(crate) stalled_dead: AtomicU64,
    pub(crate) claim_errors: AtomicU64,
    pub(crate) finish_errors: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
}

/// A point-in-time copy of a [`Worker`](crate::Worker)'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// Attempts this worker started.
    pub started: u64,
    /// Attempts that completed (the result is recorded).
    pub completed: u64,
    /// Attempts that failed (handler error, panic, timeout, undecodable
    /// payload), whether retried or dead.
    pub failed: u64,
    /// Jobs this worker moved to dead (last attempt failed, or undecodable).
    pub dead: u64,
    /// Payloads that could not be decoded (dead at once).
    pub decode_errors: u64,
    /// Attempts whose lease was lost before they finished (the job stalled
    /// and was recovered, or was deleted): their outcome was not recorded.
    pub lease_lost: u64,
    /// Stalled jobs (lease expired) this worker's claims returned to wait.
    pub stalled_recovered: u64,
    /// Stalled jobs this worker's claims moved to dead (no attempt left).
    pub stalled_dead: u64,
    /// Claims that failed (Redis unavailable, garbage under the keys).
    pub claim_errors: u64,
    /// Completions or failures that could not be recorded.
    pub finish_errors: u64,
    /// Lease renewal calls.
    pub renewals: u64,
    /// Times the worker waited for the queue's rate limit.
    pub rate_limited: u64,
}

impl WorkerMetrics {
    pub(crate) fn snapshot(&self) -> WorkerSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerSnapshot {
            started: g(&self.started),
            completed: g(&self.completed),
            failed: g(&self.failed),
            dead: g(&self.dead),
            decode_errors: g(&self.decode_errors),
            lease_lost: g(&self.lease_lost),
            stalled_recovered: g(&self.stalled_recovered),
            stalled_dead: g(&self.stalled_dead),
            claim_errors: g(&self.claim_errors),
            finish_errors: g(&self.finish_errors),
            renewals: g(&self.renewals),
            rate_limited: g(&self.rate_limited),
        }
    }
}

/// The `metrics` facade handles of a queue (labels `prefix`, `name` = the
/// queue's name, `outcome`).
#[derive(Clone, Debug)]
pub(crate) struct Facade {
    pub(crate) enqueued_added: Counter,
    pub(crate) enqueued_duplicate: Counter,
    pub(crate) enqueue_error: Counter,
    pub(crate) finished_completed: Counter,
    pub(crate) finished_retry: Counter,
    pub(crate) finished_dead: Counter,
    pub(crate) finished_lease_lost: Counter,
    pub(crate) stalled_requeued: Counter,
    pub(crate) stalled_dead: Counter,
    pub(crate) wait: Histogram,
    pub(crate) run: Histogram,
}

impl Facade {
    pub(crate) fn new(prefix: &str, name: &str) -> Facade {
        let labels = Labels::new().with("prefix", prefix).with("name", name);
        let out =
            |n: &'static str, o: &'static str| Counter::new(n, &labels.clone().with("outcome", o));
        Facade {
            enqueued_added: out("fredkit_jobs_enqueued_total", "added"),
            enqueued_duplicate: out("fredkit_jobs_enqueued_total", "duplicate"),
            enqueue_error: out("fredkit_jobs_enqueued_total", "error"),
            finished_completed: out("fredkit_jobs_attempts_total", "completed"),
            finished_retry: out("fredkit_jobs_attempts_total", "retry"),
            finished_dead: out("fredkit_jobs_attempts_total", "dead"),
            finished_lease_lost: out("fredkit_jobs_attempts_total", "lease_lost"),
            stalled_requeued: out("fredkit_jobs_stalled_total", "requeued"),
            stalled_dead: out("fredkit_jobs_stalled_total", "dead"),
            wait: Histogram::new("fredkit_jobs_wait_seconds", &labels),
            run: Histogram::new("fredkit_jobs_run_seconds", &labels),
        }
    }
}
