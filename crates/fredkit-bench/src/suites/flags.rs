//! `flags`: fredkit-flags' local evaluation, one thread: evaluations per
//! second (`eval_ops`, goal >= 20 M/s) and heap allocations per evaluation
//! (`eval_allocs`, goal 0), counted with the bench's counting global
//! allocator (src/alloc_count.rs) on the evaluating thread only. Also what
//! that allocator costs every other suite while it is not counting
//! (`alloc_counter_overhead_ns`, per alloc+free pair).
//!
//! The namespace holds 100 flags; the evaluations cycle through 1,024 user
//! ids (made before the clock starts) over four kinds of flag: fully on, a
//! 20 % rollout, allow/deny lists of users and groups (the user in two
//! groups), and a two-way weighted variant read with `variant`.

use super::Suite;
use crate::alloc_count;
use crate::commandstats;
use crate::harness::{median, Report, Unit};
use crate::Ctx;
use anyhow::{bail, Result};
use fredkit_flags::{Context, FlagAdmin, FlagDef, Flags as FlagSet, Write};
use futures::future::BoxFuture;
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The `flags` suite.
pub(crate) struct Flags;

impl Suite for Flags {
    fn name(&self) -> &'static str {
        "flags"
    }

    fn about(&self) -> &'static str {
        "local flag evaluation, one thread: evaluations/s and heap allocations per evaluation; the counting allocator's idle cost"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

/// Flags in the namespace besides the four evaluated.
const OTHER_FLAGS: usize = 96;
/// User ids cycled through (a power of two).
const USERS: usize = 1024;
const GROUPS: [&str; 2] = ["beta", "eu"];

/// One evaluation of the mix: evaluation `i` of flag kind `i % 4`.
#[inline(always)]
fn eval_one(flags: &FlagSet, users: &[String], i: usize) -> bool {
    let ctx = Context::user(&users[i & (USERS - 1)]).groups(&GROUPS);
    match i & 3 {
        0 => flags.is_enabled("bench-on", &ctx),
        1 => flags.is_enabled("bench-rollout", &ctx),
        2 => flags.is_enabled("bench-lists", &ctx),
        _ => flags.variant("bench-variant", &ctx).is_enabled(),
    }
}

