//! Every in-memory double passes its trait's contract suite — the same suites the Redis
//! implementations pass in their crates' `contract` tests — on a manual clock (no
//! sleeping) and, once, on real time.

use std::sync::Arc;
use std::time::Duration;

use fredkit_core::ManualClock;
use fredkit_testkit::contract::{self, Time};
use fredkit_testkit::memory::{
    MemoryCacheStore, MemoryLock, MemoryPubSub, MemoryRateLimiter, MemoryRevocationStore,
    MemoryStreamProducer,
};

fn manual() -> (Arc<ManualClock>, Time) {
    let clock = ManualClock::new();
    (Arc::new(clock.clone()), Time::Manual(clock))
}

#[tokio::test]
async fn memory_cache_store_keeps_the_contract() {
    let (clock, time) = manual();
    let store = MemoryCacheStore::new().with_clock(clock);
    contract::cache_store(&store, &store.clone(), "t:cache", &time)
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_cache_store_keeps_the_contract_in_real_time() {
    let store = MemoryCacheStore::new();
    contract::cache_store(&store, &store.clone(), "t:cache", &Time::Real)
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_lock_keeps_the_contract() {
    let (clock, time) = manual();
    let lock = MemoryLock::new().with_clock(clock);
    contract::distributed_lock(&lock, &lock.clone(), "t:lock", &time)
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_rate_limiter_keeps_the_contract_for_every_algorithm() {
    let hour = Duration::from_secs(3600);
    for (name, limiter) in [
        ("fixed window", MemoryRateLimiter::fixed_window(10, hour)),
        ("sliding log", MemoryRateLimiter::sliding_log(10, hour)),
        ("gcra", MemoryRateLimiter::gcra(10, hour, 10)),
        ("gcra burst", MemoryRateLimiter::gcra(3, hour, 7)),
    ] {
        let (clock, _) = manual();
        let limiter = limiter.unwrap().with_clock(clock);
        println!("{name}");
        contract::rate_limiter(&limiter, &limiter.clone(), "t:rl")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn memory_rate_limiter_refills_as_its_decisions_say() {
    let short = Duration::from_millis(300);
    for (name, limiter) in [
        ("fixed window", MemoryRateLimiter::fixed_window(5, short)),
        ("sliding log", MemoryRateLimiter::sliding_log(5, short)),
        ("gcra", MemoryRateLimiter::gcra(5, short, 5)),
    ] {
        let (clock, time) = manual();
        let limiter = limiter.unwrap().with_clock(clock);
        println!("{name}");
        contract::rate_limiter_refill(&limiter, "t:rl", &time)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn memory_revocation_store_keeps_the_contract() {
    let (clock, time) = manual();
    let store = MemoryRevocationStore::new().with_clock(clock);
    contract::revocation_store(&store, &store.clone(), "t:rev", &time, Duration::ZERO)
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_revocation_store_with_a_leeway_keeps_the_contract() {
    let (clock, time) = manual();
    let leeway = Duration::from_secs(61);
    let store = MemoryRevocationStore::new()
        .with_clock(clock)
        .expiry_leeway(leeway);
    contract::revocation_store(&store, &store.clone(), "t:rev", &time, leeway)
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_stream_producer_keeps_the_contract() {
    let producer = MemoryStreamProducer::new();
    contract::stream_producer(&producer, &producer, "t:streams", "payload")
        .await
        .unwrap();
    contract::stream_producer(&producer, &producer, "t:streams2", "dlq.error")
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_stream_producer_ids_grow_on_a_clock_that_stands_still() {
    // A manual clock never moves during the suite: every id shares one millisecond.
    let (clock, _) = manual();
    let producer = MemoryStreamProducer::new().with_clock(clock);
    contract::stream_producer(&producer, &producer, "t:streams", "payload")
        .await
        .unwrap();
}

#[tokio::test]
async fn memory_pubsub_keeps_the_contract() {
    let bus = MemoryPubSub::new();
    contract::pubsub(&bus, &bus.clone(), &bus.clone(), "t:ps", true)
        .await
        .unwrap();
}
