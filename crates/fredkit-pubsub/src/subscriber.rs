//! [`Subscriber`]: one subscriber connection, fanned out to any number of
//! local receivers, resubscribing after reconnects.

use crate::glob;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::options::PubSubOptions;
use crate::publisher::sharded;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface};
use fred::prelude::Options;
use fred::types::config::Server;
use fred::types::{Message as FredMessage, MessageKind, Value};
use fred::util::redis_keyslot;
use fredkit_conn::{liveness, Dedicated, Redis};
use fredkit_core::{Backoff, Codec, Error, MsgPack, Result};
use futures::Stream;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

/// One item of a [`Subscription`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Delivery<T> {
    /// A message; its payload is the decoded value or the decode error for
    /// this one message (the stream goes on).
    Message(Message<T>),
    /// This receiver fell behind and skipped `n` messages (other receivers
    /// and the connection were not slowed down). Like a gap, it means lost
    /// messages: a consumer that mirrors state must resynchronise on it too
    /// (a `Gap` can itself be among the skipped items).
    Lagged(u64),
    /// The subscriber reconnected and resubscribed, or lost messages on the
    /// way in: messages published in between are lost. Consumers that mirror
    /// state (an L1 cache) must resynchronise, e.g. flush.
    Gap,
}

/// A received message.
#[derive(Debug)]
pub struct Message<T> {
    /// The channel it was published on.
    pub channel: String,
    /// The decoded payload, or why it could not be decoded.
    pub payload: Result<T>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SubKey {
    Channel(String),
    Pattern(String),
    Shard(String),
}

#[derive(Clone, Debug)]
enum Raw {
    Message { channel: Arc<str>, payload: Bytes },
    Gap,
}

struct Entry {
    tx: broadcast::Sender<Raw>,
    refs: usize,
}

struct Shared {
    conn: Dedicated<SubscriberClient>,
    registry: Mutex<HashMap<SubKey, Entry>>,
    /// Patterns the server has confirmed (PSUBSCRIBE + barrier), which may
    /// differ from the registry while a (un)subscribe is in flight. Sizes the
    /// runs of pattern frames. Lock order: registry, then this.
    server_patterns: Mutex<std::collections::BTreeSet<String>>,
    /// Serialises SUBSCRIBE/UNSUBSCRIBE so an unsubscribe of a dropped
    /// subscription cannot undo a new subscribe to the same channel. The
    /// liveness probe holds it too while its `PING` is out, so a refused
    /// `SUBSCRIBE`'s error can only answer that subscribe's barrier `PING`
    /// (fred hands an error to the next command waiting on the connection).
    ops: Arc<tokio::sync::Mutex<()>>,
    metrics: Arc<Metrics>,
    gaps: watch::Sender<u64>,
    /// `true` once the watcher has taken in the first connection (its
    /// connection events are not gaps). Subscriptions wait for it, so any
    /// connection event after a subscription is confirmed is a gap.
    ready: watch::Sender<bool>,
    capacity: usize,
    command_timeout: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set by `Subscriber::close`: nothing is subscribed any more.
    closed: std::sync::atomic::AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map half-updated in a
    // way that matters here; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A subscriber: one subscriber connection (made lazily by
/// [`Redis::subscriber`]) shared by every [`Subscription`] it hands out.
///
/// - Each channel is subscribed once on the server however many local
///   receivers it has; the last receiver dropped unsubscribes.
/// - Each local receiver has its own buffer
///   ([`PubSubOptions::receiver_capacity`]); one that does not keep up gets
///   [`Delivery::Lagged`] and never blocks the others or the connection.
/// - After a reconnect (server restart, network cut, `CLIENT KILL`) it
///   resubscribes everything on its own, then delivers [`Delivery::Gap`] to
///   every receiver and bumps [`Subscriber::gaps`].
/// - A connection that goes **silent** without closing (a paused or dead
///   server, a half-open TCP connection, a primary failed over without
///   closing its connections) is detected by a liveness probe: every 500 ms
///   the subscriber sends one `PING` on its connection (on a cluster: to the
///   node holding its plain subscriptions, or to every node it has a
///   connection to in sharded mode). A `PING` unanswered for three command
///   timeouts (at least 3 s) while the connection still counts as up logs a
///   warning, bumps [`MetricsSnapshot::silent_reconnects`] and forces a
///   reconnection, after which everything is resubscribed and the gap
///   announced as above. Cost: one round trip per connection every 500 ms,
///   on the subscriber connection only; a failed probe never fails a
///   subscription, it only triggers the reconnection. On a cluster, a forced
///   reconnection re-reads the topology: it moves the subscriber once the
///   cluster has failed the silent node over, not before.
///
/// Pub/sub is **at-most-once**; for durable delivery use Redis Streams.
///
/// It owns its subscriber connection and three tasks (dispatch, resubscribe,
/// liveness probe); [`close`](Self::close) ends them all and `QUIT`s the
/// connection, waiting until it is gone. Dropping the last clone closes
/// the same things in the background.
///
/// ```no_run
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// use futures::StreamExt;
/// use fredkit_pubsub::{Delivery, Subscriber};
///
/// let subscriber = Subscriber::new(&redis).await?;
/// let mut orders = subscriber.subscribe::<(String, u64)>("orders").await?;
/// while let Some(item) = orders.next().await {
///     match item {
///         Delivery::Message(m) => println!("{}: {:?}", m.channel, m.payload),
///         Delivery::Lagged(n) => eprintln!("missed {n} messages"),
///         Delivery::Gap => eprintln!("reconnected: messages may have been lost"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Subscriber<C: Codec + Clone = MsgPack> {
    shared: Arc<Shared>,
    codec: C,
    sharded: bool,
}

impl<C: Codec + Clone> fmt::Debug for Subscriber<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("sharded", &self.sharded)
            .field("subscriptions", &lock(&self.shared.registry).len())
            .finish()
    }
}

