//! A Sentinel deployment: one master, one replica and three sentinels.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Result, TestkitError};
use crate::resp::Reply;
use crate::server::{info_field, start_each, Kind, RedisServer, ServerOptions};
use crate::wait::poll_until;

/// The service name the sentinels monitor.
pub const SERVICE_NAME: &str = "mymaster";
/// `down-after-milliseconds`: a master silent this long is subjectively down.
const DOWN_AFTER_MS: u64 = 1000;
/// `failover-timeout`: bounds one failover's steps (and spaces automatic retries).
const FAILOVER_TIMEOUT_MS: u64 = 3000;
/// How long [`SentinelGroup::start`] waits for the sentinels to discover everything.
/// Sentinels announce themselves every 2 s, so this normally takes 2-4 s.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`SentinelGroup::failover`] waits for a replica to be eligible and for the switch.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One master, one replica and three sentinels (quorum 2) watching them under the service
/// name `"mymaster"`, with `down-after-milliseconds 1000`. All processes are killed when the
/// group is dropped.
///
/// [`SentinelGroup::master`] and [`SentinelGroup::replica`] are the roles the data nodes were
/// started with. After a failover the roles swap: ask [`SentinelGroup::current_master`], or
/// look a reported address up with [`SentinelGroup::server_by_addr`].
pub struct SentinelGroup {
    /// `[started as master, started as replica]`.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl std::fmt::Debug for SentinelGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelGroup")
            .field("servers", &self.data)
            .field("sentinels", &self.sentinels)
            .finish()
    }
}

impl SentinelGroup {
    /// Starts the master, the replica (and waits until it is in sync), then three sentinels,
    /// and waits (up to 30 s) until every sentinel reports the master and sees the replica
    /// and the two other sentinels, none flagged down (see [`SentinelGroup::wait_healthy`]).
    ///
    /// # Errors
    /// Any start error of [`RedisServer::start_with`]; [`TestkitError::Timeout`] (with the
    /// last observation) when the group does not settle.
    pub fn start() -> Result<SentinelGroup> {
        Self::start_with(ServerOptions::default())
    }

    /// Like [`SentinelGroup::start`], the data nodes started with `opts`. With
    /// [`ServerOptions::tls`] every process serves TLS only: master, replica (replicating
    /// over TLS, `tls-replication yes`) and the sentinels (same certificates and
    /// `tls-auth-clients` setting), and [`SentinelGroup::url`] is a `rediss-sentinel://` URL.
    ///
    /// # Errors
    /// As [`SentinelGroup::start`].
    pub fn start_with(opts: ServerOptions) -> Result<SentinelGroup> {
        let sentinel_opts = match opts.tls_ref() {
            Some(tls) => ServerOptions::default()
                .tls(tls.certs.clone())
                .tls_auth_clients(tls.auth_clients),
            None => ServerOptions::default(),
        };
        let data = start_each(vec![(Kind::Data, opts); 2])?;
        let master_port = data[0].port().to_string();
        data[1]
            .connect(PROBE_TIMEOUT)?
            .call_ok(&["REPLICAOF", "127.0.0.1", &master_port])?;
        // Sentinels learn replicas from the master's INFO, which they re-read only every
        // 10 s: start them once the replica is attached, so the first INFO shows it.
        poll_until("the replica to sync", FORM_TIMEOUT, &mut || {
            replication_problem(&data[1], data[0].port())
        })?;
        let conf_body = format!(
            "sentinel monitor {SERVICE_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SERVICE_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {SERVICE_NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {SERVICE_NAME} 1\n"
        );
        let sentinel = (Kind::Sentinel { conf_body }, sentinel_opts);
        let sentinels = start_each(vec![sentinel; 3])?;
        let group = SentinelGroup { data, sentinels };
        group.wait_healthy(FORM_TIMEOUT)?;
        Ok(group)
    }

