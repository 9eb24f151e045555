//! [`PubSubOptions`].

use fredkit_core::{Error, Result};

/// Which pub/sub commands to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Sharded (`SPUBLISH`/`SSUBSCRIBE`) on a cluster, plain elsewhere. The default.
    #[default]
    Auto,
    /// `PUBLISH`/`SUBSCRIBE`: on a cluster every message is broadcast to every node.
    Plain,
    /// `SPUBLISH`/`SSUBSCRIBE` (Redis 7+): a message goes only to the shard
    /// owning the channel's slot. Patterns are not available in sharded mode.
    Sharded,
}

/// Options of a [`Publisher`](crate::Publisher) or [`Subscriber`](crate::Subscriber) (give both the same). A builder: each method consumes and
/// returns the options.
///
/// ```
/// use fredkit_pubsub::{Mode, PubSubOptions};
/// let options = PubSubOptions::default()
///     .mode(Mode::Auto)          // sharded on a cluster, plain elsewhere (default)
///     .receiver_capacity(1024);  // messages buffered per channel before a slow receiver lags (default)
/// ```
#[must_use]
#[derive(Clone, Debug)]
pub struct PubSubOptions {
    pub(crate) mode: Mode,
    pub(crate) receiver_capacity: usize,
}

impl Default for PubSubOptions {
    fn default() -> Self {
        PubSubOptions {
            mode: Mode::Auto,
            receiver_capacity: 1024,
        }
    }
}

impl PubSubOptions {
    /// Plain or sharded pub/sub. Default [`Mode::Auto`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// How many messages each channel buffers for its local receivers. A
    /// receiver that falls further behind than this skips ahead and gets a
    /// [`Delivery::Lagged`](crate::Delivery::Lagged) notice; it never slows
    /// the others or the connection. The buffer holds `n` rounded up to the
    /// next power of two (5 keeps 8), and `Lagged(k)` counts exactly the `k`
    /// messages skipped. Default 1024; 1 to 1,048,576.
    pub fn receiver_capacity(mut self, n: usize) -> Self {
        self.receiver_capacity = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.receiver_capacity == 0 || self.receiver_capacity > 1 << 20 {
            return Err(Error::config(
                "receiver_capacity must be between 1 and 1048576",
            ));
        }
        Ok(())
    }
}
