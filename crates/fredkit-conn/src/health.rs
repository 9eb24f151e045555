//! [`Health`]: what a readiness probe or a status page wants to know.

use crate::redis::Redis;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::InfoKind;
use fredkit_core::ErrorKind;
use std::fmt;
use std::time::{Duration, Instant};

/// The result of [`Redis::health`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Whether a PING was answered within the command timeout.
    pub reachable: bool,
    /// How long the PING took, when it was answered.
    pub latency: Option<Duration>,
    /// `"standalone"`, `"cluster"` or `"sentinel"`.
    pub topology: &'static str,
    /// The servers the client is connected to (cluster: the primaries it knows;
    /// sentinel: the current primary).
    pub nodes: Vec<String>,
    /// `redis_version` from `INFO server`, when reachable.
    pub server_version: Option<String>,
    /// Why the probe failed, when it did (no secrets). When the connection
    /// is down this is the reason fred could not connect, e.g. "the server
    /// rejected the credentials for user 'app' at redis://app:***@host:6379
    /// (WRONGPASS ...): check ..." or "connection refused by ...".
    pub error: Option<String>,
    /// The kind of that error: [`ErrorKind::Config`] when the server
    /// rejected the credentials (retrying will not help);
    /// [`ErrorKind::Timeout`] when the PING was not answered in time (the
    /// message then names the last connection error, if any).
    pub error_kind: Option<ErrorKind>,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reachable {
            write!(f, "reachable")?;
        } else {
            write!(f, "UNREACHABLE")?;
        }
        if let Some(l) = self.latency {
            write!(f, ", latency {:.2} ms", l.as_secs_f64() * 1e3)?;
        }
        write!(f, ", {}", self.topology)?;
        if !self.nodes.is_empty() {
            write!(f, " [{}]", self.nodes.join(", "))?;
        }
        if let Some(v) = &self.server_version {
            write!(f, ", redis {v}")?;
        }
        if let Some(e) = &self.error {
            write!(f, ", error: {e}")?;
        }
        Ok(())
    }
}

pub(crate) async fn probe(redis: &Redis) -> Health {
    let client = redis.client();
    let topology = redis.config().topology().kind();
    let timeout = redis.config().command_timeout();
    let started = Instant::now();
    let ping = tokio::time::timeout(timeout, client.ping::<String>(None)).await;
    let (reachable, latency, error) = match ping {
        Ok(Ok(_)) => (true, Some(started.elapsed()), None),
        // A PING queued while fred cannot connect ends as a timeout:
        // `diagnose` says why (credentials rejected, connection refused).
        Ok(Err(e)) => (false, None, Some(redis.diagnose(e))),
        Err(_) => (
            false,
            None,
            Some(redis.diagnose(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("PING not answered within {timeout:?}"),
            ))),
        ),
    };
    let mut error_kind = error.as_ref().map(fredkit_core::Error::kind);
    let mut error = error.map(|e| e.to_string());
    let mut server_version = None;
    if reachable {
        match tokio::time::timeout(timeout, client.info::<String>(Some(InfoKind::Server))).await {
            Ok(Ok(info)) => {
                server_version = info
                    .lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))
                    .map(|v| v.trim().to_string());
            }
            Ok(Err(e)) => {
                let e = fredkit_core::Error::from(e);
                error_kind = Some(e.kind());
                error = Some(e.to_string());
            }
            Err(_) => {
                error_kind = Some(ErrorKind::Timeout);
                error = Some(format!("INFO not answered within {timeout:?}"));
            }
        }
    }
    let mut nodes: Vec<String> = if client.is_clustered() {
        client
            .cached_cluster_state()
            .map(|state| {
                state
                    .unique_primary_nodes()
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        client
            .active_connections()
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    nodes.sort();
    nodes.dedup();
    Health {
        reachable,
        latency,
        topology,
        nodes,
        server_version,
        error,
        error_kind,
    }
}
