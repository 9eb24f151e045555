//! [`Worker`]: a consumer-group worker with bounded concurrency, batched
//! acknowledgements, retries through `XAUTOCLAIM` and dead letters.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::config::Options;
use fred::types::Value;
use fredkit_conn::{Dedicated, Redis};
use fredkit_core::{Backoff, Codec, Error, MsgPack, Result, Script};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::admin::create_group;
use crate::config::WorkerConfig;
use crate::fields::{PAYLOAD_FIELD, REPLAY_GROUP, TRACE_ID_HEADER, TYPE_HEADER};
use crate::keys::{StreamId, StreamKeys};
use crate::message::Message;
use crate::metrics::{add, WorkerMetrics, WorkerSnapshot};
use crate::reply::{self, RawEntry};

static DEAD_LETTER: Script = Script::new(
    "streams_dead_letter",
    include_str!("../scripts/dead_letter.lua"),
);
static CLAIM: Script = Script::new("streams_claim", include_str!("../scripts/claim.lua"));
static FORGET_CONSUMER: Script = Script::new(
    "streams_forget_consumer",
    include_str!("../scripts/forget_consumer.lua"),
);

type Handler<T> =
    dyn Fn(Message<T>) -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync;

/// What [`Worker::shutdown`] observed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The consumer name.
    pub consumer: String,
    /// Handlers running when reading stopped.
    pub in_flight_at_stop: u64,
    /// Handlers cancelled because the shutdown deadline passed (their entries
    /// stay pending and are redelivered to another worker after `min_idle`).
    pub abandoned: u64,
    /// Successfully handled entries whose `XACK` the worker gave up on (still
    /// failing at the shutdown deadline, or refused by Redis) over its whole
    /// life: they stay pending and will be delivered again (the
    /// at-least-once case).
    pub unacked: u64,
    /// Whether the consumer was removed from the group (only a generated,
    /// empty consumer is).
    pub consumer_removed: bool,
    /// The worker's counters at the end.
    pub metrics: WorkerSnapshot,
}

/// A running consumer-group worker (see the crate docs for the delivery
/// contract).
///
/// [`Worker::start`] creates the group if needed and spawns the worker's
/// tasks on the current tokio runtime: a read loop on a dedicated connection
/// (`XREADGROUP ... BLOCK`, never on the shared one), one task per delivered
/// entry (at most `concurrency` at once), and an acknowledger that sends the
/// successes as batched `XACK`s on the shared pool. Every `claim_interval`
/// the read loop also runs `XAUTOCLAIM` (a script) to retry failed entries
/// and take over what crashed consumers left pending.
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_core::KeySpace;
/// use fredkit_streams::{Message, StreamKeys, Worker, WorkerConfig};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// let keys = StreamKeys::new(&KeySpace::new("shop")?, "orders")?;
/// let config = WorkerConfig::builder("billing").concurrency(16).build()?;
/// let worker = Worker::start(&redis, keys, config, |msg: Message<Order>| async move {
///     println!("order {} (delivery {})", msg.payload.id, msg.deliveries);
///     Ok::<(), std::io::Error>(())
/// })
/// .await?;
/// // ... later
/// let report = worker.shutdown().await;
/// println!("handled {}", report.metrics.handled);
/// # Ok(()) }
/// ```
///
/// # How handlers run
///
/// The entries of one read are handled concurrently by one future (like
/// `join_all`), which the read loop polls once itself: when every handler
/// finishes without waiting, the loop acknowledges the batch with one `XACK`
/// and reads again, with no task spawned (as fast as a hand-written consumer).
/// Otherwise the batch continues as a task of its own and the read loop moves
/// on. So a handler should not block its thread: CPU-heavy or blocking work
/// belongs in `tokio::task::spawn_blocking` (or `spawn`) inside the handler,
/// or it holds up the other entries of its batch and, on its first poll, the
/// read loop. The handler timeout cancels the handler's future, not a task it
/// started: such a task should finish within `handler_timeout`, or another
/// worker may take the entry over (after `min_idle`) while it still runs.
///
/// # Round trips
///
/// | step | round trips |
/// |---|---|
/// | start | 1 (`XGROUP CREATE`), skipped with `create_group(false)` |
/// | per read of up to `count` entries | 1 (`XREADGROUP`, dedicated connection) |
/// | per acknowledgement batch (up to `ack_batch` ids) | 1 (`XACK`) |
/// | per claim pass | 1 per `XAUTOCLAIM` page (script, with delivery counts) |
/// | per dead letter | 1 (script: `XADD` dead-letter + `XACK`) |
///
/// # Failure
///
/// Read, claim and acknowledgement errors are logged, counted and retried
/// with capped exponential backoff; the worker keeps running through Redis
/// restarts. A read left unanswered for `block` plus the command timeout
/// means a silent connection (a paused server, a dead host, a primary failed
/// over without closing it): the worker reconnects its read connection, which
/// also follows a Sentinel or cluster failover. A handler error, panic or
/// timeout is a failed delivery.
///
/// # Sharing: [`WorkerHandle`]
///
/// [`handle`](Self::handle) gives a cheap `Clone` handle (one `Arc`) with the
/// counters, the running state and [`shutdown`](WorkerHandle::shutdown), for
/// health checks, metrics endpoints and request handlers: no
/// `Arc<Mutex<Option<Worker>>>` needed. `shutdown` and [`close`](Self::close)
/// take `&self`, so a `Worker` in an `Arc` or in application state can be
/// shut down where it is shared. Every caller of `shutdown` (on the worker or
/// any handle, at once or later) waits for the same single graceful shutdown
/// and gets the same [`ShutdownReport`].
///
/// # Cancellation
///
/// Dropping the `Worker` asks it to shut down gracefully in the background
/// (like [`shutdown`](Self::shutdown), without waiting); handles do not keep
/// it running, and their `shutdown` still waits for that shutdown and
/// returns its report. [`abort`](Self::abort) stops it at once, like a
/// crash.
pub struct Worker<T, C: Codec = MsgPack> {
    handle: WorkerHandle,
    _t: PhantomData<fn() -> (T, C)>,
}

