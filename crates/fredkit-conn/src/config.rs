//! [`RedisConfig`]: where Redis is and how to talk to it.

use crate::duration::DurationSpec;
use crate::secret::Secret;
use fredkit_core::{Error, Result};
use std::fmt;
use std::time::Duration;

/// One `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where the data lives: one server, a cluster, or a server found through sentinels.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One server.
    Standalone(Node),
    /// A Redis Cluster; the nodes are seeds, the rest is discovered.
    Cluster(Vec<Node>),
    /// A primary found by asking sentinels; fred follows failovers.
    Sentinel {
        /// The sentinels to ask.
        sentinels: Vec<Node>,
        /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
        service_name: String,
        /// ACL user for the sentinels, if they need one.
        sentinel_username: Option<String>,
        /// Password for the sentinels, if they need one.
        sentinel_password: Option<Secret>,
    },
}

impl Topology {
    /// `"standalone"`, `"cluster"` or `"sentinel"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Standalone(_) => "standalone",
            Topology::Cluster(_) => "cluster",
            Topology::Sentinel { .. } => "sentinel",
        }
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Standalone(n) => write!(f, "Standalone({n})"),
            Topology::Cluster(nodes) => {
                f.write_str("Cluster(")?;
                for (i, n) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{n}")?;
                }
                f.write_str(")")
            }
            Topology::Sentinel {
                sentinels,
                service_name,
                sentinel_username,
                sentinel_password,
            } => f
                .debug_struct("Sentinel")
                .field(
                    "sentinels",
                    &sentinels.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                )
                .field("service_name", service_name)
                .field("sentinel_username", sentinel_username)
                .field("sentinel_password", sentinel_password)
                .finish(),
        }
    }
}

/// How to reconnect after a connection breaks: capped exponential backoff plus jitter.
///
/// The n-th delay is `min(max_delay, initial_delay * 2^n) + random(0..=jitter)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// First delay. Default 100 ms; 1 ms to 1 min. fred also waits this
    /// long (plus up to `jitter`) before the very first connection attempt.
    pub initial_delay: Duration,
    /// Cap on the delay. Default 2 s; `initial_delay` to 1 h.
    pub max_delay: Duration,
    /// Random extra delay so many clients do not reconnect in lockstep.
    /// Default 100 ms; 0 to 1 min.
    pub jitter: Duration,
    /// Give up after this many attempts in a row; `0` (the default) retries forever.
    pub max_attempts: u32,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter: Duration::from_millis(100),
            max_attempts: 0,
        }
    }
}

/// Everything fredkit needs to connect to Redis.
///
/// Build it from a URL ([`RedisConfig::from_url`]), from `REDIS_URL`
/// ([`RedisConfig::from_env`]), with [`RedisConfig::builder`], or deserialise
/// it from a config file (serde; see below). Defaults:
///
/// | setting | default | why |
/// |---|---|---|
/// | connect timeout | 5 s | an unreachable server is an error, never a hang |
/// | command timeout | 1 s | a dropped connection cannot hang a command |
/// | reconnect | forever, 100 ms doubling to 2 s, + up to 100 ms jitter | services outlive Redis restarts |
/// | lazy connect | on | start-up does not fail because Redis is late |
/// | pool size | 1 | one multiplexed connection saturates a Redis core |
///
/// Passwords are held in a [`Secret`]: `Debug` and `Display` never show them.
///
/// ```
/// use fredkit_conn::RedisConfig;
/// use std::time::Duration;
///
/// let config = RedisConfig::from_url("redis://:hunter2@cache.internal:6380/2")?;
/// assert_eq!(config.command_timeout(), Duration::from_secs(1));
/// assert!(!format!("{config:?}").contains("hunter2"));
///
/// let config = RedisConfig::builder()
///     .url("redis-cluster://10.0.0.1:7000,10.0.0.2:7000")
///     .command_timeout(Duration::from_millis(500))
///     .build()?;
/// assert_eq!(config.topology().kind(), "cluster");
/// # Ok::<(), fredkit_core::Error>(())
/// ```
///
/// ## From a config file
///
/// Deserialising takes a `url` and optional overrides; durations are strings
/// like `"500ms"`/`"5s"` or numbers of milliseconds. Unknown fields are errors.
///
/// ```
/// # use fredkit_conn::RedisConfig;
/// let config: RedisConfig = serde_json::from_str(r#"{
///     "url": "redis://redis.internal:6379",
///     "password": "from-a-secret-store",
///     "command_timeout": "250ms",
///     "reconnect_max_delay": 5000
/// }"#)?;
/// assert!(!format!("{config:?}").contains("from-a-secret-store"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "ConfigFile")]
pub struct RedisConfig {
    pub(crate) topology: Topology,
    pub(crate) tls: bool,
    pub(crate) tls_options: crate::tls::TlsOptions,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) database: Option<u8>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) reconnect: ReconnectConfig,
    pub(crate) lazy: bool,
    pub(crate) pool_size: usize,
    pub(crate) credentials: crate::credentials::ProviderSlot,
}

