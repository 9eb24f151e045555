//! `jobs`: background jobs end to end (enqueue -> handled -> completed), 4
//! workers x concurrency 16, a no-op handler, 64 enqueues outstanding at
//! once: fredkit-jobs against **BullMQ** (node, the version locked in
//! `node/package-lock.json`, installed under `target/bench/bullmq` at bench
//! time) on the same server, rounds interleaved. Each round is bracketed by
//! `INFO commandstats`, giving the commands the server ran per job (Lua
//! scripts' inner commands included, as Redis counts them) for both sides.
//! Without node or npm the BullMQ side is skipped with the reason printed.

use super::Suite;
use crate::bullmq::{BullMq, Shape};
use crate::commandstats::{self, Delta};
use crate::harness::{interleave_with, median, Measurement, Report, Runner, Unit};
use crate::Ctx;
use anyhow::{bail, Result};
use fred::prelude::*;
use fredkit_jobs::{Job, JobOptions, Keep, Queue, Worker, WorkerConfig};
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `jobs` suite.
pub(crate) struct Jobs;

impl Suite for Jobs {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn about(&self) -> &'static str {
        "enqueue -> handled -> completed, 4 workers x 16, no-op handler: fredkit-jobs vs BullMQ (node); commands per job"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

/// Worker handles (tasks in ours, BullMQ `Worker`s in node).
const WORKERS: usize = 4;
/// Jobs each worker runs at once.
const CONCURRENCY: usize = 16;
/// Enqueues outstanding at once.
const IN_FLIGHT: usize = 64;
/// Completed jobs kept on each side.
const KEEP_COMPLETED: u64 = 1000;

/// The commandstats deltas of one contender's rounds, with their job counts.
type Counts = Arc<Mutex<Vec<(u64, Delta)>>>;

fn run_id() -> u32 {
    std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
}

/// Per job, over one contender's rounds: median commands, median script
/// calls, median redis-server CPU µs, and the per-command breakdown of the
/// round closest to the median.
struct PerJob {
    cmds: f64,
    scripts: f64,
    cpu_us: f64,
    breakdown: String,
}

fn per_job(counts: &Counts) -> PerJob {
    let v = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let each = |f: &dyn Fn(&Delta) -> u64| -> Vec<f64> {
        v.iter()
            .map(|(n, d)| f(d) as f64 / (*n).max(1) as f64)
            .collect()
    };
    let cmds = median(&each(&Delta::total));
    let breakdown = v
        .iter()
        .min_by(|a, b| {
            let da = (a.1.total() as f64 / a.0.max(1) as f64 - cmds).abs();
            let db = (b.1.total() as f64 / b.0.max(1) as f64 - cmds).abs();
            da.total_cmp(&db)
        })
        .map(|(n, d)| d.per(*n))
        .unwrap_or_default();
    PerJob {
        cmds,
        scripts: median(&each(&Delta::scripts)),
        cpu_us: median(&each(&Delta::server_cpu_us)),
        breakdown,
    }
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let jobs = ctx.pick(20_000u64, 5_000);
    let probe = ctx.fred_client().await?;
    let id = run_id();
    let mut runners: Vec<(String, Runner<'_>)> = Vec::new();

    // --- fredkit-jobs: each worker and the producer on a handle of its own
    // (like each BullMQ Worker and the Queue on connections of their own).
    let ours_counts: Counts = Arc::default();
    let producer = ctx.redis().await?;
    let queue: Queue<u64> = Queue::new(&producer, "bench:jobs", &format!("q{id:08x}"))?
        .with_defaults(JobOptions::new().keep_completed(Keep::Last(KEEP_COMPLETED)));
    let mut workers = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..WORKERS {
        let redis = ctx.redis().await?;
        let q: Queue<u64> = Queue::new(&redis, "bench:jobs", queue.name())?;
        let w = Worker::start(
            &q,
            WorkerConfig::new().concurrency(CONCURRENCY),
            |_job: Job<u64>| async { Ok::<_, Infallible>(()) },
        )?;
        workers.push(w);
        handles.push(redis);
    }
    let workers = Arc::new(workers);
    {
        let (queue, workers, probe, counts) = (
            queue.clone(),
            Arc::clone(&workers),
            probe.clone(),
            Arc::clone(&ours_counts),
        );
        runners.push((
            "fredkit-jobs e2e".to_string(),
            Box::new(move || {
                let (queue, workers, probe, counts) = (
                    queue.clone(),
                    Arc::clone(&workers),
                    probe.clone(),
                    Arc::clone(&counts),
                );
                Box::pin(async move {
                    let before = commandstats::snapshot(&probe).await?;
                    let elapsed = ours_round(&queue, &workers, jobs).await?;
                    let after = commandstats::snapshot(&probe).await?;
                    counts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((jobs, after.since(&before)));
                    Ok(Measurement::new(jobs, elapsed, Vec::new()))
                })
            }),
        ));
    }

    // --- BullMQ (node), when it can run here.
    let bull_counts: Counts = Arc::default();
    let shape = Shape {
        workers: WORKERS,
        concurrency: CONCURRENCY,
        in_flight: IN_FLIGHT,
        keep_completed: KEEP_COMPLETED,
    };
    let bull = match BullMq::start(ctx.url(), &format!("bench-{id:08x}"), shape).await {
        Ok(b) => Some(Arc::new(tokio::sync::Mutex::new(b))),
        Err(e) => {
            println!("   BullMQ contender skipped: {e:#}");
            None
        }
    };
    let bull_version = match &bull {
        Some(b) => b.lock().await.version.clone(),
        None => String::new(),
    };
    if let Some(b) = &bull {
        let (b, probe, counts) = (Arc::clone(b), probe.clone(), Arc::clone(&bull_counts));
        runners.push((
            "bullmq e2e".to_string(),
            Box::new(move || {
                let (b, probe, counts) = (Arc::clone(&b), probe.clone(), Arc::clone(&counts));
                Box::pin(async move {
                    let before = commandstats::snapshot(&probe).await?;
                    let r = b.lock().await.round(jobs).await?;
                    let after = commandstats::snapshot(&probe).await?;
                    counts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((r.jobs, after.since(&before)));
                    Ok(Measurement::new(r.jobs, r.elapsed, Vec::new()))
                })
            }),
        ));
    }

    let s = interleave_with(ctx.rounds(), runners).await?;

    if let Some(b) = bull {
        if let Ok(b) = Arc::try_unwrap(b) {
            b.into_inner().stop().await;
        }
    }
    for w in workers.iter() {
        w.shutdown().await;
    }
    let ours = s.iter().find(|x| x.name == "fredkit-jobs e2e");
    let theirs = s.iter().find(|x| x.name == "bullmq e2e");
    let ours_job = per_job(&ours_counts);
    if let Some(o) = ours {
        report.ops(
            "e2e_per_s",
            o.ops_per_sec,
            format!(
                "fredkit-jobs: enqueue -> handled -> completed, {WORKERS} workers x concurrency {CONCURRENCY}, no-op handler, {IN_FLIGHT} enqueues in flight; median of {} rounds of {jobs} jobs, spread {:.0}%",
                o.rounds.len(),
                o.spread() * 100.0
            ),
        );
        report.add(
            "redis_cmds_per_job",
            ours_job.cmds,
            Unit::Decimal,
            format!(
                "fredkit-jobs: commands the server ran per job (INFO commandstats, script calls included); {:.2} of them script calls",
                ours_job.scripts
            ),
        );
        report.add(
            "server_cpu_us_per_job",
            ours_job.cpu_us,
            Unit::Decimal,
            "fredkit-jobs: redis-server CPU µs per job (INFO cpu, user + sys)",
        );
        println!("   fredkit-jobs commands per job: {}", ours_job.breakdown);
    }
    for sum in &s {
        if sum.name == "bullmq e2e" {
            report.ops(
                "bullmq_e2e_per_s",
                sum.ops_per_sec,
                format!(
                    "BullMQ {bull_version} (node), same shape and server; median of {} rounds of {jobs} jobs, spread {:.0}%",
                    sum.rounds.len(),
                    sum.spread() * 100.0
                ),
            );
            let bull_job = per_job(&bull_counts);
            report.add(
                "bullmq_redis_cmds_per_job",
                bull_job.cmds,
                Unit::Decimal,
                format!(
                    "BullMQ: commands the server ran per job (INFO commandstats, script calls included); {:.2} of them script calls",
                    bull_job.scripts
                ),
            );
            report.add(
                "bullmq_server_cpu_us_per_job",
                bull_job.cpu_us,
                Unit::Decimal,
                "BullMQ: redis-server CPU µs per job (INFO cpu, user + sys)",
            );
            println!("   BullMQ commands per job: {}", bull_job.breakdown);
            if let Some(o) = ours {
                report.ratio(
                    "e2e_vs_bullmq",
                    o.ratio_to(sum),
                    "fredkit-jobs / BullMQ jobs per second, same shape, same server, interleaved (goal >= 1.5)",
                );
                report.ratio(
                    "redis_cmds_vs_bullmq",
                    ours_job.cmds / bull_job.cmds,
                    "fredkit-jobs / BullMQ commands per job (goal <= 1)",
                );
                report.ratio(
                    "server_cpu_vs_bullmq",
                    ours_job.cpu_us / bull_job.cpu_us,
                    "fredkit-jobs / BullMQ redis-server CPU per job",
                );
            }
        }
    }
    if theirs.is_none() {
        println!("   (no BullMQ figures: the contender was skipped)");
    }
    drop(handles);
    let _ = probe.quit().await;
    Ok(())
}

/// One round of fredkit-jobs: `jobs` enqueues, `IN_FLIGHT` at a time, until
/// the workers have recorded as many completions. First enqueue to the last
/// completion seen.
async fn ours_round(queue: &Queue<u64>, workers: &[Worker<u64>], jobs: u64) -> Result<Duration> {
    let completed = || workers.iter().map(|w| w.metrics().completed).sum::<u64>();
    let target = completed() + jobs;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (queue, next) = (queue.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(());
                }
                queue.enqueue(&i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = completed();
        if done >= target {
            break;
        }
        if Instant::now() > deadline {
            let m: Vec<String> = workers
                .iter()
                .map(|w| format!("{:?}", w.metrics()))
                .collect();
            bail!(
                "fredkit-jobs: {} of {jobs} jobs completed after 120 s ({})",
                jobs - (target - done),
                m.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(started.elapsed())
}
