//! `ratelimit`: one check per algorithm (64 tasks, spread over many
//! identities so that most checks are allowed and write), against raw fred
//! `EVALSHA` of the very same GCRA script (the library's own overhead) and of
//! a one-line `INCR` + `PEXPIRE` script (how lean the GCRA script is), all
//! interleaved in the same run and on the same fred client (the one the
//! fredkit-conn handle holds); plus `MEMORY USAGE` of one identity's keys
//! after 100 requests, per algorithm.
//!
//! The peer: **tower-rate-limit-fred** 2.1 (`rate_limit`, its GCRA script
//! by `EVALSHA` on fred 10), on a plain fred client of its own configured
//! like fredkit-conn's (the suite's "raw fred"), doing the same work as our
//! GCRA check: quota 100, one unit per 600 ms, burst 100, cost 1, the same
//! spread of identities. GCRA, the raw script and the peer run back to back
//! in every round at concurrency 64 and at concurrency 1; the ratios
//! `gcra_vs_tower_rate_limit_fred.c64` / `.c1` are medians of per-round
//! ratios (goal >= 1.1), `gcra_vs_raw_script` (c64, goal >= 0.95) and
//! `gcra_vs_raw_script.c1` the library's own overhead.

use super::Suite;
use crate::harness::{interleave, median, op, Contender, Report, Summary, Unit};
use crate::Ctx;
use anyhow::{bail, Result};
use fred::prelude::*;
use fredkit_core::{FailMode, Script};
use fredkit_ratelimit::{Algorithm, Limit, Limiter};
use futures::future::BoxFuture;
use std::time::Duration;

/// The `ratelimit` suite.
pub(crate) struct Ratelimit;

impl Suite for Ratelimit {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn about(&self) -> &'static str {
        "check per algorithm vs raw EVALSHA of the same GCRA script, of INCR+PEXPIRE and vs tower-rate-limit-fred 2.1, c1 and c64; bytes per key"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

const CONCURRENCY: usize = 64;
/// Checks are spread over this many identities.
const IDENTITIES: u64 = 10_000;
const QUOTA: u64 = 100;
const WINDOW: Duration = Duration::from_secs(60);

/// The reference: the leanest useful limiter script, one counter with a TTL.
static INCR_PEXPIRE: Script = Script::new(
    "bench.incr_pexpire",
    "local n = redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], ARGV[1]) return n",
);

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingLog,
    Algorithm::SlidingCounter,
    Algorithm::Gcra,
];

fn limit(algorithm: Algorithm) -> Limit {
    match algorithm {
        Algorithm::FixedWindow => Limit::fixed_window(QUOTA, WINDOW),
        Algorithm::SlidingLog => Limit::sliding_log(QUOTA, WINDOW),
        Algorithm::SlidingCounter => Limit::sliding_counter(QUOTA, WINDOW),
        _ => Limit::gcra(QUOTA, WINDOW),
    }
}

fn limiter(redis: &fredkit_conn::Redis, prefix: &str, algorithm: Algorithm) -> Result<Limiter> {
    Ok(Limiter::builder(redis, prefix)
        .limit(limit(algorithm))
        .fail_mode(FailMode::Closed)
        .build()?)
}