/// A cheap `Clone` handle on a running [`Worker`] (one `Arc`): its counters,
/// whether it runs, and a graceful [`shutdown`](Self::shutdown) from a
/// shared reference. It does not keep the worker running: dropping the
/// `Worker` still stops it.
///
/// ```no_run
/// # async fn run(worker: fredkit_streams::Worker<u64>) {
/// let status = worker.handle();
/// // e.g. in a metrics endpoint or a health check:
/// let (handled, running) = (status.metrics().handled, status.is_running());
/// // Any holder can stop it; every caller gets the same report.
/// let report = status.shutdown().await;
/// # }
/// ```
#[derive(Clone)]
pub struct WorkerHandle {
    control: Arc<Control>,
}

struct Control {
    consumer: String,
    metrics: Arc<WorkerMetrics>,
    stop: watch::Sender<bool>,
    /// `Some` once the read loop finished its graceful shutdown; the sender
    /// is gone without a report when the worker was aborted or died.
    report: watch::Receiver<Option<ShutdownReport>>,
    main: AbortHandle,
    acker: AbortHandle,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("consumer", &self.control.consumer)
            .field("running", &self.is_running())
            .finish()
    }
}

impl<T, C: Codec> fmt::Debug for Worker<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("consumer", &self.handle.control.consumer)
            .field("metrics", &self.handle.metrics())
            .finish()
    }
}

impl<T> Worker<T, MsgPack>
where
    T: DeserializeOwned + Send + 'static,
{
    /// Starts a worker decoding MessagePack payloads. See
    /// [`start_with_codec`](Self::start_with_codec).
    ///
    /// # Errors
    ///
    /// As [`start_with_codec`](Self::start_with_codec).
    pub async fn start<H, Fut, E>(
        redis: &Redis,
        keys: StreamKeys,
        config: WorkerConfig,
        handler: H,
    ) -> Result<Worker<T, MsgPack>>
    where
        H: Fn(Message<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        Worker::start_with_codec(redis, keys, config, MsgPack, handler).await
    }
}

