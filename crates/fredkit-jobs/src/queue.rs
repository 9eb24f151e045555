//! [`Queue`]: enqueue jobs, read their state, administer the queue.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fred::interfaces::HashesInterface;
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::{Codec, Error, IntoKeySpace, MsgPack, Result, Script};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::keys::QueueKeys;
use crate::metrics::Facade;
use crate::options::{ms, JobBackoff, JobOptions};
use crate::reply;

pub(crate) static ENQUEUE: Script =
    Script::new("jobs_enqueue", include_str!("../scripts/enqueue.lua"));
static RETRY: Script = Script::new("jobs_retry", include_str!("../scripts/retry.lua"));
static REMOVE: Script = Script::new("jobs_remove", include_str!("../scripts/remove.lua"));
static PAUSE: Script = Script::new("jobs_pause", include_str!("../scripts/pause.lua"));
static DRAIN: Script = Script::new("jobs_drain", include_str!("../scripts/drain.lua"));
static CLEAN: Script = Script::new("jobs_clean", include_str!("../scripts/clean.lua"));
static COUNTS: Script = Script::new("jobs_counts", include_str!("../scripts/counts.lua"));

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Due, waiting for a worker.
    Waiting,
    /// Not due yet (a delay or run-at time, by the server's clock).
    Delayed,
    /// Running under a worker's lease.
    Active,
    /// An attempt failed; waiting out its backoff before the next attempt.
    Failed,
    /// Finished successfully (kept as [`Keep`](crate::Keep) says).
    Completed,
    /// Every attempt failed, or the payload could not be decoded. Kept with
    /// its error history; [`Queue::retry`] brings it back.
    Dead,
}

impl JobState {
    fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "waiting" => JobState::Waiting,
            "delayed" => JobState::Delayed,
            "active" => JobState::Active,
            "failed" => JobState::Failed,
            "completed" => JobState::Completed,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }
}

/// What [`Queue::enqueue`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enqueued {
    /// The job's id (the caller's, or the generated one).
    pub id: String,
    /// True when this call added the job; false when a job with this id
    /// existed (nothing was changed).
    pub added: bool,
    /// The job's state after the call (of the existing job when not added).
    pub state: JobState,
}

/// One failed attempt in a job's history.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptError {
    /// When it was recorded (server clock).
    pub at: SystemTime,
    /// The handler's error text (its `Display`), the panic message, the
    /// timeout, the decode error, or `stalled: ...` for a lost lease.
    pub message: String,
}

/// A job's state as [`Queue::job`] read it (one `HGETALL`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct JobInfo<J, R> {
    /// The id.
    pub id: String,
    /// The state.
    pub state: JobState,
    /// The payload, or the decode error's text when it cannot be decoded as `J`.
    pub payload: std::result::Result<J, String>,
    /// Attempts started (reset to 0 by [`Queue::retry`]).
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The priority.
    pub priority: u16,
    /// When it was enqueued (server clock).
    pub created_at: SystemTime,
    /// When it is or was due (for a failed job: when its retry is due).
    pub due_at: SystemTime,
    /// When each attempt started, oldest first (server clock), across
    /// retries of a dead job too.
    pub attempt_starts: Vec<SystemTime>,
    /// When it finished (completed or dead).
    pub finished_at: Option<SystemTime>,
    /// Every failed attempt's error, oldest first.
    pub errors: Vec<AttemptError>,
    /// Times its lease expired (worker lost).
    pub stalled: u32,
    /// The handler's result once completed.
    pub result: Option<R>,
    /// The last progress the handler reported ([`Job::progress`](crate::Job::progress)).
    pub progress: Option<u64>,
}

/// Jobs per state at one instant ([`Queue::counts`], one round trip).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Due, waiting for a worker.
    pub waiting: u64,
    /// Not due yet.
    pub delayed: u64,
    /// Waiting out a backoff before a retry.
    pub failed: u64,
    /// Running.
    pub active: u64,
    /// Completed and retained.
    pub completed: u64,
    /// Dead and retained.
    pub dead: u64,
    /// Stalled jobs recovered (lease expired) over the queue's life.
    pub stalled: u64,
    /// Whether the queue is paused.
    pub paused: bool,
}