impl Subscriber<MsgPack> {
    /// A subscriber with the MessagePack codec and default options.
    ///
    /// Starts opening the subscriber connection and returns at once, without
    /// waiting for Redis: start-up never needs Redis. The connection is made
    /// (and remade) in the background. A [`subscribe`](Self::subscribe)
    /// waits for the connection up to the command timeout; if Redis is still
    /// down then, it fails with a timeout: retry it.
    ///
    /// # Errors
    /// A config error if the connection cannot be built.
    pub async fn new(redis: &Redis) -> Result<Self> {
        Self::with_codec(redis, MsgPack, PubSubOptions::default()).await
    }
}

impl<C: Codec + Clone> Subscriber<C> {
    /// A subscriber with a codec and options. See [`Subscriber::new`].
    ///
    /// # Errors
    /// A config error for invalid options or if the connection cannot be built.
    pub async fn with_codec(redis: &Redis, codec: C, options: PubSubOptions) -> Result<Self> {
        options.validate()?;
        let conn = redis.subscriber()?;
        // Listen before the first connection completes so no event is missed.
        let messages = conn.message_rx();
        let reconnects = conn.reconnect_rx();
        let (gaps, _) = watch::channel(0u64);
        let (ready, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            conn,
            registry: Mutex::new(HashMap::new()),
            server_patterns: Mutex::new(std::collections::BTreeSet::new()),
            ops: Arc::new(tokio::sync::Mutex::new(())),
            metrics: Arc::new(Metrics::new("subscriber")),
            gaps,
            ready,
            capacity: options.receiver_capacity,
            command_timeout: redis.config().command_timeout(),
            tasks: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let sharded = sharded(redis, options.mode);
        let dispatcher = tokio::spawn(dispatch(Arc::downgrade(&shared), messages));
        // Not waiting for the connection here: the watcher takes in the
        // first one in the background (subscriptions wait for it), so
        // start-up never blocks on Redis.
        let watcher = tokio::spawn(watch_reconnects(Arc::downgrade(&shared), reconnects));
        let prober = tokio::spawn(probe_liveness(
            Arc::downgrade(&shared),
            sharded,
            redis
                .config()
                .connect_timeout()
                .saturating_add(Duration::from_secs(1)),
        ));
        lock(&shared.tasks).extend([dispatcher, watcher, prober]);
        Ok(Subscriber {
            shared,
            codec,
            sharded,
        })
    }

    /// Subscribes to `channel` (`SSUBSCRIBE` in sharded mode) and returns a
    /// stream of its messages decoded as `T`.
    ///
    /// Costs one round trip for the first receiver of a channel, none for
    /// further ones. The returned stream starts with messages published after
    /// this call returns.
    ///
    /// # Errors
    /// A timeout or connection error if Redis did not confirm the
    /// subscription within the command timeout (nothing stays subscribed).
    /// If the future is dropped halfway, the half-made subscription is
    /// removed and the channel unsubscribed in the background.
    pub async fn subscribe<T: DeserializeOwned + Send + 'static>(
        &self,
        channel: &str,
    ) -> Result<Subscription<T>> {
        let key = if self.sharded {
            SubKey::Shard(channel.to_string())
        } else {
            SubKey::Channel(channel.to_string())
        };
        self.subscribe_key(key).await
    }