impl Default for RedisConfig {
    /// `redis://127.0.0.1:6379` with the defaults in the table above.
    fn default() -> Self {
        RedisConfig {
            topology: Topology::Standalone(Node {
                host: "127.0.0.1".into(),
                port: 6379,
            }),
            tls: false,
            tls_options: crate::tls::TlsOptions::default(),
            username: None,
            password: None,
            database: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(1),
            reconnect: ReconnectConfig::default(),
            lazy: true,
            pool_size: 1,
            credentials: crate::credentials::ProviderSlot::default(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("tls", &self.tls)
            .field("tls_options", &self.tls_options)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("database", &self.database)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("reconnect", &self.reconnect)
            .field("lazy", &self.lazy)
            .field("pool_size", &self.pool_size)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl fmt::Display for RedisConfig {
    /// The configuration as a URL, with the password shown as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "s" } else { "" };
        let scheme = match self.topology {
            Topology::Standalone(_) => format!("redis{s}"),
            Topology::Cluster(_) => format!("redis{s}-cluster"),
            Topology::Sentinel { .. } => format!("redis{s}-sentinel"),
        };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        let nodes = match &self.topology {
            Topology::Standalone(n) => std::slice::from_ref(n),
            Topology::Cluster(ns) => ns.as_slice(),
            Topology::Sentinel { sentinels, .. } => sentinels.as_slice(),
        };
        for (i, n) in nodes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        if let Some(db) = self.database {
            write!(f, "/{db}")?;
        }
        if let Topology::Sentinel { service_name, .. } = &self.topology {
            write!(f, "?sentinelServiceName={service_name}")?;
        }
        Ok(())
    }
}

impl RedisConfig {
    /// Parses a Redis URL. See the [module docs](crate#urls) for the syntax.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) naming the bad part
    /// (scheme, host, port, database, option); the URL in the message has its
    /// password replaced by `***`.
    pub fn from_url(url: &str) -> Result<Self> {
        let config = crate::url::parse(url)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the URL from the `REDIS_URL` environment variable.
    ///
    /// # Errors
    /// A config error if `REDIS_URL` is unset, not UTF-8, or not a valid URL.
    pub fn from_env() -> Result<Self> {
        Self::from_env_var("REDIS_URL")
    }

    /// Reads the URL from the named environment variable.
    ///
    /// # Errors
    /// A config error if the variable is unset, not UTF-8, or not a valid URL.
    pub fn from_env_var(name: &str) -> Result<Self> {
        match std::env::var(name) {
            Ok(url) => Self::from_url(&url),
            Err(std::env::VarError::NotPresent) => Err(Error::config(format!(
                "environment variable {name} is not set (expected a URL like redis://localhost:6379)"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::config(format!(
                "environment variable {name} is not valid UTF-8"
            ))),
        }
    }

    /// A builder starting from the defaults (`redis://127.0.0.1:6379`).
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder::default()
    }

    /// Where the data lives.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
    /// Whether connections use TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.tls
    }
    /// The TLS settings (roots, client certificate, server name); used only when
    /// [`tls`](Self::tls) is on.
    pub fn tls_options(&self) -> &crate::tls::TlsOptions {
        &self.tls_options
    }
    /// The ACL user name, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }
    /// Whether a password is set (the password itself is not readable here).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }
    /// The selected database, if any.
    pub fn database(&self) -> Option<u8> {
        self.database
    }
    /// How long connecting may take before it is an error.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// How long any command may take before it fails with a timeout error.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }
    /// The reconnect policy.
    pub fn reconnect(&self) -> &ReconnectConfig {
        &self.reconnect
    }
    /// Whether [`Redis::connect`](crate::Redis::connect) returns before the first connection is up.
    pub fn lazy(&self) -> bool {
        self.lazy
    }
    /// Number of multiplexed connections in the shared pool.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    fn validate(&self) -> Result<()> {
        if self.command_timeout.is_zero() {
            return Err(Error::config(
                "command_timeout must be greater than zero (without one a command can hang forever after a dropped connection)",
            ));
        }
        in_range(
            "connect_timeout",
            self.connect_timeout,
            MIN_DURATION,
            MAX_TIMEOUT,
        )?;
        in_range(
            "command_timeout",
            self.command_timeout,
            MIN_DURATION,
            MAX_TIMEOUT,
        )?;
        self.tls_options.validate(self.tls)?;
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(Error::config("pool_size must be between 1 and 256"));
        }
        in_range(
            "reconnect initial_delay",
            self.reconnect.initial_delay,
            MIN_DURATION,
            MAX_FIRST_DELAY,
        )?;
        in_range(
            "reconnect jitter",
            self.reconnect.jitter,
            Duration::ZERO,
            MAX_FIRST_DELAY,
        )?;
        in_range(
            "reconnect max_delay",
            self.reconnect.max_delay,
            MIN_DURATION,
            MAX_RECONNECT_DELAY,
        )?;
        if self.reconnect.max_delay < self.reconnect.initial_delay {
            return Err(Error::config(
                "reconnect max_delay must not be smaller than initial_delay",
            ));
        }
        match &self.topology {
            Topology::Cluster(nodes) if nodes.is_empty() => {
                Err(Error::config("a cluster needs at least one seed node"))
            }
            Topology::Sentinel { sentinels, .. } if sentinels.is_empty() => {
                Err(Error::config("sentinel topology needs at least one sentinel"))
            }
            Topology::Cluster(_) if self.database.unwrap_or(0) != 0 => {
                Err(Error::config("a cluster has only database 0"))
            }
            _ if self.tls && !cfg!(feature = "tls") => Err(Error::config(
                "rediss:// needs TLS support: enable the 'tls' feature of fredkit-conn (or fredkit)",
            )),
            _ => Ok(()),
        }
    }
}

/// The smallest timeout or reconnect delay: tokio's timers tick in
/// milliseconds, so a shorter one would silently act as 1 ms.
const MIN_DURATION: Duration = Duration::from_millis(1);

/// The largest connect or command timeout: one day (larger means "never").
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The largest reconnect `initial_delay` and `jitter`: one minute. fred
/// waits `initial_delay` plus up to `jitter` before the very first
/// connection attempt too, so these delay every start-up.
const MAX_FIRST_DELAY: Duration = Duration::from_secs(60);

/// The largest reconnect `max_delay`: one hour (a service should not stay
/// cut off from Redis longer than that after Redis is back).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(3600);

/// A config error naming `field` and the range unless `min <= value <= max`.
fn in_range(field: &str, value: Duration, min: Duration, max: Duration) -> Result<()> {
    if value < min || value > max {
        let low = if min.is_zero() {
            "0".to_string()
        } else {
            format!("{min:?}")
        };
        return Err(Error::config(format!(
            "{field} must be between {low} and {max:?}, got {value:?}"
        )));
    }
    Ok(())
}

/// Builder for [`RedisConfig`]. Every method consumes and returns the builder;
/// [`build`](Self::build) validates the whole. Settings made on the builder
/// win over the same settings in a [`url`](Self::url), whatever the order of calls.
#[must_use]
#[derive(Default)]
pub struct RedisConfigBuilder {
    url: Option<String>,
    topology: Option<Topology>,
    password: Option<Secret>,
    username: Option<String>,
    database: Option<u8>,
    connect_timeout: Option<Duration>,
    command_timeout: Option<Duration>,
    reconnect: Option<ReconnectConfig>,
    lazy: Option<bool>,
    pool_size: Option<usize>,
    tls: Option<crate::tls::TlsOptions>,
    credentials: crate::credentials::ProviderSlot,
}

impl fmt::Debug for RedisConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfigBuilder")
            .field("url", &self.url.as_deref().map(crate::url::redact))
            .field("topology", &self.topology)
            .field("password", &self.password)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn nodes<I, H>(nodes: I) -> Vec<Node>
where
    I: IntoIterator<Item = (H, u16)>,
    H: Into<String>,
{
    nodes
        .into_iter()
        .map(|(h, p)| Node {
            host: h.into(),
            port: p,
        })
        .collect()
}

impl RedisConfigBuilder {
    /// Start from a URL (topology, credentials, database, URL options).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }
    /// A standalone server at `host:port`.
    pub fn standalone(mut self, host: impl Into<String>, port: u16) -> Self {
        self.topology = Some(Topology::Standalone(Node {
            host: host.into(),
            port,
        }));
        self
    }
    /// A cluster with these seed nodes.
    pub fn cluster<I, H>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = (H, u16)>,
        H: Into<String>,
    {
        self.topology = Some(Topology::Cluster(nodes(seeds)));
        self
    }
    /// A primary found through these sentinels under `service_name`.
    pub fn sentinel<I, H>(mut self, sentinels: I, service_name: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = (H, u16)>,
        H: Into<String>,
    {
        self.topology = Some(Topology::Sentinel {
            sentinels: nodes(sentinels),
            service_name: service_name.into(),
            sentinel_username: None,
            sentinel_password: None,
        });
        self
    }
    /// The password.
    pub fn password(mut self, password: impl Into<Secret>) -> Self {
        self.password = Some(password.into());
        self
    }
    /// The ACL user name.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }
    /// Database number (standalone and sentinel only). Default: none (0).
    pub fn database(mut self, db: u8) -> Self {
        self.database = Some(db);
        self
    }
    /// Connect timeout. Default 5 s. Must be between 1 ms and 24 h
    /// (checked by `build`).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }
    /// Command timeout. Default 1 s. Must be between 1 ms and 24 h
    /// (checked by `build`).
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = Some(d);
        self
    }
    /// Reconnect policy. Default: forever, 100 ms doubling to 2 s, + 100 ms
    /// jitter. `build` checks the ranges documented on [`ReconnectConfig`].
    pub fn reconnect(mut self, r: ReconnectConfig) -> Self {
        self.reconnect = Some(r);
        self
    }
    /// Lazy connect. Default on: `Redis::connect` returns at once and the
    /// first commands wait (up to the command timeout) for the connection.
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = Some(lazy);
        self
    }
    /// Number of multiplexed connections. Default 1; 1 to 256.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = Some(n);
        self
    }
    /// Turns TLS on (as `rediss://` does) with these settings: the CA to trust, a client
    /// certificate, a server-name override (see [`TlsOptions`](crate::TlsOptions)). They
    /// replace the TLS options of the URL. Default: off unless the URL is `rediss://`, then
    /// native roots, no client certificate.
    pub fn tls(mut self, options: crate::tls::TlsOptions) -> Self {
        self.tls = Some(options);
        self
    }

