//! `lock`: fredkit-lock's uncontended acquire + release (fenced: every grant
//! draws a fencing token) against the minimum *safe* lock written with raw
//! fred (`SET NX PX` + `EVALSHA` compare-and-delete, no fencing) and against
//! the peer crate **rslock** 0.10 (the same `SET NX PX` + compare-and-delete
//! script on a redis-rs multiplexed connection; one server, quorum 1), at
//! concurrency 1 and 64 on distinct resources, interleaved round by round;
//! and the hand-over latency under contention (release -> next waiter holds
//! it).

use super::Suite;
use crate::harness::{interleave, interleave_with, op, Contender, Measurement, Report, Runner};
use crate::Ctx;
use anyhow::{bail, Result};
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use fredkit_lock::{LockManager, LockOptions};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `lock` suite.
pub(crate) struct Lock;

impl Suite for Lock {
    fn name(&self) -> &'static str {
        "lock"
    }

    fn about(&self) -> &'static str {
        "acquire+release vs raw SET NX PX + EVALSHA compare-and-delete and vs rslock, c1 and c64; hand-over latency"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

/// Tasks in flight for the throughput comparisons (the last one also gives
/// the figures without a `.cN` suffix, kept from before the peers).
const CONCURRENCIES: [usize; 2] = [1, 64];
/// Resources cycled through (distinct per in-flight task; bounded so the
/// fencing counters, which never expire, stay few).
const RESOURCES: u64 = 4096;
/// Tasks contending for one resource in the hand-over measurement.
const WAITERS: usize = 8;

/// fredkit-lock's own scripts, sent with fredkit-core's `Script` on the raw
/// fred client: separates the scripts' cost (vs the raw lock) from the cost
/// of fredkit-lock's Rust layer and fredkit-conn's handle (vs fredkit).
static OWN_ACQUIRE: fredkit_core::Script = fredkit_core::Script::new(
    "lock_acquire",
    include_str!("../../../fredkit-lock/scripts/acquire.lua"),
);
static OWN_RELEASE: fredkit_core::Script = fredkit_core::Script::new(
    "lock_release",
    include_str!("../../../fredkit-lock/scripts/release.lua"),
);

/// rslock keys: each used once (nothing of rslock outlives its TTL).
static RSLOCK_SEQ: AtomicU64 = AtomicU64::new(0);

const RAW_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn token() -> String {
    format!("{:032x}", rand_u128())
}

fn rand_u128() -> u128 {
    // 128 random bits (like fredkit-lock's token), without a rand dependency.
    let a = u128::from(fastrand_u64());
    let b = u128::from(fastrand_u64());
    (a << 64) | b
}