    /// Subscribes to a glob `pattern` (`PSUBSCRIBE`; `*`, `?`, `[...]`).
    /// Same cost and errors as [`subscribe`](Self::subscribe).
    ///
    /// **Known limitation.** fred does not say which pattern a message
    /// matched, so with several *overlapping* patterns on one `Subscriber`
    /// (a message matching both), a message published while one of them is
    /// being subscribed or unsubscribed can reach the other pattern twice or
    /// not at all. Outside those moments each matching pattern gets exactly
    /// one copy. Use separate `Subscriber`s for overlapping patterns whose
    /// set changes at run time.
    ///
    /// # Errors
    /// Also a config error in sharded mode: Redis has no sharded patterns.
    pub async fn psubscribe<T: DeserializeOwned + Send + 'static>(
        &self,
        pattern: &str,
    ) -> Result<Subscription<T>> {
        if self.sharded {
            return Err(Error::config(
                "pattern subscriptions do not exist in sharded pub/sub: use Mode::Plain for patterns",
            ));
        }
        self.subscribe_key(SubKey::Pattern(pattern.to_string()))
            .await
    }

    /// Subscribes to `channel` and yields the raw payload bytes (no decoding).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_bytes(&self, channel: &str) -> Result<Subscription<Bytes>> {
        let key = if self.sharded {
            SubKey::Shard(channel.to_string())
        } else {
            SubKey::Channel(channel.to_string())
        };
        self.attach(key, Arc::new(|b: &Bytes| Ok(b.clone()))).await
    }

    /// Closes what this subscriber owns, for it and every clone: its three
    /// tasks are stopped and waited for, then its connection gets `QUIT`
    /// (once the commands written before it are answered: at most twice the
    /// command timeout, at least 2 s) and fred's connection task is waited
    /// for (see [`Dedicated::close`]). Every [`Subscription`] it handed out
    /// then ends (its stream yields `None`). Nothing is left running and no
    /// reconnection follows, so a server that goes away afterwards makes
    /// nothing log a warning. The [`Redis`] handle it was made from is not
    /// closed: close it ([`Redis::shutdown`]) after its subscribers.
    ///
    /// A (un)subscribe in flight is waited for first (at most the command
    /// timeout). Afterwards, [`subscribe`](Self::subscribe) and
    /// [`psubscribe`](Self::psubscribe) fail with
    /// [`ErrorKind::Connection`](fredkit_core::ErrorKind::Connection).
    /// Idempotent: later calls return at once; concurrent ones wait for the
    /// first. Cancellation: dropping the future halfway leaves the
    /// subscriber closed for new subscriptions; a `QUIT` already started
    /// finishes in the background, the rest closes when the last clone is
    /// dropped. Failures to `QUIT` (the server unreachable) are logged at
    /// debug level: the connection is closed anyway.
    ///
    /// ```no_run
    /// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
    /// use fredkit_pubsub::Subscriber;
    ///
    /// let subscriber = Subscriber::new(&redis).await?;
    /// let orders = subscriber.subscribe::<u64>("orders").await?;
    /// // ... at exit:
    /// subscriber.close().await;
    /// redis.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        let shared = &self.shared;
        shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // No SUBSCRIBE/UNSUBSCRIBE or resubscription in flight from here on
        // (each takes this lock and is bounded by the command timeout).
        let ops = shared.ops.lock().await;
        let tasks: Vec<JoinHandle<()>> = lock(&shared.tasks).drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Err(e) = shared.conn.close().await {
            tracing::debug!(error = %e, "fredkit.pubsub: close: QUIT failed; the connection is closed anyway");
        }
        // Ends every Subscription's stream (their senders go).
        let entries: Vec<Entry> = lock(&shared.registry).drain().map(|(_, e)| e).collect();
        lock(&shared.server_patterns).clear();
        drop(ops);
        drop(entries);
    }

    /// A watch on the number of gaps so far (reconnects after which
    /// everything was resubscribed, and messages lost inside the client).
    /// `changed().await` wakes on the next gap.
    pub fn gaps(&self) -> watch::Receiver<u64> {
        self.shared.gaps.subscribe()
    }

    /// Whether this subscriber uses `SSUBSCRIBE`.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// This subscriber's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    async fn subscribe_key<T: DeserializeOwned + Send + 'static>(
        &self,
        key: SubKey,
    ) -> Result<Subscription<T>> {
        let codec = self.codec.clone();
        self.attach(key, Arc::new(move |b: &Bytes| codec.decode::<T>(b)))
            .await
    }

    /// Registers a receiver for `key`, subscribing on the server if it is the
    /// first. The `Subscription` exists from the moment the entry does, so if
    /// this future is dropped halfway or the subscribe fails, dropping it
    /// removes the entry and unsubscribes in the background.
    async fn attach<T>(&self, key: SubKey, decode: Decoder<T>) -> Result<Subscription<T>> {
        let span = tracing::debug_span!(
            "fredkit.pubsub.subscribe",
            primitive = "pubsub",
            outcome = tracing::field::Empty
        );
        let ops = self.shared.ops.lock().await;
        if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
            span.record("outcome", "closed");
            return Err(Error::connection(
                "this Subscriber was closed: make a new one (Subscriber::new) to subscribe again",
            ));
        }
        let joined = {
            let mut reg = lock(&self.shared.registry);
            match reg.get_mut(&key) {
                Some(entry) => {
                    entry.refs += 1;
                    Ok(entry.tx.subscribe())
                }
                None => {
                    // Registered before SUBSCRIBE so the first messages are routed.
                    let (tx, rx) = broadcast::channel(self.shared.capacity);
                    reg.insert(key.clone(), Entry { tx, refs: 1 });
                    Err(rx)
                }
            }
        };
        let (rx, first) = match joined {
            Ok(rx) => (rx, false),
            Err(rx) => (rx, true),
        };
        let subscription = Subscription::new(&self.shared, key.clone(), rx, decode);
        if !first {
            span.record("outcome", "joined");
            return Ok(subscription);
        }
        let conn = &self.shared.conn;
        let mut ready = self.shared.ready.subscribe();
        let confirmed = async {
            // Within the same budget: the first connection may still be
            // coming up (a Subscriber made while Redis is down or late), and
            // the watcher must have taken it in first (see `ready`); on a
            // cluster the barrier below also needs the topology it brings.
            if ready.wait_for(|r| *r).await.is_err() {
                return Err(fred::error::Error::new(
                    fred::error::ErrorKind::Canceled,
                    "subscriber closed",
                ));
            }
            until_connected(conn).await;
            match &key {
                SubKey::Channel(c) => conn.subscribe(c.as_str()).await?,
                SubKey::Pattern(p) => conn.psubscribe(p.as_str()).await?,
                SubKey::Shard(c) => conn.ssubscribe(c.as_str()).await?,
            }
            barrier(conn, &key).await
        };
        let result = match tokio::time::timeout(self.shared.command_timeout, confirmed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(match &key {
                SubKey::Channel(c) => Error::from(e).naming("SUBSCRIBE", c),
                SubKey::Pattern(p) => Error::from(e).naming("PSUBSCRIBE", p),
                SubKey::Shard(c) => Error::from(e).naming("SSUBSCRIBE", c),
            }),
            Err(_) => Err(Error::timeout(format!(
                "subscription not confirmed within {:?}",
                self.shared.command_timeout
            ))),
        };
        match result {
            Ok(()) => {
                if let SubKey::Pattern(p) = &key {
                    lock(&self.shared.server_patterns).insert(p.clone());
                }
                span.record("outcome", "subscribed");
                Ok(subscription)
            }
            Err(e) => {
                span.record("outcome", "error");
                // Dropping the subscription (after the lock) removes the
                // entry and unsubscribes, so nothing stays tracked.
                drop(ops);
                drop(subscription);
                Err(e)
            }
        }
    }
}