impl<T, C> Worker<T, C>
where
    T: DeserializeOwned + Send + 'static,
    C: Codec,
{
    /// Starts a worker: creates the consumer group (unless
    /// `create_group(false)`), opens its dedicated connection and spawns its
    /// tasks. `handler` runs once per delivery; `Ok` acknowledges the entry,
    /// `Err` leaves it pending for a retry after `min_idle` (its `Display`
    /// text is kept as the last error in the dead letter).
    ///
    /// Start-up never needs Redis: if Redis is unavailable (down, not up
    /// yet, stalled), creating the group costs at most the command timeout,
    /// is logged and counted
    /// ([`group_create_failures`](crate::WorkerSnapshot::group_create_failures)),
    /// and the worker starts anyway: its task creates the group as soon as
    /// Redis answers (retrying with backoff), before its first read, so
    /// with [`StartFrom::Beginning`](crate::StartFrom::Beginning) (the
    /// default) nothing published meanwhile is missed. With
    /// [`StartFrom::NewOnly`](crate::StartFrom::NewOnly) the group starts
    /// at the stream's end *when it is created*: entries added between
    /// Redis coming back and that moment (at most one backoff delay) are
    /// not delivered to this group.
    ///
    /// # Errors
    ///
    /// Creating the group failed for a reason other than Redis being
    /// unavailable (the key holds something other than a stream, an empty
    /// group name), or the dedicated connection could not be configured.
    /// Must be called inside a tokio runtime.
    pub async fn start_with_codec<H, Fut, E>(
        redis: &Redis,
        keys: StreamKeys,
        config: WorkerConfig,
        codec: C,
        handler: H,
    ) -> Result<Worker<T, C>>
    where
        H: Fn(Message<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let metrics = Arc::new(WorkerMetrics::new(keys.stream(), &config.group));
        // Start-up never needs Redis: when it is unreachable (down, late,
        // stalled: at most the command timeout is spent here), the read
        // loop creates the group once it is, retrying with backoff.
        let mut group_pending = false;
        if config.create_group {
            match create_group(redis, &keys, &config.group, &config.start).await {
                Ok(_) => {}
                Err(e) if e.is_unavailable() => {
                    add(&metrics.group_create_failures, 1);
                    tracing::warn!(
                        error = %e,
                        stream = %keys.name(),
                        group = %config.group,
                        "fredkit-streams: Redis unavailable at worker start; the consumer group is created in the background once it is reachable"
                    );
                    group_pending = true;
                }
                Err(e) => return Err(e),
            }
        }
        let generated = config.consumer.is_none();
        let consumer = config.consumer.clone().unwrap_or_else(|| {
            // 64 random bits: in containers every process is pid 1.
            format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
        });
        let dedicated = redis.dedicated()?;
        let handler: Arc<Handler<T>> = Arc::new(move |m: Message<T>| {
            let fut = handler(m);
            async move { fut.await.map_err(|e| e.to_string()) }.boxed()
        });
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let backoff = Backoff::builder()
            .initial(Duration::from_millis(20))
            .max(config.retry_backoff_max.max(Duration::from_millis(20)))
            .build()?;
        let ctx = Arc::new(Ctx {
            redis: redis.clone(),
            keys,
            config,
            codec,
            handler,
            metrics: Arc::clone(&metrics),
            consumer: consumer.clone(),
            generated,
            inflight: Mutex::new(HashSet::new()),
            ack_tx,
            backoff,
            stop_deadline: std::sync::OnceLock::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let acker = tokio::spawn(ack_loop(Arc::clone(&ctx), ack_rx, stop_rx.clone()));
        let acker_abort = acker.abort_handle();
        let span = tracing::info_span!(
            "fredkit.streams.worker",
            stream = %ctx.keys.name(),
            group = %ctx.config.group,
            consumer = %consumer
        );
        let (report_tx, report_rx) = watch::channel(None);
        let main = tokio::spawn(
            async move {
                let report = run(ctx, dedicated, stop_rx, acker, group_pending).await;
                let _ = report_tx.send(Some(report));
            }
            .instrument(span),
        );
        Ok(Worker {
            handle: WorkerHandle {
                control: Arc::new(Control {
                    consumer,
                    metrics,
                    stop,
                    report: report_rx,
                    main: main.abort_handle(),
                    acker: acker_abort,
                }),
            },
            _t: PhantomData,
        })
    }
}

impl<T, C: Codec> Worker<T, C> {
    /// A cheap `Clone` handle (one `Arc`) with the counters, the running
    /// state and [`shutdown`](WorkerHandle::shutdown). It does not keep the
    /// worker running.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// The consumer name in the group.
    pub fn consumer(&self) -> &str {
        self.handle.consumer()
    }

    /// The counters.
    pub fn metrics(&self) -> WorkerSnapshot {
        self.handle.metrics()
    }

    /// Whether the worker's read loop is still running: false once it
    /// stopped (shut down, aborted) or died, which a health check should
    /// report. No round trip.
    pub fn is_running(&self) -> bool {
        self.handle.is_running()
    }

    /// Graceful shutdown from a shared reference; see
    /// [`WorkerHandle::shutdown`] (the same shutdown, the same report).
    ///
    /// Cancellation: dropping this future leaves the shutdown running in the
    /// background.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.handle.shutdown().await
    }

    /// The same as [`shutdown`](Self::shutdown), under the name every type
    /// of fredkit that owns connections or tasks uses: stops reading, lets
    /// the handlers finish (or leaves their entries pending for a claim),
    /// sends the last acknowledgements, closes the worker's dedicated
    /// `XREADGROUP` connection and ends its tasks (read loop, handler tasks,
    /// acknowledger). Idempotent: every call returns the same report. The
    /// shared [`Redis`] handle it was started with stays open.
    pub async fn close(&self) -> ShutdownReport {
        self.handle.shutdown().await
    }

    /// Stops the worker at once, like a crash: reading stops, running
    /// handlers are cancelled, queued acknowledgements are not sent. Every
    /// entry not yet acknowledged stays pending for this consumer and is
    /// taken over by another worker after `min_idle`.
    pub fn abort(self) {
        self.handle.control.main.abort();
        self.handle.control.acker.abort();
    }
}

impl WorkerHandle {
    /// The consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.control.consumer
    }

    /// The counters (a few relaxed atomic loads).
    pub fn metrics(&self) -> WorkerSnapshot {
        self.control.metrics.snapshot()
    }

    /// Whether the worker's read loop is still running: false once it
    /// stopped (shut down, the `Worker` dropped, aborted) or died. No round
    /// trip.
    pub fn is_running(&self) -> bool {
        !self.control.main.is_finished()
    }

    /// Graceful shutdown: stops reading (the read in progress, at most
    /// `block` long, or `block` plus the command timeout on an unresponsive
    /// server, completes and its entries are handled), lets in-flight
    /// handlers finish until `shutdown_timeout` (then cancels the rest: they
    /// stay pending), sends the remaining acknowledgements, removes a
    /// generated consumer name from the group if nothing is pending for it,
    /// and reports.
    ///
    /// Takes `&self` and is idempotent: concurrent and later calls, on the
    /// worker or on any handle, wait for the same shutdown and return the
    /// same report. After [`Worker::abort`] (or if the worker's task died)
    /// the report carries the counters at that moment and zeros elsewhere.
    ///
    /// Cancellation: dropping this future leaves the shutdown running in the
    /// background.
    pub async fn shutdown(&self) -> ShutdownReport {
        let c = &self.control;
        let _ = c.stop.send(true);
        let mut rx = c.report.clone();
        let done = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        match done {
            Some(report) => report,
            None => {
                if !c.main.is_finished() {
                    // Cannot happen (the sender lives in the task); be safe.
                    tracing::debug!(consumer = %c.consumer, "worker report unavailable");
                } else {
                    tracing::debug!(consumer = %c.consumer, "worker stopped without a report (aborted or its task ended abnormally)");
                }
                ShutdownReport {
                    consumer: c.consumer.clone(),
                    in_flight_at_stop: 0,
                    abandoned: 0,
                    unacked: 0,
                    consumer_removed: false,
                    metrics: c.metrics.snapshot(),
                }
            }
        }
    }
}

impl<T, C: Codec> Drop for Worker<T, C> {
    fn drop(&mut self) {
        // Graceful shutdown in the background (a no-op after shutdown/abort).
        let _ = self.handle.control.stop.send(true);
    }
}