fn fastrand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let raw = ctx.fred_client().await?;
    let sha: String = raw.script_load(RAW_RELEASE).await?;
    let locks = LockManager::new(&redis, "bench:lock")?;
    let uncontended = LockOptions::builder()
        .ttl(Duration::from_secs(10))
        .build()?;
    let mut rslock = rslock::LockManager::new(vec![ctx.url().to_string()]);
    // One try: a busy resource must fail the benchmark, not be retried.
    rslock.set_retry(1, Duration::from_millis(1));

    for concurrency in CONCURRENCIES {
        let fredkit = {
            let locks = locks.clone();
            let o = uncontended.clone();
            Contender::new(
                "fredkit lock",
                concurrency,
                op(move |i| {
                    let locks = locks.clone();
                    let o = o.clone();
                    async move {
                        let resource = format!("r{}", i % RESOURCES);
                        let Some(guard) = locks.acquire(&resource, &o).await? else {
                            bail!("resource {resource} unexpectedly busy");
                        };
                        if !guard.release().await? {
                            bail!("lock on {resource} expired during the benchmark");
                        }
                        Ok(())
                    }
                }),
            )
        };
        let raw_lock = {
            let c = raw.clone();
            let sha = sha.clone();
            Contender::new(
                "raw safe lock",
                concurrency,
                op(move |i| {
                    let c = c.clone();
                    let sha = sha.clone();
                    async move {
                        let key = format!("bench:rawlock:{{r{}}}:lock", i % RESOURCES);
                        let token = token();
                        let ok: Option<String> = c
                            .set(
                                &key,
                                token.as_str(),
                                Some(Expiration::PX(10_000)),
                                Some(SetOptions::NX),
                                false,
                            )
                            .await?;
                        if ok.is_none() {
                            bail!("raw resource {key} unexpectedly busy");
                        }
                        let deleted: i64 = c
                            .evalsha(sha.as_str(), key.as_str(), token.as_str())
                            .await?;
                        if deleted != 1 {
                            bail!("raw lock on {key} expired during the benchmark");
                        }
                        Ok(())
                    }
                }),
            )
        };
        let own_scripts = {
            let c = raw.clone();
            Contender::new(
                "lock scripts/raw",
                concurrency,
                op(move |i| {
                    let c = c.clone();
                    async move {
                        let r = i % RESOURCES;
                        let lock = format!("bench:ownscripts:{{r{r}}}:lock");
                        let fence = format!("bench:ownscripts:{{r{r}}}:fence");
                        let token = token();
                        let granted: i64 = OWN_ACQUIRE
                            .exec(
                                &c,
                                vec![lock.clone(), fence],
                                vec![token.clone(), "10000".to_string(), "0".to_string()],
                            )
                            .await?;
                        if granted < 1 {
                            bail!("{lock} unexpectedly busy");
                        }
                        let released: i64 = OWN_RELEASE.exec(&c, lock.as_str(), token).await?;
                        if released != 1 {
                            bail!("{lock} expired during the benchmark");
                        }
                        Ok(())
                    }
                }),
            )
        };
        let peer = {
            let rl = rslock.clone();
            Contender::new(
                "rslock",
                concurrency,
                op(move |i| {
                    let rl = rl.clone();
                    async move {
                        // A key never used before: rslock's unlock ignores
                        // errors (redis-rs times a reply out after 500 ms), and
                        // a key left behind must not fail a later lock.
                        let _ = i;
                        let n = RSLOCK_SEQ.fetch_add(1, Ordering::Relaxed);
                        let key = format!("bench:rslock:{{r{n}}}:lock");
                        let lock = rl
                            .lock(key.as_bytes(), Duration::from_secs(10))
                            .await
                            .map_err(|e| anyhow::anyhow!("rslock: {key}: {e}"))?;
                        rl.unlock(&lock).await;
                        Ok(())
                    }
                }),
            )
        };
        // More rounds than the default: the ratio is the figure that counts,
        // and a median over more interleaved rounds shrugs off a noisy
        // neighbour.
        let s = interleave(
            ctx.rounds() + 4,
            ctx.load(),
            &[fredkit, raw_lock, peer, own_scripts],
        )
        .await?;
        let [ours, theirs, peer, scripts] = s.as_slice() else {
            bail!("expected 4 summaries, got {}", s.len());
        };
        let c = format!("c{concurrency}");
        report.ops(
            &format!("acquire_release_ops.{c}"),
            ours.ops_per_sec,
            format!(
                "acquire (fenced) + release, 1 script each, {concurrency} tasks, distinct resources; p50 {:.0} µs",
                ours.p50.as_secs_f64() * 1e6
            ),
        );
        report.ops(
            &format!("raw_acquire_release_ops.{c}"),
            theirs.ops_per_sec,
            format!(
                "SET NX PX + EVALSHA compare-and-delete on raw fred (no fencing), same load; p50 {:.0} µs",
                theirs.p50.as_secs_f64() * 1e6
            ),
        );
        report.ops(
            &format!("rslock_acquire_release_ops.{c}"),
            peer.ops_per_sec,
            format!(
                "rslock 0.10 lock + unlock (SET NX PX + compare-and-delete script, redis-rs, no fencing), same load; p50 {:.0} µs",
                peer.p50.as_secs_f64() * 1e6
            ),
        );
        report.ops(
            &format!("own_scripts_acquire_release_ops.{c}"),
            scripts.ops_per_sec,
            format!(
                "fredkit-lock's acquire.lua + release.lua via fredkit-core Script on raw fred, same load; p50 {:.0} µs",
                scripts.p50.as_secs_f64() * 1e6
            ),
        );
        report.ratio(
            &format!("acquire_release_vs_own_scripts.{c}"),
            ours.ratio_to(scripts),
            "fredkit-lock / its own scripts on raw fred: the cost of the Rust layer and fredkit-conn's handle",
        );
        report.ratio(
            &format!("own_scripts_vs_raw.{c}"),
            scripts.ratio_to(theirs),
            "fredkit-lock's scripts on raw fred / minimum safe raw lock: the cost of the fenced grant script",
        );
        report.ratio(
            &format!("acquire_release_vs_raw.{c}"),
            ours.ratio_to(theirs),
            "fredkit-lock / minimum safe raw lock (goal >= 0.75)",
        );
        report.ratio(
            &format!("acquire_release_vs_rslock.{c}"),
            ours.ratio_to(peer),
            "fredkit-lock (fenced) / rslock (goal >= 1.1)",
        );
        if concurrency == 64 {
            report.ratio(
                "acquire_release_vs_raw",
                ours.ratio_to(theirs),
                "= acquire_release_vs_raw.c64 (name kept from earlier runs)",
            );
        }
    }

    // Hand-over: WAITERS tasks over two managers (two connections, like two
    // processes) take turns on one resource.
    let handoffs: u64 = ctx.pick(2_000, 400);
    let second = LockManager::new(&ctx.redis().await?, "bench:lock")?;
    let managers = [locks.clone(), second];
    let runner: Runner<'_> = Box::new(move || {
        let managers = managers.clone();
        Box::pin(handoff(managers, handoffs))
    });
    let h = interleave_with(ctx.rounds(), vec![("lock handoff".to_string(), runner)]).await?;
    report.micros(
        "handoff_p50_us",
        h[0].p50,
        format!("release -> next waiter holds the lock, {WAITERS} waiters over 2 managers"),
    );
    report.micros(
        "handoff_p99_us",
        h[0].p99,
        "release -> next waiter holds the lock",
    );

    let _ = raw.quit().await;
    Ok(())
}

