//! [`LockOptions`]: how long a lock lives, how long to wait for it, whether a
//! watchdog renews it, whether replicas must confirm it.

use std::time::Duration;

use fredkit_core::{Backoff, Error, Result};

/// The longest TTL accepted (a day): a lock is a lease, not a reservation.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How a [`LockManager`](crate::LockManager) (or a
/// [`Semaphore`](crate::Semaphore)) takes a lock: its TTL, how long to wait,
/// watchdog renewal, replica confirmation.
///
/// Build one with [`LockOptions::builder`]; `LockOptions::default()` is a
/// 30 s lock tried once, without watchdog.
///
/// ```
/// use std::time::Duration;
/// use fredkit_lock::LockOptions;
///
/// let opts = LockOptions::builder()
///     .ttl(Duration::from_secs(10))    // the lease; expires unless renewed (default 30 s)
///     .wait(Duration::from_secs(2))    // wait up to 2 s for a busy lock (default: try once)
///     .watchdog(true)                  // renew every ttl/3 while the guard lives (default off)
///     .build()?;
/// assert_eq!(opts.ttl(), Duration::from_secs(10));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LockOptions {
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) watchdog: bool,
    pub(crate) poll: Backoff,
    pub(crate) replicas: Option<(u32, Duration)>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: Duration::from_secs(30),
            wait: Duration::ZERO,
            watchdog: false,
            poll: default_poll(),
            replicas: None,
        }
    }
}

fn default_poll() -> Backoff {
    Backoff::builder()
        .initial(Duration::from_millis(50))
        .multiplier(2.0)
        .max(Duration::from_secs(1))
        .build()
        .unwrap_or_default()
}

impl LockOptions {
    /// A builder starting from the defaults.
    pub fn builder() -> LockOptionsBuilder {
        LockOptionsBuilder {
            opts: LockOptions::default(),
        }
    }

    /// The lock's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long `acquire` waits for a busy lock (zero: one try).
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Whether a watchdog renews the lock while its guard lives.
    pub fn watchdog(&self) -> bool {
        self.watchdog
    }

    /// The fallback polling schedule used while waiting.
    pub fn poll_backoff(&self) -> &Backoff {
        &self.poll
    }

    /// Replica confirmation: `(replicas, timeout)`, if required.
    pub fn replicas(&self) -> Option<(u32, Duration)> {
        self.replicas
    }

    /// The TTL in whole milliseconds (at least 1).
    pub(crate) fn ttl_ms(&self) -> i64 {
        millis(self.ttl).max(1)
    }
}

/// Whole milliseconds of `d`, rounded up, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The builder of [`LockOptions`]. Each method consumes and returns the
/// builder; [`build`](Self::build) validates.
#[must_use]
#[derive(Clone, Debug)]
pub struct LockOptionsBuilder {
    opts: LockOptions,
}