    /// `"redis-sentinel://127.0.0.1:S1?node=127.0.0.1:S2&node=127.0.0.1:S3&sentinelServiceName=mymaster"`,
    /// the fred URL format. For a TLS group: `rediss-sentinel://...&ca_file=...` (the CA and
    /// the client certificate, [`crate::TlsCerts::url_options`]).
    pub fn url(&self) -> String {
        let tls = self.sentinels.first().and_then(RedisServer::tls_certs);
        let mut url = String::from(if tls.is_some() {
            "rediss-sentinel://"
        } else {
            "redis-sentinel://"
        });
        for (i, s) in self.sentinels.iter().enumerate() {
            match i {
                0 => {}
                1 => url.push_str("?node="),
                _ => url.push_str("&node="),
            }
            url.push_str(&s.addr());
        }
        url.push(if self.sentinels.len() > 1 { '&' } else { '?' });
        url.push_str("sentinelServiceName=");
        url.push_str(SERVICE_NAME);
        if let Some(certs) = tls {
            url.push('&');
            url.push_str(&certs.url_options());
        }
        url
    }

    /// The monitored service's name, `"mymaster"`.
    pub fn service_name(&self) -> &str {
        SERVICE_NAME
    }

    /// The master's address (`"127.0.0.1:PORT"`) as the first answering sentinel reports it
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Errors
    /// The last sentinel's error when none answers.
    pub fn master_addr(&self) -> Result<String> {
        let mut last = TestkitError::NotRunning {
            port: self.sentinels.first().map(RedisServer::port).unwrap_or(0),
        };
        for sentinel in self.live_sentinels() {
            match reported_master(sentinel) {
                Ok(addr) => return Ok(addr),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The data node the sentinels currently report as master.
    ///
    /// # Errors
    /// As [`SentinelGroup::master_addr`]; [`TestkitError::Protocol`] if the reported address
    /// is none of ours.
    pub fn current_master(&self) -> Result<&RedisServer> {
        let addr = self.master_addr()?;
        self.server_by_addr(&addr)
            .ok_or_else(|| TestkitError::Protocol {
                addr: addr.clone(),
                detail: "the sentinels report a master that is not in this group".into(),
            })
    }

    /// Forces a failover (`SENTINEL FAILOVER mymaster`) and waits until every running sentinel
    /// reports a new master address and that server answers `ROLE` with `master`. Returns the
    /// new master's address. If no replica is eligible yet (e.g. right after a previous
    /// failover, until the sentinels have turned the old master into a replica, which takes
    /// them 10-20 s) or a failover is in progress, it retries for up to 30 s.
    ///
    /// The old master is reconfigured as a replica by the sentinels some seconds later;
    /// [`SentinelGroup::wait_healthy`] waits for that.
    ///
    /// # Errors
    /// [`TestkitError::Server`] if the sentinel refuses for another reason;
    /// [`TestkitError::Timeout`] when the switch does not happen.
    pub fn failover(&self) -> Result<String> {
        let old = self.master_addr()?;
        poll_until(
            "a sentinel to accept SENTINEL FAILOVER",
            FAILOVER_WAIT,
            &mut || {
                let sentinel = self
                    .live_sentinels()
                    .next()
                    .ok_or(TestkitError::NotRunning {
                        port: self.sentinels[0].port(),
                    })?;
                let reply = sentinel.command(&["SENTINEL", "FAILOVER", SERVICE_NAME])?;
                match reply {
                    Reply::Error(e) if e.starts_with("NOGOODSLAVE") || e.starts_with("INPROG") => {
                        Ok(Some(e))
                    }
                    Reply::Error(message) => Err(TestkitError::Server {
                        addr: sentinel.addr(),
                        command: "SENTINEL FAILOVER".into(),
                        message,
                    }),
                    _ => Ok(None),
                }
            },
        )?;
        let mut new = String::new();
        poll_until("the failover to a new master", FAILOVER_WAIT, &mut || {
            let reports = self.reported_masters();
            let Some(first) = reports.first().cloned() else {
                return Ok(Some("no sentinel answers".into()));
            };
            if first == old || reports.iter().any(|r| *r != first) {
                return Ok(Some(format!("sentinels report {reports:?} (was {old})")));
            }
            match self.server_by_addr(&first).map(role) {
                Some(Ok(r)) if r == "master" => {
                    new = first;
                    Ok(None)
                }
                Some(other) => Ok(Some(format!("{first} has role {other:?}"))),
                None => Ok(Some(format!("{first} is not one of our servers"))),
            }
        })?;
        Ok(new)
    }

    /// Waits until every running sentinel reports the same master, that server says `ROLE`
    /// master, every other running data node replicates from it with its link up (by its own
    /// `INFO`), and every sentinel knows those replicas and the other running sentinels, none
    /// flagged down. After [`SentinelGroup::failover`] this takes about 10 s: the sentinels
    /// wait 8 s before they turn the old master into a replica.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] with the last problem seen.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        poll_until("the sentinel group to become healthy", timeout, &mut || {
            Ok(self.health_problem())
        })
    }

