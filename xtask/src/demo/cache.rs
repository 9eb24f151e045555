//! Demo section: fredkit-cache.

use super::{step, Demo, Section, SectionFuture};
use anyhow::Result;
use fred::prelude::*;
use fredkit_cache::{Cache, CacheOptions, EntryOptions, L1Options};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const SECTION: Section = Section {
    name: "cache",
    title: "fredkit-cache: cache-aside, stampede protection, fail-safe, L1 + L2",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    cents: u64,
}

fn tea(cents: u64) -> Product {
    Product {
        id: 42,
        name: "green tea".into(),
        cents,
    }
}

async fn tour(demo: &Demo) -> Result<()> {
    let redis = &demo.redis;
    // A fresh prefix per run, so a shared REDIS_URL is never polluted.
    let prefix = format!("demo:cache:{:08x}", std::process::id());
    let options = |l1: bool| {
        let b = CacheOptions::builder(prefix.as_str())
            .ttl(Duration::from_secs(60))
            .max_stale(Duration::from_secs(600));
        if l1 {
            b.l1(L1Options::new().ttl(Duration::from_secs(5))).build()
        } else {
            b.build()
        }
    };

    // Two instances with separate connections, as two service replicas.
    let other = fredkit_conn::Redis::from_url(&demo.url).await?;
    other.wait_connected().await?;
    let a: Cache<Product> = Cache::new(redis, options(true)?).await?;
    let b: Cache<Product> = Cache::new(&other, options(true)?).await?;

    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            c.get_or_set("product:42", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await; // "the database"
                tea(499)
            })
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    step(
        "200 concurrent get_or_set(\"product:42\", load) on 2 instances",
        format!(
            "the 200 ms loader ran {} time(s); all callers answered in {:?} \
             (single flight per process + a SET NX PX fill lock across them)",
            calls.load(Ordering::SeqCst),
            started.elapsed()
        ),
    );

    a.set("product:42", &tea(399)).await?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut seen = b.get("product:42").await?;
    while seen.as_ref().map(|p| p.cents) != Some(399) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen = b.get("product:42").await?;
    }
    step(
        "a.set(\"product:42\", 3.99) then b.get(\"product:42\")",
        format!(
            "b sees {:?}: a's invalidation (key only, with a per-publisher sequence) dropped b's L1 copy",
            seen.map(|p| p.cents)
        ),
    );

    // Fail-safe: expire logically, then let the source fail.
    let short: Cache<Product> = Cache::new(
        redis,
        CacheOptions::builder(format!("{prefix}:short"))
            .ttl(Duration::from_millis(100))
            .max_stale(Duration::from_secs(60))
            .build()?,
    )
    .await?;
    short.set("product:42", &tea(499)).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let f = short
        .fetch("product:42", || async {
            Err::<Option<Product>, _>("database timed out")
        })
        .await;
    match f {
        Ok(f) => step(
            "logical TTL passed, the loader fails: short.fetch(\"product:42\", failing)",
            format!(
                "served {:?} (stale: {}) instead of an error; stale_served = {}",
                f.value.map(|p| p.cents),
                f.stale,
                short.metrics().stale_served
            ),
        ),
        Err(e) => step("fail-safe", format!("unexpected error: {e}")),
    }

    // Garbage under a key is a miss, deleted and counted.
    let data_key = format!("{prefix}:{{product:7}}").replace("product:7", "product%3A7");
    redis
        .client()
        .set::<(), _, _>(
            data_key.as_str(),
            "not an envelope",
            Some(Expiration::EX(60)),
            None,
            false,
        )
        .await?;
    let got = a.get("product:7").await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let left: i64 = redis.client().exists(data_key.as_str()).await?;
    step(
        "garbage planted under product:7, then a.get(\"product:7\")",
        format!(
            "{got:?}; key still there: {}; decode_failures = {}",
            left == 1,
            a.metrics().decode_failures
        ),
    );

    // Tags: one script invalidates every entry under a tag, on every instance.
    for id in 0..1000u64 {
        let tags = EntryOptions::new().tags([format!("category:{}", id % 10)]);
        a.set_with(&format!("p{id}"), &tea(id), &tags).await?;
    }
    let warm = b.get_many(&["p3", "p4"]).await?; // into b's L1
    let started = Instant::now();
    a.invalidate_tag("category:3").await?;
    let took = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut after = b.get_many(&["p3", "p4"]).await?;
    while after[0].is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        after = b.get_many(&["p3", "p4"]).await?;
    }
    step(
        "1000 entries under 10 tags; a.invalidate_tag(\"category:3\"), then b.get_many([p3, p4])",
        format!(
            "took {took:?} (one INCR script, whatever the number of entries); b before: {:?}, after: {:?} \
             (p3 is under category:3: a miss on b, L1 included; p4 untouched)",
            warm.iter().map(|p| p.as_ref().map(|p| p.cents)).collect::<Vec<_>>(),
            after.iter().map(|p| p.as_ref().map(|p| p.cents)).collect::<Vec<_>>()
        ),
    );

    step("a.metrics()", format!("{:#?}", a.metrics()));
    // Start-up never needs Redis: a cache on an address nobody listens on.
    let nowhere = fredkit_conn::Redis::from_url("redis://127.0.0.1:1").await?;
    let started = Instant::now();
    let offline: Cache<Product> = Cache::new(&nowhere, options(true)?).await?;
    let built_in = started.elapsed();
    let p = offline
        .get_or_set("product:42", || async { tea(499) })
        .await?;
    step(
        "Cache::new(<a Redis nobody listens on>) then get_or_set(\"product:42\", load)",
        format!(
            "built in {built_in:?}, no error (lazy connect; the invalidation subscription \
             is retried in the background); the loader answered {}; is_ready() = {} \
             (L1 stays off until Redis confirms the subscription)",
            p.cents,
            offline.is_ready()
        ),
    );

    let removed = a.invalidate_prefix("").await? + short.invalidate_prefix("").await?;
    step(
        "a.invalidate_prefix(\"\") (SCAN + UNLINK, every primary)",
        format!("{removed} entries removed; every instance's L1 flushed"),
    );
    Ok(())
}
