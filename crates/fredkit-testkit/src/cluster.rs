//! A Redis Cluster of child processes: masters with evenly split slots and optional replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Result, TestkitError};
use crate::resp::Reply;
use crate::server::{info_field, percent_encode, start_many, RedisServer, ServerOptions};
use crate::wait::poll_until;

/// Number of hash slots in a Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

/// How long [`RedisCluster::start`] waits for the cluster to form. Masters alone take ~2 s:
/// a fresh cluster master stays in `cluster_state:fail` for 2 s before it accepts writes.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket timeout for probes, so that a paused node cannot stall them.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Options for [`RedisCluster::start`]: 3 masters, no replicas, 1000 ms node timeout.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    masters: usize,
    replicas_per_master: usize,
    node_timeout: Duration,
    server: ServerOptions,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            masters: 3,
            replicas_per_master: 0,
            node_timeout: Duration::from_millis(1000),
            server: ServerOptions::default(),
        }
    }
}

impl ClusterOptions {
    /// Number of masters (at least 1; a failover needs a majority of masters alive, so at
    /// least 3 for failover tests).
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// Number of replicas attached to every master.
    pub fn replicas_per_master(mut self, n: usize) -> Self {
        self.replicas_per_master = n;
        self
    }

    /// `cluster-node-timeout`: how long a node may be unreachable before it is failed over.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Options for every node (AOF, password, extra arguments). A password is also set as
    /// `masterauth` so that replicas can sync.
    pub fn server_options(mut self, opts: ServerOptions) -> Self {
        self.server = opts;
        self
    }
}

/// A running Redis Cluster on loopback ports, killed when dropped.
///
/// `masters()` and `replicas()` are the roles the nodes were started with; after a failover
/// a former replica may own slots: ask [`RedisCluster::owner_of_slot`] for the current owner.
pub struct RedisCluster {
    /// Masters first, then the replicas of master 0, of master 1, ...
    nodes: Vec<RedisServer>,
    masters: usize,
    replicas_per_master: usize,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("masters", &self.masters())
            .field("replicas", &self.replicas())
            .finish()
    }
}

impl RedisCluster {
    /// Starts `masters × (1 + replicas_per_master)` cluster-enabled servers, gives master `i`
    /// the `i`-th equal share of the 16384 slots, attaches the replicas, and waits (up to
    /// 30 s) until every node reports `cluster_state:ok` with all slots covered, every node
    /// knows every other node and its role, and every replica's link to its master is up.
    ///
    /// # Errors
    /// [`TestkitError::InvalidOptions`] for 0 masters; any start error of
    /// [`RedisServer::start_with`]; [`TestkitError::Timeout`] (with the last observation)
    /// when the cluster does not form.
    pub fn start(opts: ClusterOptions) -> Result<RedisCluster> {
        if opts.masters == 0 || opts.masters > usize::from(SLOT_COUNT) {
            return Err(TestkitError::InvalidOptions(format!(
                "a cluster needs between 1 and {SLOT_COUNT} masters, got {}",
                opts.masters
            )));
        }
        let total = opts.masters * (1 + opts.replicas_per_master);
        let mut node_opts = opts
            .server
            .clone()
            .arg("cluster-enabled", "yes")
            .arg("cluster-config-file", "nodes.conf")
            .arg(
                "cluster-node-timeout",
                opts.node_timeout.as_millis().max(1).to_string(),
            );
        if let Some(pw) = opts.server.password_ref() {
            node_opts = node_opts.arg("masterauth", pw);
        }
        if opts.server.tls_ref().is_some() {
            // Every node serves TLS only; the bus runs over TLS too, and CLUSTER SLOTS
            // then announces the TLS ports.
            node_opts = node_opts.arg("tls-cluster", "yes");
        }
        let cluster = RedisCluster {
            nodes: start_many(total, &node_opts)?,
            masters: opts.masters,
            replicas_per_master: opts.replicas_per_master,
        };
        cluster.form()?;
        Ok(cluster)
    }