/// The median over rounds of `a`'s ops/s divided by `b`'s in the same
/// round (they ran back to back).
fn paired_ratio(a: &Summary, b: &Summary) -> f64 {
    let ratios: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(x, y)| x.ops_per_sec() / y.ops_per_sec())
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        a.ratio_to(b)
    } else {
        median(&ratios)
    }
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let raw = ctx.fred_client().await?;
    let gcra_script = Algorithm::Gcra.script();
    gcra_script.load(&raw).await?;
    INCR_PEXPIRE.load(&raw).await?;

    // GCRA and its two references run back to back in every round, and the
    // ratios are medians of per-round ratios: a loaded machine's drift
    // between rounds cancels out.
    let mut contenders = Vec::new();
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
    ] {
        let limiter = limiter(&redis, "bench:rl", algorithm)?;
        contenders.push(Contender::new(
            algorithm.name(),
            CONCURRENCY,
            op(move |i| {
                let limiter = limiter.clone();
                async move {
                    let id = format!("id{}", i % IDENTITIES);
                    limiter.check(&id, 1).await?;
                    Ok(())
                }
            }),
        ));
    }
    // The same script, keys and arguments as the GCRA limiter sends
    // (cost 1, emission interval 60 s / 100 = 600 ms in µs, burst 100), as
    // raw fred calls on the very fred client the limiter uses, so the ratio
    // is the library's own overhead and nothing else.
    let shared = redis.client().clone();
    let gcra_sha = gcra_script.sha1().to_string();
    let c = shared.clone();
    contenders.insert(
        1,
        Contender::new(
            "raw_gcra_script",
            CONCURRENCY,
            op(move |i| {
                let c = c.clone();
                let sha = gcra_sha.clone();
                async move {
                    let key = format!("bench:rw:{{id{}}}:default:g", i % IDENTITIES);
                    let _: Vec<i64> = c.evalsha(sha, key, vec![1_i64, 600_000, 100]).await?;
                    Ok(())
                }
            }),
        ),
    );
    let incr_sha = INCR_PEXPIRE.sha1().to_string();
    let c = shared;
    contenders.insert(
        2,
        Contender::new(
            "raw_incr",
            CONCURRENCY,
            op(move |i| {
                let c = c.clone();
                let sha = incr_sha.clone();
                async move {
                    let key = format!("bench:ri:{{id{}}}:default:fw", i % IDENTITIES);
                    let _: i64 = c.evalsha(sha, key, 60_000_i64).await?;
                    Ok(())
                }
            }),
        ),
    );

    // The peer, on a plain fred client of its own (what its user has).
    let peer_client = ctx.fred_client().await?;
    let peer = |c: usize| {
        let client = peer_client.clone();
        Contender::new(
            format!("tower_rate_limit_fred_c{c}"),
            c,
            op(move |i| {
                let client = client.clone();
                async move {
                    let key = format!("bench:trl:{{id{}}}", i % IDENTITIES);
                    tower_rate_limit_fred::rate_limit(
                        &client,
                        key,
                        QUOTA as u16,
                        Duration::from_millis(600),
                    )
                    .await?;
                    Ok(())
                }
            }),
        )
    };
    contenders.insert(3, peer(CONCURRENCY));
    // GCRA, its raw script and the peer at concurrency 1.
    let c1: Vec<Contender> = contenders[..2]
        .iter()
        .map(|c| Contender::new(format!("{}_c1", c.name), 1, c.op.clone()))
        .chain([peer(1)])
        .collect();
    contenders.extend(c1);

    let s = interleave(ctx.rounds(), ctx.load(), &contenders).await?;
    let [gcra, raw_script, raw_incr, tower, fixed, log, counter, gcra1, raw_script1, tower1] =
        s.as_slice()
    else {
        bail!("expected 10 summaries, got {}", s.len());
    };
    let note = format!("check, {CONCURRENCY} tasks, {IDENTITIES} identities, {QUOTA}/60 s");
    report.summary("fixed_window", fixed, &note);
    report.summary("sliding_log", log, &note);
    report.summary("sliding_counter", counter, &note);
    report.summary("gcra", gcra, &note);
    report.summary(
        "raw_gcra_script",
        raw_script,
        "raw fred EVALSHA of the GCRA script, same keys and arguments",
    );
    report.summary(
        "raw_incr",
        raw_incr,
        "raw fred EVALSHA of INCR + PEXPIRE (one counter with a TTL)",
    );
    report.summary(
        "tower_rate_limit_fred",
        tower,
        "tower-rate-limit-fred 2.1 rate_limit (GCRA, 100 burst, 600 ms), own fred client, 64 tasks",
    );
    report.summary("gcra_c1", gcra1, "check, 1 task");
    report.summary(
        "tower_rate_limit_fred_c1",
        tower1,
        "tower-rate-limit-fred 2.1, 1 task",
    );
    report.ratio(
        "gcra_vs_raw_script",
        paired_ratio(gcra, raw_script),
        "Limiter::check / raw EVALSHA of the same script, median of per-round ratios (library overhead; goal >= 0.95)",
    );
    report.ratio(
        "gcra_vs_raw_script.c1",
        paired_ratio(gcra1, raw_script1),
        "the same at concurrency 1",
    );
    report.ratio(
        "gcra_vs_raw_incr",
        paired_ratio(gcra, raw_incr),
        "GCRA check / raw INCR+PEXPIRE script, median of per-round ratios (script leanness; goal >= 0.70)",
    );
    report.ratio(
        "gcra_vs_tower_rate_limit_fred.c64",
        paired_ratio(gcra, tower),
        "GCRA check / tower-rate-limit-fred 2.1 doing the same work, 64 tasks, median of per-round ratios (goal >= 1.1)",
    );
    report.ratio(
        "gcra_vs_tower_rate_limit_fred.c1",
        paired_ratio(gcra1, tower1),
        "the same at concurrency 1 (goal >= 1.1)",
    );

    for algorithm in ALGORITHMS {
        let limiter = limiter(&redis, "bench:rlmem", algorithm)?;
        let id = format!("mem-{}", algorithm.name());
        limiter.reset(&id).await?;
        for _ in 0..100 {
            limiter.check(&id, 1).await?;
        }
        let mut bytes = 0_u64;
        for key in limiter.keys(&id)? {
            let b: Option<u64> = raw.memory_usage(key, Some(0)).await?;
            bytes += b.unwrap_or(0);
        }
        report.add(
            &format!("{}_bytes_per_key", algorithm.name()),
            bytes as f64,
            Unit::Count,
            "MEMORY USAGE of one identity's key after 100 requests (quota 100)",
        );
        limiter.reset(&id).await?;
    }

    peer_client.quit().await?;
    raw.quit().await?;
    Ok(())
}