enum AckMsg {
    Ack(Vec<StreamId>),
    /// Flush everything queued before, then report how many could not be
    /// acknowledged and stop.
    Close(Instant, oneshot::Sender<u64>),
}

/// A stream id as numbers (cheap to hash); the text for odd ids.
#[derive(Clone, PartialEq, Eq, Hash)]
enum IdKey {
    Parsed(u64, u64),
    Text(String),
}

impl IdKey {
    fn of(id: &StreamId) -> IdKey {
        match (id.millis(), id.seq()) {
            (Some(ms), Some(seq)) => IdKey::Parsed(ms, seq),
            _ => IdKey::Text(id.as_str().to_string()),
        }
    }
}

struct Ctx<T, C> {
    redis: Redis,
    keys: StreamKeys,
    config: WorkerConfig,
    codec: C,
    handler: Arc<Handler<T>>,
    metrics: Arc<WorkerMetrics>,
    consumer: String,
    generated: bool,
    /// Entries being handled or waiting for their XACK: a claim that hands
    /// one of them back to this worker must not run it a second time.
    inflight: Mutex<HashSet<IdKey>>,
    ack_tx: mpsc::UnboundedSender<AckMsg>,
    backoff: Backoff,
    /// The shutdown deadline, fixed by the first task that sees the stop
    /// signal, so that retrying acknowledgements and waiting handlers share
    /// one `shutdown_timeout` instead of adding theirs up.
    stop_deadline: std::sync::OnceLock<Instant>,
}

