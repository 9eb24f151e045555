//! [`Scheduler`]: recurring jobs (cron expressions or fixed intervals),
//! each tick enqueued exactly once however many schedulers run.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fred::interfaces::ClientLike;
use fredkit_core::{Backoff, Codec, Error, Result};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::options::JobOptions;
use crate::queue::Queue;

/// How late a missed tick may still be enqueued.
const CATCH_UP_MS: i64 = 60_000;

enum Every {
    Interval(i64),
    Cron(Box<croner::Cron>),
}

struct Schedule {
    name: String,
    every: Every,
    payload: Bytes,
    options: JobOptions,
}

impl Schedule {
    /// The first tick strictly after `after_ms` (epoch ms), if any.
    fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.every {
            Every::Interval(i) => after_ms.checked_div(*i)?.checked_add(1)?.checked_mul(*i),
            Every::Cron(c) => {
                let t: DateTime<Utc> = DateTime::from_timestamp_millis(after_ms)?;
                c.find_next_occurrence(&t, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }
}

/// Recurring jobs on a [`Queue`]: each schedule (a cron expression or a
/// fixed interval) enqueues one job per tick.
///
/// # Exactly once per tick
///
/// Run a scheduler in every instance of a service: no leader is needed.
/// Each tick is enqueued by one script that records the schedule's last
/// tick in the queue's meta hash and enqueues only a newer one, with the
/// job id `<name>:<tick epoch ms>` and the tick as its run-at time. So with
/// any number of schedulers, each tick is enqueued exactly once, even
/// after the tick's job completed and was removed by retention, and never
/// runs before its time by the server's clock.
///
/// Ticks are computed on the Redis server's clock (one `TIME` per wake-up),
/// in UTC for cron expressions. A scheduler enqueues every tick from its
/// start on; one held up (a busy runtime, Redis unreachable) enqueues the
/// ticks it missed when it can, unless they are more than 60 s old. Ticks
/// before any scheduler started are not enqueued.
///
/// ```no_run
/// use std::time::Duration;
/// use fredkit_jobs::{Queue, Scheduler};
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_jobs::Result<()> {
/// let queue: Queue<String> = Queue::new(&redis, "app:jobs", "reports")?;
/// let scheduler = Scheduler::new(&queue)
///     .cron("nightly", "0 3 * * *", &"nightly report".to_string())?
///     .every("heartbeat", Duration::from_secs(60), &"ping".to_string())?
///     .start();
/// // ... later
/// scheduler.shutdown().await;
/// # Ok(()) }
/// ```
///
/// # Round trips
///
/// Per wake-up: 1 (`TIME`); per tick: 1 (the enqueue script).
pub struct Scheduler<J, C: Codec> {
    queue: Queue<J, C>,
    schedules: Vec<Schedule>,
}

impl<J, C: Codec> fmt::Debug for Scheduler<J, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("queue", &self.queue.name())
            .field(
                "schedules",
                &self
                    .schedules
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<J: Serialize, C: Codec> Scheduler<J, C> {
    /// A scheduler with no schedule yet.
    pub fn new(queue: &Queue<J, C>) -> Scheduler<J, C> {
        Scheduler {
            queue: queue.clone(),
            schedules: Vec::new(),
        }
    }

    fn add(mut self, name: &str, every: Every, payload: &J, options: JobOptions) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::config("a recurring job's name is empty"));
        }
        if self.schedules.iter().any(|s| s.name == name) {
            return Err(Error::config(format!(
                "the recurring job '{name}' is defined twice"
            )));
        }
        let payload = self.queue.inner.codec.encode(payload)?;
        self.schedules.push(Schedule {
            name: name.to_string(),
            every,
            payload,
            options,
        });
        Ok(self)
    }

    /// Adds a schedule named `name` enqueueing `payload` at every tick of
    /// the cron expression `expr`: 5 fields (minute hour day-of-month month
    /// day-of-week) or 6 with seconds first, evaluated in UTC (parsed by the
    /// `croner` crate).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the expression
    /// when it is invalid, or the name when it is empty or already used;
    /// a codec error when `payload` cannot be encoded.
    pub fn cron(self, name: &str, expr: &str, payload: &J) -> Result<Self> {
        self.cron_with(name, expr, payload, JobOptions::new())
    }

    /// Like [`cron`](Self::cron), with the options of every tick's job (its
    /// id and run-at time are set per tick).
    ///
    /// # Errors
    ///
    /// As [`cron`](Self::cron).
    pub fn cron_with(
        self,
        name: &str,
        expr: &str,
        payload: &J,
        options: JobOptions,
    ) -> Result<Self> {
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expr)
            .or_else(|_| croner::Cron::from_str(expr))
            .map_err(|e| {
                Error::config(format!(
                    "invalid cron expression {expr:?} for the recurring job '{name}': {e}"
                ))
            })?;
        self.add(name, Every::Cron(Box::new(parsed)), payload, options)
    }