/// Evaluations per second over `window`, checking the clock every 4,096:
/// per second of wall time, and per second of this thread's CPU time (what
/// one core does, whatever else the machine runs; `None` without procfs).
fn eval_rate(flags: &FlagSet, users: &[String], window: Duration) -> (f64, Option<f64>) {
    let start = Instant::now();
    let cpu0 = commandstats::thread_cpu_us();
    let mut n = 0usize;
    let mut on = 0usize;
    loop {
        for _ in 0..4096 {
            on += usize::from(eval_one(flags, users, black_box(n)));
            n += 1;
        }
        let elapsed = start.elapsed();
        if elapsed >= window {
            black_box(on);
            let cpu = match (cpu0, commandstats::thread_cpu_us()) {
                (Some(a), Some(b)) if b > a => Some(n as f64 / ((b - a) as f64 / 1e6)),
                _ => None,
            };
            return (n as f64 / elapsed.as_secs_f64(), cpu);
        }
    }
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    // The counting allocator's cost while not counting, alloc+free of 64
    // bytes (what fred's and tokio's small allocations look like).
    let (n, rounds) = (ctx.pick(200_000u64, 100_000), ctx.pick(41, 21));
    let (overhead, system) =
        tokio::task::spawn_blocking(move || alloc_count::overhead_ns(64, n, rounds)).await?;
    report.add(
        "alloc_counter_overhead_ns",
        overhead,
        Unit::Decimal,
        format!("ns per 64 B alloc+free that the bench's counting allocator adds while not counting, on a {system:.1} ns pair (median of {rounds} alternating runs of {n} pairs vs the system allocator directly)"),
    );

    let redis = ctx.redis().await?;
    let ns = format!("bench:flags:{}", std::process::id());
    let admin = FlagAdmin::new(&redis, ns.as_str())?;
    let w = Write::by("fredkit-bench");
    for i in 0..OTHER_FLAGS {
        admin
            .set(&format!("other-{i:03}"), &FlagDef::on().percent(50.0), &w)
            .await?;
    }
    admin.set("bench-on", &FlagDef::on(), &w).await?;
    admin
        .set("bench-rollout", &FlagDef::on().percent(20.0), &w)
        .await?;
    admin
        .set(
            "bench-lists",
            &FlagDef::on()
                .percent(0.0)
                .allow_user("user-0007")
                .deny_user("user-0009")
                .allow_group("staff")
                .deny_group("banned"),
            &w,
        )
        .await?;
    let last = admin
        .set(
            "bench-variant",
            &FlagDef::on()
                .variant("a", 50, json!({"color": "blue"}))
                .variant("b", 50, json!({"color": "green"})),
            &w,
        )
        .await?;
    let flags = FlagSet::new(&redis, ns.as_str()).await?;
    if !flags
        .wait_for_version(last.version, Duration::from_secs(10))
        .await
    {
        bail!(
            "the Flags snapshot did not reach version {} in 10 s (at {})",
            last.version,
            flags.version()
        );
    }
    let users: Vec<String> = (0..USERS).map(|u| format!("user-{u:04}")).collect();

    // Evaluations per second, one thread, median of the rounds.
    let window = ctx.pick(Duration::from_secs(1), Duration::from_millis(300));
    let rounds = ctx.rounds();
    let (f, u) = (flags.clone(), users.clone());
    let runs = tokio::task::spawn_blocking(move || {
        eval_rate(&f, &u, window / 2); // warm-up
        (0..rounds)
            .map(|_| eval_rate(&f, &u, window))
            .collect::<Vec<(f64, Option<f64>)>>()
    })
    .await?;
    let wall: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let cpu: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
    let spread = |v: &[f64]| {
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        (max - min) / median(v)
    };
    let millions = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{:.1} M", r / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("   evaluations/s of wall time: {}", millions(&wall));
    println!(
        "   evaluations/s of the thread's CPU time: {}",
        millions(&cpu)
    );
    let what = format!("a mix of on / 20 % rollout / allow+deny lists / weighted variant over {USERS} users, {} flags in the snapshot", OTHER_FLAGS + 4);
    if cpu.len() == wall.len() {
        report.ops(
            "eval_ops",
            median(&cpu),
            format!("local evaluations per second of the evaluating thread's CPU time (/proc/thread-self/stat; unmoved by other load), one thread, {what} (goal >= 20 M/s); median of {rounds} rounds of {window:?}, spread {:.0}%", spread(&cpu) * 100.0),
        );
    } else {
        report.ops(
            "eval_ops",
            median(&wall),
            format!("local evaluations per second of wall time (no per-thread CPU time here), one thread, {what} (goal >= 20 M/s); median of {rounds} rounds of {window:?}"),
        );
    }
    report.ops(
        "eval_ops_wall",
        median(&wall),
        format!("the same per second of wall time (drops when other processes take the core); median of {rounds} rounds, spread {:.0}%", spread(&wall) * 100.0),
    );

    // Allocations per evaluation, counted on the evaluating thread.
    let evals = 100_000usize;
    let (f, u) = (flags.clone(), users.clone());
    let (allocs, unknown_allocs, control) = tokio::task::spawn_blocking(move || {
        for i in 0..4096 {
            black_box(eval_one(&f, &u, i));
        }
        let (on, allocs) = alloc_count::count(|| {
            let mut on = 0usize;
            for i in 0..evals {
                on += usize::from(eval_one(&f, &u, black_box(i)));
            }
            on
        });
        black_box(on);
        // An unknown flag after its first (logged) evaluation.
        let ctx = Context::user(&u[0]);
        black_box(f.is_enabled("bench-never-set", &ctx));
        let (_, unknown) = alloc_count::count(|| {
            for _ in 0..1000 {
                black_box(f.is_enabled(black_box("bench-never-set"), &ctx));
            }
        });
        // The positive control, on this thread: one Vec is one allocation.
        let ((), control) = alloc_count::count(|| {
            black_box(vec![1u64, 2, 3]);
        });
        (allocs, unknown, control)
    })
    .await?;
    report.add(
        "eval_allocs",
        allocs as f64 / evals as f64,
        Unit::Decimal,
        format!("heap allocations per evaluation of the same mix ({allocs} in {evals}; goal 0)"),
    );
    report.add(
        "eval_allocs_unknown",
        unknown_allocs as f64 / 1000.0,
        Unit::Decimal,
        "heap allocations per evaluation of an unknown flag, after its first (logged) one",
    );

    if control != 1 {
        bail!("the counting allocator counted {control} allocations of one Vec on the evaluating thread, not 1");
    }
    flags.close().await;
    Ok(())
}