impl<T, C> Ctx<T, C> {
    fn stop_deadline(&self) -> Instant {
        *self
            .stop_deadline
            .get_or_init(|| after(Instant::now(), self.config.shutdown_timeout))
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashSet<IdKey>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done(&self, id: &StreamId) {
        self.inflight().remove(&IdKey::of(id));
    }

    fn done_all(&self, ids: &[StreamId]) {
        let mut inflight = self.inflight();
        for id in ids {
            inflight.remove(&IdKey::of(id));
        }
    }
}

async fn run<T, C>(
    ctx: Arc<Ctx<T, C>>,
    dedicated: Dedicated<Client>,
    mut stop_rx: watch::Receiver<bool>,
    acker: JoinHandle<()>,
    mut group_pending: bool,
) -> ShutdownReport
where
    T: DeserializeOwned + Send + 'static,
    C: Codec,
{
    let cfg = &ctx.config;
    // The group could not be created at start (Redis unavailable): create
    // it before the first claim or read, retrying with backoff.
    let mut attempt: u32 = 0;
    while group_pending && !*stop_rx.borrow() {
        match create_group(&ctx.redis, &ctx.keys, &cfg.group, &cfg.start).await {
            Ok(_) => {
                tracing::info!("consumer group created; Redis is reachable");
                group_pending = false;
            }
            Err(e) => {
                add(&ctx.metrics.group_create_failures, 1);
                tracing::warn!(error = %e, "creating the consumer group failed; retrying with backoff");
                let delay = ctx.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_rx.changed() => {}
                }
            }
        }
    }
    let sem = Arc::new(Semaphore::new(cfg.concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut cursor = String::from("0-0");
    // Claim right away: recover what crashed consumers left behind.
    let mut next_claim = Instant::now();
    let mut failures: u32 = 0;
    let mut unacked_inline: u64 = 0;
    tracing::debug!("worker started");

    loop {
        while tasks.try_join_next().is_some() {}
        if *stop_rx.borrow() {
            break;
        }
        let first = tokio::select! {
            p = Arc::clone(&sem).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop_rx.changed() => continue,
        };
        // Free handler slots, up to `count`, in one permit.
        let mut permits = Permits(Some(first));
        let more = sem.available_permits().min(cfg.count - 1);
        if more > 0 {
            if let Ok(p) = Arc::clone(&sem).try_acquire_many_owned(more as u32) {
                permits.merge(p);
            }
        }

        if Instant::now() >= next_claim {
            match claim(&ctx, &mut cursor, permits.len()).await {
                Ok(entries) => {
                    let batch: Vec<_> = entries
                        .into_iter()
                        .filter_map(|(entry, deliveries)| {
                            permits.pop().map(|permit| (entry, deliveries, permit))
                        })
                        .collect();
                    let acks = spawn_batch(&ctx, &mut tasks, batch);
                    unacked_inline += ack_inline(&ctx, acks, &stop_rx).await;
                    if cursor == "0-0" {
                        next_claim = after(Instant::now(), cfg.claim_interval);
                    }
                    failures = 0;
                }
                Err(e) => {
                    add(&ctx.metrics.read_errors, 1);
                    tracing::warn!(error = %e, "XAUTOCLAIM failed; retrying after the claim interval");
                    cursor = String::from("0-0");
                    next_claim = after(Instant::now(), cfg.claim_interval);
                }
            }
            if permits.is_empty() {
                continue;
            }
        }

        let until_claim = next_claim.saturating_duration_since(Instant::now());
        let block = cfg.block.min(until_claim).max(Duration::from_millis(1));
        match read(&ctx, &dedicated, permits.len(), block).await {
            Ok(entries) => {
                failures = 0;
                if !entries.is_empty() {
                    add(&ctx.metrics.reads, 1);
                }
                add(&ctx.metrics.delivered, entries.len() as u64);
                let mut batch = Vec::with_capacity(entries.len());
                for entry in entries {
                    match permits.pop() {
                        Some(permit) => batch.push((entry, 1, permit)),
                        None => {
                            // Cannot happen (COUNT = permits); if Redis sent
                            // more, the extra entries stay pending and are
                            // reclaimed after min_idle.
                            tracing::warn!(id = %entry.id, "XREADGROUP returned more entries than asked for");
                        }
                    }
                }
                let acks = spawn_batch(&ctx, &mut tasks, batch);
                unacked_inline += ack_inline(&ctx, acks, &stop_rx).await;
            }
            Err(e) => {
                add(&ctx.metrics.read_errors, 1);
                drop(permits);
                if e.to_string().contains("NOGROUP") && cfg.create_group {
                    tracing::warn!("consumer group is gone (NOGROUP); creating it again");
                    if let Err(e) =
                        create_group(&ctx.redis, &ctx.keys, &cfg.group, &cfg.start).await
                    {
                        tracing::warn!(error = %e, "could not recreate the consumer group");
                    }
                } else if e.kind() == fredkit_core::ErrorKind::Timeout {
                    // Unanswered for BLOCK plus a command timeout: the
                    // connection is silent (a paused server, a dead host, a
                    // half-open TCP connection, a primary failed over
                    // without closing it). The shared pool's watchdog does
                    // not watch this connection (a probe would queue behind
                    // the block), so reconnect it here instead of waiting
                    // minutes for the kernel.
                    tracing::warn!(error = %e, "XREADGROUP unanswered past BLOCK + command timeout; reconnecting the worker's connection");
                    let wait = ctx.redis.config().connect_timeout() + Duration::from_secs(1);
                    tokio::select! {
                        r = tokio::time::timeout(wait, dedicated.force_reconnection()) => {
                            if let Ok(Err(e)) = r {
                                tracing::debug!(error = %e, "forced reconnection failed; fred's reconnect policy goes on");
                            }
                        }
                        _ = stop_rx.changed() => {}
                    }
                } else {
                    tracing::warn!(error = %e, "XREADGROUP failed; retrying with backoff");
                }
                let delay = ctx.backoff.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_rx.changed() => {}
                }
            }
        }
    }

    // Graceful shutdown.
    let deadline = ctx.stop_deadline();
    let busy = |sem: &Semaphore| cfg.concurrency.saturating_sub(sem.available_permits()) as u64;
    let in_flight_at_stop = busy(&sem);
    let mut abandoned = 0;
    loop {
        tokio::select! {
            r = tasks.join_next() => {
                if r.is_none() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                abandoned = busy(&sem);
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    add(&ctx.metrics.abandoned, abandoned);
    drop(dedicated);
    // Flush acknowledgements: at least one command timeout even when the
    // handlers used up the deadline.
    let flush_deadline = deadline.max(after(
        Instant::now(),
        ctx.redis.config().command_timeout().saturating_mul(2),
    ));
    let (tx, rx) = oneshot::channel();
    let unacked = unacked_inline
        + if ctx.ack_tx.send(AckMsg::Close(flush_deadline, tx)).is_ok() {
            rx.await.unwrap_or(0)
        } else {
            0
        };
    let _ = acker.await;
    let consumer_removed = if ctx.generated && unacked == 0 && abandoned == 0 {
        forget_consumer(&ctx).await
    } else {
        false
    };
    let metrics = ctx.metrics.snapshot();
    tracing::info!(
        in_flight_at_stop,
        abandoned,
        unacked,
        handled = metrics.handled,
        "worker stopped"
    );
    ShutdownReport {
        consumer: ctx.consumer.clone(),
        in_flight_at_stop,
        abandoned,
        unacked,
        consumer_removed,
        metrics,
    }
}

/// `at + d`, saturating far in the future instead of overflowing: a huge
/// timeout (`Duration::MAX`) means "wait forever", never a panic.
fn after(at: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(d.min(FAR))
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// Acknowledgements produced while a batch is polled inline by the read
/// loop: the read loop sends them itself (no task hop). Once the batch runs
/// as its own task, its acknowledgements go to the acknowledger instead.
#[derive(Default)]
struct InlineAcks {
    spawned: AtomicBool,
    ids: Mutex<Vec<StreamId>>,
}

/// Runs the handlers of one read (or claim) batch concurrently, with one
/// shared deadline (`handler_timeout` after the delivery): first polled right
/// here, then, if some handler is still running, as a task of its own.
/// Returns the ids acknowledged during the inline poll, for the caller to
/// `XACK`.
fn spawn_batch<T, C>(
    ctx: &Arc<Ctx<T, C>>,
    tasks: &mut JoinSet<()>,
    items: Vec<(RawEntry, u64, OwnedSemaphorePermit)>,
) -> Vec<StreamId>
where
    T: DeserializeOwned + Send + 'static,
    C: Codec,
{
    if items.is_empty() {
        return Vec::new();
    }
    let read_at = Instant::now();
    {
        let mut inflight = ctx.inflight();
        for (entry, _, _) in &items {
            inflight.insert(IdKey::of(&entry.id));
        }
    }
    let inline = Arc::new(InlineAcks::default());
    // Handlers that finish without waiting (the common case for quick
    // handlers) cost no task hop. Whatever is left runs as its own task
    // (spawned tasks are polled again at once, so the wakers registered by
    // this first poll are replaced).
    let mut batch = Box::pin(run_batch(
        Arc::clone(ctx),
        items,
        read_at,
        Arc::clone(&inline),
    ));
    if (&mut batch).now_or_never().is_none() {
        inline.spawned.store(true, Ordering::SeqCst);
        tasks.spawn(batch);
    }
    let mut ids = inline.ids.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *ids)
}

async fn read<T, C>(
    ctx: &Ctx<T, C>,
    conn: &Client,
    count: usize,
    block: Duration,
) -> Result<Vec<RawEntry>> {
    // The blocking call gets its own timeout, longer than BLOCK: the
    // connection's default command timeout would cut long blocks short.
    let options = Options {
        timeout: Some(block.saturating_add(ctx.redis.config().command_timeout())),
        ..Options::default()
    };
    let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
    let v: Value = conn
        .with_options(&options)
        .xreadgroup(
            ctx.config.group.as_str(),
            ctx.consumer.as_str(),
            Some(count as u64),
            Some(block_ms),
            false,
            ctx.keys.stream(),
            ">",
        )
        .await?;
    reply::xread_one(v)
}

async fn claim<T, C>(
    ctx: &Ctx<T, C>,
    cursor: &mut String,
    count: usize,
) -> Result<Vec<(RawEntry, u64)>> {
    let cfg = &ctx.config;
    let v: Value = CLAIM
        .exec(
            ctx.redis.client(),
            vec![ctx.keys.stream(), ctx.keys.dead_letter()],
            vec![
                cfg.group.clone(),
                ctx.consumer.clone(),
                cfg.min_idle.as_millis().min(i64::MAX as u128).to_string(),
                cursor.clone(),
                count.to_string(),
                cfg.max_deliveries.to_string(),
                cfg.dead_letter_max_len.to_string(),
                cfg.min_idle
                    .saturating_mul(2)
                    .as_millis()
                    .min(i64::MAX as u128)
                    .to_string(),
            ],
        )
        .await?;
    let claimed = reply::claimed(v)?;
    if claimed.consumers_removed > 0 {
        add(&ctx.metrics.consumers_removed, claimed.consumers_removed);
        tracing::info!(
            count = claimed.consumers_removed,
            "removed consumers that owned nothing and had been idle for over twice min_idle"
        );
    }
    *cursor = claimed.cursor;
    if claimed.deleted > 0 {
        add(&ctx.metrics.deleted_while_pending, claimed.deleted);
        tracing::warn!(
            count = claimed.deleted,
            "pending entries were deleted from the stream before they were handled (trimmed or XDEL'd); their payloads are lost"
        );
    }
    if claimed.dead_lettered > 0 {
        add(&ctx.metrics.dead_lettered, claimed.dead_lettered);
        tracing::warn!(
            count = claimed.dead_lettered,
            "entries exceeded max_deliveries without an outcome and were dead-lettered"
        );
    }
    if claimed.dead_letters_trimmed > 0 {
        add(
            &ctx.metrics.dead_letters_trimmed,
            claimed.dead_letters_trimmed,
        );
        tracing::warn!(
            count = claimed.dead_letters_trimmed,
            "old dead letters were trimmed to keep the dead-letter stream within dead_letter_max_len"
        );
    }
    if claimed.dead_letter_failures > 0 {
        add(
            &ctx.metrics.dead_letter_errors,
            claimed.dead_letter_failures,
        );
        tracing::warn!(
            count = claimed.dead_letter_failures,
            error = %claimed.last_error,
            "entries past max_deliveries could not be dead-lettered (the dead-letter stream refused them); they stay pending and the claim tries again after min_idle"
        );
    }
    let mut out = Vec::with_capacity(claimed.entries.len());
    {
        let inflight = ctx.inflight();
        for (entry, deliveries) in claimed.entries {
            // Already running (or waiting for its XACK) here: do not run it twice.
            if !inflight.contains(&IdKey::of(&entry.id)) {
                out.push((entry, deliveries));
            }
        }
    }
    add(&ctx.metrics.reclaimed, out.len() as u64);
    Ok(out)
}

/// Some handler slots held at once (one semaphore permit per slot).
struct Permits(Option<OwnedSemaphorePermit>);

impl Permits {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn merge(&mut self, other: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(p) => p.merge(other),
            None => self.0 = Some(other),
        }
    }

    /// One slot, released when the returned permit is dropped.
    fn pop(&mut self) -> Option<OwnedSemaphorePermit> {
        match self.len() {
            0 => None,
            1 => self.0.take(),
            _ => self.0.as_mut().and_then(|p| p.split(1)),
        }
    }
}

/// One delivery waiting for its handler's outcome.
struct Slot {
    id: StreamId,
    deliveries: u64,
    span: tracing::Span,
}

async fn run_batch<T, C>(
    ctx: Arc<Ctx<T, C>>,
    items: Vec<(RawEntry, u64, OwnedSemaphorePermit)>,
    read_at: Instant,
    inline: Arc<InlineAcks>,
) where
    T: DeserializeOwned + Send + 'static,
    C: Codec,
{
    let deadline = after(read_at, ctx.config.handler_timeout);
    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(items.len());
    let mut running = FuturesUnordered::new();
    let mut undecodable: Vec<(StreamId, String)> = Vec::new();
    // Replays of another group's dead letters: this group handled the
    // original already; acknowledged without running the handler.
    let mut foreign: Vec<StreamId> = Vec::new();
    for (entry, deliveries, permit) in items {
        let replay_for_other_group = entry
            .fields
            .iter()
            .any(|(k, v)| &**k == REPLAY_GROUP && v.as_ref() != ctx.config.group.as_bytes());
        if replay_for_other_group {
            add(&ctx.metrics.skipped_replays, 1);
            tracing::debug!(id = %entry.id, "replayed dead letter of another consumer group: acknowledged without handling");
            foreign.push(entry.id);
            drop(permit);
            continue;
        }
        if deliveries > 1 {
            add(&ctx.metrics.retried, 1);
        }
        let id = entry.id;
        let mut payload = None;
        // Most entries carry only the payload: no allocation for them.
        let mut headers = Vec::new();
        for (k, v) in entry.fields {
            if &*k == PAYLOAD_FIELD && payload.is_none() {
                payload = Some(v);
            } else {
                headers.push((k.to_string(), String::from_utf8_lossy(&v).into_owned()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let span = tracing::info_span!(
            "fredkit.streams.handle",
            stream = %ctx.keys.name(),
            group = %ctx.config.group,
            id = %id,
            deliveries,
            trace_id = %header(TRACE_ID_HEADER),
            event_type = %header(TYPE_HEADER),
            outcome = tracing::field::Empty
        );
        let decoded = match &payload {
            Some(p) => ctx.codec.decode::<T>(p),
            None => Err(Error::Codec {
                op: "decode",
                codec: ctx.codec.name(),
                message: format!("the entry has no '{PAYLOAD_FIELD}' field"),
            }),
        };
        match decoded {
            Ok(value) => {
                let index = slots.len();
                let message = Message {
                    id: id.clone(),
                    payload: value,
                    deliveries,
                    headers,
                };
                let handler = Arc::clone(&ctx.handler);
                let timing = fredkit_core::metrics::ENABLED.then(|| {
                    if let Some(added) = message.id.millis() {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                        ctx.metrics
                            .wait
                            .record(Duration::from_millis(now.saturating_sub(added)));
                    }
                    (Arc::clone(&ctx.metrics), std::time::Instant::now())
                });
                let run = AssertUnwindSafe(async move {
                    let outcome = handler(message).await;
                    if let Some((metrics, started)) = timing {
                        metrics.handler_run.record_since(started);
                    }
                    outcome
                })
                .catch_unwind()
                .instrument(span.clone());
                slots.push(Some(Slot {
                    id,
                    deliveries,
                    span,
                }));
                running.push(async move {
                    let outcome = run.await;
                    drop(permit);
                    (index, outcome)
                });
            }
            Err(e) => {
                add(&ctx.metrics.decode_errors, 1);
                span.record("outcome", "undecodable");
                tracing::warn!(parent: &span, id = %id, error = %e, "undecodable entry: dead-lettering it");
                undecodable.push((id, e.to_string()));
                drop(permit);
            }
        }
    }

    let send_acks = |batch: Vec<StreamId>| {
        if !inline.spawned.load(Ordering::SeqCst) {
            inline
                .ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch);
        } else if let Err(mpsc::error::SendError(AckMsg::Ack(ids))) =
            ctx.ack_tx.send(AckMsg::Ack(batch))
        {
            ctx.done_all(&ids);
        }
    };
    if !foreign.is_empty() {
        send_acks(foreign);
    }
    let mut acks: Vec<StreamId> = Vec::new();
    let mut failures: Vec<(Slot, String)> = Vec::new();
    let mut settle = |index: usize,
                      outcome: std::thread::Result<std::result::Result<(), String>>,
                      acks: &mut Vec<StreamId>| {
        let Some(slot) = slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        match outcome {
            Ok(Ok(())) => {
                add(&ctx.metrics.handled, 1);
                slot.span.record("outcome", "ok");
                acks.push(slot.id);
            }
            Ok(Err(e)) => failures.push((slot, e)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                failures.push((slot, format!("handler panicked: {what}")));
            }
        }
    };
    if !running.is_empty() {
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                next = running.next() => {
                    let Some((index, outcome)) = next else { break };
                    settle(index, outcome, &mut acks);
                    // Whatever else is done already goes in the same batch.
                    while let Some(Some((index, outcome))) = running.next().now_or_never() {
                        settle(index, outcome, &mut acks);
                    }
                    if !acks.is_empty() {
                        send_acks(std::mem::take(&mut acks));
                    }
                }
                _ = &mut timer => break,
            }
        }
        // Handlers still running at the deadline are cancelled: failures.
        drop(running);
    }
    let timeout = format!(
        "handler timed out (handler_timeout {:?}, counted from delivery)",
        ctx.config.handler_timeout
    );
    let late: Vec<Slot> = slots.into_iter().flatten().collect();
    failures.extend(late.into_iter().map(|slot| (slot, timeout.clone())));
    for (slot, error) in failures {
        add(&ctx.metrics.failed, 1);
        if slot.deliveries >= ctx.config.max_deliveries {
            slot.span.record("outcome", "dead_letter");
            tracing::warn!(parent: &slot.span, id = %slot.id, deliveries = slot.deliveries, error = %error, "last delivery failed: dead-lettering");
            dead_letter(&ctx, &slot.id, &error).await;
        } else {
            slot.span.record("outcome", "failed");
            tracing::debug!(parent: &slot.span, id = %slot.id, deliveries = slot.deliveries, error = %error, "handler failed; retry after min_idle");
            ctx.done(&slot.id);
        }
    }
    for (id, error) in undecodable {
        dead_letter(&ctx, &id, &error).await;
    }
}

async fn dead_letter<T, C>(ctx: &Ctx<T, C>, id: &StreamId, error: &str) {
    let r: Result<Value> = DEAD_LETTER
        .exec(
            ctx.redis.client(),
            vec![ctx.keys.stream(), ctx.keys.dead_letter()],
            vec![
                ctx.config.group.clone(),
                ctx.consumer.clone(),
                id.as_str().to_string(),
                error.to_string(),
                ctx.config.dead_letter_max_len.to_string(),
            ],
        )
        .await;
    let r = r.map(|v| {
        let mut parts = reply::array(v).unwrap_or_default().into_iter();
        let mut next = || parts.next().as_ref().and_then(reply::int).unwrap_or(0);
        (next(), next().max(0) as u64)
    });
    match r {
        Ok((1, trimmed)) => {
            add(&ctx.metrics.dead_lettered, 1);
            if trimmed > 0 {
                add(&ctx.metrics.dead_letters_trimmed, trimmed);
                tracing::warn!(
                    count = trimmed,
                    "old dead letters were trimmed to keep the dead-letter stream within dead_letter_max_len"
                );
            }
        }
        Ok((2, _)) => {
            // Our own first run's reply was lost and fred sent the script
            // again: dead-lettered once, counted once.
            add(&ctx.metrics.dead_lettered, 1);
            tracing::debug!(id = %id, "dead-lettered by this consumer's first run of the script (its reply was lost)")
        }
        Ok(_) => {
            tracing::debug!(id = %id, "not dead-lettered: no longer pending for this consumer")
        }
        Err(e) => {
            add(&ctx.metrics.dead_letter_errors, 1);
            tracing::warn!(
                id = %id,
                error = %e,
                "dead-lettering failed; the entry stays pending and is dead-lettered when reclaimed"
            )
        }
    }
    ctx.done(id);
}

async fn ack_loop<T, C>(
    ctx: Arc<Ctx<T, C>>,
    mut rx: mpsc::UnboundedReceiver<AckMsg>,
    stop_rx: watch::Receiver<bool>,
) {
    let mut batch: Vec<StreamId> = Vec::new();
    // Every id given up on over the worker's life (not only those of the
    // last flush): an acknowledgement abandoned while the shutdown began
    // must show up in the report too.
    let mut lost: u64 = 0;
    while let Some(first) = rx.recv().await {
        // Everything queued while the previous XACK was in flight goes in
        // this one (up to ack_batch ids).
        let mut close = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                AckMsg::Ack(ids) => batch.extend(ids),
                AckMsg::Close(deadline, tx) => {
                    close = Some((deadline, tx));
                    break;
                }
            }
            if batch.len() >= ctx.config.ack_batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        let deadline = close.as_ref().map(|(d, _)| *d);
        for chunk in batch.chunks(ctx.config.ack_batch) {
            if !ack(&ctx, chunk, deadline, &stop_rx).await {
                lost += chunk.len() as u64;
            }
        }
        ctx.done_all(&batch);
        batch.clear();
        if let Some((_, tx)) = close {
            // Close is sent after every handler finished: nothing can follow.
            let _ = tx.send(lost);
            return;
        }
    }
}

/// Acknowledges what a batch finished during its inline poll, from the read
/// loop (like a hand-written consumer: read, handle, `XACK`, read).
/// Returns how many could not be acknowledged.
async fn ack_inline<T, C>(
    ctx: &Ctx<T, C>,
    ids: Vec<StreamId>,
    stop: &watch::Receiver<bool>,
) -> u64 {
    let mut lost = 0;
    for chunk in ids.chunks(ctx.config.ack_batch) {
        if !ack(ctx, chunk, None, stop).await {
            lost += chunk.len() as u64;
        }
    }
    ctx.done_all(&ids);
    lost
}

/// Sends one `XACK` for `ids`, retrying transient errors with backoff (until
/// `deadline`, when closing). Returns false when it gave up.
async fn ack<T, C>(
    ctx: &Ctx<T, C>,
    ids: &[StreamId],
    deadline: Option<Instant>,
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut attempt: u32 = 0;
    let mut deadline = deadline;
    loop {
        let r: std::result::Result<i64, fred::error::Error> = ctx
            .redis
            .client()
            .xack(
                ctx.keys.stream(),
                ctx.config.group.as_str(),
                ids.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
            )
            .await;
        add(&ctx.metrics.ack_calls, 1);
        match r {
            Ok(_) => {
                add(&ctx.metrics.acked, ids.len() as u64);
                return true;
            }
            Err(e) => {
                add(&ctx.metrics.ack_errors, 1);
                let e = Error::from(e);
                if !e.is_unavailable() {
                    tracing::warn!(error = %e, count = ids.len(), "XACK failed for good; the entries stay pending");
                    return false;
                }
                let delay = ctx.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                if deadline.is_none() && *stop.borrow() {
                    // Shutting down: do not retry for ever.
                    deadline = Some(ctx.stop_deadline());
                }
                if let Some(d) = deadline {
                    if after(Instant::now(), delay) > d {
                        tracing::warn!(error = %e, count = ids.len(), "XACK still failing at the shutdown deadline; the entries stay pending and will be redelivered");
                        return false;
                    }
                }
                tracing::warn!(error = %e, count = ids.len(), "XACK failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn forget_consumer<T, C>(ctx: &Ctx<T, C>) -> bool {
    let r: Result<i64> = FORGET_CONSUMER
        .exec(
            ctx.redis.client(),
            ctx.keys.stream(),
            vec![ctx.config.group.clone(), ctx.consumer.clone()],
        )
        .await;
    match r {
        Ok(n) => n == 1,
        Err(e) => {
            tracing::debug!(error = %e, "could not remove the consumer from the group");
            false
        }
    }
}
