//! Dead-connection detection for the shared pool, at no per-command cost.
//!
//! fred's own detection (`ConnectionConfig::unresponsive`) arms a timer on
//! every turn of its routing loop, i.e. for every command written and every
//! batch of replies read. Measured interleaved here (`cargo xtask bench
//! streams --rounds 15`, 64 tasks): XADD on a client with it ran at 0.91x a
//! client without it, `Producer::publish` at 0.88x, and with it off both were
//! at 1.00x. So fredkit-conn turns fred's check off and runs this instead: a
//! task per [`Redis`](crate::Redis) handle that sends one `PING` per
//! connection (per cluster node) every [`PROBE_INTERVAL`] and acts on a
//! `PING` unanswered for the unresponsive timeout while fred still believes
//! the connection is up. Cost: one `PING` per connection per interval;
//! nothing per command.
//!
//! What it does about a silent connection depends on the topology:
//!
//! - **Standalone, Sentinel**: it forces a reconnection (which, behind
//!   Sentinel, also asks the sentinels for the current primary).
//! - **Cluster**: a silent node never costs the healthy ones anything. fred's
//!   `force_reconnection()` on a cluster client runs its whole reconnection
//!   routine inside the one task that writes every node's commands: a backoff
//!   sleep, then `CLUSTER SLOTS` on a fresh connection to the first node *in
//!   address order* that completes a handshake — the silent node itself if it
//!   sorts first, which costs the internal command timeout — and it keeps the
//!   silent connection anyway (fred only replaces connections with a read
//!   error). Every slot stalled for that long (issue #14). So on a cluster
//!   the watchdog probes each node on its own, leaves the connections alone,
//!   and while a node is silent it reads `CLUSTER SLOTS` itself through a node
//!   that answers, as an ordinary pipelined command. Once that view's primaries
//!   differ from the client's connections (the silent master's replica was
//!   promoted), it calls fred's `sync_cluster()` once: fred drops the old
//!   primary's connection, connects to the new one and moves the slots; the
//!   healthy nodes' connections are kept. Only when every node is silent (the
//!   client's own network is gone) does it fall back to a forced reconnection.

use crate::liveness::{is_silent, PROBE_INTERVAL};
use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::Value;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Options, Server};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Probes `pool` for ever (the caller aborts the task when the handle goes).
pub(crate) async fn run(pool: Pool, max: Duration, reconnect_wait: Duration) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut clusters: Vec<Option<ClusterWatch>> = pool
        .clients()
        .iter()
        .map(|c| c.is_clustered().then(|| ClusterWatch::new(c.clone())))
        .collect();
    loop {
        tick.tick().await;
        for (client, cluster) in pool.clients().iter().zip(clusters.iter_mut()) {
            match cluster {
                Some(watch) => watch.round(max, reconnect_wait).await,
                None => {
                    if client.is_connected() && is_silent(client, None, max).await {
                        reconnect(client, "redis", max, reconnect_wait).await;
                    }
                }
            }
        }
    }
}

/// Forces a reconnection of `client`, bounded by `wait`.
async fn reconnect(client: &Client, server: &str, max: Duration, wait: Duration) {
    tracing::warn!(
        server = %server,
        unanswered_for = ?max,
        "fredkit: connection unresponsive (a paused server or a half-open TCP connection); reconnecting"
    );
    if let Ok(Err(e)) = tokio::time::timeout(wait, client.force_reconnection()).await {
        tracing::debug!(error = %e, "fredkit: forced reconnection failed; fred's reconnect policy goes on");
    }
}

/// `host:port` of a server, the identity compared between fred's connections
/// and a `CLUSTER SLOTS` reply.
fn addr(server: &Server) -> (String, u16) {
    (server.host.to_string(), server.port)
}

/// The per-node watch of one clustered client.
struct ClusterWatch {
    client: Client,
    /// The `PING` in flight to each node: resolves to "silent".
    probes: HashMap<Server, JoinHandle<bool>>,
    /// Nodes whose last probe went unanswered for the unresponsive timeout.
    silent: BTreeSet<Server>,
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        for probe in self.probes.values() {
            probe.abort();
        }
    }
}