async fn unsubscribe(conn: &SubscriberClient, key: &SubKey) -> Result<()> {
    match key {
        SubKey::Channel(c) => conn.unsubscribe(c.as_str()).await?,
        SubKey::Pattern(p) => conn.punsubscribe(p.as_str()).await?,
        SubKey::Shard(c) => conn.sunsubscribe(c.as_str()).await?,
    }
    Ok(())
}

/// Returns once `conn` is connected (at once if it is). Polls as well as
/// listening, so a connection completed between the check and the listen
/// is not missed; the caller bounds the wait.
async fn until_connected(conn: &SubscriberClient) {
    while !conn.is_connected() {
        let waited = tokio::time::timeout(Duration::from_millis(20), conn.wait_for_connect()).await;
        if matches!(waited, Ok(Err(_))) {
            // A failed connection attempt: no busy loop until the next one.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// fred resolves SUBSCRIBE, PSUBSCRIBE and the unsubscribe commands as soon
/// as they are written (their confirmations arrive out of band and are
/// dropped), so "subscribe returned" does not mean "the server subscribed".
/// A PING on the same connection does: replies come in order. On a cluster it
/// goes to the node the subscription went to (fred hashes legacy pub/sub
/// commands by client id, sharded ones by channel). `SSUBSCRIBE` already
/// waits for its reply.
async fn barrier(
    conn: &SubscriberClient,
    key: &SubKey,
) -> std::result::Result<(), fred::error::Error> {
    if matches!(key, SubKey::Shard(_)) {
        return Ok(());
    }
    let options = Options {
        cluster_node: plain_node(conn),
        ..Options::default()
    };
    conn.with_options(&options).ping::<Value>(None).await?;
    Ok(())
}

/// On a cluster, the node that holds the plain (`SUBSCRIBE`/`PSUBSCRIBE`)
/// subscriptions: fred routes them by the slot of the client id.
fn plain_node(conn: &SubscriberClient) -> Option<Server> {
    if !conn.is_clustered() {
        return None;
    }
    let slot = redis_keyslot(conn.id().as_bytes());
    conn.cached_cluster_state()
        .and_then(|state| state.get_server(slot).cloned())
}

/// The liveness probe: every [`liveness::PROBE_INTERVAL`], while the connection is up,
/// PINGs the node(s) the subscriber uses; a `PING` that times out while fred
/// still says "connected" means a silent connection (paused or dead server,
/// half-open TCP): force a reconnection, after which [`watch_reconnects`]
/// resubscribes and announces the gap. Holds no lock across an await; stops
/// when the [`Subscriber`] is dropped.
async fn probe_liveness(shared: Weak<Shared>, sharded: bool, reconnect_wait: Duration) {
    let mut tick = tokio::time::interval(liveness::PROBE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Upgraded per tick and released before the awaits below, so a
        // dropped Subscriber is freed and this task ends (it is also aborted).
        let (conn, metrics, max, ops) = {
            let Some(s) = shared.upgrade() else { return };
            (
                s.conn.client().clone(),
                s.metrics.clone(),
                liveness::unresponsive_after(s.command_timeout),
                s.ops.clone(),
            )
        };
        // A (un)subscribe in progress: its barrier PING is a probe too.
        let Ok(probing) = ops.try_lock_owned() else {
            continue;
        };
        let silent = silent_node(&conn, sharded, max).await;
        drop(probing);
        let Some(server) = silent else {
            continue;
        };
        Metrics::add(&metrics.silent_reconnects, 1);
        tracing::warn!(
            server = %server,
            unanswered_for = ?max,
            "fredkit.pubsub: subscriber connection silent (a paused server or a half-open TCP connection); reconnecting"
        );
        match tokio::time::timeout(reconnect_wait, conn.force_reconnection()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(
                error = %e,
                "fredkit.pubsub: forced reconnection failed; fred's reconnect policy goes on"
            ),
            Err(_) => tracing::debug!(
                "fredkit.pubsub: forced reconnection still in progress; fred's reconnect policy goes on"
            ),
        }
    }
}

/// The first node of `conn` whose probe `PING` timed out while the
/// connection stayed up, if any.
async fn silent_node(conn: &SubscriberClient, sharded: bool, max: Duration) -> Option<String> {
    if !conn.is_connected() {
        return None;
    }
    let nodes: Vec<Option<Server>> = if !conn.is_clustered() {
        vec![None]
    } else if sharded {
        conn.active_connections().into_iter().map(Some).collect()
    } else {
        match plain_node(conn) {
            Some(node) => vec![Some(node)],
            None => return None,
        }
    };
    for node in nodes {
        if liveness::is_silent(conn, node.clone(), max).await {
            return Some(node.map_or_else(|| "redis".to_string(), |s| s.to_string()));
        }
    }
    None
}

/// Subscribes again to everything in the registry (after a reconnect), then
/// waits for the server to have processed it.
async fn resubscribe(shared: &Shared) -> Result<()> {
    let keys: Vec<SubKey> = lock(&shared.registry).keys().cloned().collect();
    let conn = &shared.conn;
    let channels: Vec<String> = keys
        .iter()
        .filter_map(|k| match k {
            SubKey::Channel(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let patterns: Vec<String> = keys
        .iter()
        .filter_map(|k| match k {
            SubKey::Pattern(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    if !channels.is_empty() {
        conn.subscribe(channels.clone()).await?;
        barrier(conn, &SubKey::Channel(String::new())).await?;
    }
    if !patterns.is_empty() {
        conn.psubscribe(patterns.clone()).await?;
        barrier(conn, &SubKey::Pattern(String::new())).await?;
    }
    *lock(&shared.server_patterns) = patterns.into_iter().collect();
    for key in &keys {
        if let SubKey::Shard(c) = key {
            conn.ssubscribe(c.as_str()).await?;
        }
    }
    Ok(())
}

fn payload_bytes(value: Value) -> Bytes {
    match value {
        Value::Bytes(b) => b,
        Value::String(s) => s.into_inner(),
        Value::Integer(i) => Bytes::from(i.to_string()),
        Value::Double(d) => Bytes::from(d.to_string()),
        Value::Boolean(b) => Bytes::from(if b { "1" } else { "0" }),
        other => other
            .as_bytes()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
    }
}

/// A run of `pmessage` frames for one publish. fred drops the pattern of a
/// pattern message, and Redis sends one frame per matching pattern of the
/// connection (all patterns sit on one connection: fred sends every legacy
/// subscription to one node), consecutively. Frame i of a run goes to the
/// i-th matching pattern, so each matching subscription gets one copy.
struct PatternRun {
    channel: String,
    payload: Bytes,
    served: usize,
}

/// Routes every message from the subscriber connection to the local receivers.
async fn dispatch(shared: Weak<Shared>, mut messages: broadcast::Receiver<FredMessage>) {
    let mut run: Option<PatternRun> = None;
    loop {
        let msg = match messages.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Lost inside the client before we could route them.
                let Some(s) = shared.upgrade() else { return };
                tracing::warn!(
                    lost = n,
                    "fredkit.pubsub: subscriber connection buffer overflowed"
                );
                run = None;
                announce_gap(&s);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(s) = shared.upgrade() else { return };
        let channel = String::from_utf8_lossy(msg.channel.as_bytes()).into_owned();
        let payload = payload_bytes(msg.value);
        let reg = lock(&s.registry);
        match msg.kind {
            MessageKind::Message | MessageKind::SMessage => {
                Metrics::add(&s.metrics.received, 1);
                let key = if msg.kind == MessageKind::Message {
                    SubKey::Channel(channel)
                } else {
                    SubKey::Shard(channel)
                };
                if let Some(e) = reg.get(&key) {
                    let name = match &key {
                        SubKey::Channel(c) | SubKey::Shard(c) | SubKey::Pattern(c) => c.as_str(),
                    };
                    let _ = e.tx.send(Raw::Message {
                        channel: Arc::from(name),
                        payload,
                    });
                }
            }
            MessageKind::PMessage => {
                let server = lock(&s.server_patterns);
                let matching: Vec<&String> = server
                    .iter()
                    .filter(|p| glob::matches(p.as_bytes(), channel.as_bytes()))
                    .collect();
                if matching.is_empty() {
                    continue;
                }
                let index = match &mut run {
                    Some(r)
                        if r.channel == channel
                            && r.payload == payload
                            && r.served < matching.len() =>
                    {
                        r.served += 1;
                        r.served - 1
                    }
                    _ => {
                        Metrics::add(&s.metrics.received, 1);
                        run = Some(PatternRun {
                            channel: channel.clone(),
                            payload: payload.clone(),
                            served: 1,
                        });
                        0
                    }
                };
                if run.as_ref().is_some_and(|r| r.served >= matching.len()) {
                    run = None;
                }
                // The frame belongs to a pattern the server still has; if its
                // last receiver is gone (unsubscribe in flight), drop it.
                if let Some(e) = reg.get(&SubKey::Pattern(matching[index].clone())) {
                    let _ = e.tx.send(Raw::Message {
                        channel: Arc::from(channel.as_str()),
                        payload,
                    });
                }
            }
        }
    }
}

fn announce_gap(s: &Shared) {
    Metrics::add(&s.metrics.resubscribes, 1);
    for e in lock(&s.registry).values() {
        let _ = e.tx.send(Raw::Gap);
    }
    s.gaps.send_modify(|n| *n += 1);
}

/// After every reconnect: resubscribe everything (retrying with backoff),
/// then announce the gap.
async fn watch_reconnects(
    shared: Weak<Shared>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
) {
    let backoff = Backoff::default();
    // Wait here, in the background, for the first connection (the
    // Subscriber may have been made while Redis was down or late); its
    // events (one per node on a cluster, all sent before the client counts
    // as connected) are not gaps.
    loop {
        // Upgraded per turn, so a Subscriber dropped while Redis is down is
        // freed and this task ends.
        let conn = {
            let Some(s) = shared.upgrade() else { return };
            if s.conn.is_connected() {
                break;
            }
            s.conn.client().clone()
        };
        let waited = tokio::time::timeout(Duration::from_millis(20), conn.wait_for_connect()).await;
        if matches!(waited, Ok(Err(_))) {
            // A failed connection attempt: no busy loop until the next one.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Events from the first connection are queued by now: they are not
    // gaps. No subscription is confirmed before `ready` (they wait for it),
    // so none can have lost messages in them; every later event is a gap.
    while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = reconnects.try_recv() {}
    match shared.upgrade() {
        Some(s) => s.ready.send_replace(true),
        None => return,
    };
    loop {
        match reconnects.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        let mut attempt = 0u32;
        // Upgraded per attempt and released before sleeping, so a Subscriber
        // dropped while Redis is down is freed (and its tasks stop).
        let s = loop {
            let Some(s) = shared.upgrade() else { return };
            let ops = s.ops.lock().await;
            match tokio::time::timeout(s.command_timeout.saturating_mul(2), resubscribe(&s)).await {
                Ok(Ok(())) => {
                    drop(ops);
                    break s;
                }
                Ok(Err(e)) => {
                    Metrics::add(&s.metrics.resubscribe_failures, 1);
                    tracing::warn!(error = %e, "fredkit.pubsub: resubscribe failed; retrying")
                }
                Err(_) => {
                    Metrics::add(&s.metrics.resubscribe_failures, 1);
                    tracing::warn!("fredkit.pubsub: resubscribe timed out; retrying")
                }
            }
            drop(ops);
            drop(s);
            tokio::time::sleep(backoff.delay(attempt)).await;
            attempt = attempt.saturating_add(1);
        };
        tracing::info!(
            "fredkit.pubsub: resubscribed after a reconnect; messages in the gap are lost"
        );
        announce_gap(&s);
    }
}

type Decoder<T> = Arc<dyn Fn(&Bytes) -> Result<T> + Send + Sync>;

/// A stream of [`Delivery`] items for one channel or pattern. Dropping the
/// last subscription of a channel unsubscribes it (in the background).
pub struct Subscription<T> {
    shared: Arc<Shared>,
    key: SubKey,
    stream: BroadcastStream<Raw>,
    decode: Decoder<T>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.key)
            .finish()
    }
}

impl<T> Subscription<T> {
    fn new(
        shared: &Arc<Shared>,
        key: SubKey,
        rx: broadcast::Receiver<Raw>,
        decode: Decoder<T>,
    ) -> Self {
        Subscription {
            shared: shared.clone(),
            key,
            stream: BroadcastStream::new(rx),
            decode,
        }
    }
}

impl<T> Stream for Subscription<T> {
    type Item = Delivery<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(Raw::Gap))) => Poll::Ready(Some(Delivery::Gap)),
            Poll::Ready(Some(Ok(Raw::Message { channel, payload }))) => {
                let payload = (this.decode)(&payload);
                if payload.is_err() {
                    Metrics::add(&this.shared.metrics.decode_errors, 1);
                }
                Poll::Ready(Some(Delivery::Message(Message {
                    channel: channel.to_string(),
                    payload,
                })))
            }
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                Metrics::add(&this.shared.metrics.lagged, n);
                Poll::Ready(Some(Delivery::Lagged(n)))
            }
        }
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let last = {
            let mut reg = lock(&self.shared.registry);
            match reg.get_mut(&self.key) {
                Some(e) => {
                    e.refs = e.refs.saturating_sub(1);
                    if e.refs == 0 {
                        reg.remove(&self.key);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        let key = self.key.clone();
        rt.spawn(async move {
            let _ops = shared.ops.lock().await;
            // Subscribed again meanwhile: keep it.
            if lock(&shared.registry).contains_key(&key) {
                return;
            }
            let done = async {
                unsubscribe(&shared.conn, &key).await?;
                barrier(&shared.conn, &key).await.map_err(Error::from)
            };
            let _ = tokio::time::timeout(shared.command_timeout, done).await;
            if let SubKey::Pattern(p) = &key {
                lock(&shared.server_patterns).remove(p);
            }
        });
    }
}
