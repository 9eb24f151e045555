//! [`Redis`]: the shared handle every fredkit crate takes.

use crate::config::RedisConfig;
use crate::fred_config::{builder, Purpose};
use crate::health::Health;
use crate::sentinel_follow::SwitchWatch;
use fred::clients::{Client, Pool, SubscriberClient};
use fred::interfaces::ClientLike;
use fred::types::ConnectHandle;
use fredkit_core::{Error, Result};
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A cheap-to-clone handle over a small pool (default: one) of multiplexed
/// fred connections, configured with fredkit's defaults: a command timeout, a
/// reconnect policy that never gives up, dead-connection detection (a `PING`
/// per connection every 500 ms; a connection silent for max(3 × command
/// timeout, 3 s) is reconnected, which also follows a failover away from a
/// silent primary), and
/// reconnect-and-retry on `LOADING`, `READONLY`, `CLUSTERDOWN`, `MASTERDOWN`.
///
/// Every fredkit primitive takes a `Redis`. Raw fred stays available through
/// [`Redis::client`] for anything fredkit does not wrap.
///
/// ```no_run
/// use fred::prelude::*;
/// use fredkit_conn::{Redis, RedisConfig};
///
/// # async fn run() -> Result<(), fredkit_core::Error> {
/// let redis = Redis::connect(RedisConfig::from_url("redis://127.0.0.1:6379")?).await?;
/// redis.client().set::<(), _, _>("greeting", "hello", None, None, false).await?;
/// let v: Option<String> = redis.client().get("greeting").await?;
/// println!("{v:?} {}", redis.health().await);
/// redis.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// # Failure and cancellation
/// Commands on the shared pool fail with [`ErrorKind::Timeout`](fredkit_core::ErrorKind::Timeout)
/// after the command timeout whatever happens to the connection; while the
/// connection is down they are queued and retried (up to 3 attempts) once it
/// is back. Dropping a command's future abandons the wait; the command may
/// still run on the server.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    pool: Pool,
    tasks: Mutex<Vec<ConnectHandle>>,
    /// The dead-connection probe of the pool (see `watchdog`).
    watchdog: tokio::task::AbortHandle,
    /// The last connection error of each connection (see `conn_error`).
    conn_errors: crate::conn_error::ConnErrors,
    /// On a Sentinel topology: the `+switch-master` listener that moves every
    /// connection of this handle to a newly announced primary.
    switches: Option<Mutex<SwitchWatch>>,
}

impl Drop for Inner {
    /// The last handle is gone: stop reconnecting. fred's connection task
    /// holds its own reference to the client, so without this a dropped
    /// `Redis` would keep (re)connecting for ever.
    fn drop(&mut self) {
        self.watchdog.abort();
        self.stop_following();
        let tasks: Vec<ConnectHandle> = match self.tasks.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        if tasks.is_empty() {
            return;
        }
        let pool = self.pool.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), pool.quit()).await;
                    for t in tasks {
                        t.abort();
                    }
                });
            }
            Err(_) => tasks.iter().for_each(|t| t.abort()),
        }
    }
}

impl Inner {
    fn stop_following(&self) {
        if let Some(switches) = &self.switches {
            match switches.lock() {
                Ok(mut s) => s.stop(),
                Err(poisoned) => poisoned.into_inner().stop(),
            }
        }
    }

    /// A task moving `client` to each primary the sentinels announce, if
    /// this handle follows sentinels.
    fn follower<C: ClientLike + 'static>(&self, client: &C) -> Option<tokio::task::AbortHandle> {
        let switches = self.switches.as_ref()?;
        let announced = match switches.lock() {
            Ok(s) => s.subscribe(),
            Err(poisoned) => poisoned.into_inner().subscribe(),
        };
        let wait = self
            .config
            .connect_timeout
            .saturating_add(Duration::from_secs(1));
        Some(
            tokio::spawn(crate::sentinel_follow::follow(
                client.clone(),
                announced,
                wait,
            ))
            .abort_handle(),
        )
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("config", &self.inner.config)
            .field("connected", &self.inner.pool.is_connected())
            .finish()
    }
}