    /// Asks `provider` for the user and password (or token) at every
    /// connect and reconnect instead of using fixed ones (see
    /// [`CredentialProvider`](crate::CredentialProvider)); it wins over a
    /// user and password in the URL or set here. No secret is then stored in
    /// fred's configuration.
    pub fn credentials(mut self, provider: impl crate::CredentialProvider) -> Self {
        self.credentials = crate::credentials::ProviderSlot(Some(std::sync::Arc::new(provider)));
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    /// A config error for a bad URL, a timeout or reconnect delay outside
    /// its range (naming the field and the range: timeouts 1 ms to 24 h,
    /// reconnect delays as documented on [`ReconnectConfig`]), a pool size
    /// outside 1..=256, a database on a cluster, or
    /// `rediss://` without the `tls` feature.
    pub fn build(self) -> Result<RedisConfig> {
        let mut c = match &self.url {
            Some(url) => crate::url::parse(url)?,
            None => RedisConfig::default(),
        };
        if let Some(t) = self.topology {
            c.topology = t;
        }
        if self.password.is_some() {
            c.password = self.password;
        }
        if self.username.is_some() {
            c.username = self.username;
        }
        if self.database.is_some() {
            c.database = self.database;
        }
        if let Some(d) = self.connect_timeout {
            c.connect_timeout = d;
        }
        if let Some(d) = self.command_timeout {
            c.command_timeout = d;
        }
        if let Some(r) = self.reconnect {
            c.reconnect = r;
        }
        if let Some(l) = self.lazy {
            c.lazy = l;
        }
        if let Some(n) = self.pool_size {
            c.pool_size = n;
        }
        if let Some(t) = self.tls {
            c.tls = true;
            c.tls_options = t;
        }
        if self.credentials.0.is_some() {
            c.credentials = self.credentials;
        }
        c.validate()?;
        Ok(c)
    }
}

/// The config-file form of [`RedisConfig`].
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    database: Option<u8>,
    #[serde(default)]
    connect_timeout: Option<DurationSpec>,
    #[serde(default)]
    command_timeout: Option<DurationSpec>,
    #[serde(default)]
    reconnect_initial_delay: Option<DurationSpec>,
    #[serde(default)]
    reconnect_max_delay: Option<DurationSpec>,
    #[serde(default)]
    reconnect_jitter: Option<DurationSpec>,
    #[serde(default)]
    reconnect_max_attempts: Option<u32>,
    #[serde(default)]
    lazy: Option<bool>,
    #[serde(default)]
    pool_size: Option<usize>,
    /// TLS settings; a `tls` section turns TLS on (as `rediss://` does).
    #[serde(default)]
    tls: Option<crate::tls::TlsFile>,
}

