//! `cache`: fredkit-cache against raw fred on the same Redis handle, and
//! against its peer cachekit-rs 0.13 (features `redis` + `l1`, fred 9, a
//! connection of its own) on the same server.
//!
//! - `l2_hit`: `Cache::get` with L1 off (one `GET` + envelope and MessagePack
//!   decode) against a raw `GET` of the same key and cachekit-rs's `get`
//!   with its L1 off, at concurrency 64 and 1, interleaved.
//!   `l2_hit_vs_raw_get` (c64; goal ≥ 0.90) and `l2_hit_vs_cachekit.c64` /
//!   `.c1` (goal ≥ 1.5) are the ratios.
//! - `l1_hit_ops`: `Cache::get` answered by L1, polled in a tight loop on
//!   one thread (the future is ready at once; no Redis involved); beside it
//!   cachekit-rs's L1 hit the same way, rounds interleaved.
//!   `l1_hit_vs_cachekit` compares the two with an owned value returned by
//!   both (goal ≥ 2).
//! - `stampede_factory_calls`: 500 concurrent `get_or_set` on one cold key
//!   from two instances with separate connections; must be 1.
//! - `miss_fill`: `get_or_set` on a new key every time (GET miss, lock +
//!   re-read script, factory, store + release script), concurrency 64.
//! - `tag_invalidate_us.<n>`: `Cache::invalidate_tag` with n entries under
//!   the tag (1k, 10k, 100k; `--quick`: 1k, 10k), median of 50 calls: flat,
//!   since it is one script whatever the number of entries (#22).

