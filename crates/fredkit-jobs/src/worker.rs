//! [`Worker`]: runs a queue's jobs with bounded concurrency under leases.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, SortedSetsInterface};
use fred::types::config::Options;
use fred::types::Value;
use fredkit_conn::Dedicated;
use fredkit_core::{Backoff, Codec, Error, ErrorKind, MsgPack, Result, Script};
use fredkit_ratelimit::Limiter;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::{add, WorkerMetrics, WorkerSnapshot};
use crate::options::ms;
use crate::queue::{backoff_of, Queue, QueueInner};
use crate::reply;

static CLAIM: Script = Script::new("jobs_claim", include_str!("../scripts/claim.lua"));
static RENEW: Script = Script::new("jobs_renew", include_str!("../scripts/renew.lua"));
static COMPLETE: Script = Script::new("jobs_complete", include_str!("../scripts/complete.lua"));
static FAIL: Script = Script::new("jobs_fail", include_str!("../scripts/fail.lua"));
static PROGRESS: Script = Script::new("jobs_progress", include_str!("../scripts/progress.lua"));

/// Longest error text kept per failed attempt (longer ones are cut).
const MAX_ERROR_LEN: usize = 4096;

/// How a [`Worker`] runs. Start from [`WorkerConfig::new`] (or `default()`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    pub(crate) concurrency: usize,
    pub(crate) lease: Duration,
    pub(crate) block: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) rate_limit: Option<Limiter>,
    pub(crate) name: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig::new()
    }
}

impl WorkerConfig {
    /// Concurrency 16, lease 30 s (renewed every 10 s), block at most 5 s,
    /// no attempt timeout, shutdown deadline 10 s, no rate limit.
    pub fn new() -> WorkerConfig {
        WorkerConfig {
            concurrency: 16,
            lease: Duration::from_secs(30),
            block: Duration::from_secs(5),
            timeout: None,
            shutdown_timeout: Duration::from_secs(10),
            rate_limit: None,
            name: None,
        }
    }

    /// Most handlers running at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a started job stays this worker's without a renewal (at
    /// least 100 ms). The worker renews every third of it while the handler
    /// runs; a worker that dies (or stalls longer than this) loses its jobs:
    /// after the lease expires the next claim by any worker returns them to
    /// waiting (counted as stalled). Longer: slower recovery; shorter: more
    /// renewals and a risk of running a job twice when the worker is merely
    /// slow.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// Longest an idle worker blocks (`BZPOPMIN` on its own connection)
    /// before claiming again without being woken; it wakes sooner for a due
    /// delayed job or retry, or an expiring lease. Between 10 ms and 60 s.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.clamp(Duration::from_millis(10), Duration::from_secs(60));
        self
    }

    /// The attempt timeout of jobs enqueued without one.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long [`Worker::shutdown`] waits for running handlers.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Start at most what `limiter` allows across all workers of the queue
    /// (one `check(queue name, 1)` per job started; a refused check waits
    /// the limiter's `retry_after`). Build it with the limits you want, e.g.
    /// `Limiter::builder(&redis, "jobs:rl").limit(Limit::fixed_window(100, 1 s))
    /// .fail_mode(FailMode::Closed)`. A check that fails (Redis unreachable
    /// under `FailMode::Closed`) waits and retries: no job starts unchecked.
    pub fn rate_limit(mut self, limiter: Limiter) -> Self {
        self.rate_limit = Some(limiter);
        self
    }

    /// The worker's name (recorded on the jobs it runs); default
    /// `<pid>-<64 random bits>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// One attempt of one job, as the handler gets it.
pub struct Job<J> {
    /// The job's id.
    pub id: String,
    /// The decoded payload.
    pub payload: J,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    progress: ProgressHandle,
}

impl<J: fmt::Debug> fmt::Debug for Job<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("payload", &self.payload)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

#[derive(Clone)]
struct ProgressHandle {
    client: Client,
    key: String,
    token: String,
}

