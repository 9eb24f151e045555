//! Dead-connection detection shared by fredkit's long-lived connections.
//!
//! A connection can go silent without closing: a paused or dead server, a
//! half-open TCP connection, a primary failed over without resetting its
//! connections. fred keeps such a connection "connected" until the kernel
//! gives up (minutes). [`Redis`](crate::Redis) probes its pool with these
//! functions every [`PROBE_INTERVAL`]; fredkit-pubsub probes its subscriber
//! connection the same way. On a silent connection, call fred's
//! `force_reconnection()`.

use fred::error::ErrorKind as FredErrorKind;
use fred::interfaces::ClientLike;
use fred::prelude::Value;
use fred::types::config::{Options, Server};
use std::time::Duration;

/// How often fredkit probes a long-lived connection.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a probe may go unanswered before the connection counts as
/// silent: three command timeouts, at least 3 s (a busy but healthy
/// connection answers a `PING` in well under one command timeout).
pub fn unresponsive_after(command_timeout: Duration) -> Duration {
    command_timeout
        .saturating_mul(3)
        .max(Duration::from_secs(3))
}

/// Sends one `PING` on `client` (to `node` on a cluster, `None` otherwise)
/// and says whether the connection is silent: the `PING` went unanswered
/// for `max` while fred still counted the client as connected. One round
/// trip, one write attempt; never fails (any other error, or a reconnection
/// fred started meanwhile, is "not silent": fred is handling it).
pub async fn is_silent<C: ClientLike>(client: &C, node: Option<Server>, max: Duration) -> bool {
    let options = Options {
        timeout: Some(max),
        max_attempts: Some(1),
        cluster_node: node,
        ..Options::default()
    };
    match client.with_options(&options).ping::<Value>(None).await {
        Err(e) => *e.kind() == FredErrorKind::Timeout && client.is_connected(),
        Ok(_) => false,
    }
}