impl ClusterWatch {
    fn new(client: Client) -> Self {
        ClusterWatch {
            client,
            probes: HashMap::new(),
            silent: BTreeSet::new(),
        }
    }

    /// One probe interval: collect the finished probes, start new ones, and
    /// while some node is silent, follow the topology.
    async fn round(&mut self, max: Duration, wait: Duration) {
        if !self.client.is_connected() {
            // fred is reconnecting: its own work; probes resume afterwards.
            return;
        }
        let nodes: BTreeSet<Server> = self.client.active_connections().into_iter().collect();
        let finished: Vec<Server> = self
            .probes
            .iter()
            .filter(|(_, p)| p.is_finished())
            .map(|(s, _)| s.clone())
            .collect();
        for server in finished {
            let Some(probe) = self.probes.remove(&server) else {
                continue;
            };
            if probe.await.unwrap_or(false) {
                if self.silent.insert(server.clone()) {
                    tracing::warn!(
                        server = %server,
                        unanswered_for = ?max,
                        "fredkit: cluster node unresponsive (a paused server or a half-open TCP \
                         connection); its slots wait for a failover, the other nodes are untouched"
                    );
                }
            } else {
                self.silent.remove(&server);
            }
        }
        // Connections fred dropped (after a topology change) are no longer watched.
        self.silent.retain(|s| nodes.contains(s));
        self.probes.retain(|s, p| {
            let keep = nodes.contains(s);
            if !keep {
                p.abort();
            }
            keep
        });
        for node in &nodes {
            if !self.probes.contains_key(node) {
                let client = self.client.clone();
                let target = node.clone();
                self.probes.insert(
                    node.clone(),
                    tokio::spawn(async move { is_silent(&client, Some(target), max).await }),
                );
            }
        }
        if self.silent.is_empty() {
            return;
        }
        let answering: Vec<&Server> = nodes.iter().filter(|n| !self.silent.contains(*n)).collect();
        match answering.first() {
            Some(healthy) => self.follow_topology(healthy, &nodes, max, wait).await,
            None => {
                // Every node is silent: nothing left to protect.
                self.silent.clear();
                reconnect(&self.client, "every cluster node", max, wait).await;
            }
        }
    }

    /// Reads `CLUSTER SLOTS` from `healthy` and, if its primaries are not the
    /// nodes the client is connected to, has fred re-read the topology.
    async fn follow_topology(
        &self,
        healthy: &Server,
        nodes: &BTreeSet<Server>,
        max: Duration,
        wait: Duration,
    ) {
        let options = Options {
            timeout: Some(max),
            max_attempts: Some(1),
            cluster_node: Some(healthy.clone()),
            ..Options::default()
        };
        let slots: Value = match self.client.with_options(&options).cluster_slots().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(server = %healthy, error = %e, "fredkit: CLUSTER SLOTS failed; trying again next round");
                return;
            }
        };
        let primaries: BTreeSet<(String, u16)> = match ClusterRouting::from_cluster_slots(
            slots,
            healthy.host.clone(),
        ) {
            Ok(routing) => routing.unique_primary_nodes().iter().map(addr).collect(),
            Err(e) => {
                tracing::debug!(server = %healthy, error = %e, "fredkit: unreadable CLUSTER SLOTS reply");
                return;
            }
        };
        let connected: BTreeSet<(String, u16)> = nodes.iter().map(addr).collect();
        if primaries.is_empty() || primaries == connected {
            return;
        }
        tracing::info!(
            silent = ?self.silent.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "fredkit: cluster primaries changed while a node is silent; re-reading the topology"
        );
        match tokio::time::timeout(wait, self.client.sync_cluster()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "fredkit: cluster sync failed; trying again next round")
            }
            Err(_) => {
                tracing::debug!("fredkit: cluster sync still running; trying again next round")
            }
        }
    }
}