impl<J> Job<J> {
    /// Records the attempt's progress (a percentage, items done: the
    /// handler's choice), readable with [`Queue::job`]. True when stored;
    /// false when this attempt no longer holds the job (its lease was lost).
    /// One round trip.
    ///
    /// # Errors
    ///
    /// Redis unavailable.
    pub async fn progress(&self, value: u64) -> Result<bool> {
        let p = &self.progress;
        let n: i64 = PROGRESS
            .exec(
                &p.client,
                p.key.clone(),
                vec![p.token.clone(), value.to_string()],
            )
            .await?;
        Ok(n == 1)
    }
}

type Handler<J> =
    dyn Fn(Job<J>) -> BoxFuture<'static, std::result::Result<Bytes, String>> + Send + Sync;

/// What [`Worker::shutdown`] observed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The worker's name.
    pub worker: String,
    /// Handlers running when claiming stopped.
    pub in_flight_at_stop: u64,
    /// Handlers cancelled at the shutdown deadline: their jobs stay active
    /// until their lease expires, then any worker runs them again (counted
    /// as stalled).
    pub abandoned: u64,
    /// The worker's counters at the end.
    pub metrics: WorkerSnapshot,
}

/// A running worker: claims jobs of one [`Queue`] and runs `handler` on
/// each, at most `concurrency` at once.
///
/// # Delivery contract
///
/// At least once. A started job is held under a lease renewed while its
/// handler runs; `Ok(result)` completes it (the result is stored), `Err` or
/// a panic or the attempt timeout fails the attempt: it is retried after
/// its backoff, or dead after its last attempt with every attempt's error.
/// A payload that cannot be decoded is dead at once with the decode error.
/// A worker that dies loses its leases; after they expire the next claim by
/// any worker returns its jobs to waiting (stalled), so a job may run more
/// than once: make handlers idempotent (or record their effect with the
/// job id, e.g. `SADD`). Every completion and failure is recorded only
/// while the attempt still holds the job (its lease token), so a stalled
/// attempt that finishes late changes nothing.
///
/// # How it waits
///
/// Each worker has one connection of its own ([`Redis::dedicated`](fredkit_conn::Redis::dedicated))
/// on which it blocks in `BZPOPMIN` on the queue's marker set when there is
/// nothing to start; an enqueue (or a resume, or a retry scheduled) adds to
/// the marker and wakes one blocked worker, which wakes the next if more
/// jobs wait. The block lasts until the next due time (delayed job, retry,
/// lease expiry) the claim reported, at most [`WorkerConfig::block`]: no
/// polling loop, and the shared connection never blocks.
///
/// # Round trips (Redis commands)
///
/// | step | commands |
/// |---|---|
/// | claim up to `concurrency` free slots | 1 (`EVALSHA` claim) |
/// | per job completed | 1 (`EVALSHA` complete) |
/// | per failed attempt | 1 (`EVALSHA` fail) |
/// | per lease renewal (every lease/3, all running jobs) | 1 (`EVALSHA` renew) |
/// | idle | 1 `BZPOPMIN` per wake-up, then 1 claim |
///
/// So a job costs about 3 commands end to end under load (enqueue, its
/// share of a claim, complete), plus a `BZPOPMIN` when workers are idle.
///
/// # Failure
///
/// Claim and finish errors are logged, counted and retried with capped
/// exponential backoff; the worker keeps running through Redis restarts.
/// A `BZPOPMIN` unanswered past its block plus the command timeout means
/// a silent connection: the worker reconnects it.
///
/// # Cancellation
///
/// Dropping the `Worker` asks it to shut down gracefully in the background;
/// [`abort`](Self::abort) stops it at once, like a crash.
pub struct Worker<J, C: Codec = MsgPack> {
    control: Arc<Control>,
    _t: PhantomData<fn() -> (J, C)>,
}

struct Control {
    name: String,
    metrics: Arc<WorkerMetrics>,
    stop: watch::Sender<bool>,
    report: watch::Receiver<Option<ShutdownReport>>,
    main: AbortHandle,
    renewer: AbortHandle,
}

impl<J, C: Codec> fmt::Debug for Worker<J, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.control.name)
            .field("metrics", &self.metrics())
            .finish()
    }
}

