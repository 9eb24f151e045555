//! One lazily started, never faulted topology per test process, and key prefixes to share it.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use crate::cluster::{ClusterOptions, RedisCluster};
use crate::error::Result;
use crate::sentinel::SentinelGroup;
use crate::server::{RedisServer, ServerOptions};
use crate::tls::TlsCerts;
use std::sync::Arc;

/// The deployment shapes a test can run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topology {
    /// One standalone server.
    Standalone,
    /// A cluster of 3 masters without replicas.
    Cluster,
    /// One master, one replica and three sentinels.
    Sentinel,
}

impl Topology {
    /// Every topology, for parameterising a test over all of them.
    pub const ALL: [Topology; 3] = [Topology::Standalone, Topology::Cluster, Topology::Sentinel];
}

static STANDALONE: Mutex<Option<RedisServer>> = Mutex::new(None);
static CLUSTER: Mutex<Option<RedisCluster>> = Mutex::new(None);
static SENTINEL: Mutex<Option<SentinelGroup>> = Mutex::new(None);

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts `T` on first use and returns its URL. The lock is held while starting, so
/// concurrent tests wait for one start instead of racing; a failed start is retried by the
/// next caller.
fn url_of<T>(
    cell: &'static Mutex<Option<T>>,
    start: impl FnOnce() -> Result<T>,
    url: impl FnOnce(&T) -> String,
) -> Result<String> {
    let mut slot = lock(cell);
    if let Some(running) = slot.as_ref() {
        return Ok(url(running));
    }
    let started = start()?;
    let u = url(&started);
    *slot = Some(started);
    Ok(u)
}

/// The URL of this test process's shared deployment of `topology`, started on first use
/// (standalone: one server; cluster: 3 masters, no replicas; sentinel: the
/// [`SentinelGroup`] URL). Every call in the process gets the same URL. Tests must not fault
/// it (no kill, pause, `FLUSHALL`, `SHUTDOWN`, `CONFIG SET`) and isolate their keys with
/// [`unique_prefix`]. The first call blocks while the deployment starts (a cluster or a
/// sentinel group takes 2-3 s), also inside an async test. Statics are never dropped: the
/// orphan guardian kills these servers when the test process exits.
///
/// When the test runner hands down a deployment through [`SHARED_URL_ENV`] (`cargo xtask
/// test` does), that one is used instead and is shared by every test process of the run:
/// nothing a test does on it may depend on being alone on the server (counting clients,
/// `INFO commandstats`, `DBSIZE`, `SCRIPT FLUSH`, `CLIENT KILL TYPE ...`). Such a test starts
/// its own server.
///
/// # Errors
/// The start error of the topology (e.g. [`crate::TestkitError::ServerNotFound`]); the next
/// call tries again.
pub fn shared_url(topology: Topology) -> Result<String> {
    if let Some(url) = handed_down_url(topology) {
        return Ok(url);
    }
    match topology {
        Topology::Standalone => url_of(&STANDALONE, RedisServer::start, RedisServer::url),
        Topology::Cluster => url_of(
            &CLUSTER,
            || RedisCluster::start(ClusterOptions::default()),
            RedisCluster::url,
        ),
        Topology::Sentinel => url_of(&SENTINEL, SentinelGroup::start, SentinelGroup::url),
    }
}

/// The environment variables through which a test runner hands every test process one
/// already running shared deployment per topology (`cargo xtask test` starts them once for
/// the whole run: nextest runs each test in its own process, and a cluster per process
/// costs seconds). When the variable of a topology is set and not empty, [`shared_url`]
/// returns its value instead of starting a deployment; the rules for shared deployments
/// apply across processes then (unique prefixes, no faults, nothing server-wide).
pub const SHARED_URL_ENV: [(Topology, &str); 3] = [
    (Topology::Standalone, "FREDKIT_TESTKIT_STANDALONE_URL"),
    (Topology::Cluster, "FREDKIT_TESTKIT_CLUSTER_URL"),
    (Topology::Sentinel, "FREDKIT_TESTKIT_SENTINEL_URL"),
];

fn handed_down_url(topology: Topology) -> Option<String> {
    let (_, var) = SHARED_URL_ENV.iter().find(|(t, _)| *t == topology)?;
    std::env::var(var).ok().filter(|url| !url.trim().is_empty())
}

static TLS_CERTS: Mutex<Option<Arc<TlsCerts>>> = Mutex::new(None);
static TLS_STANDALONE: Mutex<Option<RedisServer>> = Mutex::new(None);
static TLS_CLUSTER: Mutex<Option<RedisCluster>> = Mutex::new(None);
static TLS_SENTINEL: Mutex<Option<SentinelGroup>> = Mutex::new(None);

/// The certificates of this test process's shared TLS deployments (one throwaway CA, made
/// on first use): point a client at [`TlsCerts::ca_path`], [`TlsCerts::client_cert_path`]
/// and [`TlsCerts::client_key_path`].
///
/// # Errors
/// [`crate::TestkitError::Io`] if they cannot be made; the next call tries again.
pub fn shared_tls_certs() -> Result<Arc<TlsCerts>> {
    let mut slot = lock(&TLS_CERTS);
    if let Some(certs) = slot.as_ref() {
        return Ok(certs.clone());
    }
    let certs = TlsCerts::generate()?;
    *slot = Some(certs.clone());
    Ok(certs)
}

