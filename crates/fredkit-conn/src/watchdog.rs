//! Dead-connection detection for the shared pool, at no per-command cost.
//!
//! fred's own detection (`ConnectionConfig::unresponsive`) arms a timer on
//! every turn of its routing loop, i.e. for every command written and every
//! batch of replies read. Measured interleaved here (`cargo xtask bench
//! streams --rounds 15`, 64 tasks): XADD on a client with it ran at 0.91x a
//! client without it, `Producer::publish` at 0.88x, and with it off both were
//! at 1.00x. So fredkit-conn turns fred's check off and runs this instead: a
//! task per [`Redis`](crate::Redis) handle that sends one `PING` per
//! connection (per cluster node) every [`PROBE_INTERVAL`](crate::liveness::PROBE_INTERVAL) and, when a `PING` goes
//! unanswered for the unresponsive timeout while fred still believes the
//! connection is up, forces a reconnection. Cost: one `PING` per connection
//! per interval; nothing per command.

use crate::liveness::{is_silent, PROBE_INTERVAL};
use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::types::config::Server;
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// Probes `pool` for ever (the caller aborts the task when the handle goes).
pub(crate) async fn run(pool: Pool, max: Duration, reconnect_wait: Duration) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for client in pool.clients() {
            if let Some(server) = unresponsive(client, max).await {
                tracing::warn!(
                    server = %server,
                    unanswered_for = ?max,
                    "fredkit: connection unresponsive (a paused server or a half-open TCP connection); reconnecting"
                );
                if let Ok(Err(e)) =
                    tokio::time::timeout(reconnect_wait, client.force_reconnection()).await
                {
                    tracing::debug!(error = %e, "fredkit: forced reconnection failed; fred's reconnect policy goes on");
                }
            }
        }
    }
}

/// The first server of `client` whose probe found it silent, if any.
async fn unresponsive(client: &Client, max: Duration) -> Option<String> {
    if !client.is_connected() {
        return None;
    }
    let servers: Vec<Option<Server>> = if client.is_clustered() {
        client.active_connections().into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    for server in servers {
        if is_silent(client, server.clone(), max).await {
            return Some(server.map_or_else(|| "redis".to_string(), |s| s.to_string()));
        }
    }
    None
}
