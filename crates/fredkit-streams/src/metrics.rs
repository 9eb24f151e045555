//! Counters a user can read.

use fredkit_core::metrics::{Histogram, Labels, Tally};

pub(crate) fn add(counter: &Tally, n: u64) {
    counter.add(n);
}

/// Counters of one [`Producer`](crate::Producer) (shared by its clones);
/// with the `metrics` feature also recorded as
/// `fredkit_streams_publish_total{stream,outcome}`.
#[derive(Debug, Default)]
pub struct ProducerMetrics {
    pub(crate) published: Tally,
    pub(crate) publish_errors: Tally,
}

/// A point-in-time copy of [`ProducerMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerSnapshot {
    /// Entries appended (`XADD` answered with an id).
    pub published: u64,
    /// Publishes that failed (the entry may or may not have been appended).
    pub publish_errors: u64,
}

impl ProducerMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> ProducerSnapshot {
        ProducerSnapshot {
            published: self.published.get(),
            publish_errors: self.publish_errors.get(),
        }
    }

    /// The counters of a producer on `stream`, registered once.
    pub(crate) fn new(stream: &str) -> ProducerMetrics {
        let labels = Labels::new().with("stream", stream);
        ProducerMetrics {
            published: Tally::new(
                "fredkit_streams_publish_total",
                &labels.clone().with("outcome", "ok"),
            ),
            publish_errors: Tally::new(
                "fredkit_streams_publish_total",
                &labels.with("outcome", "error"),
            ),
        }
    }
}

/// Counters of one [`Worker`](crate::Worker); with the `metrics` feature
/// each is also recorded as `fredkit_streams_<counter>_total{stream,group}`,
/// with histograms `fredkit_streams_handler_seconds` and
/// `fredkit_streams_wait_seconds` (docs/observability.md).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub(crate) reads: Tally,
    pub(crate) ack_calls: Tally,
    pub(crate) delivered: Tally,
    pub(crate) handled: Tally,
    pub(crate) failed: Tally,
    pub(crate) retried: Tally,
    pub(crate) dead_lettered: Tally,
    pub(crate) decode_errors: Tally,
    pub(crate) reclaimed: Tally,
    pub(crate) deleted_while_pending: Tally,
    pub(crate) acked: Tally,
    pub(crate) ack_errors: Tally,
    pub(crate) read_errors: Tally,
    pub(crate) group_create_failures: Tally,
    pub(crate) abandoned: Tally,
    pub(crate) skipped_replays: Tally,
    pub(crate) dead_letter_errors: Tally,
    pub(crate) dead_letters_trimmed: Tally,
    pub(crate) consumers_removed: Tally,
    /// Handler run time (each run, whatever its outcome).
    pub(crate) handler_run: Histogram,
    /// From an entry's id time (the server's clock when it was added) to
    /// its handler's start (this host's clock): the queueing delay.
    pub(crate) wait: Histogram,
}

