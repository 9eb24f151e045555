//! `flags`: fredkit-flags' local evaluation, one thread: evaluations per
//! second (`eval_ops`, goal >= 20 M/s) and heap allocations per evaluation
//! (`eval_allocs`, goal 0), counted with the bench's counting global
//! allocator (src/alloc_count.rs) on the evaluating thread only. Also what
//! that allocator costs every other suite while it is not counting
//! (`alloc_counter_overhead_ns`, per alloc+free pair).

use super::Suite;
use crate::alloc_count;
use crate::harness::{Report, Unit};
use crate::Ctx;
use anyhow::Result;
use futures::future::BoxFuture;

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

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    // The counting allocator's cost while not counting, alloc+free of 64
    // bytes (what fred's and tokio's small allocations look like).
    let (n, rounds) = (ctx.pick(2_000_000u64, 500_000), ctx.pick(9, 5));
    let overhead =
        tokio::task::spawn_blocking(move || alloc_count::overhead_ns(64, n, rounds)).await?;
    report.add(
        "alloc_counter_overhead_ns",
        overhead,
        Unit::Decimal,
        format!("ns per 64 B alloc+free that the bench's counting allocator adds while not counting (median of {rounds} alternating runs of {n} pairs vs the system allocator directly)"),
    );
    let ((), sanity) = alloc_count::count(|| {
        let v: Vec<u64> = std::hint::black_box(vec![1, 2, 3]);
        std::hint::black_box(v);
    });
    if sanity != 1 {
        anyhow::bail!("the counting allocator counted {sanity} allocations of one Vec, not 1");
    }
    Ok(())
}