use super::Suite;
use crate::harness::{interleave, median, op, Contender, Report, Unit};
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
        "fredkit-cache get (L1 / L2), stampede, miss+fill vs raw GET and cachekit-rs"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let run_id: u32 = rand_id();
    let prefix = format!("bench:cache:{run_id:08x}");

    // ---- L2 hit: raw GET, fredkit, cachekit-rs; same server, interleaved,
    // at concurrency 64 and 1.
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
    // The peer: cachekit-rs 0.13 (fred 9 underneath, its own connection),
    // L1 off so every get is a Redis read.
    let ck_backend = cachekit::backend::redis::RedisBackend::builder()
        .url(ctx.url())
        .build()
        .map_err(|e| anyhow::anyhow!("cachekit backend: {e}"))?;
    ck_backend
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cachekit connect: {e}"))?;
    let ck_backend = Arc::new(ck_backend);
    let ck_l2 = cachekit::CacheKit::builder()
        .backend(ck_backend.clone())
        .namespace(format!("{prefix}:ck2"))
        .default_ttl(Duration::from_secs(600))
        .no_l1()
        .build()
        .map_err(|e| anyhow::anyhow!("cachekit build: {e}"))?;
    ck_l2
        .set("hot", &product(1))
        .await
        .map_err(|e| anyhow::anyhow!("cachekit set: {e}"))?;
    let ck_l2 = Arc::new(ck_l2);
    for c in [64usize, 1] {
        let raw = {
            let redis = redis.clone();
            let key = data_key.clone();
            Contender::new(
                format!("raw_get_c{c}"),
                c,
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
                format!("cache_get_c{c}"),
                c,
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
        let peer = {
            let ck = Arc::clone(&ck_l2);
            Contender::new(
                format!("cachekit_get_c{c}"),
                c,
                op(move |_| {
                    let ck = Arc::clone(&ck);
                    async move {
                        let v: Option<Product> = ck
                            .get("hot")
                            .await
                            .map_err(|e| anyhow::anyhow!("cachekit get: {e}"))?;
                        if v.is_none() {
                            bail!("cachekit get missed");
                        }
                        Ok(())
                    }
                }),
            )
        };
        let s = interleave(ctx.rounds(), ctx.load(), &[raw, cached, peer]).await?;
        let [raw_get, cache_get, ck_get] = s.as_slice() else {
            bail!("expected 3 summaries, got {}", s.len());
        };
        if c == 64 {
            // Names kept from earlier runs for the c64 figures.
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
        } else {
            report.summary(
                &format!("raw_get_c{c}"),
                raw_get,
                &format!("raw fred GET of the entry's key, {c} task(s)"),
            );
            report.summary(
                &format!("l2_hit_c{c}"),
                cache_get,
                &format!("Cache::get, L1 off, {c} task(s)"),
            );
            report.ratio(
                &format!("l2_hit_vs_raw_get.c{c}"),
                cache_get.ratio_to(raw_get),
                format!("Cache::get (L1 off) / raw GET, same handle, c{c}"),
            );
        }
        report.summary(
            &format!("cachekit_l2_hit_c{c}"),
            ck_get,
            &format!(
                "cachekit-rs 0.13 CacheKit::get, L1 off (fred 9, own connection), {c} task(s)"
            ),
        );
        report.ratio(
            &format!("l2_hit_vs_cachekit.c{c}"),
            cache_get.ratio_to(ck_get),
            format!("Cache::get (L1 off) / cachekit-rs get (L1 off), c{c} (goal >= 1.5)"),
        );
    }

    // ---- L1 hits on one thread: an `Arc` value (the recommended L1 value
    // type: a hit clones a pointer), an owned value (a hit clones it), and
    // cachekit-rs's L1 (quick_cache of bytes: a hit decodes MessagePack into
    // an owned value), interleaved round by round.
    let window = ctx.pick(Duration::from_secs(1), Duration::from_millis(300));
    // One prefix per instance: a set on one would invalidate the other's copy.
    let l1_opts = |name: &str| {
        CacheOptions::builder(format!("{prefix}:{name}"))
            .l1(L1Options::new().ttl(Duration::from_secs(600)))
            .ttl(Duration::from_secs(600))
            .build()
    };
    let l1_arc: FkCache<Arc<Product>> = FkCache::new(&redis, l1_opts("l1a")?).await?;
    // L1 serves once the invalidation subscription is confirmed.
    l1_arc.wait_ready(Duration::from_secs(10)).await?;
    l1_arc.set("hot", &Arc::new(product(2))).await?;
    let l1_owned: FkCache<Product> = FkCache::new(&redis, l1_opts("l1o")?).await?;
    l1_owned.wait_ready(Duration::from_secs(10)).await?;
    l1_owned.set("hot", &product(2)).await?;
    let ck_l1 = cachekit::CacheKit::builder()
        .backend(ck_backend.clone())
        .namespace(format!("{prefix}:ck1"))
        .default_ttl(Duration::from_secs(600))
        .l1_capacity(1000)
        .build()
        .map_err(|e| anyhow::anyhow!("cachekit build: {e}"))?;
    ck_l1
        .set("hot", &product(2))
        .await
        .map_err(|e| anyhow::anyhow!("cachekit set: {e}"))?;
    let ck_l1 = Arc::new(ck_l1);
    let (mut arc_r, mut owned_r, mut ck_r) = (Vec::new(), Vec::new(), Vec::new());
    // One discarded warm-up round, then the counted ones.
    for round in 0..=ctx.rounds() {
        let a = l1_hits_per_sec(
            {
                let c = l1_arc.clone();
                move || {
                    c.get("hot")
                        .now_or_never()
                        .map(|r| matches!(r, Ok(Some(_))))
                }
            },
            window,
        )
        .await?;
        let o = l1_hits_per_sec(
            {
                let c = l1_owned.clone();
                move || {
                    c.get("hot")
                        .now_or_never()
                        .map(|r| matches!(r, Ok(Some(_))))
                }
            },
            window,
        )
        .await?;
        let k = l1_hits_per_sec(
            {
                let c = Arc::clone(&ck_l1);
                move || {
                    c.get::<Product>("hot")
                        .now_or_never()
                        .map(|r| matches!(r, Ok(Some(_))))
                }
            },
            window,
        )
        .await?;
        if round > 0 {
            arc_r.push(a);
            owned_r.push(o);
            ck_r.push(k);
        }
    }
    let (l1_arc_ops, l1_owned_ops, ck_l1_ops) = (median(&arc_r), median(&owned_r), median(&ck_r));
    println!(
        "   l1 hits/s, one thread: Arc {l1_arc_ops:.0}, owned {l1_owned_ops:.0}, cachekit {ck_l1_ops:.0} (medians of {} rounds)",
        arc_r.len()
    );
    report.ops(
        "l1_hit_ops",
        l1_arc_ops,
        "Cache<Arc<T>>::get answered by L1, one thread (L1 lookup + Arc clone)",
    );
    report.ops(
        "l1_hit_owned_ops",
        l1_owned_ops,
        "Cache<T>::get answered by L1, one thread, T cloned per hit (5 heap allocations)",
    );
    report.ops(
        "cachekit_l1_hit_ops",
        ck_l1_ops,
        "cachekit-rs 0.13 get answered by its L1 (quick_cache of bytes, MessagePack decode per hit), one thread",
    );
    report.ratio(
        "l1_hit_vs_cachekit",
        l1_owned_ops / ck_l1_ops,
        "Cache<T>::get / cachekit-rs get, both answered by L1, both returning an owned T (goal >= 2)",
    );
    report.ratio(
        "l1_hit_arc_vs_cachekit",
        l1_arc_ops / ck_l1_ops,
        "Cache<Arc<T>>::get / cachekit-rs get, both answered by L1",
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

    // ---- invalidate_tag: one script, whatever the number of tagged entries.
    let tagged: FkCache<Product> = FkCache::new(
        &redis,
        CacheOptions::builder(format!("{prefix}:tags"))
            .ttl(Duration::from_secs(120))
            .max_stale(Duration::ZERO)
            .build()?,
    )
    .await?;
    let sizes: &[usize] = if ctx.quick() {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let mut written = 0usize;
    for &n in sizes {
        let tag = format!("t{n}");
        let o = fredkit_cache::EntryOptions::new().tags([tag.clone()]);
        use futures::StreamExt;
        futures::stream::iter(written..written + n)
            .map(|i| {
                let (t, o) = (tagged.clone(), o.clone());
                async move { t.set_with(&format!("k{i}"), &product(i as u64), &o).await }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        written += n;
        let mut micros = Vec::with_capacity(50);
        for _ in 0..50 {
            let t0 = Instant::now();
            tagged.invalidate_tag(&tag).await?;
            micros.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        report.add(
            &format!("tag_invalidate_us.{n}"),
            median(&micros),
            Unit::Micros,
            format!("Cache::invalidate_tag with {n} entries under the tag, median of 50"),
        );
    }
    let _ = tagged.invalidate_prefix("").await;

    let _ = l2.invalidate_prefix("").await;
    let _ = l1_arc.invalidate_prefix("").await;
    let _ = l1_owned.invalidate_prefix("").await;
    let _ = ck_l2.delete("hot").await;
    let _ = ck_l1.delete("hot").await;
    let _ = a.invalidate_prefix("").await;
    let _ = fill.invalidate_prefix("").await;
    Ok(())
}

/// Polls `hit` (a get answered at once by an L1, true on a hit) in a tight
/// loop on one blocking thread; hits per second.
async fn l1_hits_per_sec<F>(hit: F, window: Duration) -> Result<f64>
where
    F: Fn() -> Option<bool> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < window {
            for _ in 0..1000 {
                match hit() {
                    Some(true) => n += 1,
                    _ => bail!("L1 get did not answer a hit at once"),
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