impl Redis {
    /// Creates the handle and starts connecting.
    ///
    /// With lazy connect (the default) this returns at once; commands sent
    /// before the connection is up wait for it (up to the command timeout).
    /// With `lazy(false)` it waits until connected, at most the connect timeout.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) if fred rejects the
    /// configuration; with `lazy(false)`, the errors of
    /// [`Redis::wait_connected`] (credentials rejected, connection refused,
    /// no connection within the connect timeout).
    pub async fn connect(config: RedisConfig) -> Result<Redis> {
        let b = builder(&config, Purpose::Shared)?;
        let pool = b.build_pool(config.pool_size)?;
        let conn_errors = crate::conn_error::ConnErrors::watch(&pool, &config);
        let handle = pool.connect();
        let watchdog = tokio::spawn(crate::watchdog::run(
            pool.clone(),
            crate::liveness::unresponsive_after(config.command_timeout),
            config
                .connect_timeout
                .saturating_add(Duration::from_secs(1)),
        ))
        .abort_handle();
        let switches = SwitchWatch::start(&config, &pool)?.map(Mutex::new);
        let redis = Redis {
            inner: Arc::new(Inner {
                config,
                pool,
                tasks: Mutex::new(vec![handle]),
                watchdog,
                conn_errors,
                switches,
            }),
        };
        tracing::debug!(config = %redis.inner.config, "fredkit: connecting");
        if !redis.inner.config.lazy {
            redis.wait_connected().await?;
        }
        Ok(redis)
    }

    /// [`RedisConfig::from_url`] then [`Redis::connect`].
    ///
    /// # Errors
    /// As those two.
    pub async fn from_url(url: &str) -> Result<Redis> {
        Self::connect(RedisConfig::from_url(url)?).await
    }

    /// [`RedisConfig::from_env`] (`REDIS_URL`) then [`Redis::connect`].
    ///
    /// # Errors
    /// As those two.
    pub async fn from_env() -> Result<Redis> {
        Self::connect(RedisConfig::from_env()?).await
    }

