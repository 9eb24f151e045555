//! Runnable: `cargo run -p fredkit-cache --example tour`
//!
//! Uses `REDIS_URL` if set, otherwise starts a throwaway redis-server with
//! fredkit-testkit. One short stop per feature of fredkit-cache, each
//! printing what happened and the counter that proves it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fredkit_cache::{Cache, CacheOptions, FillError, L1Options};
use fredkit_conn::Redis;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _server;
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = fredkit_testkit::RedisServer::start()?;
            let url = server.url();
            _server = server;
            url
        }
    };
    let redis = Redis::from_url(&url).await?;
    redis.wait_connected().await?;
    let prefix = format!("tour:{:08x}", std::process::id());
    let options = |name: &str| CacheOptions::builder(format!("{prefix}:{name}"));

    // 1. Cache-aside + single flight: 100 concurrent misses, one load.
    let users: Cache<User> = Cache::new(&redis, options("users").build()?).await?;
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (users, loads) = (users.clone(), Arc::clone(&loads));
        tasks.push(tokio::spawn(async move {
            users
                .get_or_set("1", move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    user(1)
                })
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "1. 100 concurrent get_or_set -> {} load(s)",
        loads.load(Ordering::SeqCst)
    );

    // 2. Fallible factory: errors come back, nothing is cached.
    let e = users
        .get_or_try_set("2", || async { Err::<User, _>("db unavailable") })
        .await
        .unwrap_err();
    println!("2. failing factory, nothing stale -> {e}");

    // 3. Fail-safe: past the logical TTL, a failing factory gets the stale value.
    let short: Cache<User> = Cache::new(
        &redis,
        options("short").ttl(Duration::from_millis(100)).build()?,
    )
    .await?;
    short.set("3", &user(3)).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let f = short
        .fetch("3", || async { Err::<Option<User>, _>("db unavailable") })
        .await?;
    println!(
        "3. expired + failing factory -> {:?} (stale: {})",
        f.value, f.stale
    );

    // 4. Timeouts: with a stale value, a slow factory is cut short.
    let timed: Cache<User> = Cache::new(
        &redis,
        options("timed")
            .ttl(Duration::from_millis(100))
            .soft_timeout(Duration::from_millis(20))
            .hard_timeout(Duration::from_millis(200))
            .build()?,
    )
    .await?;
    timed.set("4", &user(4)).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let f = timed
        .fetch("4", || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, String>(Some(user(40)))
        })
        .await?;
    println!(
        "4. slow factory, soft timeout 20 ms -> {:?} (stale: {}); it finishes in the background",
        f.value.map(|u| u.id),
        f.stale
    );
    let e = timed
        .fetch("cold", || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, String>(Some(user(0)))
        })
        .await;
    println!(
        "   nothing stale, hard timeout 200 ms -> {}",
        matches!(e, Err(FillError::Timeout(_)))
    );

    // 5. Negative caching: a missing row is looked up once per negative TTL.
    let lookups = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let lookups = Arc::clone(&lookups);
        users
            .get_or_try_set_optional("404", move || async move {
                lookups.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<User>, String>(None)
            })
            .await?;
    }
    println!(
        "5. 3 reads of a missing user -> {} lookup(s)",
        lookups.load(Ordering::SeqCst)
    );

    // 6. Eager refresh: past 50 % of the TTL a hit refreshes in the background.
    let eager: Cache<User> = Cache::new(
        &redis,
        options("eager")
            .ttl(Duration::from_millis(400))
            .eager_refresh(0.5)
            .build()?,
    )
    .await?;
    eager.set("6", &user(6)).await?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let v = eager.get_or_set("6", || async { user(60) }).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!(
        "6. hit past the refresh point -> {} now, {:?} after the refresh",
        v.id,
        eager.get("6").await?.map(|u| u.id)
    );

    // 7. L1 + invalidation across instances.
    let l1 = || options("l1").l1(L1Options::new().ttl(Duration::from_secs(30)));
    let a: Cache<User> = Cache::new(&redis, l1().build()?).await?;
    let b: Cache<User> = Cache::new(&Redis::from_url(&url).await?, l1().build()?).await?;
    a.set("7", &user(7)).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.get("7").await?;
    b.get("7").await?;
    a.set(
        "7",
        &User {
            id: 7,
            name: "renamed".into(),
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!(
        "7. B's L1 after A's write -> {:?} (L1 hits on B: {})",
        b.get("7").await?.map(|u| u.name),
        b.metrics().l1_hits
    );

    // 8. Batches: one MGET per slot, pipelined SETs.
    let batch: Vec<(String, User)> = (0..100).map(|i| (format!("u{i}"), user(i))).collect();
    users.set_many(&batch).await?;
    let keys: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let got = users.get_many(&keys).await?;
    println!(
        "8. set_many + get_many of 100 -> {} found",
        got.iter().flatten().count()
    );

    // 9. Garbage: an undecodable entry is a miss, deleted and counted.
    use fred::interfaces::KeysInterface;
    redis
        .client()
        .set::<(), _, _>(
            format!("{prefix}:users:{{9}}"),
            "garbage",
            None,
            None,
            false,
        )
        .await?;
    println!(
        "9. garbage under 9 -> {:?}, decode_failures = {}",
        users.get("9").await?,
        users.metrics().decode_failures
    );

    // 10. invalidate_prefix: SCAN + UNLINK, never KEYS.
    println!(
        "10. invalidate_prefix(\"u\") -> {} deleted",
        users.invalidate_prefix("u").await?
    );
    println!("metrics of `users`: {:?}", users.metrics());
    for c in [&users, &short, &timed, &eager, &a] {
        c.invalidate_prefix("").await?;
    }
    Ok(())
}