impl TryFrom<ConfigFile> for RedisConfig {
    type Error = String;

    fn try_from(f: ConfigFile) -> std::result::Result<Self, String> {
        let mut c = crate::url::parse(&f.url).map_err(|e| e.to_string())?;
        if f.username.is_some() {
            c.username = f.username;
        }
        if f.password.is_some() {
            c.password = f.password;
        }
        if f.database.is_some() {
            c.database = f.database;
        }
        if let Some(d) = f.connect_timeout {
            c.connect_timeout = d.to_duration("connect_timeout")?;
        }
        if let Some(d) = f.command_timeout {
            c.command_timeout = d.to_duration("command_timeout")?;
        }
        if let Some(d) = f.reconnect_initial_delay {
            c.reconnect.initial_delay = d.to_duration("reconnect_initial_delay")?;
        }
        if let Some(d) = f.reconnect_max_delay {
            c.reconnect.max_delay = d.to_duration("reconnect_max_delay")?;
        }
        if let Some(d) = f.reconnect_jitter {
            c.reconnect.jitter = d.to_duration("reconnect_jitter")?;
        }
        if let Some(n) = f.reconnect_max_attempts {
            c.reconnect.max_attempts = n;
        }
        if let Some(l) = f.lazy {
            c.lazy = l;
        }
        if let Some(n) = f.pool_size {
            c.pool_size = n;
        }
        if let Some(t) = f.tls {
            c.tls = true;
            c.tls_options = t.apply(c.tls_options)?;
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}
