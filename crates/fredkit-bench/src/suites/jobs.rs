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
use anyhow::Result;
use fred::prelude::*;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};

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

/// Median commands per job over the rounds, median script calls per job, and
/// the round with the median total as a per-command breakdown.
fn per_job(counts: &Counts) -> (f64, f64, String) {
    let v = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let totals: Vec<f64> = v
        .iter()
        .map(|(n, d)| d.total() as f64 / (*n).max(1) as f64)
        .collect();
    let scripts: Vec<f64> = v
        .iter()
        .map(|(n, d)| d.scripts() as f64 / (*n).max(1) as f64)
        .collect();
    let m = median(&totals);
    let breakdown = v
        .iter()
        .min_by(|a, b| {
            let da = (a.1.total() as f64 / a.0.max(1) as f64 - m).abs();
            let db = (b.1.total() as f64 / b.0.max(1) as f64 - m).abs();
            da.total_cmp(&db)
        })
        .map(|(n, d)| d.per(*n))
        .unwrap_or_default();
    (m, median(&scripts), breakdown)
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let jobs = ctx.pick(20_000u64, 5_000);
    let probe = ctx.fred_client().await?;
    let id = run_id();
    let mut runners: Vec<(String, Runner<'_>)> = Vec::new();

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

    if runners.is_empty() {
        println!("   nothing to measure");
        return Ok(());
    }
    let s = interleave_with(ctx.rounds(), runners).await?;

    if let Some(b) = bull {
        if let Ok(b) = Arc::try_unwrap(b) {
            b.into_inner().stop().await;
        }
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
            let (cmds, scripts, breakdown) = per_job(&bull_counts);
            report.add(
                "bullmq_redis_cmds_per_job",
                cmds,
                Unit::Decimal,
                format!("BullMQ: commands the server ran per job (INFO commandstats, script calls included); {scripts:.2} of them script calls"),
            );
            println!("   BullMQ commands per job: {breakdown}");
        }
    }
    let _ = probe.quit().await;
    Ok(())
}
