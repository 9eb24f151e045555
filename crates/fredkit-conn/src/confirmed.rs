//! Writes that count as done only once replicas have them ([`Confirmed`]).

use crate::redis::{Dedicated, Redis};
use fred::clients::Client;
use fred::interfaces::{ClientLike, ServerInterface};
use fred::types::config::Options;
use fred::types::ClusterHash;
use fredkit_core::{Error, ErrorKind, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Writes confirmed by `replicas` replicas (`WAIT`) before they are
/// reported done: what closes the window in which a primary acknowledges a
/// write that a failover then loses.
///
/// Redis replicates asynchronously. A write the primary has acknowledged
/// can be missing from the replica the sentinels (or the cluster) promote:
/// the last milliseconds before a crash, and — in a planned failover — the
/// writes the old primary still accepts between the replica's promotion and
/// the sentinels' announcement (fredkit-conn moves every connection the
/// moment it is announced; measured up to about a second before it). A write
/// made through [`Confirmed::write`] is answered only after `WAIT` saw it on
/// `replicas` replicas; a promoted replica has it. Use it for the writes that
/// must survive a failover; plain writes stay one round trip.
///
/// It has a connection of its own (a `WAIT` stalls the connection it runs on
/// until the replicas answer), shared by every clone: concurrent writes are
/// confirmed one after the other.
///
/// ```no_run
/// use fred::prelude::*;
/// use fredkit_conn::Redis;
/// use std::time::Duration;
///
/// # async fn run(redis: Redis) -> Result<(), fredkit_core::Error> {
/// let durable = redis.confirmed(1, Duration::from_millis(500))?;
/// let n: i64 = durable
///     .write("orders:count", |c| async move { c.incr("orders:count").await })
///     .await?;
/// # let _ = n; Ok(()) }
/// ```
///
/// # Round trips
/// Two per write: the write, then `WAIT` on the same connection (routed to
/// the node that owns `key` on a cluster).
///
/// # Failure and cancellation
/// Fewer than `replicas` confirmations within the timeout is an
/// [`ErrorKind::Timeout`] error naming the key: the primary applied the
/// write, but it may be lost in a failover; it is not undone. Retry only
/// writes that are safe to repeat. A command that times out (a silent
/// connection) replaces the connection for the next write. Dropping the
/// future abandons the wait; the write may have been applied.
#[derive(Clone)]
pub struct Confirmed {
    inner: Arc<ConfirmedInner>,
}

struct ConfirmedInner {
    conn: Dedicated<Client>,
    replicas: u32,
    timeout: Duration,
    command_timeout: Duration,
}

impl std::fmt::Debug for Confirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmed")
            .field("replicas", &self.inner.replicas)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Redis {
    /// Writes confirmed by `replicas` replicas within `timeout` (see
    /// [`Confirmed`]). Opens one connection (lazily).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for 0 replicas or a zero timeout;
    /// a config error if fred rejects the configuration.
    pub fn confirmed(&self, replicas: u32, timeout: Duration) -> Result<Confirmed> {
        if replicas == 0 {
            return Err(Error::invalid_input(
                "confirmed writes need at least 1 replica (plain writes are confirmed by the primary alone)",
            ));
        }
        if timeout.is_zero() || timeout > Duration::from_secs(3600) {
            return Err(Error::invalid_input(format!(
                "the replica confirmation timeout must be between 1 ms and 1 h, not {timeout:?} (WAIT with 0 would wait for ever)"
            )));
        }
        Ok(Confirmed {
            inner: Arc::new(ConfirmedInner {
                conn: self.dedicated()?,
                replicas,
                timeout,
                command_timeout: self.config().command_timeout(),
            }),
        })
    }
}

impl Confirmed {
    /// Runs `write` on this handle's connection, then waits until
    /// `replicas` replicas have it. `key` is the key written (on a cluster,
    /// `WAIT` goes to the node that owns it; write keys of one slot only).
    ///
    /// # Errors
    /// The write's own error; [`ErrorKind::Timeout`] when the replicas did
    /// not confirm in time (the write may be lost in a failover).
    pub async fn write<R, F, Fut>(&self, key: &str, write: F) -> Result<R>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = std::result::Result<R, fred::error::Error>>,
    {
        let client = self.inner.conn.client().clone();
        let written = write(client).await.map_err(Error::from);
        let value = match written {
            Ok(v) => v,
            Err(e) => {
                self.replace_if_silent(&e);
                return Err(e);
            }
        };
        self.confirm(key).await?;
        Ok(value)
    }

    /// Waits until `replicas` replicas have every write made so far on this
    /// handle's connection (one `WAIT`, routed to the node of `key`).
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when they did not confirm in time.
    pub async fn confirm(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        let options = Options {
            cluster_hash: Some(ClusterHash::Custom(fred::util::redis_keyslot(
                key.as_bytes(),
            ))),
            timeout: Some(inner.timeout.saturating_add(inner.command_timeout)),
            max_attempts: Some(1),
            ..Options::default()
        };
        let millis = i64::try_from(inner.timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let acked = inner
            .conn
            .client()
            .with_options(&options)
            .wait::<i64>(i64::from(inner.replicas), millis)
            .await
            .map_err(Error::from);
        match acked {
            Ok(n) if n >= i64::from(inner.replicas) => Ok(()),
            Ok(n) => Err(Error::timeout(format!(
                "the write to '{key}' reached the primary but only {n} of {} replicas confirmed it within {:?}: it may be lost if the primary fails over now (retry it if it is safe to repeat; check that the replicas are connected)",
                inner.replicas, inner.timeout
            ))),
            Err(e) => {
                self.replace_if_silent(&e);
                Err(Error::timeout(format!(
                    "could not confirm the write to '{key}' on {} replicas: {e}",
                    inner.replicas
                )))
            }
        }
    }

    /// Closes this handle's connection, for it and every clone
    /// ([`Dedicated::close`]: `QUIT` after the writes and `WAIT` in flight,
    /// then fred's connection task is waited for). Writes afterwards fail
    /// at once. Idempotent. Without it the connection closes in the
    /// background when the last clone is dropped.
    ///
    /// # Errors
    /// As [`Dedicated::close`]; the connection is closed anyway.
    pub async fn close(&self) -> Result<()> {
        self.inner.conn.close().await
    }

    /// A command on this connection timed out: it may be silent (a paused
    /// primary, a failover without RST). Reconnect it, which also re-reads
    /// the Sentinel or cluster topology.
    fn replace_if_silent(&self, e: &Error) {
        if e.kind() != ErrorKind::Timeout {
            return;
        }
        let client = self.inner.conn.client().clone();
        tokio::spawn(async move {
            let _ = client.force_reconnection().await;
        });
    }
}
