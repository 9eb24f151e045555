//! Credentials asked for at every connect: rotation without a restart, and
//! no secret stored in fred's configuration.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fred::types::config::Server;
use fredkit_core::Result;

use crate::config::Node;
use crate::secret::Secret;

/// A boxed, sendable future, as [`CredentialProvider::credentials`] returns.
pub type CredentialsFuture<'a> = Pin<Box<dyn Future<Output = Result<Credentials>> + Send + 'a>>;

/// A user name and password (or token, e.g. an ElastiCache/MemoryDB IAM
/// token) for `AUTH`/`HELLO`. `Debug` shows the user and `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The ACL user; `None` authenticates as `default`.
    pub username: Option<String>,
    /// The password or token; `None` sends no `AUTH` at all.
    pub password: Option<Secret>,
}

impl Credentials {
    /// `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials {
            username: Some(username.into()),
            password: Some(password.into()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// Supplies the credentials of every connection fredkit opens, asked anew at
/// every connect and reconnect (and, with a
/// [`refresh_interval`](Self::refresh_interval), re-sent on the live
/// connections on that schedule), so that a rotated password or an expiring
/// token needs no restart.
///
/// Give it to [`RedisConfigBuilder::credentials`](crate::RedisConfigBuilder::credentials);
/// a closure does with [`credentials_fn`]. With a provider, fred's own
/// configuration holds no secret at all: nothing reachable through the raw
/// client can print one.
///
/// Failure: an error from the provider fails that connection attempt like a
/// refused connection (logged without the secret), and the reconnect policy
/// tries again after its backoff. Cancellation: the call may be dropped when
/// the connect timeout passes.
///
/// On a Sentinel topology the sentinels listed in the configuration keep the
/// sentinel credentials of the URL (`sentinelUsername`/`sentinelPassword`);
/// the provider answers for the data nodes.
pub trait CredentialProvider: Send + Sync + 'static {
    /// The credentials for the next connection (or refresh).
    fn credentials(&self) -> CredentialsFuture<'_>;

    /// How often to re-authenticate the live connections with fresh
    /// credentials (`AUTH` on each), or `None` (the default) to ask only at
    /// connect time.
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }
}

/// A [`CredentialProvider`] from an async closure.
///
/// ```
/// use fredkit_conn::{credentials_fn, Credentials, RedisConfig};
/// use std::time::Duration;
///
/// let provider = credentials_fn(|| async {
///     // e.g. read a file a secret manager rotates, or sign an IAM token
///     Ok(Credentials::new("orders", std::env::var("REDIS_PASSWORD").unwrap_or_default()))
/// })
/// .refresh_every(Duration::from_secs(600));
/// let config = RedisConfig::builder()
///     .url("redis://redis.internal:6379")
///     .credentials(provider)
///     .build()?;
/// assert!(!format!("{config:?}").contains("REDIS_PASSWORD"));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
pub fn credentials_fn<F, Fut>(f: F) -> FnCredentials<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credentials>> + Send + 'static,
{
    FnCredentials { f, refresh: None }
}

/// The provider [`credentials_fn`] makes.
pub struct FnCredentials<F> {
    f: F,
    refresh: Option<Duration>,
}

impl<F> FnCredentials<F> {
    /// Re-authenticates the live connections every `interval` with fresh
    /// credentials (see [`CredentialProvider::refresh_interval`]).
    #[must_use]
    pub fn refresh_every(mut self, interval: Duration) -> Self {
        self.refresh = Some(interval);
        self
    }
}

impl<F> fmt::Debug for FnCredentials<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCredentials")
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl<F, Fut> CredentialProvider for FnCredentials<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credentials>> + Send + 'static,
{
    fn credentials(&self) -> CredentialsFuture<'_> {
        Box::pin((self.f)())
    }

    fn refresh_interval(&self) -> Option<Duration> {
        self.refresh
    }
}

/// The provider slot of a [`RedisConfig`](crate::RedisConfig): compared by
/// identity, printed without secrets.
#[derive(Clone, Default)]
pub(crate) struct ProviderSlot(pub(crate) Option<Arc<dyn CredentialProvider>>);

impl PartialEq for ProviderSlot {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for ProviderSlot {}

impl fmt::Debug for ProviderSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(provider)"
        } else {
            "None"
        })
    }
}

/// Where fred's connections get their credentials from when fredkit hands
/// it a provider: the user's provider, or the static user and password of
/// the configuration (kept here, as a [`Secret`], instead of in fred's
/// `Config`, whose `Debug` prints its password).
pub(crate) struct FredCredentials {
    source: Source,
    /// On a Sentinel topology: the configured sentinels and their credentials.
    sentinels: Vec<Node>,
    sentinel_credentials: Credentials,
}

enum Source {
    Static(Credentials),
    Provider(Arc<dyn CredentialProvider>),
}