    fn form(&self) -> Result<()> {
        let m = self.masters;
        for (i, master) in self.masters().iter().enumerate() {
            let first = i * usize::from(SLOT_COUNT) / m;
            let last = (i + 1) * usize::from(SLOT_COUNT) / m - 1;
            let mut conn = master.connect(PROBE_TIMEOUT)?;
            // Distinct epochs up front, as redis-cli does, instead of collision resolution.
            conn.call_ok(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()])?;
            conn.call_ok(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ])?;
        }
        let mut first = self.nodes[0].connect(PROBE_TIMEOUT)?;
        for node in &self.nodes[1..] {
            first.call_ok(&["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string()])?;
        }
        let total = self.nodes.len();
        poll_until(
            "every node to know every other node",
            FORM_TIMEOUT,
            &mut || {
                for node in &self.nodes {
                    let view = cluster_nodes(node)?;
                    let handshaking = view.iter().filter(|n| n.is_handshaking()).count();
                    if view.len() != total || handshaking > 0 {
                        return Ok(Some(format!(
                            "{} knows {} nodes ({handshaking} in handshake), expected {total}",
                            node.addr(),
                            view.len()
                        )));
                    }
                }
                Ok(None)
            },
        )?;
        for (i, master) in self.masters().iter().enumerate() {
            let id = master
                .connect(PROBE_TIMEOUT)?
                .call_ok(&["CLUSTER", "MYID"])?;
            let id = id.as_str().unwrap_or_default().to_owned();
            for replica in self.replicas_of(i) {
                replica
                    .connect(PROBE_TIMEOUT)?
                    .call_ok(&["CLUSTER", "REPLICATE", &id])?;
            }
        }
        let expected_replicas = self.replicas().len();
        poll_until("the cluster to form", FORM_TIMEOUT, &mut || {
            if let Some(problem) = self.health_problem()? {
                return Ok(Some(problem));
            }
            // Every node must see every replica as one: masters vote in failovers by their
            // own view, and clients learn replicas from it.
            for node in &self.nodes {
                let view = cluster_nodes(node)?;
                let replicas = view.iter().filter(|n| n.flags.contains("slave")).count();
                if view.len() != total || replicas != expected_replicas {
                    return Ok(Some(format!(
                        "{} sees {} nodes of which {replicas} replicas, expected {total} and \
                         {expected_replicas}",
                        node.addr(),
                        view.len()
                    )));
                }
            }
            Ok(None)
        })
    }

    /// `"redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3"`: every master
    /// (as started), the fred URL format. With a password: `redis-cluster://:PW@...`. With
    /// [`ServerOptions::tls`]: `rediss-cluster://...&ca_file=...` (the CA and the client
    /// certificate, [`crate::TlsCerts::url_options`]).
    pub fn url(&self) -> String {
        let masters = self.masters();
        let auth = masters
            .first()
            .and_then(|m| m.password())
            .map(|pw| format!(":{}@", percent_encode(pw)))
            .unwrap_or_default();
        let tls = masters.first().and_then(RedisServer::tls_certs);
        let s = if tls.is_some() { "s" } else { "" };
        let mut url = format!(
            "redis{s}-cluster://{auth}{}",
            masters.first().map(RedisServer::addr).unwrap_or_default()
        );
        for (i, m) in masters.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str("node=");
            url.push_str(&m.addr());
        }
        if let Some(certs) = tls {
            url.push(if masters.len() > 1 { '&' } else { '?' });
            url.push_str(&certs.url_options());
        }
        url
    }

    /// The nodes started as masters, in slot order (master `i` got the `i`-th slot range).
    pub fn masters(&self) -> &[RedisServer] {
        &self.nodes[..self.masters]
    }

    /// Mutable access to the masters, to kill, restart or pause them.
    pub fn masters_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes[..self.masters]
    }

    /// The nodes started as replicas: those of master 0 first, then of master 1, ...
    pub fn replicas(&self) -> &[RedisServer] {
        &self.nodes[self.masters..]
    }

    /// Mutable access to the replicas.
    pub fn replicas_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes[self.masters..]
    }

    /// The replicas started for master `index` (empty for an out-of-range index).
    pub fn replicas_of(&self, index: usize) -> &[RedisServer] {
        let r = self.replicas_per_master;
        let start = (self.masters + index * r).min(self.nodes.len());
        let end = (start + r).min(self.nodes.len());
        &self.nodes[start..end]
    }

    /// Every node: the masters, then the replicas.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to every node.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The node listening on `addr` (`"127.0.0.1:PORT"`), if it is one of ours.
    pub fn node_by_addr(&self, addr: &str) -> Option<&RedisServer> {
        self.nodes.iter().find(|n| n.addr() == addr)
    }

    /// The index in [`RedisCluster::masters`] of the node that currently serves `slot`, as
    /// reported by `CLUSTER SLOTS` of the first running, unpaused node that answers.
    ///
    /// # Errors
    /// [`TestkitError::SlotOwnerNotInMasters`] when a former replica serves it (use
    /// [`RedisCluster::owner_of_slot`]); [`TestkitError::InvalidOptions`] for a slot
    /// ≥ 16384; [`TestkitError::Unanswered`] when no node answers or the slot is unassigned.
    pub fn master_index_for_slot(&self, slot: u16) -> Result<usize> {
        let index = self.owner_index(slot)?;
        if index < self.masters {
            Ok(index)
        } else {
            Err(TestkitError::SlotOwnerNotInMasters {
                slot,
                addr: self.nodes[index].addr(),
            })
        }
    }

    /// The node that currently serves `slot` (a master, or a promoted replica), as reported
    /// by `CLUSTER SLOTS` of the first running, unpaused node that answers.
    ///
    /// # Errors
    /// As [`RedisCluster::master_index_for_slot`], except that a promoted replica is fine.
    pub fn owner_of_slot(&self, slot: u16) -> Result<&RedisServer> {
        Ok(&self.nodes[self.owner_index(slot)?])
    }

    fn owner_index(&self, slot: u16) -> Result<usize> {
        if slot >= SLOT_COUNT {
            return Err(TestkitError::InvalidOptions(format!(
                "slot {slot} is out of range (0..{SLOT_COUNT})"
            )));
        }
        let mut last = String::from("no running, unpaused node");
        for node in self.live_nodes() {
            match slot_map(node) {
                Ok(map) => match map.range(..=slot).next_back() {
                    Some((_, &(end, port))) if slot <= end => {
                        if let Some(i) = self.nodes.iter().position(|n| n.port() == port) {
                            return Ok(i);
                        }
                        last = format!("slot {slot} is served by unknown port {port}");
                    }
                    _ => last = format!("{} reports slot {slot} as unassigned", node.addr()),
                },
                Err(e) => last = e.to_string(),
            }
        }
        Err(TestkitError::Unanswered {
            what: format!("finding the owner of slot {slot}"),
            last,
        })
    }

    /// Waits until every running, unpaused node reports `cluster_state:ok`, maps every slot
    /// to a running node, and (if it is a replica) has its replication link up. After killing
    /// a master, this waits for its replica's promotion (about twice the node timeout).
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] with the last problem seen.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        poll_until("the cluster to become healthy", timeout, &mut || {
            self.health_problem()
        })
    }

    fn live_nodes(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && !n.is_paused())
    }

    /// `Ok(None)` when healthy, else what is wrong. Transport errors are problems, not errors:
    /// a node may be restarting.
    fn health_problem(&self) -> Result<Option<String>> {
        let running: Vec<u16> = self.live_nodes().map(RedisServer::port).collect();
        for node in self.live_nodes() {
            let problem = (|| -> Result<Option<String>> {
                let mut conn = node.connect(PROBE_TIMEOUT)?;
                let info = conn.call_ok(&["CLUSTER", "INFO"])?;
                let info = info.as_str().unwrap_or_default();
                if info_field(info, "cluster_state") != Some("ok") {
                    return Ok(Some(format!("{} is not ok:\n{info}", node.addr())));
                }
                let map = slot_map(node)?;
                let mut next = 0u32;
                for (&start, &(end, port)) in &map {
                    if u32::from(start) != next {
                        return Ok(Some(format!(
                            "{} has no owner for slot {next}",
                            node.addr()
                        )));
                    }
                    if !running.contains(&port) {
                        return Ok(Some(format!(
                            "{} routes slots {start}-{end} to 127.0.0.1:{port}, which is down",
                            node.addr()
                        )));
                    }
                    next = u32::from(end) + 1;
                }
                if next != u32::from(SLOT_COUNT) {
                    return Ok(Some(format!(
                        "{} has no owner for slot {next}",
                        node.addr()
                    )));
                }
                let repl = conn.call_ok(&["INFO", "replication"])?;
                let repl = repl.as_str().unwrap_or_default();
                if info_field(repl, "role") == Some("slave")
                    && info_field(repl, "master_link_status") != Some("up")
                {
                    return Ok(Some(format!(
                        "replica {} has its link to its master down",
                        node.addr()
                    )));
                }
                Ok(None)
            })();
            match problem {
                Ok(None) => {}
                Ok(Some(p)) => return Ok(Some(p)),
                Err(e) => return Ok(Some(e.to_string())),
            }
        }
        Ok(None)
    }
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    flags: String,
}