    /// Waits until every connection of the pool is up, at most the connect timeout.
    ///
    /// # Errors
    /// Each names the configuration with the password redacted:
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) as soon as the
    /// server rejects the credentials (`WRONGPASS`, `NOAUTH`), naming the
    /// user; otherwise [`ErrorKind::Timeout`](fredkit_core::ErrorKind::Timeout)
    /// when the connect timeout passes, saying why the last attempt failed
    /// if one did (e.g. "connection refused by redis://...").
    pub async fn wait_connected(&self) -> Result<()> {
        crate::conn_error::wait_connected(
            &self.inner.pool,
            &self.inner.config,
            &self.inner.conn_errors,
        )
        .await
    }

    /// The fred client for the next command (round-robin over the pool).
    ///
    /// Use it for anything fredkit does not wrap. Never run blocking commands
    /// (`BLPOP`, `XREADGROUP BLOCK`, `WAIT`...) on it: they stall every other
    /// command on the connection. Use [`Redis::dedicated`].
    pub fn client(&self) -> &Client {
        self.inner.pool.next()
    }

    /// The whole fred pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn conn_errors(&self) -> &crate::conn_error::ConnErrors {
        &self.inner.conn_errors
    }

    /// The configuration this handle was made from.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// A new connection of its own, for blocking commands. It has the same
    /// configuration (command timeout included: pass a longer per-command
    /// timeout with fred's `with_options` for long blocks) but no dead-connection
    /// watchdog, since long silences are normal for blocking commands (a probe
    /// would queue behind them). If a blocking command times out well past its
    /// own block time, the connection is silent: call fred's
    /// `force_reconnection()` on it. It starts connecting at once (lazily);
    /// close it with [`Dedicated::close`] (or it closes in the background
    /// when dropped).
    ///
    /// # Errors
    /// A config error if fred rejects the configuration.
    pub fn dedicated(&self) -> Result<Dedicated<Client>> {
        let b = builder(&self.inner.config, Purpose::Dedicated)?;
        let client = b.build()?;
        let handle = client.connect();
        let follower = self.inner.follower(&client);
        Ok(Dedicated::new(client, handle, follower, &self.inner.config))
    }

    /// A new subscriber connection (for pub/sub). fredkit-pubsub builds on it;
    /// call `manage_subscriptions()` on it yourself if you use it raw, so it
    /// resubscribes after a reconnect. Close it with [`Dedicated::close`] (or
    /// it closes in the background when dropped).
    ///
    /// # Errors
    /// A config error if fred rejects the configuration.
    pub fn subscriber(&self) -> Result<Dedicated<SubscriberClient>> {
        let b = builder(&self.inner.config, Purpose::Subscriber)?;
        let client = b.build_subscriber_client()?;
        let handle = client.connect();
        let follower = self.inner.follower(&client);
        Ok(Dedicated::new(client, handle, follower, &self.inner.config))
    }

    /// Reachability, latency, topology and server version. Costs one PING and
    /// one `INFO server` (two round trips); never fails and never takes longer
    /// than about twice the command timeout.
    pub async fn health(&self) -> Health {
        crate::health::probe(self).await
    }

    /// Closes what this handle owns, for it and every clone of it:
    ///
    /// - the pool's connections: `QUIT` on each once the commands written
    ///   before it are answered (waited for at most twice the command
    ///   timeout), then fred's connection tasks (at most 1 s each, aborted
    ///   after): no reconnection follows;
    /// - its background tasks: the `PING` watchdog, the connection-error
    ///   listeners and, on a Sentinel topology, the `+switch-master`
    ///   listener with its connection to the sentinels.
    ///
    /// It does not close connections made by [`Redis::dedicated`] and
    /// [`Redis::subscriber`] (close each with [`Dedicated::close`]), nor what
    /// fredkit primitives built on this handle own (their subscribers,
    /// dedicated connections, tasks): close those with the primitive's own
    /// `close()` (fredkit-pubsub's `Subscriber::close`, `Cache::close`,
    /// `LockManager::close`, `Revocations::close`, `Worker::close`...) first,
    /// then this handle. Each also closes when dropped, but in the
    /// background: a process that exits or a server that goes away right
    /// after may then log fred's "Connection reset by peer" warnings.
    ///
    /// Commands sent afterwards fail at once (fred: the client is closed);
    /// none waits for a reconnection. Calling it again is harmless.
    /// Dropping the last clone without calling it closes the same things in
    /// the background.
    ///
    /// # Errors
    /// A timeout when `QUIT` was not answered in time, or fred's error when
    /// the pool could not be closed cleanly; it is closed anyway.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.watchdog.abort();
        self.inner.conn_errors.stop();
        self.inner.stop_following();
        let quit = tokio::time::timeout(
            self.inner.config.command_timeout.saturating_mul(2),
            self.inner.pool.quit(),
        )
        .await;
        let tasks: Vec<ConnectHandle> = match self.inner.tasks.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        match quit {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::timeout(
                "QUIT was not answered; connections closed anyway",
            )),
        }
    }
}

/// A connection of its own (from [`Redis::dedicated`] or [`Redis::subscriber`]).
/// Derefs to the fred client. [`close`](Self::close) sends `QUIT` and waits
/// for the connection's task to end; when dropped unclosed it sends `QUIT`
/// in the background and stops reconnecting.
pub struct Dedicated<C: ClientLike + 'static> {
    client: C,
    /// fred's connection task; `None` once closed (or being closed).
    handle: tokio::sync::Mutex<Option<ConnectHandle>>,
    /// On a Sentinel topology: moves this connection to a newly announced primary.
    follower: Mutex<Option<tokio::task::AbortHandle>>,
    /// How long `close` waits for `QUIT` (twice the command timeout, at
    /// least 2 s).
    close_limit: Duration,
}