impl FredCredentials {
    pub(crate) fn fixed(credentials: Credentials) -> Self {
        FredCredentials {
            source: Source::Static(credentials),
            sentinels: Vec::new(),
            sentinel_credentials: Credentials::default(),
        }
    }

    pub(crate) fn provider(provider: Arc<dyn CredentialProvider>) -> Self {
        FredCredentials {
            source: Source::Provider(provider),
            sentinels: Vec::new(),
            sentinel_credentials: Credentials::default(),
        }
    }

    pub(crate) fn with_sentinels(mut self, sentinels: Vec<Node>, credentials: Credentials) -> Self {
        self.sentinels = sentinels;
        self.sentinel_credentials = credentials;
        self
    }

    async fn fetch(&self, server: Option<&Server>) -> Result<Credentials> {
        let is_sentinel = server.is_some_and(|s| {
            self.sentinels
                .iter()
                .any(|n| n.port == s.port && *n.host == *s.host)
        });
        if is_sentinel {
            return Ok(self.sentinel_credentials.clone());
        }
        match &self.source {
            Source::Static(credentials) => Ok(credentials.clone()),
            Source::Provider(provider) => provider.credentials().await,
        }
    }
}

impl fmt::Debug for FredCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Static(c) => format!("static user {:?}, password ***", c.username),
            Source::Provider(_) => "provider".to_string(),
        };
        f.debug_struct("FredCredentials")
            .field("source", &source)
            .finish_non_exhaustive()
    }
}

type FredFetch<'a> = Pin<
    Box<
        dyn Future<
                Output = std::result::Result<(Option<String>, Option<String>), fred::error::Error>,
            > + Send
            + 'a,
    >,
>;

// `CredentialProvider` is an `async_trait`: this is its expansion, written out
// so that fredkit-conn does not depend on `async-trait` for one impl.
impl fred::types::config::CredentialProvider for FredCredentials {
    fn fetch<'life0, 'life1, 'async_trait>(
        &'life0 self,
        server: Option<&'life1 Server>,
    ) -> FredFetch<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            match FredCredentials::fetch(self, server).await {
                Ok(c) => Ok((c.username, c.password.map(|p| p.expose().to_owned()))),
                // IO, so that fred's reconnect policy tries again later.
                Err(e) => Err(fred::error::Error::new(
                    fred::error::ErrorKind::IO,
                    format!("the credential provider failed: {e}"),
                )),
            }
        })
    }

    fn refresh_interval(&self) -> Option<Duration> {
        match &self.source {
            Source::Provider(p) => p.refresh_interval(),
            Source::Static(_) => None,
        }
    }
}

/// Moves the credentials of `config` out of fred's `Config` into a
/// [`FredCredentials`] provider: the user's provider if there is one, else
/// the fixed user and password (standalone and cluster; a Sentinel topology
/// without a provider keeps fred's fixed fields, whose sentinel credentials
/// fred reads from the same place).
pub(crate) fn install(config: &crate::RedisConfig, fc: &mut fred::types::config::Config) {
    use crate::config::Topology;
    let fixed = Credentials {
        username: config.username.clone(),
        password: config.password.clone(),
    };
    let provider = match (&config.credentials.0, &config.topology) {
        (
            Some(provider),
            Topology::Sentinel {
                sentinels,
                sentinel_username,
                sentinel_password,
                ..
            },
        ) => FredCredentials::provider(provider.clone()).with_sentinels(
            sentinels.clone(),
            Credentials {
                username: sentinel_username.clone(),
                password: sentinel_password.clone(),
            },
        ),
        (Some(provider), _) => FredCredentials::provider(provider.clone()),
        (None, Topology::Sentinel { .. }) => return,
        (None, _) if fixed.password.is_none() => return,
        (None, _) => FredCredentials::fixed(fixed),
    };
    fc.username = None;
    fc.password = None;
    if let fred::types::config::ServerConfig::Sentinel {
        username, password, ..
    } = &mut fc.server
    {
        *username = None;
        *password = None;
    }
    fc.credential_provider = Some(Arc::new(provider));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::new("app", "hunter2-rotated");
        let fixed = FredCredentials::fixed(c.clone());
        for text in [format!("{c:?}"), format!("{fixed:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[tokio::test]
    async fn sentinels_get_their_own_credentials_and_data_nodes_the_provider() {
        let provider = Arc::new(credentials_fn(|| async {
            Ok(Credentials::new("data", "d"))
        }));
        let creds = FredCredentials::provider(provider).with_sentinels(
            vec![Node {
                host: "10.0.0.1".into(),
                port: 26379,
            }],
            Credentials::new("sentinel", "s"),
        );
        let sentinel = Server::new("10.0.0.1", 26379);
        let data = Server::new("10.0.0.2", 6379);
        let got = creds.fetch(Some(&sentinel)).await.unwrap();
        assert_eq!(got.username.as_deref(), Some("sentinel"));
        let got = creds.fetch(Some(&data)).await.unwrap();
        assert_eq!(got.username.as_deref(), Some("data"));
    }
}