/// A job queue on Redis: enqueue jobs of type `J` (encoded with `C`,
/// MessagePack by default), read their state and administer the queue.
/// [`Worker`](crate::Worker)s run them.
///
/// Cheap to clone (one `Arc`). Every key of the queue is
/// `prefix:{name}:...`: one hash tag, one cluster slot, so every
/// operation is one script on one node.
///
/// # Round trips
///
/// | operation | round trips | Redis commands |
/// |---|---|---|
/// | [`enqueue`](Self::enqueue), [`enqueue_with`](Self::enqueue_with) | 1 | 1 (`EVALSHA` enqueue) |
/// | [`enqueue_bulk`](Self::enqueue_bulk) of n jobs | 1 (a pipeline) | n |
/// | [`job`](Self::job) | 1 | 1 (`HGETALL`) |
/// | [`counts`](Self::counts) | 1 | 1 (script: 6 `ZCARD`, `HGET`, `HEXISTS`) |
/// | [`pause`](Self::pause), [`resume`](Self::resume), [`retry`](Self::retry), [`remove`](Self::remove) | 1 | 1 |
/// | [`drain`](Self::drain), [`clean`](Self::clean) | 1 per 1,000 jobs | 1 per 1,000 jobs |
///
/// The first call of each script on a node costs one more round trip
/// (`NOSCRIPT`, then `EVAL`).
///
/// # Cancellation
///
/// Every method is one script or command: dropping its future leaves it run
/// once or not at all. A lost reply that fred resends runs it twice, which
/// every script tolerates (enqueue is idempotent by id; a generated id is
/// made before sending, so a resent enqueue finds its own job).
pub struct Queue<J, C: Codec = MsgPack> {
    pub(crate) inner: Arc<QueueInner<C>>,
    _t: PhantomData<fn(J)>,
}

pub(crate) struct QueueInner<C> {
    pub(crate) redis: Redis,
    pub(crate) keys: QueueKeys,
    pub(crate) codec: C,
    pub(crate) defaults: JobOptions,
    pub(crate) facade: Facade,
}

impl<J, C: Codec> Clone for Queue<J, C> {
    fn clone(&self) -> Self {
        Queue {
            inner: Arc::clone(&self.inner),
            _t: PhantomData,
        }
    }
}

impl<J, C: Codec> fmt::Debug for Queue<J, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("prefix", &self.inner.keys.space.prefix())
            .field("name", &self.inner.keys.name)
            .finish()
    }
}

impl<J> Queue<J, MsgPack> {
    /// A queue named `name` under `prefix` (its keys are
    /// `prefix:{name}:...`), payloads in MessagePack. Sends nothing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a
    /// prefix [`KeySpace::new`](crate::KeySpace::new) rejects or an empty name.
    pub fn new(redis: &Redis, prefix: impl IntoKeySpace, name: &str) -> Result<Queue<J, MsgPack>> {
        Queue::with_codec(redis, prefix, name, MsgPack)
    }
}

impl<J, C: Codec> Queue<J, C> {
    /// Like [`new`](Queue::new) with another codec (e.g. `fredkit_core::Json`).
    /// Producers and workers of a queue must use the same codec.
    ///
    /// # Errors
    ///
    /// As [`new`](Queue::new).
    pub fn with_codec(
        redis: &Redis,
        prefix: impl IntoKeySpace,
        name: &str,
        codec: C,
    ) -> Result<Queue<J, C>> {
        let space = prefix.into_key_space()?;
        let keys = QueueKeys::new(space, name)?;
        let facade = Facade::new(keys.space.prefix(), name);
        Ok(Queue {
            inner: Arc::new(QueueInner {
                redis: redis.clone(),
                keys,
                codec,
                defaults: JobOptions::new(),
                facade,
            }),
            _t: PhantomData,
        })
    }

