//! The facade README's quickstart as a program: a cache, a rate limiter, a
//! lock with a fencing token, a revocation and a Streams worker on one
//! `Redis` handle.

use fredkit::cache::{Cache, CacheOptions};
use fredkit::core::{FailMode, KeySpace};
use fredkit::lock::{LockManager, LockOptions};
use fredkit::ratelimit::{Limit, Limiter};
use fredkit::revocation::{RevocationOptions, Revocations};
use fredkit::streams::{Message, Producer, StreamKeys, Worker, WorkerConfig};
use fredkit::Redis;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A product, cached.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Product {
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub cents: u64,
}

/// An order, sent through a stream.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Order {
    /// Its id.
    pub id: u64,
    /// What to charge, in cents.
    pub cents: u64,
}

/// What the quickstart did, for its test to check.
#[derive(Debug)]
pub struct Report {
    /// How often the product loader ran for 10 concurrent readers of one key.
    pub loader_runs: u64,
    /// The product every reader got.
    pub product: Product,
    /// Requests the limiter allowed out of 30 sent at once (burst 20).
    pub allowed: u32,
    /// The fencing tokens of two lock grants in a row.
    pub tokens: (u64, u64),
    /// Whether the revoked subject's token is refused.
    pub revoked: bool,
    /// Orders the worker handled out of the 3 published.
    pub handled: u64,
}

/// Runs every primitive once under `prefix` (keys `prefix:…`).
///
/// # Errors
/// Whatever a primitive returns: a connection error, a timeout, a bad prefix.
pub async fn run(redis: &Redis, prefix: &str) -> anyhow::Result<Report> {
    let ks = KeySpace::new(prefix)?;

    // Cache-aside: the loader runs once per key, however many callers miss.
    let products: Cache<Product> = Cache::new(
        redis,
        CacheOptions::builder(ks.child("product")?.prefix())
            .ttl(Duration::from_secs(300))
            .build()?,
    )
    .await?;
    let loader_runs = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..10 {
        let (products, runs) = (products.clone(), loader_runs.clone());
        readers.push(tokio::spawn(async move {
            products
                .get_or_set("42", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await; // a slow database
                    Product {
                        name: "tea".into(),
                        cents: 450,
                    }
                })
                .await
        }));
    }
    let mut product = None;
    for reader in readers {
        product = Some(reader.await??);
    }
    let product = product.ok_or_else(|| anyhow::anyhow!("no reader ran"))?;

    // Rate limit: GCRA, one round trip, on the server's clock; 10 an hour
    // with bursts of 20.
    let limiter = Limiter::builder(redis, ks.child("rl")?.prefix())
        .limit(Limit::gcra(10, Duration::from_secs(3600)).burst(20))
        .fail_mode(FailMode::Open)
        .build()?;
    let mut allowed = 0;
    for _ in 0..30 {
        if limiter.check("user:42", 1).await?.allowed {
            allowed += 1;
        }
    }

    // A lock with a fencing token that never goes backwards.
    let locks = LockManager::new(redis, ks.child("locks")?.prefix())?;
    let opts = LockOptions::builder().ttl(Duration::from_secs(5)).build()?;
    let mut tokens = (0, 0);
    for token in [&mut tokens.0, &mut tokens.1] {
        let guard = locks
            .acquire("checkout:42", &opts)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the free lock was not granted"))?;
        *token = guard.fencing_token(); // pass it to your storage
        guard.release().await?;
    }

    // JWT revocation: you choose what an outage means.
    let revocations = Revocations::new(
        redis,
        RevocationOptions::builder(FailMode::Closed)
            .prefix(ks.child("revoked")?.prefix())
            .build()?,
    )
    .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = fredkit::core::traits::TokenClaims {
        jti: "token-1".into(),
        sub: "42".into(),
        org: None,
        iat: now.saturating_sub(10),
        exp: now + 600,
    };
    revocations.revoke_subject_now("42").await?;
    let revoked = revocations.check(&claims).await?;

    // A Streams worker: at least once, retries, dead letters.
    let keys = StreamKeys::new(&ks, "orders")?;
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let worker = Worker::start(
        redis,
        keys.clone(),
        WorkerConfig::builder("billing").build()?,
        move |m: Message<Order>| {
            let counter = counter.clone();
            async move {
                println!(
                    "charge {} cents for order {}",
                    m.payload.cents, m.payload.id
                );
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        },
    )
    .await?;
    let producer = Producer::<Order>::new(redis, keys);
    for id in 1..=3 {
        producer
            .publish(&Order {
                id,
                cents: product.cents,
            })
            .await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop cleanly: everything that owns connections or tasks (the caller
    // shuts the `Redis` handle down after).
    worker.shutdown().await;
    products.close().await;
    locks.close().await;
    revocations.close().await;

    Ok(Report {
        loader_runs: loader_runs.load(Ordering::SeqCst),
        product,
        allowed,
        tokens,
        revoked,
        handled: handled.load(Ordering::SeqCst),
    })
}
