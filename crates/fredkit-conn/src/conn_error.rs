//! Why the connection is down: the last connection error of each connection
//! of a [`Redis`] handle, turned into an error that says what to fix.
//!
//! fred keeps reconnecting after a failed attempt (fredkit's reconnect policy
//! never gives up), so a command sent meanwhile waits in fred's queue and
//! ends as a plain `Timeout`; the reason (`WRONGPASS`, `NOAUTH`, connection
//! refused) only goes to fred's error stream. [`ConnErrors`] listens to that
//! stream for every connection of the pool and keeps the last failure of
//! each until the connection is up again; [`Redis::wait_connected`],
//! [`Redis::diagnose`] and [`Redis::health`] report it.

use crate::config::RedisConfig;
use crate::redis::Redis;
use fred::clients::Pool;
use fred::error::ErrorKind as FredKind;
use fred::interfaces::{ClientLike, EventInterface};
use fredkit_core::{Error, ErrorKind};
use std::time::Duration;
use tokio::sync::{broadcast::error::RecvError, watch};
use tokio::time::Instant;

/// One failed connection attempt (or a connection that broke).
#[derive(Clone, Debug)]
struct Failure {
    kind: FredKind,
    details: String,
    at: Instant,
}

impl Failure {
    fn is_auth(&self) -> bool {
        self.kind == FredKind::Auth
            || self.details.starts_with("WRONGPASS")
            || self.details.starts_with("NOAUTH")
    }
}

/// The last failure of each connection of a pool, cleared when that
/// connection is up again. Its listener tasks stop when it is dropped.
pub(crate) struct ConnErrors {
    slots: watch::Sender<Vec<Option<Failure>>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for ConnErrors {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

impl ConnErrors {
    /// Starts listening to every client of `pool`. Call it before
    /// `pool.connect()` so the first attempt's failure is seen.
    ///
    /// Logs each connection's failed attempt at WARN, explained as
    /// [`Redis::last_connection_error`] explains it (redacted URL, cause,
    /// what to check), once per distinct cause: a lazily connected handle
    /// on a wrong URL says why in the log, not only as command timeouts.
    pub(crate) fn watch(pool: &Pool, config: &RedisConfig) -> ConnErrors {
        let clients = pool.clients();
        let (slots, _) = watch::channel(vec![None; clients.len()]);
        let tasks = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let mut errors = client.error_rx();
                let mut reconnects = client.reconnect_rx();
                let slots = slots.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    // The last cause logged, so a retry loop logs it once.
                    let mut logged: Option<String> = None;
                    loop {
                        tokio::select! {
                            e = errors.recv() => match e {
                                Ok((error, server)) => {
                                    // A failed connection attempt comes without a server
                                    // (a connection that broke names its server; fred logs those).
                                    let attempt = server.is_none() && *error.kind() != FredKind::Canceled;
                                    let failure = Failure {
                                        kind: error.kind().clone(),
                                        details: error.details().to_string(),
                                        at: Instant::now(),
                                    };
                                    if attempt {
                                        let explained = explain(&failure, &config).to_string();
                                        if logged.as_deref() != Some(explained.as_str()) {
                                            tracing::warn!(error = %explained, "fredkit: cannot connect to Redis; fred keeps retrying");
                                            logged = Some(explained);
                                        }
                                    }
                                    slots.send_modify(|s| {
                                        if let Some(slot) = s.get_mut(i) {
                                            *slot = Some(failure);
                                        }
                                    });
                                }
                                Err(RecvError::Lagged(_)) => {}
                                Err(RecvError::Closed) => return,
                            },
                            r = reconnects.recv() => match r {
                                Ok(_) => {
                                    logged = None;
                                    slots.send_if_modified(|s| {
                                        s.get_mut(i).and_then(Option::take).is_some()
                                    });
                                }
                                Err(RecvError::Lagged(_)) => {}
                                Err(RecvError::Closed) => return,
                            },
                        }
                    }
                })
                .abort_handle()
            })
            .collect();
        ConnErrors { slots, tasks }
    }

    /// Stops the listener tasks (on [`Redis::shutdown`]).
    pub(crate) fn stop(&self) {
        self.tasks.iter().for_each(tokio::task::AbortHandle::abort);
    }

    /// The most recent failure of a connection that is not up again.
    fn last(&self) -> Option<Failure> {
        self.slots
            .borrow()
            .iter()
            .flatten()
            .max_by_key(|f| f.at)
            .cloned()
    }

    /// The most recent credentials failure, if any connection has one.
    fn auth_failure(&self) -> Option<Failure> {
        self.slots
            .borrow()
            .iter()
            .flatten()
            .filter(|f| f.is_auth())
            .max_by_key(|f| f.at)
            .cloned()
    }
}

