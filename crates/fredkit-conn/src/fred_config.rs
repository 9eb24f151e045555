//! Translation of a [`RedisConfig`] into fred's builder, with our defaults.

use crate::config::{RedisConfig, Topology};
use fred::prelude::{Builder, Config, ReconnectPolicy, Server, ServerConfig};
use fred::types::config::ReconnectError;
use fredkit_core::Result;
use std::time::Duration;

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Which kind of connection a builder is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The shared multiplexed pool: commands are short; a silent connection is a dead one.
    Shared,
    /// Blocking commands: long silences are normal.
    Dedicated,
    /// Pub/sub: long silences are normal, and bursts of messages must not
    /// overflow fred's event buffer before the consumer routes them.
    Subscriber,
}

/// The bound on fred's internal commands (the handshake of a new connection,
/// `CLUSTER SLOTS`) on a cluster: a quarter of the command timeout, at least
/// 100 ms, at most the connect timeout.
///
/// fred runs them inside the one task that writes every node's commands, and
/// when it re-reads the topology it opens a connection to the first node *in
/// address order* whose TCP handshake completes (`connect_any` in fred's
/// `router/clustered.rs`). A paused or half-dead master completes the TCP
/// handshake in its kernel and then answers nothing, so with the connect
/// timeout here (5 s) every node's commands waited 5 s behind it (issue #14).
/// A healthy node answers the handshake in a few round trips, far below this.
pub(crate) fn cluster_internal_timeout(command: Duration, connect: Duration) -> Duration {
    (command / 4).max(Duration::from_millis(100)).min(connect)
}

pub(crate) fn builder(config: &RedisConfig, purpose: Purpose) -> Result<Builder> {
    let mut fc = Config {
        // The first connection failing is handled by the reconnect policy, so a
        // late Redis does not fail start-up; `Redis::wait_connected` bounds the wait.
        fail_fast: false,
        username: config.username.clone(),
        password: config.password.as_ref().map(|p| p.expose().to_string()),
        database: config.database,
        ..Config::default()
    };
    fc.server = match &config.topology {
        Topology::Standalone(n) => ServerConfig::new_centralized(n.host.clone(), n.port),
        Topology::Cluster(nodes) => {
            ServerConfig::new_clustered(nodes.iter().map(|n| (n.host.clone(), n.port)).collect())
        }
        Topology::Sentinel {
            sentinels,
            service_name,
            sentinel_username,
            sentinel_password,
        } => ServerConfig::Sentinel {
            hosts: sentinels
                .iter()
                .map(|n| Server::new(n.host.clone(), n.port))
                .collect(),
            service_name: service_name.clone(),
            username: sentinel_username.clone(),
            password: sentinel_password.as_ref().map(|p| p.expose().to_string()),
        },
    };
    if config.tls {
        #[cfg(feature = "tls")]
        {
            let opts = config.tls_options();
            let cluster = matches!(config.topology, Topology::Cluster(_));
            fc.tls = Some(crate::tls::fred_tls(opts, cluster)?);
            if let Some(name) = crate::tls::server_name_for(opts) {
                match &mut fc.server {
                    ServerConfig::Centralized { server } => {
                        server.tls_server_name = Some(name);
                    }
                    ServerConfig::Clustered { hosts, .. }
                    | ServerConfig::Sentinel { hosts, .. } => {
                        for server in hosts {
                            server.tls_server_name = Some(name.clone());
                        }
                    }
                    // fred's unix-socket variant, when that feature is on: no TLS name.
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }
            if opts.accepts_invalid_certs() && purpose == Purpose::Shared {
                tracing::error!(
                    url = %config,
                    "fredkit: TLS certificate verification is OFF (danger_accept_invalid_certs): \
                     anyone between this process and Redis can read and change the traffic; \
                     for local development only"
                );
            }
        }
        #[cfg(not(feature = "tls"))]
        return Err(fredkit_core::Error::config(
            "rediss:// needs TLS support: enable the 'tls' feature of fredkit-conn (or fredkit)",
        ));
    }

    crate::credentials::install(config, &mut fc);
    let mut b = Builder::from_config(fc);
    let command_timeout = config.command_timeout;
    let connect_timeout = config.connect_timeout;
    let internal_timeout = match config.topology {
        Topology::Cluster(_) => cluster_internal_timeout(command_timeout, connect_timeout),
        _ => connect_timeout,
    };
    b.with_connection_config(|c| {
        c.connection_timeout = connect_timeout;
        // AUTH, HELLO, CLUSTER SLOTS, ROLE ...: bounded by the connect timeout,
        // and on a cluster by a quarter of the command timeout too (see
        // `cluster_internal_timeout`).
        c.internal_command_timeout = internal_timeout;
        if let Topology::Cluster(_) = config.topology {
            // fred counts every MOVED it follows as a write attempt (3 by
            // default): in a planned CLUSTER FAILOVER the first topology
            // re-read after a MOVED can still come from a node whose view is
            // a few ms old, and a command that met two stale views failed
            // with "Too many failed write attempts" (4-12 of ~3,700 writes in
            // 2 of 6 runs of tests/cluster_failover.rs). Redirections stay
            // bounded by `max_redirections` (5); the command timeout bounds
            // the whole.
            c.max_command_attempts = 6;
            // And wait a little before re-reading the topology after a MOVED,
            // so that the re-read sees the new epoch: without the pause a
            // command could meet 5 stale views in a row ("Too many
            // redirections", 1 run in 6). The router pauses writing for it
            // once per MOVED, which happens only while slots move.
            c.cluster_cache_update_delay = Duration::from_millis(10);
        }
        // TCP_NODELAY stays at fred's default (off): measured interleaved in
        // `cargo xtask bench raw` it gave no gain (0.98x at c1, 0.93x at c64).
        // These replies mean "this node cannot serve you right now": reconnect
        // (re-reading the cluster or sentinel view) and retry the command.
        c.reconnect_errors = vec![
            ReconnectError::ClusterDown,
            ReconnectError::Loading,
            ReconnectError::MasterDown,
            ReconnectError::ReadOnly,
        ];
        // fred's unresponsive-connection check stays off on every
        // connection: it arms a timer per command (measured at ~10% of
        // throughput). The shared pool gets `watchdog` instead.
    });
    b.with_performance_config(|p| {
        p.default_command_timeout = command_timeout;
        if purpose == Purpose::Subscriber {
            // fred's default is 32 messages; a burst beyond the buffer is lost
            // (fredkit-pubsub reports it as a gap). fred preallocates ten
            // channels of this size, so 8 Ki slots is ~1-2 MiB per subscriber.
            p.broadcast_channel_capacity = 1 << 13;
        }
    });
    let r = &config.reconnect;
    let mut policy = ReconnectPolicy::new_exponential(
        r.max_attempts,
        ms(r.initial_delay).max(1),
        ms(r.max_delay).max(1),
        2,
    );
    policy.set_jitter(ms(r.jitter));
    b.set_policy(policy);
    Ok(b)
}