struct Ctx<J, C> {
    queue: Arc<QueueInner<C>>,
    config: WorkerConfig,
    handler: Arc<Handler<J>>,
    metrics: Arc<WorkerMetrics>,
    name: String,
    /// Running attempts: member -> token.
    inflight: Mutex<HashMap<String, String>>,
    backoff: Backoff,
    stop_deadline: std::sync::OnceLock<Instant>,
}

impl<J, C> Ctx<J, C> {
    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<J, C> Worker<J, C>
where
    J: DeserializeOwned + Send + 'static,
    C: Codec,
{
    /// Starts a worker on `queue`'s current tokio runtime: a claim loop
    /// (blocking on a dedicated connection when idle), a lease renewer and
    /// one task per running job. `handler` runs once per attempt; its
    /// `Ok` value is encoded with the queue's codec and stored as the job's
    /// result; its `Err`'s `Display` text is recorded in the job's error
    /// history.
    ///
    /// Start-up sends nothing: if Redis is unavailable the worker retries
    /// with backoff until it answers.
    ///
    /// ```no_run
    /// use fredkit_jobs::{Job, Queue, Worker, WorkerConfig};
    /// # async fn run(redis: fredkit_conn::Redis) -> fredkit_jobs::Result<()> {
    /// let queue: Queue<String> = Queue::new(&redis, "app:jobs", "mail")?;
    /// let worker = Worker::start(&queue, WorkerConfig::new().concurrency(8), |job: Job<String>| async move {
    ///     println!("sending {} (attempt {})", job.payload, job.attempt);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// let report = worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The dedicated connection could not be configured. Must be called
    /// inside a tokio runtime.
    pub fn start<H, Fut, R, E>(
        queue: &Queue<J, C>,
        config: WorkerConfig,
        handler: H,
    ) -> Result<Worker<J, C>>
    where
        H: Fn(Job<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let inner = Arc::clone(&queue.inner);
        let dedicated = inner.redis.dedicated()?;
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{:016x}", std::process::id(), rand::random::<u64>()));
        let codec_queue = Arc::clone(&inner);
        let handler: Arc<Handler<J>> = Arc::new(move |job: Job<J>| {
            let fut = handler(job);
            let q = Arc::clone(&codec_queue);
            async move {
                match fut.await {
                    Ok(r) => q
                        .codec
                        .encode(&r)
                        .map_err(|e| format!("the handler's result cannot be encoded: {e}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            .boxed()
        });
        let metrics = Arc::new(WorkerMetrics::default());
        let backoff = Backoff::builder()
            .initial(Duration::from_millis(20))
            .max(Duration::from_secs(2))
            .build()?;
        let ctx = Arc::new(Ctx {
            queue: inner,
            config,
            handler,
            metrics: Arc::clone(&metrics),
            name: name.clone(),
            inflight: Mutex::new(HashMap::new()),
            backoff,
            stop_deadline: std::sync::OnceLock::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (report_tx, report_rx) = watch::channel(None);
        let span = tracing::info_span!(
            "fredkit.jobs.worker",
            queue = %ctx.queue.keys.name,
            worker = %name
        );
        let renewer = tokio::spawn(renew_loop(Arc::clone(&ctx)).instrument(span.clone()));
        let renewer_abort = renewer.abort_handle();
        let main = tokio::spawn(
            async move {
                let report = run(ctx, dedicated, stop_rx).await;
                renewer.abort();
                let _ = report_tx.send(Some(report));
            }
            .instrument(span),
        );
        Ok(Worker {
            control: Arc::new(Control {
                name,
                metrics,
                stop,
                report: report_rx,
                main: main.abort_handle(),
                renewer: renewer_abort,
            }),
            _t: PhantomData,
        })
    }
}

impl<J, C: Codec> Worker<J, C> {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.control.name
    }

    /// The counters.
    pub fn metrics(&self) -> WorkerSnapshot {
        self.control.metrics.snapshot()
    }

    /// Whether the claim loop still runs.
    pub fn is_running(&self) -> bool {
        !self.control.main.is_finished()
    }

    /// Stops claiming, lets running handlers finish within
    /// [`WorkerConfig::shutdown_timeout`] (recording their outcomes),
    /// cancels the rest (their jobs are recovered after their lease) and
    /// closes the worker's connection. Every caller gets the same report.
    ///
    /// Cancellation: dropping the future leaves the shutdown running.
    pub async fn shutdown(&self) -> ShutdownReport {
        let c = &self.control;
        let _ = c.stop.send(true);
        let mut rx = c.report.clone();
        let done = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        done.unwrap_or_else(|| ShutdownReport {
            worker: c.name.clone(),
            in_flight_at_stop: 0,
            abandoned: 0,
            metrics: c.metrics.snapshot(),
        })
    }

    /// Stops at once, like a crash: running handlers are dropped, their
    /// jobs are recovered by other workers after their lease expires.
    pub fn abort(&self) {
        self.control.main.abort();
        self.control.renewer.abort();
    }
}

impl<J, C: Codec> Drop for Worker<J, C> {
    fn drop(&mut self) {
        let _ = self.control.stop.send(true);
    }
}

/// One started attempt, as a claim returned it.
struct Claimed {
    member: String,
    id: String,
    payload: Bytes,
    max: u32,
    due_ms: i64,
    timeout_ms: u64,
    backoff: crate::JobBackoff,
    attempt: u32,
    token: String,
}

struct ClaimReply {
    now_ms: i64,
    wake_in_ms: i64,
    recovered: u64,
    recovered_dead: u64,
    dropped: u64,
    jobs: Vec<Claimed>,
}

fn parse_claim(v: Value) -> Result<ClaimReply> {
    let mut a = reply::array(v, "claim")?.into_iter();
    let mut int = || a.next().as_ref().and_then(reply::int).unwrap_or(0);
    let (now_ms, wake_in_ms, recovered, recovered_dead, dropped) =
        (int(), int(), int(), int(), int());
    let u = |n: i64| u64::try_from(n).unwrap_or(0);
    let rest: Vec<Value> = a.collect();
    let mut jobs = Vec::with_capacity(rest.len() / 13);
    let mut it = rest.into_iter();
    while let Some(member) = it.next() {
        let mut f: Vec<Value> = it.by_ref().take(12).collect();
        if f.len() < 12 {
            return Err(Error::protocol("claim: a job's fields are cut short"));
        }
        let token = reply::string(f.pop().unwrap_or(Value::Null));
        let attempt = f.pop().as_ref().and_then(reply::int).unwrap_or(1);
        let mut f = f.into_iter();
        let mut next = || f.next().unwrap_or(Value::Null);
        let id = reply::string(next());
        let payload = reply::bytes(next());
        let max = next();
        let due = next();
        let to = next();
        let bk = reply::string(next());
        let (bd, bm, bj) = (next(), next(), next());
        let i = |v: &Value| reply::int(v).unwrap_or(0);
        jobs.push(Claimed {
            member: reply::string(member),
            id,
            payload,
            max: u32::try_from(i(&max)).unwrap_or(1).max(1),
            due_ms: i(&due),
            timeout_ms: u(i(&to)),
            backoff: backoff_of(&bk, i(&bd), i(&bm), i(&bj)),
            attempt: u32::try_from(attempt).unwrap_or(1),
            token,
        });
    }
    Ok(ClaimReply {
        now_ms,
        wake_in_ms,
        recovered: u(recovered),
        recovered_dead: u(recovered_dead),
        dropped: u(dropped),
        jobs,
    })
}

async fn claim<J, C: Codec>(ctx: &Ctx<J, C>, n: usize) -> Result<ClaimReply> {
    let k = &ctx.queue.keys;
    let v: Value = CLAIM
        .exec(
            ctx.queue.redis.client(),
            vec![
                k.wait.clone(),
                k.delayed.clone(),
                k.retry.clone(),
                k.active.clone(),
                k.meta.clone(),
                k.marker.clone(),
                k.dead.clone(),
            ],
            vec![
                k.job_prefix.clone(),
                n.to_string(),
                ms(ctx.config.lease).to_string(),
                ctx.name.clone(),
                "1000".to_string(),
            ],
        )
        .await?;
    parse_claim(v)
}

/// Blocks on the marker for at most `block`; true when woken by a marker.
async fn wait_marker<J, C: Codec>(ctx: &Ctx<J, C>, conn: &Client, block: Duration) -> Result<bool> {
    let options = Options {
        timeout: Some(block.saturating_add(ctx.queue.redis.config().command_timeout())),
        ..Options::default()
    };
    let secs = block.as_secs_f64().max(0.01);
    let v: Value = conn
        .with_options(&options)
        .bzpopmin(ctx.queue.keys.marker.as_str(), secs)
        .await?;
    Ok(!matches!(v, Value::Null))
}

async fn run<J, C>(
    ctx: Arc<Ctx<J, C>>,
    dedicated: Dedicated<Client>,
    mut stop_rx: watch::Receiver<bool>,
) -> ShutdownReport
where
    J: DeserializeOwned + Send + 'static,
    C: Codec,
{
    let cfg = ctx.config.clone();
    let sem = Arc::new(Semaphore::new(cfg.concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut failures: u32 = 0;
    loop {
        if *stop_rx.borrow() {
            break;
        }
        // Reap finished tasks (their results are already recorded).
        while tasks.try_join_next().is_some() {}
        let first = tokio::select! {
            biased;
            _ = stop_rx.changed() => continue,
            p = Arc::clone(&sem).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let mut permits = vec![first];
        while permits.len() < cfg.concurrency {
            match Arc::clone(&sem).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if let Some(limiter) = &cfg.rate_limit {
            // One start at a time under a rate limit.
            permits.truncate(1);
            match limiter.check(&ctx.queue.keys.name, 1).await {
                Ok(d) if !d.allowed => {
                    add(&ctx.metrics.rate_limited, 1);
                    let wait = d.retry_after.unwrap_or(Duration::from_millis(50));
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop_rx.changed() => {}
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "rate limit check failed; waiting");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(ctx.backoff.delay(0)) => {}
                        _ = stop_rx.changed() => {}
                    }
                    continue;
                }
            }
        }
        match claim(&ctx, permits.len()).await {
            Ok(reply) => {
                failures = 0;
                add(&ctx.metrics.stalled_recovered, reply.recovered);
                add(&ctx.metrics.stalled_dead, reply.recovered_dead);
                let f = &ctx.queue.facade;
                f.stalled_requeued.increment(reply.recovered);
                f.stalled_dead.increment(reply.recovered_dead);
                if reply.recovered + reply.recovered_dead > 0 {
                    tracing::info!(
                        recovered = reply.recovered,
                        dead = reply.recovered_dead,
                        "stalled jobs (lease expired) returned to waiting"
                    );
                }
                if reply.dropped > 0 {
                    tracing::warn!(
                        count = reply.dropped,
                        "queue members without a job hash were dropped (deleted jobs or garbage)"
                    );
                }
                let started = reply.jobs.len();
                for job in reply.jobs {
                    let Some(permit) = permits.pop() else { break };
                    add(&ctx.metrics.started, 1);
                    let wait = reply.now_ms.saturating_sub(job.due_ms).max(0);
                    f.wait
                        .record(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
                    ctx.inflight().insert(job.member.clone(), job.token.clone());
                    tasks.spawn(run_job(Arc::clone(&ctx), job, permit));
                }
                drop(permits);
                if started == 0 {
                    let block = if reply.wake_in_ms >= 0 {
                        cfg.block.min(Duration::from_millis(
                            u64::try_from(reply.wake_in_ms).unwrap_or(0),
                        ))
                    } else {
                        cfg.block
                    };
                    if block.is_zero() {
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = stop_rx.changed() => {}
                        r = wait_marker(&ctx, &dedicated, block) => {
                            if let Err(e) = r {
                                add(&ctx.metrics.claim_errors, 1);
                                if e.kind() == ErrorKind::Timeout {
                                    tracing::warn!(error = %e, "BZPOPMIN unanswered past its block + command timeout; reconnecting the worker's connection");
                                    let wait = ctx.queue.redis.config().connect_timeout() + Duration::from_secs(1);
                                    tokio::select! {
                                        r = tokio::time::timeout(wait, dedicated.force_reconnection()) => {
                                            if let Ok(Err(e)) = r {
                                                tracing::debug!(error = %e, "forced reconnection failed; fred's reconnect policy goes on");
                                            }
                                        }
                                        _ = stop_rx.changed() => {}
                                    }
                                } else {
                                    tracing::warn!(error = %e, "BZPOPMIN failed; retrying with backoff");
                                    let delay = ctx.backoff.delay(failures);
                                    failures = failures.saturating_add(1);
                                    tokio::select! {
                                        _ = tokio::time::sleep(delay) => {}
                                        _ = stop_rx.changed() => {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => {
                drop(permits);
                add(&ctx.metrics.claim_errors, 1);
                tracing::warn!(error = %e, "claiming jobs failed; retrying with backoff");
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
    let deadline = *ctx
        .stop_deadline
        .get_or_init(|| Instant::now() + cfg.shutdown_timeout);
    let in_flight_at_stop = cfg.concurrency.saturating_sub(sem.available_permits()) as u64;
    let mut abandoned = 0;
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = tokio::time::sleep_until(deadline) => {
                abandoned = tasks.len() as u64;
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    if abandoned > 0 {
        tracing::warn!(abandoned, "handlers still running at the shutdown deadline were cancelled; their jobs are recovered after their lease");
    }
    drop(dedicated);
    ShutdownReport {
        worker: ctx.name.clone(),
        in_flight_at_stop,
        abandoned,
        metrics: ctx.metrics.snapshot(),
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

async fn run_job<J, C>(ctx: Arc<Ctx<J, C>>, job: Claimed, permit: OwnedSemaphorePermit)
where
    J: DeserializeOwned + Send + 'static,
    C: Codec,
{
    let span = tracing::info_span!(
        "fredkit.jobs.job",
        queue = %ctx.queue.keys.name,
        job_id = %job.id,
        attempt = job.attempt,
        outcome = tracing::field::Empty
    );
    async {
        let started = std::time::Instant::now();
        let outcome: std::result::Result<Bytes, (String, bool)> =
            match ctx.queue.codec.decode::<J>(&job.payload) {
                Err(e) => {
                    add(&ctx.metrics.decode_errors, 1);
                    Err((format!("the payload cannot be decoded: {e}"), true))
                }
                Ok(payload) => {
                    let j = Job {
                        id: job.id.clone(),
                        payload,
                        attempt: job.attempt,
                        max_attempts: job.max,
                        progress: ProgressHandle {
                            client: ctx.queue.redis.client().clone(),
                            key: ctx.queue.keys.job_key_of_member(&job.member),
                            token: job.token.clone(),
                        },
                    };
                    let timeout = if job.timeout_ms > 0 {
                        Some(Duration::from_millis(job.timeout_ms))
                    } else {
                        ctx.config.timeout
                    };
                    let fut = AssertUnwindSafe((ctx.handler)(j)).catch_unwind();
                    let r = match timeout {
                        Some(t) => match tokio::time::timeout(t, fut).await {
                            Ok(r) => r,
                            Err(_) => Ok(Err(format!("the attempt timed out after {t:?}"))),
                        },
                        None => fut.await,
                    };
                    match r {
                        Ok(Ok(b)) => Ok(b),
                        Ok(Err(e)) => Err((e, false)),
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "non-string panic payload".into());
                            Err((format!("the handler panicked: {what}"), false))
                        }
                    }
                }
            };
        ctx.queue.facade.run.record(started.elapsed());
        finish(&ctx, &job, outcome).await;
    }
    .instrument(span)
    .await;
    ctx.inflight().remove(&job.member);
    drop(permit);
}

/// Records an attempt's outcome, retrying while Redis is unavailable (until
/// the shutdown deadline once shutting down).
async fn finish<J, C: Codec>(
    ctx: &Ctx<J, C>,
    job: &Claimed,
    outcome: std::result::Result<Bytes, (String, bool)>,
) {
    let k = &ctx.queue.keys;
    let span = tracing::Span::current();
    let f = &ctx.queue.facade;
    let mut attempt: u32 = 0;
    loop {
        let r: Result<i64> = match &outcome {
            Ok(result) => {
                COMPLETE
                    .exec(
                        ctx.queue.redis.client(),
                        vec![
                            k.active.clone(),
                            k.completed.clone(),
                            k.job_key_of_member(&job.member),
                        ],
                        vec![
                            Value::from(job.member.clone()),
                            Value::from(job.token.clone()),
                            Value::Bytes(result.clone()),
                            Value::from(k.job_prefix.clone()),
                        ],
                    )
                    .await
            }
            Err((error, fatal)) => {
                let delay = job.backoff.delay(job.attempt);
                FAIL.exec(
                    ctx.queue.redis.client(),
                    vec![
                        k.active.clone(),
                        k.retry.clone(),
                        k.dead.clone(),
                        k.marker.clone(),
                        k.job_key_of_member(&job.member),
                    ],
                    vec![
                        job.member.clone(),
                        job.token.clone(),
                        cut(error.clone()),
                        ms(delay).to_string(),
                        if *fatal { "1" } else { "0" }.to_string(),
                        k.job_prefix.clone(),
                    ],
                )
                .await
            }
        };
        match r {
            Ok(code) => {
                let outcome_name = match (&outcome, code) {
                    (Ok(_), 1 | 2) => {
                        add(&ctx.metrics.completed, 1);
                        f.finished_completed.increment(1);
                        "completed"
                    }
                    (Err(_), 1 | 2) => {
                        add(&ctx.metrics.failed, 1);
                        f.finished_retry.increment(1);
                        "retry"
                    }
                    (Err(_), 3) => {
                        add(&ctx.metrics.failed, 1);
                        add(&ctx.metrics.dead, 1);
                        f.finished_dead.increment(1);
                        "dead"
                    }
                    _ => {
                        add(&ctx.metrics.lease_lost, 1);
                        f.finished_lease_lost.increment(1);
                        tracing::warn!(job_id = %job.id, "the attempt finished after losing its lease (the job stalled and was recovered, or was deleted): its outcome is not recorded");
                        "lease_lost"
                    }
                };
                span.record("outcome", outcome_name);
                if let Err((e, _)) = &outcome {
                    tracing::debug!(error = %e, outcome = outcome_name, "attempt failed");
                }
                return;
            }
            Err(e) => {
                add(&ctx.metrics.finish_errors, 1);
                let delay = ctx.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                let give_up = !e.is_unavailable()
                    || ctx
                        .stop_deadline
                        .get()
                        .is_some_and(|d| Instant::now() + delay > *d);
                if give_up {
                    span.record("outcome", "unrecorded");
                    tracing::warn!(error = %e, job_id = %job.id, "could not record the attempt's outcome; the job is recovered after its lease expires and runs again");
                    return;
                }
                tracing::warn!(error = %e, job_id = %job.id, "recording the attempt's outcome failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn renew_loop<J, C: Codec>(ctx: Arc<Ctx<J, C>>) {
    let every = ctx.config.lease / 3;
    let k = &ctx.queue.keys;
    loop {
        tokio::time::sleep(every).await;
        let running: Vec<(String, String)> = ctx
            .inflight()
            .iter()
            .map(|(m, t)| (m.clone(), t.clone()))
            .collect();
        for chunk in running.chunks(500) {
            let mut args = Vec::with_capacity(2 + chunk.len() * 2);
            args.push(k.job_prefix.clone());
            args.push(ms(ctx.config.lease).to_string());
            for (m, t) in chunk {
                args.push(m.clone());
                args.push(t.clone());
            }
            add(&ctx.metrics.renewals, 1);
            let r: Result<Vec<i64>> = RENEW
                .exec(ctx.queue.redis.client(), k.active.clone(), args)
                .await;
            match r {
                Ok(v) => {
                    for ((m, _), ok) in chunk.iter().zip(v) {
                        if ok != 1 {
                            tracing::warn!(member = %m, "lease lost while the handler runs (the job stalled and was recovered, or was deleted); its outcome will not be recorded");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing leases failed; retrying at the next renewal")
                }
            }
        }
    }
}
