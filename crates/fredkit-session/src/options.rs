//! [`SessionOptions`]: lifetimes and limits of a [`Sessions`](crate::Sessions) store.

use std::time::Duration;

use fredkit_core::{Error, Result};

/// Lifetimes and limits of a [`Sessions`](crate::Sessions) store.
///
/// ```
/// use std::time::Duration;
/// use fredkit_session::SessionOptions;
///
/// let options = SessionOptions::new()
///     .idle_timeout(Duration::from_secs(20 * 60))
///     .absolute_timeout(Duration::from_secs(12 * 3600));
/// assert_eq!(options.idle(), Duration::from_secs(1200));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    idle: Duration,
    absolute: Duration,
    max_per_user: u32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions::new()
    }
}

impl SessionOptions {
    /// Defaults: idle timeout 30 min, absolute timeout 7 days, 64 indexed
    /// sessions per user.
    pub fn new() -> SessionOptions {
        SessionOptions {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(7 * 24 * 3600),
            max_per_user: 64,
        }
    }

    /// A session unused for this long expires (sliding expiry: every load
    /// and save resets it, with a `PEXPIRE`, never a rewrite). Default 30 min.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// No session lives longer than this after its creation (or its last
    /// [`cycle_id`](crate::Sessions::cycle_id)), however often it is used
    /// (OWASP's absolute timeout). Also the TTL of a user's index and
    /// cut-off. Default 7 days.
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.absolute = absolute;
        self
    }

    /// How many of a user's sessions [`sessions_of`](crate::Sessions::sessions_of)
    /// keeps (the newest); older ones drop out of the index (they live on
    /// until they expire, and [`revoke_all`](crate::Sessions::revoke_all)
    /// still ends them). Default 64.
    pub fn max_sessions_per_user(mut self, n: u32) -> Self {
        self.max_per_user = n;
        self
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The absolute timeout.
    pub fn absolute(&self) -> Duration {
        self.absolute
    }

    /// The index limit per user.
    pub fn max_per_user(&self) -> u32 {
        self.max_per_user
    }

    /// (idle ms, absolute ms), checked.
    pub(crate) fn checked_ms(&self) -> Result<(u64, u64)> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (idle, absolute) = (ms(self.idle), ms(self.absolute));
        let limit = i64::MAX as u64 / 4;
        if idle == 0 || absolute == 0 || idle > limit || absolute > limit {
            return Err(Error::invalid_input(format!(
                "SessionOptions: the idle and absolute timeouts must be at least 1 ms (and below \
                 about 73 million years), got {:?} and {:?}",
                self.idle, self.absolute
            )));
        }
        if self.max_per_user == 0 {
            return Err(Error::invalid_input(
                "SessionOptions: max_sessions_per_user must be at least 1",
            ));
        }
        Ok((idle, absolute))
    }
}
