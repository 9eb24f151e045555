//! [`WorkerConfig`]: every knob of a worker, validated at `build()`.

use std::time::Duration;

use fredkit_core::{Error, Result};

use crate::admin::StartFrom;

/// Upper bound of `count` and `concurrency`.
const MAX_SLOTS: usize = 1_000_000;

/// Options of a [`Worker`](crate::Worker). Build with
/// [`WorkerConfig::builder`]; `build()` rejects invalid combinations.
///
/// ```
/// use std::time::Duration;
/// use fredkit_streams::WorkerConfig;
///
/// let config = WorkerConfig::builder("billing")      // consumer group
///     .concurrency(16)                                // handlers in flight
///     .handler_timeout(Duration::from_secs(10))       // a handler taking longer has failed
///     .min_idle(Duration::from_secs(30))              // retry / take over after 30 s
///     .max_deliveries(5)                              // then dead-letter
///     .build()?;
/// assert_eq!(config.group(), "billing");
/// # Ok::<(), fredkit_core::Error>(())
/// ```
///
/// | knob | default | what it does |
/// |---|---|---|
/// | [`consumer`](WorkerConfigBuilder::consumer) | `<pid>-<64 random bits, hex>` | consumer name in the group |
/// | [`start_from`](WorkerConfigBuilder::start_from) | [`StartFrom::Beginning`] | where a group created by the worker starts |
/// | [`create_group`](WorkerConfigBuilder::create_group) | `true` | create the group (idempotent) at start and after `NOGROUP` |
/// | [`count`](WorkerConfigBuilder::count) | 64 | most entries per `XREADGROUP` |
/// | [`concurrency`](WorkerConfigBuilder::concurrency) | 64 | handlers running at once |
/// | [`block`](WorkerConfigBuilder::block) | 500 ms | `XREADGROUP BLOCK` |
/// | [`handler_timeout`](WorkerConfigBuilder::handler_timeout) | 30 s | counted from delivery; a late handler is cancelled and has failed |
/// | [`min_idle`](WorkerConfigBuilder::min_idle) | 60 s | how long an entry stays pending before it is retried or taken over |
/// | [`claim_interval`](WorkerConfigBuilder::claim_interval) | 5 s | how often `XAUTOCLAIM` runs |
/// | [`max_deliveries`](WorkerConfigBuilder::max_deliveries) | 5 | deliveries before dead-lettering |
/// | [`dead_letter_max_len`](WorkerConfigBuilder::dead_letter_max_len) | 100 000 | approximate bound of the dead-letter stream (0: none) |
/// | [`shutdown_timeout`](WorkerConfigBuilder::shutdown_timeout) | 30 s | how long shutdown waits for in-flight handlers |
/// | [`ack_batch`](WorkerConfigBuilder::ack_batch) | 512 | most ids per `XACK` |
/// | [`retry_backoff_max`](WorkerConfigBuilder::retry_backoff_max) | 2 s | cap of the backoff after a failed read / claim / ack |
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub(crate) group: String,
    pub(crate) consumer: Option<String>,
    pub(crate) start: StartFrom,
    pub(crate) create_group: bool,
    pub(crate) count: usize,
    pub(crate) concurrency: usize,
    pub(crate) block: Duration,
    pub(crate) handler_timeout: Duration,
    pub(crate) min_idle: Duration,
    pub(crate) claim_interval: Duration,
    pub(crate) max_deliveries: u64,
    pub(crate) dead_letter_max_len: u64,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) ack_batch: usize,
    pub(crate) retry_backoff_max: Duration,
}

impl WorkerConfig {
    /// A builder for consumer group `group`, starting from the defaults.
    pub fn builder(group: impl Into<String>) -> WorkerConfigBuilder {
        WorkerConfigBuilder {
            config: WorkerConfig {
                group: group.into(),
                consumer: None,
                start: StartFrom::Beginning,
                create_group: true,
                count: 64,
                concurrency: 64,
                block: Duration::from_millis(500),
                handler_timeout: Duration::from_secs(30),
                min_idle: Duration::from_secs(60),
                claim_interval: Duration::from_secs(5),
                max_deliveries: 5,
                dead_letter_max_len: 100_000,
                shutdown_timeout: Duration::from_secs(30),
                ack_batch: 512,
                retry_backoff_max: Duration::from_secs(2),
            },
        }
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The consumer name, if one was set (otherwise the worker makes one up).
    pub fn consumer(&self) -> Option<&str> {
        self.consumer.as_deref()
    }

    /// How long an entry stays pending before it is retried or taken over.
    pub fn min_idle(&self) -> Duration {
        self.min_idle
    }

    /// How long a handler may run, counted from the delivery.
    pub fn handler_timeout(&self) -> Duration {
        self.handler_timeout
    }

    /// Deliveries before an entry is dead-lettered.
    pub fn max_deliveries(&self) -> u64 {
        self.max_deliveries
    }
}

/// Builder of [`WorkerConfig`]; see there for the defaults.
#[must_use]
#[derive(Clone, Debug)]
pub struct WorkerConfigBuilder {
    config: WorkerConfig,
}

impl WorkerConfigBuilder {
    /// The consumer name. Default: `<pid>-<16 random hex digits>`, new at every
    /// start (a crashed worker's entries are taken over by the others via
    /// `XAUTOCLAIM` either way). A fixed name lets a restarted worker see the
    /// group's view of "its" consumer; two live workers must never share one.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.config.consumer = Some(name.into());
        self
    }