/// A point-in-time copy of [`WorkerMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// `XREADGROUP` calls that returned entries (`delivered / reads` is the
    /// average batch size).
    pub reads: u64,
    /// `XACK` commands sent (`acked / ack_calls` is the average
    /// acknowledgement batch).
    pub ack_calls: u64,
    /// New entries read with `XREADGROUP` (first deliveries).
    pub delivered: u64,
    /// Handler runs that returned `Ok` (their entries are acknowledged or
    /// queued for the next acknowledgement batch).
    pub handled: u64,
    /// Handler runs that returned `Err`, panicked or ran past the handler
    /// timeout. The entry stays pending and is retried after `min_idle`,
    /// unless it was its last allowed delivery (then it is dead-lettered).
    pub failed: u64,
    /// Handler runs of entries delivered before (delivery count > 1).
    pub retried: u64,
    /// Entries this worker moved to the dead-letter stream (handler failed
    /// on the last allowed delivery, undecodable payload, or too many
    /// deliveries without an outcome).
    pub dead_lettered: u64,
    /// Entries whose payload could not be decoded (dead-lettered at once).
    pub decode_errors: u64,
    /// Entries this worker took over with `XAUTOCLAIM` (failed deliveries
    /// and entries left behind by crashed consumers, its own included).
    pub reclaimed: u64,
    /// Entries that were pending but had been deleted from the stream
    /// (trimmed away or `XDEL`'d) when `XAUTOCLAIM` reached them: their
    /// payload is gone; Redis removed them from the pending list.
    pub deleted_while_pending: u64,
    /// Entries acknowledged with `XACK`.
    pub acked: u64,
    /// `XACK` batches that failed (retried; see [`ShutdownReport::unacked`](crate::ShutdownReport::unacked)).
    pub ack_errors: u64,
    /// `XREADGROUP` or claim calls that failed (retried with backoff).
    pub read_errors: u64,
    /// Attempts to create the consumer group that failed because Redis was
    /// unavailable (at start, or retried by the read loop with backoff
    /// until it succeeds). The worker starts without Redis and creates the
    /// group once Redis is reachable.
    pub group_create_failures: u64,
    /// Handlers cancelled because the shutdown deadline passed (their
    /// entries stay pending and are redelivered).
    pub abandoned: u64,
    /// Replayed dead letters of another consumer group, acknowledged without
    /// running the handler (a replay is handled again only by the group
    /// that dead-lettered the entry; see
    /// [`StreamAdmin::replay_dead_letters`](crate::StreamAdmin::replay_dead_letters)).
    pub skipped_replays: u64,
    /// Entries due for the dead-letter stream that could not be moved there
    /// (Redis unreachable, or the dead-letter key refused them: wrong type,
    /// out of memory). They stay pending and are tried again when reclaimed
    /// after `min_idle`; the warning in the log says why.
    pub dead_letter_errors: u64,
    /// Old dead letters this worker's dead-lettering removed from the
    /// dead-letter stream to keep it within
    /// [`dead_letter_max_len`](crate::WorkerConfigBuilder::dead_letter_max_len)
    /// (approximately, whole nodes at a time): gone, and counted here.
    pub dead_letters_trimmed: u64,
    /// Other consumers of the group this worker's claim passes removed: they
    /// owned no pending entry and had been idle for more than twice
    /// `min_idle` (left behind by crashed or aborted workers, whose
    /// generated names are never reused).
    pub consumers_removed: u64,
}

impl WorkerMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> WorkerSnapshot {
        let r = |c: &Tally| c.get();
        WorkerSnapshot {
            reads: r(&self.reads),
            ack_calls: r(&self.ack_calls),
            delivered: r(&self.delivered),
            handled: r(&self.handled),
            failed: r(&self.failed),
            retried: r(&self.retried),
            dead_lettered: r(&self.dead_lettered),
            decode_errors: r(&self.decode_errors),
            reclaimed: r(&self.reclaimed),
            deleted_while_pending: r(&self.deleted_while_pending),
            acked: r(&self.acked),
            ack_errors: r(&self.ack_errors),
            read_errors: r(&self.read_errors),
            group_create_failures: r(&self.group_create_failures),
            abandoned: r(&self.abandoned),
            skipped_replays: r(&self.skipped_replays),
            dead_letter_errors: r(&self.dead_letter_errors),
            dead_letters_trimmed: r(&self.dead_letters_trimmed),
            consumers_removed: r(&self.consumers_removed),
        }
    }
}

impl WorkerMetrics {
    /// The counters of a worker of `group` on `stream`, registered once.
    pub(crate) fn new(stream: &str, group: &str) -> WorkerMetrics {
        let labels = Labels::new().with("stream", stream).with("group", group);
        let tally = |name: &'static str| Tally::new(name, &labels);
        WorkerMetrics {
            reads: tally("fredkit_streams_reads_total"),
            ack_calls: tally("fredkit_streams_ack_calls_total"),
            delivered: tally("fredkit_streams_delivered_total"),
            handled: tally("fredkit_streams_handled_total"),
            failed: tally("fredkit_streams_failed_total"),
            retried: tally("fredkit_streams_retried_total"),
            dead_lettered: tally("fredkit_streams_dead_lettered_total"),
            decode_errors: tally("fredkit_streams_decode_errors_total"),
            reclaimed: tally("fredkit_streams_reclaimed_total"),
            deleted_while_pending: tally("fredkit_streams_deleted_while_pending_total"),
            acked: tally("fredkit_streams_acked_total"),
            ack_errors: tally("fredkit_streams_ack_errors_total"),
            read_errors: tally("fredkit_streams_read_errors_total"),
            group_create_failures: tally("fredkit_streams_group_create_failures_total"),
            abandoned: tally("fredkit_streams_abandoned_total"),
            skipped_replays: tally("fredkit_streams_skipped_replays_total"),
            dead_letter_errors: tally("fredkit_streams_dead_letter_errors_total"),
            dead_letters_trimmed: tally("fredkit_streams_dead_letters_trimmed_total"),
            consumers_removed: tally("fredkit_streams_consumers_removed_total"),
            handler_run: Histogram::new("fredkit_streams_handler_seconds", &labels),
            wait: Histogram::new("fredkit_streams_wait_seconds", &labels),
        }
    }
}