impl LockOptionsBuilder {
    /// The lock's time to live: it expires this long after it was granted
    /// (or last extended) unless released. Measured by the Redis server's
    /// clock. Default 30 s; from 1 ms to 24 h.
    ///
    /// Choose it longer than the protected work normally takes, or turn the
    /// [`watchdog`](Self::watchdog) on; a crashed holder blocks the resource
    /// for up to one TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.opts.ttl = ttl;
        self
    }

    /// How long [`LockManager::acquire`](crate::LockManager::acquire) waits
    /// for a busy lock before giving up with `Ok(None)`. Default zero: one
    /// try, no waiting. Waiters are woken by a pub/sub message when the
    /// holder releases, by the lock's expiry, and, as a fallback for lost
    /// messages, by polling on [`poll_backoff`](Self::poll_backoff).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.opts.wait = wait;
        self
    }

    /// Renew the lock every `ttl / 3` for as long as the guard lives. A
    /// renewal that finds the lock gone, or no successful renewal for a whole
    /// TTL (Redis unreachable), marks the guard lost
    /// ([`LockGuard::lost`](crate::LockGuard::lost)). Default off. The TTL
    /// must be at least 30 ms with the watchdog on.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.opts.watchdog = on;
        self
    }

    /// The fallback polling schedule while waiting (wake-up messages normally
    /// end a wait first). Default: 50 ms, doubling, capped at 1 s, full
    /// jitter. Each sleep is also cut short at the lock's expiry.
    pub fn poll_backoff(mut self, backoff: Backoff) -> Self {
        self.opts.poll = backoff;
        self
    }

    /// After each grant, require `replicas` replicas to confirm the write
    /// (`WAIT replicas timeout`, on a connection of the manager's own so that
    /// the shared connection never blocks). If fewer confirm within
    /// `timeout`, the grant is undone and the acquire fails with
    /// [`ErrorKind::Timeout`](fredkit_core::ErrorKind::Timeout). Costs one
    /// more round trip (plus the replication delay) per grant. Default off.
    /// The manager opens that connection on its first such try and waits
    /// for it to come up (at most the connect timeout; if it does not, the
    /// try fails with `Timeout` having sent nothing). On a cluster `WAIT`
    /// goes to the master of the lock key's slot, the one that ran the grant.
    ///
    /// This narrows, but does not close, the window in which a failover to a
    /// replica that missed the grant hands the lock out twice (replication
    /// stays asynchronous: a confirmed replica may still not be the one
    /// promoted). Fencing tokens are what make such a double grant harmless.
    pub fn replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.opts.replicas = Some((replicas, timeout));
        self
    }

    /// Validates and returns the options.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) when the TTL is
    /// zero or above 24 h, the wait is above 24 h, the watchdog is on with a
    /// TTL under 30 ms, or replica confirmation asks for 0 replicas or a zero
    /// timeout.
    pub fn build(self) -> Result<LockOptions> {
        let o = &self.opts;
        if o.ttl.is_zero() || o.ttl > MAX_TTL {
            return Err(Error::config(format!(
                "lock ttl must be between 1 ms and 24 h, got {:?}",
                o.ttl
            )));
        }
        if o.ttl < Duration::from_millis(1) {
            return Err(Error::config(format!(
                "lock ttl must be at least 1 ms (Redis counts whole milliseconds), got {:?}",
                o.ttl
            )));
        }
        if o.wait > MAX_TTL {
            return Err(Error::config(format!(
                "lock wait must be at most 24 h, got {:?}",
                o.wait
            )));
        }
        if o.watchdog && o.ttl < Duration::from_millis(30) {
            return Err(Error::config(format!(
                "the watchdog renews every ttl/3: use a ttl of at least 30 ms, got {:?}",
                o.ttl
            )));
        }
        if let Some((n, timeout)) = o.replicas {
            if n == 0 || timeout.is_zero() {
                return Err(Error::config(
                    "replica confirmation needs at least 1 replica and a non-zero timeout",
                ));
            }
        }
        Ok(self.opts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fredkit_core::ErrorKind;

    #[test]
    fn defaults_are_a_30s_lock_tried_once_without_watchdog() {
        let o = LockOptions::default();
        assert_eq!(o.ttl(), Duration::from_secs(30));
        assert_eq!(o.wait(), Duration::ZERO);
        assert!(!o.watchdog());
        assert!(o.replicas().is_none());
        let built = LockOptions::builder().build().unwrap();
        assert_eq!(built.ttl(), o.ttl());
        assert_eq!(built.poll_backoff().max(), Duration::from_secs(1));
    }

    #[test]
    fn invalid_combinations_fail_at_build() {
        let bad = [
            LockOptions::builder().ttl(Duration::ZERO),
            LockOptions::builder().ttl(Duration::from_micros(500)),
            LockOptions::builder().ttl(MAX_TTL + Duration::from_secs(1)),
            LockOptions::builder().wait(MAX_TTL * 2),
            LockOptions::builder()
                .ttl(Duration::from_millis(10))
                .watchdog(true),
            LockOptions::builder().replicas(0, Duration::from_secs(1)),
            LockOptions::builder().replicas(1, Duration::ZERO),
        ];
        for b in bad {
            assert_eq!(b.build().unwrap_err().kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        let o = LockOptions::builder()
            .ttl(Duration::from_micros(1_500))
            .build()
            .unwrap();
        assert_eq!(o.ttl_ms(), 2);
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
    }
}