impl NodeLine {
    fn is_handshaking(&self) -> bool {
        self.flags.contains("handshake") || self.flags.contains("noaddr")
    }
}

fn cluster_nodes(node: &RedisServer) -> Result<Vec<NodeLine>> {
    let reply = node
        .connect(PROBE_TIMEOUT)?
        .call_ok(&["CLUSTER", "NODES"])?;
    Ok(reply
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let flags = line.split(' ').nth(2)?;
            Some(NodeLine {
                flags: flags.to_owned(),
            })
        })
        .collect())
}

/// `CLUSTER SLOTS` as `start -> (end, master port)`.
fn slot_map(node: &RedisServer) -> Result<BTreeMap<u16, (u16, u16)>> {
    let reply = node
        .connect(PROBE_TIMEOUT)?
        .call_ok(&["CLUSTER", "SLOTS"])?;
    let malformed = || TestkitError::Protocol {
        addr: node.addr(),
        detail: format!("unexpected CLUSTER SLOTS reply: {reply:?}"),
    };
    let mut map = BTreeMap::new();
    for range in reply.as_array().ok_or_else(malformed)? {
        let parts = range.as_array().ok_or_else(malformed)?;
        let int = |r: Option<&Reply>| {
            r.and_then(Reply::as_int)
                .and_then(|i| u16::try_from(i).ok())
                .ok_or_else(malformed)
        };
        let start = int(parts.first())?;
        let end = int(parts.get(1))?;
        let master = parts
            .get(2)
            .and_then(Reply::as_array)
            .ok_or_else(malformed)?;
        let port = int(master.get(1))?;
        map.insert(start, (end, port));
    }
    Ok(map)
}

/// The cluster hash slot of `key`: CRC16 (XMODEM) modulo 16384, of the hash tag if the key
/// has one (the part between the first `{` and the next `}`, when not empty).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOT_COUNT
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_matches_the_redis_cluster_spec() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOT_COUNT);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b""), 0);
    }
}