/// `n` hand-overs of one lock among `WAITERS` tasks; each latency is from
/// the moment the holder starts its release to the moment the next holder's
/// acquire returns.
fn handoff(managers: [LockManager; 2], n: u64) -> BoxFuture<'static, Result<Measurement>> {
    Box::pin(async move {
        let resource = format!("handoff:{}", token());
        let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicU64::new(0));
        let opts = LockOptions::builder()
            .ttl(Duration::from_secs(10))
            .wait(Duration::from_secs(30))
            .build()?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..WAITERS {
            let m = managers[t % 2].clone();
            let (resource, released_at, done, opts) = (
                resource.clone(),
                Arc::clone(&released_at),
                Arc::clone(&done),
                opts.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let Some(guard) = m.acquire(&resource, &opts).await? else {
                        bail!("waited 30 s for a hand-over");
                    };
                    let held = Instant::now();
                    let previous = released_at.lock().map(|mut r| r.take()).unwrap_or(None);
                    if let Some(at) = previous {
                        latencies.push(u64::try_from((held - at).as_nanos()).unwrap_or(u64::MAX));
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) >= n;
                    if let Ok(mut r) = released_at.lock() {
                        *r = Some(Instant::now());
                    }
                    guard.release().await?;
                    if finished {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    // Step back so the hand-over goes to a waiter, not to
                    // this task barging in again.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.append(&mut t.await??);
        }
        Ok(Measurement::new(
            latencies.len() as u64,
            started.elapsed(),
            latencies,
        ))
    })
}
