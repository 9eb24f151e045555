//! `cache`: fredkit-cache against raw fred on the same Redis handle.
//!
//! - `l2_hit`: `Cache::get` with L1 off (one `GET` + envelope and MessagePack
//!   decode) against a raw `GET` of the same key, concurrency 64,
//!   interleaved. `l2_hit_vs_raw_get` is the ratio (goal ≥ 0.90).
//! - `l1_hit_ops`: `Cache::get` answered by L1, polled in a tight loop on
//!   one thread (the future is ready at once; no Redis involved).
//! - `stampede_factory_calls`: 500 concurrent `get_or_set` on one cold key
//!   from two instances with separate connections; must be 1.
//! - `miss_fill`: `get_or_set` on a new key every time (GET miss, lock +
//!   re-read script, factory, store + release script), concurrency 64.

use super::Suite;
use crate::harness::{interleave, op, Contender, Report, Unit};
use crate::Ctx;
use anyhow::{bail, Result};
use fred::bytes::Bytes;
use fred::interfaces::KeysInterface;
use fredkit_cache::{Cache as FkCache, CacheOptions, L1Options};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `cache` suite.
pub(crate) struct Cache;

/// A product row: id, name, price in cents, tags, description.
type Product = (u64, String, u64, Vec<String>, String);

fn product(id: u64) -> Product {
    (
        id,
        format!("product {id}"),
        1999,
        vec!["tea".into(), "green".into()],
        "x".repeat(48),
    )
}