    fn health_problem(&self) -> Option<String> {
        let reports = self.reported_masters();
        let Some(master_addr) = reports.first().cloned() else {
            return Some("no sentinel answers".into());
        };
        if reports.iter().any(|r| *r != master_addr) {
            return Some(format!("sentinels disagree on the master: {reports:?}"));
        }
        let Some(master) = self.server_by_addr(&master_addr) else {
            return Some(format!("reported master {master_addr} is not ours"));
        };
        match role(master) {
            Ok(r) if r == "master" => {}
            other => return Some(format!("reported master {master_addr} has role {other:?}")),
        }
        let replicas: Vec<&RedisServer> = self
            .data
            .iter()
            .filter(|s| s.port() != master.port() && s.is_running() && !s.is_paused())
            .collect();
        for replica in &replicas {
            match replication_problem(replica, master.port()) {
                Ok(None) => {}
                Ok(Some(p)) => return Some(p),
                Err(e) => return Some(e.to_string()),
            }
        }
        let replica_addrs: Vec<String> = replicas.iter().map(|r| r.addr()).collect();
        let live_sentinels = self.live_sentinels().count();
        for sentinel in self.live_sentinels() {
            match sentinel_view_problem(sentinel, &replica_addrs, live_sentinels - 1) {
                Ok(None) => {}
                Ok(Some(p)) => return Some(format!("sentinel {}: {p}", sentinel.addr())),
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    }

    fn reported_masters(&self) -> Vec<String> {
        self.live_sentinels()
            .map(|s| reported_master(s).unwrap_or_else(|e| format!("error: {e}")))
            .collect()
    }

    fn live_sentinels(&self) -> impl Iterator<Item = &RedisServer> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running() && !s.is_paused())
    }

    /// The data node started as master (after a failover it may be a replica).
    pub fn master(&self) -> &RedisServer {
        &self.data[0]
    }

    /// The data node started as replica (after a failover it may be the master).
    pub fn replica(&self) -> &RedisServer {
        &self.data[1]
    }

    /// The data nodes: `[started as master, started as replica]`.
    pub fn servers(&self) -> &[RedisServer] {
        &self.data
    }

    /// Mutable access to the data nodes, to kill, restart or pause them.
    pub fn servers_mut(&mut self) -> &mut [RedisServer] {
        &mut self.data
    }

    /// The three sentinels.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// Mutable access to the sentinels.
    pub fn sentinels_mut(&mut self) -> &mut [RedisServer] {
        &mut self.sentinels
    }

    /// The data node listening on `addr` (`"127.0.0.1:PORT"`), if it is one of ours.
    pub fn server_by_addr(&self, addr: &str) -> Option<&RedisServer> {
        self.data.iter().find(|s| s.addr() == addr)
    }
}