impl<C: ClientLike + 'static> Dedicated<C> {
    fn new(
        client: C,
        handle: ConnectHandle,
        follower: Option<tokio::task::AbortHandle>,
        config: &RedisConfig,
    ) -> Self {
        Dedicated {
            client,
            handle: tokio::sync::Mutex::new(Some(handle)),
            follower: Mutex::new(follower),
            close_limit: config
                .command_timeout
                .saturating_mul(2)
                .max(Duration::from_secs(2)),
        }
    }

    /// Closes this connection: stops following sentinels (if it did), sends
    /// `QUIT` once the commands written before it are answered (a blocking
    /// command in flight is waited for; at most twice the command timeout,
    /// at least 2 s), then waits for fred's connection task to end (at most
    /// 1 s more, aborted after). No reconnection follows, nothing is left
    /// running, and a server that goes away afterwards makes fred log
    /// nothing. Commands sent afterwards fail at once.
    ///
    /// Idempotent: a later call returns `Ok(())` at once; a concurrent one
    /// waits for the first. Dropping the future halfway lets the close finish
    /// in the background. After `close`, dropping the connection sends
    /// nothing more.
    ///
    /// ```no_run
    /// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
    /// let conn = redis.dedicated()?;
    /// // ... blocking commands on `conn` ...
    /// conn.close().await?;
    /// redis.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](fredkit_core::ErrorKind::Timeout) when `QUIT`
    /// was not answered in time, or fred's error when the connection could
    /// not be closed cleanly (e.g. the server was unreachable); it is closed
    /// anyway.
    pub async fn close(&self) -> Result<()> {
        let mut slot = self.handle.lock().await;
        let Some(handle) = slot.take() else {
            return Ok(());
        };
        if let Some(f) = take_follower(&self.follower) {
            f.abort();
        }
        let client = self.client.clone();
        let limit = self.close_limit;
        // In a task of its own, so a dropped `close` future still finishes.
        let closing = tokio::spawn(async move {
            let quit = tokio::time::timeout(limit, client.quit()).await;
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
            match quit {
                Ok(r) => r.map_err(Error::from),
                Err(_) => Err(Error::timeout(format!(
                    "QUIT on a dedicated connection was not answered within {limit:?}; closed anyway"
                ))),
            }
        });
        let result = closing.await;
        drop(slot);
        match result {
            Ok(r) => r,
            Err(e) => Err(Error::connection(format!(
                "closing a dedicated connection did not finish: {e}"
            ))),
        }
    }

    /// Waits until this connection is up, at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`](fredkit_core::ErrorKind::Timeout) when it is not up in time.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let start = tokio::time::Instant::now();
        while !self.client.is_connected() {
            let remaining = timeout.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(Error::timeout(format!(
                    "dedicated connection not up within {timeout:?}"
                )));
            }
            let _ = tokio::time::timeout(remaining, self.client.wait_for_connect()).await;
            if !self.client.is_connected() {
                tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
            }
        }
        Ok(())
    }

    /// The fred client.
    pub fn client(&self) -> &C {
        &self.client
    }
}

impl<C: ClientLike + 'static> Deref for Dedicated<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.client
    }
}

impl<C: ClientLike + 'static> fmt::Debug for Dedicated<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedicated")
            .field("id", &self.client.id())
            .field("connected", &self.client.is_connected())
            .finish()
    }
}

fn take_follower(
    follower: &Mutex<Option<tokio::task::AbortHandle>>,
) -> Option<tokio::task::AbortHandle> {
    match follower.lock() {
        Ok(mut f) => f.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

impl<C: ClientLike + 'static> Drop for Dedicated<C> {
    fn drop(&mut self) {
        if let Some(f) = take_follower(&self.follower) {
            f.abort();
        }
        // Closed already (or a close is finishing in the background): a
        // second QUIT would only make fred warn.
        let Some(handle) = self.handle.get_mut().take() else {
            return;
        };
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.quit()).await;
                handle.abort();
            });
        } else {
            handle.abort();
        }
    }
}