    /// Where the group starts when the worker creates it. Default
    /// [`StartFrom::Beginning`]. Ignored when the group exists.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.config.start = start;
        self
    }

    /// Whether the worker creates the group (`XGROUP CREATE ... MKSTREAM`,
    /// idempotent) at start and again if Redis answers `NOGROUP` (the stream
    /// was deleted, or a server came back without its data). Default `true`.
    pub fn create_group(mut self, create: bool) -> Self {
        self.config.create_group = create;
        self
    }

    /// Most entries per `XREADGROUP` (`COUNT`). Default 64; at most
    /// 1 000 000. A worker never
    /// reads more entries than it has free handler slots, so no delivered
    /// entry waits in memory without its handler running.
    pub fn count(mut self, count: usize) -> Self {
        self.config.count = count;
        self
    }

    /// Handlers running at once. Default 64; at most 1 000 000.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// `BLOCK` of `XREADGROUP`. Default 500 ms; at most 1 hour, and a read
    /// never blocks past the next claim pass (`claim_interval`). Also bounds
    /// how long a shutdown waits for the current read (whose entries are then
    /// handled).
    pub fn block(mut self, block: Duration) -> Self {
        self.config.block = block;
        self
    }

    /// How long a handler may run, counted from the moment its entry was
    /// delivered. A handler still running then is cancelled (its future is
    /// dropped) and counts as failed. Default 30 s. Must be less than
    /// [`min_idle`](Self::min_idle): that is what keeps another worker from
    /// taking over an entry whose handler is still running.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.config.handler_timeout = timeout;
        self
    }

    /// How long an entry must have been pending (since its last delivery)
    /// before a worker takes it over with `XAUTOCLAIM`: the retry delay after
    /// a failure, and the time to recover entries of a crashed consumer.
    /// Default 60 s. Must exceed [`handler_timeout`](Self::handler_timeout);
    /// leave a margin for the acknowledgement round trip (see the crate docs,
    /// "Delivery contract").
    pub fn min_idle(mut self, min_idle: Duration) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// How often the worker runs `XAUTOCLAIM`. Default 5 s; at most
    /// `min_idle`.
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.config.claim_interval = interval;
        self
    }

    /// Deliveries before an entry goes to the dead-letter stream: a handler
    /// failing on delivery number `max_deliveries` dead-letters it; an entry
    /// reclaimed with a higher count (its handlers never reported, e.g. the
    /// consumers crashed) is dead-lettered by the claim. Default 5; at least 1.
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.config.max_deliveries = n;
        self
    }

    /// Approximate `MAXLEN` of the dead-letter stream. Default 100 000; 0
    /// keeps every dead letter. Dead letters trimmed away by the bound are
    /// counted in [`WorkerSnapshot::dead_letters_trimmed`](crate::WorkerSnapshot::dead_letters_trimmed).
    pub fn dead_letter_max_len(mut self, n: u64) -> Self {
        self.config.dead_letter_max_len = n;
        self
    }

    /// How long [`Worker::shutdown`](crate::Worker::shutdown) waits for
    /// in-flight handlers before cancelling them. Default 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Most ids in one `XACK`. Default 512.
    pub fn ack_batch(mut self, n: usize) -> Self {
        self.config.ack_batch = n;
        self
    }

    /// Cap of the exponential backoff (full jitter, from 20 ms) after a failed
    /// read, claim or acknowledgement. Default 2 s; at most 1 hour.
    pub fn retry_backoff_max(mut self, max: Duration) -> Self {
        self.config.retry_backoff_max = max;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) naming the
    /// knob: an empty group or consumer name, a zero count, concurrency,
    /// block, claim interval, `max_deliveries` or `ack_batch`,
    /// `handler_timeout >= min_idle`, `claim_interval > min_idle`, or
    /// `block` or `retry_backoff_max` above 1 hour, `count` or `concurrency`
    /// above 1 000 000. Huge timeouts (up to
    /// `Duration::MAX`) are fine: they mean "wait forever".
    pub fn build(self) -> Result<WorkerConfig> {
        let c = self.config;
        let fail = |m: &str| Err(Error::config(m.to_string()));
        if c.group.is_empty() {
            return fail("worker: the consumer group name is empty");
        }
        if c.consumer.as_deref() == Some("") {
            return fail(
                "worker: the consumer name is empty; leave it unset to get a generated one",
            );
        }
        if c.count == 0 || c.concurrency == 0 || c.ack_batch == 0 {
            return fail("worker: count, concurrency and ack_batch must be at least 1");
        }
        if c.count > MAX_SLOTS || c.concurrency > MAX_SLOTS {
            return Err(Error::config(format!(
                "worker: count ({}) and concurrency ({}) must be at most {MAX_SLOTS}; every \
                 handler slot is a task's worth of memory, so pick a real bound",
                c.count, c.concurrency
            )));
        }
        if c.block.as_millis() == 0 {
            return fail("worker: block must be at least 1 ms (0 would block forever)");
        }
        if c.claim_interval.is_zero() || c.handler_timeout.is_zero() {
            return fail("worker: claim_interval and handler_timeout must be greater than zero");
        }
        if c.max_deliveries == 0 {
            return fail("worker: max_deliveries must be at least 1");
        }
        if c.handler_timeout >= c.min_idle {
            return Err(Error::config(format!(
                "worker: handler_timeout ({:?}) must be less than min_idle ({:?}), or other workers \
                 would take over entries whose handlers are still running and handle them twice; \
                 raise min_idle or lower handler_timeout",
                c.handler_timeout, c.min_idle
            )));
        }
        if c.block > Duration::from_secs(3600) {
            return Err(Error::config(format!(
                "worker: block ({:?}) is above 1 hour: Redis rejects such a BLOCK and a shutdown \
                 waits for the read in progress; lower it (claim_interval bounds it anyway)",
                c.block
            )));
        }
        if c.retry_backoff_max > Duration::from_secs(3600) {
            return Err(Error::config(format!(
                "worker: retry_backoff_max ({:?}) is above 1 hour: a worker would sit idle that long \
                 after a failed read; lower it",
                c.retry_backoff_max
            )));
        }
        if c.claim_interval > c.min_idle {
            return Err(Error::config(format!(
                "worker: claim_interval ({:?}) must not exceed min_idle ({:?})",
                c.claim_interval, c.min_idle
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = WorkerConfig::builder("g").build().unwrap();
        assert_eq!(c.count, 64);
        assert_eq!(c.concurrency, 64);
        assert_eq!(c.block, Duration::from_millis(500));
        assert_eq!(c.handler_timeout, Duration::from_secs(30));
        assert_eq!(c.min_idle, Duration::from_secs(60));
        assert_eq!(c.claim_interval, Duration::from_secs(5));
        assert_eq!(c.max_deliveries, 5);
        assert_eq!(c.dead_letter_max_len, 100_000);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.start, StartFrom::Beginning);
        assert!(c.create_group);
    }

    #[test]
    fn handler_timeout_must_be_below_min_idle() {
        let e = WorkerConfig::builder("g")
            .handler_timeout(Duration::from_secs(60))
            .min_idle(Duration::from_secs(60))
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), fredkit_core::ErrorKind::Config);
        assert!(e.to_string().contains("handler_timeout"), "{e}");
    }

    #[test]
    fn degenerate_values_are_rejected() {
        let b = || WorkerConfig::builder("g");
        assert!(WorkerConfig::builder("").build().is_err());
        assert!(b().consumer("").build().is_err());
        assert!(b().count(0).build().is_err());
        assert!(b().concurrency(0).build().is_err());
        assert!(b().ack_batch(0).build().is_err());
        assert!(b().block(Duration::ZERO).build().is_err());
        assert!(b().max_deliveries(0).build().is_err());
        assert!(b().claim_interval(Duration::from_secs(61)).build().is_err());
        // Caught here, not at Worker::start.
        let e = b().retry_backoff_max(Duration::MAX).build().unwrap_err();
        assert!(e.to_string().contains("retry_backoff_max"), "{e}");
        assert!(b()
            .retry_backoff_max(Duration::from_secs(3600))
            .build()
            .is_ok());
        assert!(b().block(Duration::MAX).build().is_err());
        // "Unbounded" would panic tokio's semaphore inside the worker task.
        assert!(b().concurrency(usize::MAX).build().is_err());
        assert!(b().count(usize::MAX).build().is_err());
        assert!(b().concurrency(100_000).count(100_000).build().is_ok());
    }
}