/// How a rejected-credentials message starts.
const REJECTED: &str = "the server rejected the credentials";

/// The error that explains `failure`, naming the user and the redacted URL.
fn explain(failure: &Failure, config: &RedisConfig) -> Error {
    let user = config.username().unwrap_or("default");
    let sentinel = if config.topology().kind() == "sentinel" {
        " (on a sentinel topology, also check the sentinel credentials: sentinelUsername / sentinelPassword)"
    } else {
        ""
    };
    if failure.is_auth() {
        let fix = if !config.has_password() {
            "no password is configured but the server requires one: put it in the URL \
             (redis://:PASSWORD@host or redis://USER:PASSWORD@host) or set it with \
             RedisConfigBuilder::password"
        } else {
            "check the user name and password, and that the ACL user exists and is enabled \
             (ACL LIST on the server)"
        };
        return Error::config(format!(
            "{REJECTED} for user '{user}' at {config} ({}): {fix}{sentinel}",
            failure.details
        ));
    }
    // A certificate the client rejected or a client certificate the server wanted
    // (fredkit-conn's tls.rs names them): a config error, retrying does not help.
    if let Some(tls) = crate::tls::explain(&failure.details, config) {
        return tls;
    }
    let cause = os_cause(&failure.details);
    let lower = cause.to_ascii_lowercase();
    if lower.contains("refused") {
        return Error::connection(format!(
            "connection refused by {config}: check that the server is running and listens on that host and port"
        ));
    }
    if is_dns(&lower) {
        return Error::connection(format!(
            "cannot resolve the host name {} of {config} ({cause}): check the host name in the URL \
             (REDIS_URL) and this machine's DNS resolver and /etc/hosts",
            host_names(config)
        ));
    }
    if failure.kind.to_str().contains("TLS")
        || lower.contains("tls")
        || lower.contains("certificate")
    {
        return Error::connection(format!(
            "the TLS handshake with {config} failed ({cause}): check that the port serves TLS \
             (rediss:// needs a TLS port, redis:// a plain one), that the certificate names \
             the host and is signed by an authority this machine trusts, and the clock"
        ));
    }
    if lower.contains("unreachable") || lower.contains("no route to host") {
        return Error::connection(format!(
            "cannot reach {config} ({cause}): check the host in the URL, this machine's network \
             and the firewalls between it and the server"
        ));
    }
    if lower.contains("reset by peer") || lower.contains("broken pipe") {
        return Error::connection(format!(
            "{config} closed the connection ({cause}): check that the port is a Redis server \
             (a TLS-only port needs rediss://), and its maxclients and protected-mode settings"
        ));
    }
    match failure.kind {
        FredKind::Timeout => Error::timeout(format!(
            "connecting to {config} timed out ({cause}): check the host and port, that no \
             firewall drops the packets, or raise the connect timeout"
        )),
        _ => Error::connection(format!(
            "cannot connect to {config}: {cause} ({})",
            failure.kind.to_str()
        )),
    }
}

/// The operating system's words from a fred error's details: fred keeps the
/// `Debug` form of an `io::Error` (`Custom { kind: .., error: "..." }`,
/// `Os { code: 111, kind: .., message: "..." }`); the quoted text is the cause.
fn os_cause(details: &str) -> String {
    for marker in ["error: \"", "message: \""] {
        if let Some(start) = details.find(marker) {
            let rest = &details[start.saturating_add(marker.len())..];
            if let Some(end) = rest.find('"') {
                return rest[..end].to_string();
            }
        }
    }
    details.to_string()
}