    /// This queue with other default options for [`enqueue`](Self::enqueue)
    /// (a set id is ignored: every job needs its own).
    pub fn with_defaults(self, mut defaults: JobOptions) -> Queue<J, C>
    where
        C: Clone,
    {
        defaults.id = None;
        let inner = &self.inner;
        Queue {
            inner: Arc::new(QueueInner {
                redis: inner.redis.clone(),
                keys: inner.keys.clone(),
                codec: inner.codec.clone(),
                defaults,
                facade: inner.facade.clone(),
            }),
            _t: PhantomData,
        }
    }

    /// The queue's name (its hash tag).
    pub fn name(&self) -> &str {
        &self.inner.keys.name
    }

    /// The queue's key prefix.
    pub fn prefix(&self) -> &str {
        self.inner.keys.space.prefix()
    }

    /// The default options of [`enqueue`](Self::enqueue).
    pub fn defaults(&self) -> &JobOptions {
        &self.inner.defaults
    }

    /// The connection handle.
    pub fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    fn enqueue_call(
        &self,
        payload: Bytes,
        opts: &JobOptions,
        recurring: Option<(&str, i64)>,
    ) -> Result<(String, Vec<String>, Vec<Value>)> {
        let id = match &opts.id {
            Some(id) => id.clone(),
            None => format!("{:032x}", rand::random::<u128>()),
        };
        let (key, member) = self.inner.keys.job(&id)?;
        let (delay, run_at) = opts.schedule()?;
        let (bk, bd, bm, bj) = opts.backoff.encode();
        let (rc, ra) = opts.keep_completed.encode();
        let (dc, da) = opts.keep_dead.encode();
        let k = &self.inner.keys;
        let keys = vec![
            k.wait.clone(),
            k.delayed.clone(),
            k.meta.clone(),
            k.marker.clone(),
            key,
        ];
        let (rname, rtick) = recurring.unwrap_or(("", 0));
        let n = |x: u64| Value::from(i64::try_from(x).unwrap_or(i64::MAX));
        let args = vec![
            Value::from(member),
            Value::from(id.clone()),
            Value::Bytes(payload),
            Value::from(i64::from(opts.priority)),
            n(delay),
            Value::from(run_at),
            Value::from(i64::from(opts.max_attempts.max(1))),
            Value::from(bk),
            n(bd),
            n(bm),
            Value::from(i64::from(bj)),
            n(opts.timeout.map(ms).unwrap_or(0)),
            Value::from(rc),
            Value::from(ra),
            Value::from(dc),
            Value::from(da),
            Value::from(rname.to_string()),
            Value::from(rtick),
            Value::from(format!("{:016x}", rand::random::<u64>())),
        ];
        Ok((id, keys, args))
    }

    fn enqueued(&self, id: String, v: Value) -> Result<Option<Enqueued>> {
        let mut a = reply::array(v, "enqueue")?.into_iter();
        let code = a.next().as_ref().and_then(reply::int);
        let state = a.next().map(reply::string).unwrap_or_default();
        let f = &self.inner.facade;
        match code {
            Some(2) => Ok(None),
            Some(c @ (0 | 1)) => {
                let state = JobState::parse(&state).ok_or_else(|| {
                    Error::protocol(format!(
                        "job '{id}' of queue '{}' has the unknown state {state:?}: something else wrote its hash",
                        self.name()
                    ))
                })?;
                if c == 1 {
                    f.enqueued_added.increment(1);
                } else {
                    f.enqueued_duplicate.increment(1);
                }
                Ok(Some(Enqueued {
                    id,
                    added: c == 1,
                    state,
                }))
            }
            _ => Err(Error::protocol("enqueue: unexpected reply")),
        }
    }

    /// Enqueues a recurring tick (see [`Scheduler`](crate::Scheduler)):
    /// `None` when this tick (or a later one) was enqueued already.
    pub(crate) async fn enqueue_tick(
        &self,
        payload: Bytes,
        opts: &JobOptions,
        schedule: &str,
        tick: i64,
    ) -> Result<Option<Enqueued>> {
        let (id, keys, args) = self.enqueue_call(payload, opts, Some((schedule, tick)))?;
        let v: Value = ENQUEUE.exec(self.inner.redis.client(), keys, args).await?;
        self.enqueued(id, v)
    }