    /// Adds a schedule named `name` enqueueing `payload` every `interval`
    /// (at least 1 ms), on ticks that are multiples of it since the epoch
    /// (server clock): every scheduler agrees on them.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a zero interval
    /// or a bad name; a codec error when `payload` cannot be encoded.
    pub fn every(self, name: &str, interval: Duration, payload: &J) -> Result<Self> {
        self.every_with(name, interval, payload, JobOptions::new())
    }

    /// Like [`every`](Self::every), with the options of every tick's job.
    ///
    /// # Errors
    ///
    /// As [`every`](Self::every).
    pub fn every_with(
        self,
        name: &str,
        interval: Duration,
        payload: &J,
        options: JobOptions,
    ) -> Result<Self> {
        let ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        if ms < 1 {
            return Err(Error::config(format!(
                "the interval of the recurring job '{name}' is below 1 ms"
            )));
        }
        self.add(name, Every::Interval(ms), payload, options)
    }
}

impl<J: Send + Sync + 'static, C: Codec> Scheduler<J, C> {
    /// Starts the scheduler's task on the current tokio runtime.
    pub fn start(self) -> SchedulerHandle {
        let (stop, stop_rx) = watch::channel(false);
        let enqueued = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(schedule_loop(self, stop_rx, Arc::clone(&enqueued)));
        SchedulerHandle {
            stop,
            task,
            enqueued,
        }
    }
}

/// A running [`Scheduler`].
#[derive(Debug)]
pub struct SchedulerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    enqueued: Arc<AtomicU64>,
}

impl SchedulerHandle {
    /// Ticks this scheduler enqueued (those other schedulers enqueued first
    /// are not counted).
    pub fn enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::Relaxed)
    }

    /// Stops the scheduler (an enqueue in flight completes). Returns the
    /// ticks it enqueued.
    pub async fn shutdown(self) -> u64 {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.enqueued.load(Ordering::Relaxed)
    }
}

async fn server_ms<J, C: Codec>(queue: &Queue<J, C>) -> Result<i64> {
    let v: Vec<String> = queue
        .redis()
        .client()
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await?;
    let n = |i: usize| v.get(i).and_then(|s| s.parse::<i64>().ok());
    match (n(0), n(1)) {
        (Some(s), Some(us)) => Ok(s.saturating_mul(1000).saturating_add(us / 1000)),
        _ => Err(Error::protocol(format!("TIME answered {v:?}"))),
    }
}

async fn schedule_loop<J: Send + Sync + 'static, C: Codec>(
    s: Scheduler<J, C>,
    mut stop: watch::Receiver<bool>,
    enqueued: Arc<AtomicU64>,
) {
    let backoff = Backoff::builder()
        .initial(Duration::from_millis(50))
        .max(Duration::from_secs(5))
        .build();
    let Ok(backoff) = backoff else { return };
    let mut failures = 0u32;
    let mut next: Vec<Option<i64>> = vec![None; s.schedules.len()];
    loop {
        if *stop.borrow() {
            return;
        }
        let now = match server_ms(&s.queue).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, queue = %s.queue.name(), "scheduler: reading the server's clock failed; retrying");
                let d = backoff.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.changed() => {} }
                continue;
            }
        };
        let mut sleep_ms = 5_000i64;
        for (i, sch) in s.schedules.iter().enumerate() {
            let tick = match next[i] {
                Some(t) => t,
                None => match sch.next_after(now) {
                    Some(t) => t,
                    None => continue,
                },
            };
            next[i] = Some(tick);
            if tick <= now {
                let id = format!("{}:{tick}", sch.name);
                let opts = sch.options.clone().id(id).run_at(crate::reply::time(tick));
                match s
                    .queue
                    .enqueue_tick(sch.payload.clone(), &opts, &sch.name, tick)
                    .await
                {
                    Ok(Some(e)) if e.added => {
                        enqueued.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(schedule = %sch.name, tick, "recurring tick enqueued");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, schedule = %sch.name, tick, "enqueueing a recurring tick failed; retrying");
                        failures = failures.saturating_add(1);
                        sleep_ms = sleep_ms.min(
                            i64::try_from(backoff.delay(failures).as_millis()).unwrap_or(1000),
                        );
                        continue;
                    }
                }
                failures = 0;
                // The next tick: a scheduler that was held up (a busy
                // runtime, a slow Redis) catches up on the ticks it missed
                // since it started, one per pass, but not on those older
                // than CATCH_UP_MS.
                next[i] = sch.next_after(tick.max(now.saturating_sub(CATCH_UP_MS)));
            }
            if let Some(t) = next[i] {
                sleep_ms = sleep_ms.min(t.saturating_sub(now));
            }
        }
        let d = Duration::from_millis(u64::try_from(sleep_ms.max(0)).unwrap_or(0));
        tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.changed() => {} }
    }
}