/// Whether a cause is a failed host name lookup (getaddrinfo's messages).
fn is_dns(lower: &str) -> bool {
    [
        "failed to lookup address",
        "name or service not known",
        "temporary failure in name resolution",
        "no address associated",
        "nodename nor servname",
        "no such host",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

/// The host names of the URL, quoted: `'a'` or `'a', 'b'`.
fn host_names(config: &RedisConfig) -> String {
    let nodes: Vec<&crate::config::Node> = match config.topology() {
        crate::config::Topology::Standalone(n) => vec![n],
        crate::config::Topology::Cluster(nodes) => nodes.iter().collect(),
        crate::config::Topology::Sentinel { sentinels, .. } => sentinels.iter().collect(),
    };
    let mut hosts: Vec<String> = Vec::new();
    for n in nodes {
        let quoted = format!("'{}'", n.host);
        if !hosts.contains(&quoted) {
            hosts.push(quoted);
        }
    }
    hosts.join(", ")
}

/// Waits until every connection of `pool` is up, at most `limit`.
///
/// Returns at once, with a config error, when the server rejects the
/// credentials; at the deadline, with a timeout whose message carries the
/// last connection error when there is one (connection refused, ...).
pub(crate) async fn wait_connected(
    pool: &Pool,
    config: &RedisConfig,
    errors: &ConnErrors,
) -> fredkit_core::Result<()> {
    if pool.is_connected() {
        return Ok(());
    }
    let limit = config.connect_timeout();
    let start = Instant::now();
    let mut changes = errors.slots.subscribe();
    loop {
        if pool.is_connected() {
            return Ok(());
        }
        if let Some(failure) = errors.auth_failure() {
            return Err(explain(&failure, config));
        }
        if let Some(tls) = errors
            .last()
            .and_then(|f| crate::tls::explain(&f.details, config))
        {
            return Err(tls);
        }
        let remaining = limit.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            break;
        }
        // A failed attempt does not resolve wait_for_connect (fred keeps
        // reconnecting); the error stream does. Poll again after a short
        // while in any case, in case a change raced the subscription.
        tokio::select! {
            r = pool.wait_for_connect() => {
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
                }
            }
            _ = changes.changed() => {}
            _ = tokio::time::sleep(remaining.min(Duration::from_millis(250))) => {}
        }
    }
    let mut message =
        format!("could not connect to {config} within the connect timeout of {limit:?}");
    if let Some(failure) = errors.last() {
        match explain(&failure, config) {
            cause @ Error::Config(_) => return Err(cause),
            cause => message = format!("{message}; last attempt: {cause}"),
        }
    }
    Err(Error::timeout(message))
}

impl Redis {
    /// Why the connection is down, if it is: the last error of a connection
    /// of this handle that is not up again — the server rejected the
    /// credentials ([`ErrorKind::Config`], naming the user and the URL with
    /// the password redacted, saying what to check), refused the connection
    /// or could not be reached ([`ErrorKind::Connection`]), or connecting
    /// timed out ([`ErrorKind::Timeout`]). `None` while every connection is
    /// up, or before the first attempt failed. No round trip.
    pub fn last_connection_error(&self) -> Option<Error> {
        self.conn_errors()
            .last()
            .map(|failure| explain(&failure, self.config()))
    }

    /// Converts the error of a command sent on this handle — a fred error,
    /// or one already converted to a fredkit [`Error`] (by `?` or by a
    /// fredkit primitive) — into a fredkit [`Error`] that says why when the
    /// command failed because the connection is down.
    ///
    /// A command sent while fred cannot connect waits in fred's queue and
    /// fails with a plain timeout; this turns such a timeout into the reason:
    /// a [`ErrorKind::Config`] error when the server rejected the credentials
    /// (`WRONGPASS`, `NOAUTH`: retrying will not help); otherwise it stays a
    /// timeout, and its message names the last connection error
    /// ("connection refused by redis://...").
    /// A `WRONGPASS`/`NOAUTH` reply becomes the same credentials error. Any
    /// other error is returned as `fredkit_core::Error::from` converts it.
    /// No round trip.
    ///
    /// ```no_run
    /// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
    /// use fred::prelude::*;
    /// let v: Option<String> = redis
    ///     .client()
    ///     .get("k")
    ///     .await
    ///     .map_err(|e| redis.diagnose(e))?;
    /// # Ok(()) }
    /// ```
    pub fn diagnose(&self, e: impl Into<Error>) -> Error {
        let base: Error = e.into();
        if let Error::Config(message) = &base {
            // fred's Auth errors convert to "Authentication Error (WRONGPASS ...)".
            let auth = message.contains("WRONGPASS") || message.contains("NOAUTH");
            if auth && !message.starts_with(REJECTED) {
                let details = message
                    .split_once('(')
                    .map_or(message.as_str(), |(_, rest)| rest.trim_end_matches(')'))
                    .to_string();
                let failure = Failure {
                    kind: FredKind::Auth,
                    details,
                    at: Instant::now(),
                };
                return explain(&failure, self.config());
            }
            return base;
        }
        if base.kind() != ErrorKind::Timeout || self.pool().is_connected() {
            return base;
        }
        let Some(failure) = self.conn_errors().last() else {
            return base;
        };
        match (explain(&failure, self.config()), base) {
            (cause @ Error::Config(_), _) => cause,
            (cause, Error::Timeout { message, source }) => Error::Timeout {
                message: format!("{message}; the connection is down, last attempt: {cause}"),
                source,
            },
            (_, base) => base,
        }
    }
}