    /// The job's state, or `None` for an unknown id (never enqueued, or
    /// removed: deleted, drained, cleaned or past its retention). `R` is the
    /// handler's result type (`()` when it returns nothing).
    ///
    /// One round trip (`HGETALL`).
    ///
    /// # Errors
    ///
    /// Redis unavailable; [`ErrorKind::Protocol`](crate::ErrorKind::Protocol)
    /// naming the key when something else is stored there or a field is
    /// garbage; [`ErrorKind::Codec`](crate::ErrorKind::Codec) when the
    /// result cannot be decoded as `R` (an undecodable payload is reported in
    /// [`JobInfo::payload`] instead).
    pub async fn job<R: DeserializeOwned>(&self, id: &str) -> Result<Option<JobInfo<J, R>>>
    where
        J: DeserializeOwned,
    {
        let (key, _) = self.inner.keys.job(id)?;
        let fields: HashMap<String, Bytes> = self
            .inner
            .redis
            .client()
            .hgetall(&key)
            .await
            .map_err(|e| Error::from(e).naming("HGETALL", &key))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let bad = |field: &str| {
            Error::protocol(format!(
                "job hash '{key}' has a missing or invalid '{field}' field: something other than fredkit-jobs wrote it; remove the job"
            ))
        };
        let text = |f: &str| {
            fields
                .get(f)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let num = |f: &str| text(f).and_then(|s| s.parse::<i64>().ok());
        let state = text("st")
            .as_deref()
            .and_then(JobState::parse)
            .ok_or_else(|| bad("st"))?;
        let payload = match fields.get("data") {
            Some(b) => self.inner.codec.decode::<J>(b).map_err(|e| e.to_string()),
            None => return Err(bad("data")),
        };
        let result = match (state, fields.get("res")) {
            (JobState::Completed, Some(b)) => Some(self.inner.codec.decode::<R>(b)?),
            _ => None,
        };
        let n_starts = num("ns").unwrap_or(0).clamp(0, 100_000);
        let attempt_starts = (1..=n_starts)
            .filter_map(|i| num(&format!("s{i}")))
            .map(reply::time)
            .collect();
        let n_errors = num("ne").unwrap_or(0).clamp(0, 100_000);
        let errors = (1..=n_errors)
            .filter_map(|i| {
                Some(AttemptError {
                    message: text(&format!("e{i}"))?,
                    at: reply::time(num(&format!("et{i}")).unwrap_or(0)),
                })
            })
            .collect();
        let u32_of = |f: &str| num(f).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        Ok(Some(JobInfo {
            id: text("id").unwrap_or_else(|| id.to_string()),
            state,
            payload,
            attempts: u32_of("att"),
            max_attempts: u32_of("max"),
            priority: num("prio").and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
            created_at: reply::time(num("ct").ok_or_else(|| bad("ct"))?),
            due_at: reply::time(num("due").ok_or_else(|| bad("due"))?),
            attempt_starts,
            finished_at: num("ft").map(reply::time),
            errors,
            stalled: u32_of("stl"),
            result,
            progress: fields
                .get("prog")
                .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
        }))
    }

    /// Jobs per state, the stalled count and the paused flag, read
    /// atomically: one round trip (one script).
    ///
    /// # Errors
    ///
    /// Redis unavailable; [`ErrorKind::Script`](crate::ErrorKind::Script)
    /// naming the script when a key holds something else (`WRONGTYPE`).
    pub async fn counts(&self) -> Result<Counts> {
        let k = &self.inner.keys;
        let mut keys = k.all_sets().to_vec();
        keys.push(k.meta.clone());
        let v: Vec<i64> = COUNTS.exec(self.inner.redis.client(), keys, ()).await?;
        let g = |i: usize| {
            v.get(i)
                .copied()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        Ok(Counts {
            waiting: g(0),
            delayed: g(1),
            failed: g(2),
            active: g(3),
            completed: g(4),
            dead: g(5),
            stalled: g(6),
            paused: g(7) == 1,
        })
    }

    /// Pauses the queue: from the moment this returns, no worker starts a
    /// job (each claim checks the flag atomically); running jobs finish,
    /// and due delayed jobs still move to waiting. Idempotent. One round trip.
    ///
    /// # Errors
    ///
    /// Redis unavailable, or garbage under the queue's meta key.
    pub async fn pause(&self) -> Result<()> {
        self.set_paused(true).await
    }

    /// Resumes a paused queue and wakes a blocked worker. Idempotent. One
    /// round trip.
    ///
    /// # Errors
    ///
    /// As [`pause`](Self::pause).
    pub async fn resume(&self) -> Result<()> {
        self.set_paused(false).await
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        let k = &self.inner.keys;
        let _: i64 = PAUSE
            .exec(
                self.inner.redis.client(),
                vec![k.meta.clone(), k.marker.clone()],
                if paused { "1" } else { "0" },
            )
            .await?;
        Ok(())
    }

    /// Brings a dead job back to waiting with its attempts reset (its error
    /// history stays). True when it did; false when the job is not dead
    /// (unknown, or already brought back: a second call does nothing).
    /// One round trip.
    ///
    /// # Errors
    ///
    /// Redis unavailable, an empty id, or garbage under the queue's keys.
    pub async fn retry(&self, id: &str) -> Result<bool> {
        let (key, member) = self.inner.keys.job(id)?;
        let k = &self.inner.keys;
        let n: i64 = RETRY
            .exec(
                self.inner.redis.client(),
                vec![
                    k.wait.clone(),
                    k.dead.clone(),
                    k.marker.clone(),
                    k.meta.clone(),
                    key,
                ],
                member,
            )
            .await?;
        Ok(n == 1)
    }

    /// Deletes a job in any state. True when it existed. A worker running it
    /// loses its lease: its result is not recorded. One round trip.
    ///
    /// # Errors
    ///
    /// Redis unavailable, an empty id, or garbage under the queue's keys.
    pub async fn remove(&self, id: &str) -> Result<bool> {
        let (key, member) = self.inner.keys.job(id)?;
        let mut keys = self.inner.keys.all_sets().to_vec();
        keys.push(key);
        let n: i64 = REMOVE.exec(self.inner.redis.client(), keys, member).await?;
        Ok(n == 1)
    }

    /// Deletes every job that has not started (waiting, delayed, awaiting a
    /// retry); running, completed and dead jobs stay. Returns how many.
    /// One round trip per 1,000 jobs; not atomic as a whole (jobs enqueued
    /// meanwhile may or may not be deleted).
    ///
    /// # Errors
    ///
    /// Redis unavailable, or garbage under the queue's keys.
    pub async fn drain(&self) -> Result<u64> {
        let k = &self.inner.keys;
        let mut total = 0u64;
        loop {
            let n: i64 = DRAIN
                .exec(
                    self.inner.redis.client(),
                    vec![k.wait.clone(), k.delayed.clone(), k.retry.clone()],
                    vec![k.job_prefix.clone(), "1000".to_string()],
                )
                .await?;
            let n = u64::try_from(n).unwrap_or(0);
            total = total.saturating_add(n);
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Deletes completed (`dead = false`) or dead (`dead = true`) jobs that
    /// finished at least `older_than` ago by the server's clock. Returns how
    /// many. One round trip per 1,000 jobs.
    ///
    /// # Errors
    ///
    /// Redis unavailable, or garbage under the queue's keys.
    pub async fn clean(&self, dead: bool, older_than: Duration) -> Result<u64> {
        let k = &self.inner.keys;
        let set = if dead { &k.dead } else { &k.completed };
        let mut total = 0u64;
        loop {
            let n: i64 = CLEAN
                .exec(
                    self.inner.redis.client(),
                    set.clone(),
                    vec![
                        k.job_prefix.clone(),
                        ms(older_than).to_string(),
                        "1000".to_string(),
                    ],
                )
                .await?;
            let n = u64::try_from(n).unwrap_or(0);
            total = total.saturating_add(n);
            if n == 0 {
                return Ok(total);
            }
        }
    }
}

impl<J: Serialize, C: Codec> Queue<J, C> {
    /// Enqueues `job` with the queue's default options (a generated id).
    /// One round trip (one script).
    ///
    /// # Errors
    ///
    /// As [`enqueue_with`](Self::enqueue_with).
    pub async fn enqueue(&self, job: &J) -> Result<Enqueued> {
        self.enqueue_with(job, self.inner.defaults.clone()).await
    }

    /// Enqueues `job` with `opts`. With an id that exists, nothing changes
    /// and [`Enqueued::added`] is false (20 concurrent calls with one id
    /// add one job). One round trip (one script, which reads the server's
    /// clock for the due time).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) when `job` cannot be
    /// encoded; [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// for an empty id or a delay beyond [`MAX_DELAY`](crate::MAX_DELAY);
    /// Redis unavailable (the job may or may not have been added: enqueue
    /// again with the same id to be sure); [`ErrorKind::Script`](crate::ErrorKind::Script)
    /// when garbage under the queue's keys refuses the write (`WRONGTYPE`).
    pub async fn enqueue_with(&self, job: &J, opts: JobOptions) -> Result<Enqueued> {
        let payload = self.inner.codec.encode(job)?;
        let (id, keys, args) = self.enqueue_call(payload, &opts, None)?;
        let r: Result<Value> = ENQUEUE.exec(self.inner.redis.client(), keys, args).await;
        let v = r.inspect_err(|_| self.inner.facade.enqueue_error.increment(1))?;
        self.enqueued(id, v)?
            .ok_or_else(|| Error::protocol("enqueue: unexpected reply"))
    }

    /// Enqueues many jobs as one pipeline: one round trip (all keys of a
    /// queue share one slot), one script per job. Each job gets its own
    /// result, in order; one failing does not stop the others.
    ///
    /// Not atomic as a whole: after a connection failure some jobs may have
    /// been added; enqueue again with the same ids to be sure.
    pub async fn enqueue_bulk<'a, I>(&self, jobs: I) -> Vec<Result<Enqueued>>
    where
        I: IntoIterator<Item = (&'a J, JobOptions)>,
        J: 'a,
    {
        let mut out: Vec<Option<Result<Enqueued>>> = Vec::new();
        let mut calls = Vec::new();
        let mut ids = Vec::new();
        for (job, opts) in jobs {
            match self
                .inner
                .codec
                .encode(job)
                .and_then(|p| self.enqueue_call(p, &opts, None))
            {
                Ok((id, keys, args)) => {
                    out.push(None);
                    ids.push(id);
                    calls.push((keys, args));
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let results: Vec<Result<Value>> = ENQUEUE
            .exec_pipelined(self.inner.redis.client(), calls)
            .await;
        let mut results = results.into_iter().zip(ids);
        out.into_iter()
            .map(|slot| match slot {
                Some(r) => r,
                None => match results.next() {
                    Some((Ok(v), id)) => self.enqueued(id, v).and_then(|e| {
                        e.ok_or_else(|| Error::protocol("enqueue: unexpected reply"))
                    }),
                    Some((Err(e), _)) => {
                        self.inner.facade.enqueue_error.increment(1);
                        Err(e)
                    }
                    None => Err(Error::protocol("enqueue_bulk: a reply is missing")),
                },
            })
            .collect()
    }
}

/// Decodes the backoff fields a claim returned.
pub(crate) fn backoff_of(kind: &str, delay: i64, max: i64, jitter: i64) -> JobBackoff {
    let u = |n: i64| u64::try_from(n).unwrap_or(0);
    JobBackoff::decode(kind, u(delay), u(max), jitter == 1)
}