impl Suite for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn about(&self) -> &'static str {
        "fredkit-cache get (L1 / L2), stampede, miss+fill vs raw GET"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let run_id: u32 = rand_id();
    let prefix = format!("bench:cache:{run_id:08x}");

    // ---- L2 hit vs raw GET, same handle, interleaved.
    let l2: FkCache<Product> = FkCache::new(
        &redis,
        CacheOptions::builder(format!("{prefix}:l2"))
            .invalidation(false)
            .ttl(Duration::from_secs(600))
            .build()?,
    )
    .await?;
    l2.set("hot", &product(1)).await?;
    let data_key = format!("{prefix}:l2:{{hot}}");
    let raw = {
        let redis = redis.clone();
        let key = data_key.clone();
        Contender::new(
            "raw_get_c64",
            64,
            op(move |_| {
                let redis = redis.clone();
                let key = key.clone();
                async move {
                    let v: Option<Bytes> = redis.client().get(key.as_str()).await?;
                    if v.is_none() {
                        bail!("raw GET found nothing");
                    }
                    Ok(())
                }
            }),
        )
    };
    let cached = {
        let l2 = l2.clone();
        Contender::new(
            "cache_get_c64",
            64,
            op(move |_| {
                let l2 = l2.clone();
                async move {
                    if l2.get("hot").await?.is_none() {
                        bail!("cache get missed");
                    }
                    Ok(())
                }
            }),
        )
    };
    let s = interleave(ctx.rounds(), ctx.load(), &[raw, cached]).await?;
    let [raw_get, cache_get] = s.as_slice() else {
        bail!("expected 2 summaries, got {}", s.len());
    };
    report.summary(
        "raw_get_c64",
        raw_get,
        "raw fred GET of the entry's key, 64 tasks",
    );
    report.summary("l2_hit", cache_get, "Cache::get, L1 off, 64 tasks");
    report.ratio(
        "l2_hit_vs_raw_get",
        cache_get.ratio_to(raw_get),
        "Cache::get (L1 off) / raw GET, same handle, c64 (goal >= 0.90)",
    );

    // ---- L1 hits on one thread: an `Arc` value (the recommended L1 value
    // type: a hit clones a pointer) and an owned value (a hit clones it).
    let window = ctx.pick(Duration::from_secs(1), Duration::from_millis(300));
    let l1_opts = || {
        CacheOptions::builder(format!("{prefix}:l1"))
            .l1(L1Options::new().ttl(Duration::from_secs(600)))
            .ttl(Duration::from_secs(600))
            .build()
    };
    let l1_arc: FkCache<Arc<Product>> = FkCache::new(&redis, l1_opts()?).await?;
    // L1 serves once the invalidation subscription is confirmed.
    l1_arc.wait_ready(Duration::from_secs(10)).await?;
    l1_arc.set("hot", &Arc::new(product(2))).await?;
    let l1_arc_ops = l1_hits_per_sec(l1_arc.clone(), window).await?;
    report.ops(
        "l1_hit_ops",
        l1_arc_ops,
        "Cache<Arc<T>>::get answered by L1, one thread (L1 lookup + Arc clone)",
    );
    let l1_owned: FkCache<Product> = FkCache::new(&redis, l1_opts()?).await?;
    l1_owned.wait_ready(Duration::from_secs(10)).await?;
    l1_owned.set("hot", &product(2)).await?;
    let l1_owned_ops = l1_hits_per_sec(l1_owned.clone(), window).await?;
    report.ops(
        "l1_hit_owned_ops",
        l1_owned_ops,
        "Cache<T>::get answered by L1, one thread, T cloned per hit (5 heap allocations)",
    );

    // ---- Stampede: 500 callers, two instances, separate connections.
    let other = ctx.redis().await?;
    let stampede_opts = || {
        CacheOptions::builder(format!("{prefix}:stampede"))
            .ttl(Duration::from_secs(60))
            .build()
    };
    let a: FkCache<Product> = FkCache::new(&redis, stampede_opts()?).await?;
    let b: FkCache<Product> = FkCache::new(&other, stampede_opts()?).await?;
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..500u64 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            c.get_or_set("cold", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                product(3)
            })
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    report.add(
        "stampede_factory_calls",
        calls.load(Ordering::SeqCst) as f64,
        Unit::Count,
        "factory calls for 500 concurrent get_or_set on one cold key, 2 instances (must be 1)",
    );

    // ---- Miss + fill on fresh keys.
    let fill: FkCache<Product> = FkCache::new(
        &redis,
        CacheOptions::builder(format!("{prefix}:fill"))
            .invalidation(false)
            .ttl(Duration::from_secs(30))
            .max_stale(Duration::ZERO)
            .build()?,
    )
    .await?;
    // One counter across rounds: every call gets a key never used before.
    let next_key = Arc::new(AtomicU64::new(0));
    let filler = {
        let fill = fill.clone();
        let next_key = Arc::clone(&next_key);
        Contender::new(
            "miss_fill_c64",
            64,
            op(move |_| {
                let fill = fill.clone();
                let i = next_key.fetch_add(1, Ordering::Relaxed);
                let key = format!("k{i}");
                async move {
                    fill.get_or_set(&key, move || async move { product(i) })
                        .await?;
                    Ok(())
                }
            }),
        )
    };
    let s = interleave(ctx.rounds(), ctx.load(), &[filler]).await?;
    let [miss_fill] = s.as_slice() else {
        bail!("expected 1 summary, got {}", s.len());
    };
    report.summary(
        "miss_fill",
        miss_fill,
        "get_or_set on new keys (3 round trips + factory), 64 tasks",
    );

    let _ = l2.invalidate_prefix("").await;
    let _ = l1_arc.invalidate_prefix("").await;
    let _ = a.invalidate_prefix("").await;
    let _ = fill.invalidate_prefix("").await;
    Ok(())
}

/// Polls `Cache::get` on an L1 hit in a tight loop on one blocking thread.
async fn l1_hits_per_sec<V: fredkit_cache::CacheValue>(
    c: FkCache<V>,
    window: Duration,
) -> Result<f64> {
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < window {
            for _ in 0..1000 {
                match c.get("hot").now_or_never() {
                    Some(Ok(Some(_))) => n += 1,
                    _ => bail!("L1 get did not answer at once"),
                }
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
    .await?
}

fn rand_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id()
}