fn reported_master(sentinel: &RedisServer) -> Result<String> {
    let reply = sentinel.connect(PROBE_TIMEOUT)?.call_ok(&[
        "SENTINEL",
        "GET-MASTER-ADDR-BY-NAME",
        SERVICE_NAME,
    ])?;
    match reply.as_array() {
        Some([ip, port]) => Ok(format!(
            "{}:{}",
            ip.as_str().unwrap_or_default(),
            port.as_str().unwrap_or_default()
        )),
        _ => Err(TestkitError::Protocol {
            addr: sentinel.addr(),
            detail: format!("unexpected GET-MASTER-ADDR-BY-NAME reply {reply:?}"),
        }),
    }
}

/// The first element of `ROLE`: `master`, `slave` or `sentinel`.
fn role(server: &RedisServer) -> Result<String> {
    let reply = server.connect(PROBE_TIMEOUT)?.call_ok(&["ROLE"])?;
    Ok(reply
        .as_array()
        .and_then(|items| items.first())
        .and_then(Reply::as_str)
        .unwrap_or_default()
        .to_owned())
}

/// `Ok(None)` when `replica` replicates from `master_port` with its link up.
fn replication_problem(replica: &RedisServer, master_port: u16) -> Result<Option<String>> {
    let info = replica
        .connect(PROBE_TIMEOUT)?
        .call_ok(&["INFO", "replication"])?;
    let info = info.as_str().unwrap_or_default();
    let ok = info_field(info, "role") == Some("slave")
        && info_field(info, "master_port") == Some(master_port.to_string().as_str())
        && info_field(info, "master_link_status") == Some("up");
    Ok((!ok).then(|| format!("{} is not in sync with port {master_port}", replica.addr())))
}

/// A RESP2 flat `[field, value, ...]` array as a map.
fn fields(reply: &Reply) -> HashMap<String, String> {
    let items = reply.as_array().unwrap_or_default();
    items
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())),
            _ => None,
        })
        .collect()
}

fn is_down(flags: &str) -> bool {
    flags.split(',').any(|f| {
        matches!(
            f,
            "s_down" | "o_down" | "disconnected" | "failover_in_progress"
        )
    })
}

/// `Ok(None)` when `sentinel` sees the master up, every address in `replicas` as a replica
/// without a down flag, and at least `others` other sentinels up.
///
/// Replicas are judged by flags, not by `master-link-status`: sentinels re-read a replica's
/// `INFO` only every 10 s, so that field lags; the replica's own `INFO` is checked instead.
fn sentinel_view_problem(
    sentinel: &RedisServer,
    replicas: &[String],
    others: usize,
) -> Result<Option<String>> {
    let mut conn = sentinel.connect(PROBE_TIMEOUT)?;
    let master = fields(&conn.call_ok(&["SENTINEL", "MASTER", SERVICE_NAME])?);
    let flags = master.get("flags").map(String::as_str).unwrap_or_default();
    if is_down(flags) {
        return Ok(Some(format!("master flags are {flags}")));
    }
    let seen = conn.call_ok(&["SENTINEL", "REPLICAS", SERVICE_NAME])?;
    let healthy: Vec<String> = seen
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(fields)
        .filter(|r| !is_down(r.get("flags").map(String::as_str).unwrap_or_default()))
        .filter_map(|r| r.get("name").cloned())
        .collect();
    if let Some(missing) = replicas.iter().find(|r| !healthy.contains(r)) {
        return Ok(Some(format!(
            "does not see replica {missing} up (sees {healthy:?})"
        )));
    }
    let peers = conn.call_ok(&["SENTINEL", "SENTINELS", SERVICE_NAME])?;
    let up = peers
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(fields)
        .filter(|s| !is_down(s.get("flags").map(String::as_str).unwrap_or_default()))
        .count();
    if up < others {
        return Ok(Some(format!(
            "sees {up} other sentinels, expected {others}"
        )));
    }
    Ok(None)
}