/// The options of every shared TLS server: TLS only, client certificates required.
fn shared_tls_options() -> Result<ServerOptions> {
    Ok(ServerOptions::default()
        .tls(shared_tls_certs()?)
        .tls_auth_clients(true))
}

/// Like [`shared_url`], for this test process's shared **TLS** deployment of `topology`:
/// every process serves TLS only (`--port 0 --tls-port`), requires client certificates
/// (`tls-auth-clients yes`), and replicates (`tls-replication`), gossips (`tls-cluster`) and
/// runs its sentinels over TLS, with the certificates of [`shared_tls_certs`]. The URL is a
/// `rediss://`, `rediss-cluster://` or `rediss-sentinel://` URL whose options carry the CA
/// and the client certificate (`ca_file`, `client_cert_file`, `client_key_file`), so
/// [`connect`] takes it as is. The same rules as for [`shared_url`] apply.
///
/// # Errors
/// As [`shared_url`], and the errors of [`shared_tls_certs`].
pub fn shared_tls_url(topology: Topology) -> Result<String> {
    match topology {
        Topology::Standalone => url_of(
            &TLS_STANDALONE,
            || RedisServer::start_with(shared_tls_options()?),
            RedisServer::url,
        ),
        Topology::Cluster => url_of(
            &TLS_CLUSTER,
            || RedisCluster::start(ClusterOptions::default().server_options(shared_tls_options()?)),
            RedisCluster::url,
        ),
        Topology::Sentinel => url_of(
            &TLS_SENTINEL,
            || SentinelGroup::start_with(shared_tls_options()?),
            SentinelGroup::url,
        ),
    }
}

/// [`connect`] to the shared TLS deployment of `topology` (see [`shared_tls_url`]).
///
/// # Errors
/// A connection error if the deployment could not be started or reached.
pub async fn shared_tls_redis(topology: Topology) -> fredkit_core::Result<fredkit_conn::Redis> {
    let url =
        shared_tls_url(topology).map_err(|e| fredkit_core::Error::connection(e.to_string()))?;
    connect(&url).await
}

static ISSUED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// A key prefix that no other call in this process returns: `t:<test_name>:<8 hex digits>:`.
///
/// Every fredkit primitive accepts it as its prefix (`KeySpace::new` drops the one trailing
/// `:`), and `format!("{prefix}name")` makes a key or channel under it. In `test_name`,
/// `{`, `}`, `:`, whitespace and control characters become `_` (an empty name becomes `x`),
/// so the prefix never forms a cluster hash tag or an empty segment (add your own tag after it
/// if keys must share a slot).
pub fn unique_prefix(test_name: &str) -> String {
    let mut name: String = test_name
        .chars()
        .map(|c| {
            if matches!(c, '{' | '}' | ':') || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.is_empty() {
        name.push('x');
    }
    let mut issued = lock(&ISSUED);
    let issued = issued.get_or_insert_with(HashSet::new);
    let id = loop {
        let candidate: u32 = rand::random();
        if issued.insert(candidate) {
            break candidate;
        }
    };
    format!("t:{name}:{id:08x}:")
}

/// A ready [`fredkit_conn::Redis`] for `url`, with fredkit's defaults,
/// waited for until connected (at most the connect timeout).
///
/// # Errors
/// A config error for a bad URL, a timeout error if the server is not
/// reachable within the connect timeout.
pub async fn connect(url: &str) -> fredkit_core::Result<fredkit_conn::Redis> {
    let redis = fredkit_conn::Redis::from_url(url).await?;
    redis.wait_connected().await?;
    Ok(redis)
}

/// [`connect`] to the shared server of `topology` (see [`shared_url`]).
///
/// # Errors
/// A connection error if the server could not be started or reached.
pub async fn shared_redis(topology: Topology) -> fredkit_core::Result<fredkit_conn::Redis> {
    let url = shared_url(topology).map_err(|e| fredkit_core::Error::connection(e.to_string()))?;
    connect(&url).await
}

#[cfg(test)]
mod tests {
    use super::unique_prefix;
    use fredkit_core::KeySpace;

    /// What testkit hands out is a prefix every primitive accepts (they all
    /// build a `KeySpace` from it), whatever the test calls itself.
    #[test]
    fn unique_prefixes_are_valid_key_spaces() {
        for name in [
            "cache_hit",
            "mod::test",
            "with space",
            "{tag}",
            "",
            "tab\there",
            "a:",
        ] {
            let prefix = unique_prefix(name);
            let ks = KeySpace::new(prefix.as_str())
                .unwrap_or_else(|e| panic!("unique_prefix({name:?}) = {prefix:?}: {e}"));
            assert!(prefix.starts_with(ks.prefix()), "{prefix:?} vs {ks:?}");
            assert_eq!(ks.key(["k"]), format!("{prefix}k"));
        }
    }

    #[test]
    fn unique_prefixes_differ() {
        let a = unique_prefix("same");
        let b = unique_prefix("same");
        assert_ne!(a, b);
    }
}
