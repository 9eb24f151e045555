//! What the in-memory doubles promise beyond the shared contract suites: thread safety
//! across OS threads, the same misuse errors as the Redis implementations, exact
//! algorithm figures on a manual clock, lag accounting, trimming, bounded memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fredkit_core::traits::{
    CacheStore, Decision, DistributedLock, Publisher, RateLimiter, RevocationStore, StreamProducer,
    Subscriber, TokenClaims,
};
use fredkit_core::{ErrorKind, ManualClock};
use fredkit_testkit::memory::{
    MemoryCacheStore, MemoryLock, MemoryPubSub, MemoryRateLimiter, MemoryRevocationStore,
    MemoryStreamProducer,
};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_grants_one_holder_at_a_time_across_threads() {
    let lock = MemoryLock::new();
    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let lock = lock.clone();
        let inside = Arc::clone(&inside);
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            while tokens.len() < 50 {
                if let Some(lease) = lock
                    .try_acquire("shared", Duration::from_secs(60))
                    .await
                    .unwrap()
                {
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    tokens.push(lease.fencing_token);
                    tokio::task::yield_now().await;
                    inside.store(false, Ordering::SeqCst);
                    assert!(
                        lock.release(&lease).await.unwrap(),
                        "a holder lost its lock"
                    );
                }
                tokio::task::yield_now().await;
            }
            tokens
        }));
    }
    // The first failing task ends the test (the others would spin on its lock).
    let all: Vec<u64> = futures::future::try_join_all(tasks)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 400);
    assert_eq!(distinct.len(), 400, "a fencing token was granted twice");
    assert_eq!(*distinct.iter().max().unwrap(), 400);
    assert_eq!(lock.last_fencing_token("shared"), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limiter_admits_exactly_the_limit_across_threads() {
    let limiter = MemoryRateLimiter::sliding_log(1000, Duration::from_secs(3600)).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            for _ in 0..300 {
                admitted += u64::from(limiter.check("k", 1).await.unwrap().allowed);
            }
            admitted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1000);
}

#[tokio::test]
async fn misuse_is_refused_like_the_redis_implementations() {
    let cache = MemoryCacheStore::new();
    let kind = |e: fredkit_core::Error| e.kind();
    assert_eq!(
        kind(cache.get_bytes("").await.unwrap_err()),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(
            cache
                .set_bytes("k", Bytes::new(), Duration::from_micros(500))
                .await
                .unwrap_err()
        ),
        ErrorKind::InvalidInput,
        "Redis cannot store a TTL under 1 ms"
    );
    let lock = MemoryLock::new();
    assert_eq!(
        kind(
            lock.try_acquire("", Duration::from_secs(1))
                .await
                .unwrap_err()
        ),
        ErrorKind::InvalidInput
    );
    let limiter = MemoryRateLimiter::gcra(1, Duration::from_secs(1), 1).unwrap();
    assert_eq!(
        kind(limiter.check("", 1).await.unwrap_err()),
        ErrorKind::InvalidInput
    );
    let err = limiter.check("k", 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("cost of 2"), "{err}");
    assert_eq!(
        kind(MemoryRateLimiter::fixed_window(0, Duration::from_secs(1)).unwrap_err()),
        ErrorKind::Config
    );
    assert_eq!(
        kind(MemoryRateLimiter::sliding_log(1, Duration::ZERO).unwrap_err()),
        ErrorKind::Config
    );
    let store = MemoryRevocationStore::new().max_token_lifetime(Duration::from_secs(3600));
    let long = TokenClaims {
        jti: "j".into(),
        sub: "s".into(),
        org: None,
        iat: 1_000,
        exp: 1_000 + 3601,
    };
    let err = store.check(&long).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("max_token_lifetime"), "{err}");
    assert_eq!(
        kind(store.revoke("", SystemTime::now()).await.unwrap_err()),
        ErrorKind::InvalidInput
    );
    let producer = MemoryStreamProducer::new();
    for reserved in ["payload", "dlq.error", ""] {
        let err = producer
            .publish_bytes("s", Bytes::new(), &[(reserved, "x")])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{reserved:?}");
    }
    assert_eq!(producer.len("s"), 0);
    let bus = MemoryPubSub::new();
    assert_eq!(
        kind(bus.publish_bytes("", Bytes::new()).await.unwrap_err()),
        ErrorKind::InvalidInput
    );
}

fn d(allowed: bool, remaining: u64, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
    Decision {
        allowed,
        limit: 3,
        remaining,
        reset_after: Duration::from_millis(reset_ms),
        retry_after: retry_ms.map(Duration::from_millis),
    }
}

#[tokio::test]
async fn algorithms_give_exact_figures_on_a_manual_clock() {
    let ms = Duration::from_millis;
    // Fixed window: 3 per 1 s, starting with the first request.
    let clock = ManualClock::new();
    let l = MemoryRateLimiter::fixed_window(3, ms(1000))
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    assert_eq!(l.check("k", 2).await.unwrap(), d(true, 1, 1000, None));
    clock.advance(ms(400));
    assert_eq!(l.check("k", 2).await.unwrap(), d(false, 1, 600, Some(600)));
    assert_eq!(l.check("k", 1).await.unwrap(), d(true, 0, 600, None));
    clock.advance(ms(600));
    assert_eq!(l.check("k", 0).await.unwrap(), d(true, 3, 0, None));

    // Sliding log: 3 in any 1 s.
    let clock = ManualClock::new();
    let l = MemoryRateLimiter::sliding_log(3, ms(1000))
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    assert_eq!(l.check("k", 1).await.unwrap(), d(true, 2, 1000, None));
    clock.advance(ms(300));
    assert_eq!(l.check("k", 2).await.unwrap(), d(true, 0, 1000, None));
    clock.advance(ms(100));
    // 3 needed: all of them must leave; the last left at 300 ms + 1 s.
    assert_eq!(l.check("k", 1).await.unwrap(), d(false, 0, 900, Some(600)));
    clock.advance(ms(600));
    assert_eq!(l.check("k", 1).await.unwrap(), d(true, 0, 1000, None));

    // GCRA: 3 per 300 ms (one per 100 ms), burst 3.
    let clock = ManualClock::new();
    let l = MemoryRateLimiter::gcra(3, ms(300), 3)
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    assert_eq!(l.check("k", 3).await.unwrap(), d(true, 0, 300, None));
    assert_eq!(l.check("k", 1).await.unwrap(), d(false, 0, 300, Some(100)));
    clock.advance(ms(150));
    assert_eq!(l.check("k", 0).await.unwrap(), d(true, 1, 150, None));
    assert_eq!(l.check("k", 2).await.unwrap(), d(false, 1, 150, Some(50)));
    clock.advance(ms(150));
    assert_eq!(l.check("k", 0).await.unwrap(), d(true, 3, 0, None));
}

#[tokio::test]
async fn a_lagging_receiver_loses_the_oldest_and_the_loss_is_counted() {
    let bus = MemoryPubSub::with_capacity(2);
    let mut slow = bus.subscribe_bytes("ch").await.unwrap();
    let mut fast = bus.subscribe_bytes("ch").await.unwrap();
    for i in 0..5u8 {
        assert_eq!(
            bus.publish_bytes("ch", Bytes::from(vec![i])).await.unwrap(),
            2
        );
        assert_eq!(fast.next().await.unwrap().payload, Bytes::from(vec![i]));
    }
    // The slow one kept the newest two.
    assert_eq!(slow.next().await.unwrap().payload, Bytes::from(vec![3]));
    assert_eq!(slow.next().await.unwrap().payload, Bytes::from(vec![4]));
    assert_eq!(bus.dropped(), 3);
    drop((slow, fast));
    assert_eq!(bus.receivers("ch"), 0);
    assert_eq!(bus.publish_bytes("ch", Bytes::new()).await.unwrap(), 0);
}

#[tokio::test]
async fn streams_trim_to_max_len_and_ids_keep_growing() {
    let clock = ManualClock::new();
    let producer = MemoryStreamProducer::new()
        .with_clock(Arc::new(clock.clone()))
        .max_len(3);
    let mut ids = Vec::new();
    for i in 0..5u8 {
        ids.push(
            producer
                .publish_bytes("s", Bytes::from(vec![i]), &[])
                .await
                .unwrap(),
        );
    }
    clock.advance(Duration::from_millis(2));
    ids.push(
        producer
            .publish_bytes("s", Bytes::new(), &[])
            .await
            .unwrap(),
    );
    let kept: Vec<String> = producer.entries("s").into_iter().map(|e| e.id).collect();
    assert_eq!(kept, ids[3..].to_vec());
    let (ms0, _) = ids[0].split_once('-').unwrap();
    assert_eq!(
        ids[4],
        format!("{ms0}-4"),
        "one millisecond: the sequence grows"
    );
    assert!(
        ids[5].ends_with("-0"),
        "a new millisecond starts at 0: {}",
        ids[5]
    );
    assert_eq!(producer.streams(), vec!["s".to_string()]);
}

#[tokio::test]
async fn revocation_by_organisation_and_records_go_when_they_no_longer_matter() {
    let clock = ManualClock::new();
    let store = MemoryRevocationStore::new()
        .with_clock(Arc::new(clock.clone()))
        .max_token_lifetime(Duration::from_secs(600));
    let now = SystemTime::now();
    let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    store.revoke_org("acme", now).unwrap();
    let token = |org: Option<&str>| TokenClaims {
        jti: "j".into(),
        sub: "s".into(),
        org: org.map(str::to_string),
        iat: now_s,
        exp: now_s + 600,
    };
    assert!(store.check(&token(Some("acme"))).await.unwrap());
    assert!(!store.check(&token(Some("other"))).await.unwrap());
    assert!(!store.check(&token(None)).await.unwrap());
    store
        .revoke("j2", now + Duration::from_secs(60))
        .await
        .unwrap();
    store.revoke_subject("s", now).await.unwrap();
    assert_eq!(store.records(), 3);
    // Every token the records cover has expired: nothing is kept.
    clock.advance(Duration::from_secs(602));
    assert_eq!(store.records(), 0);
    assert!(!store.check(&token(Some("acme"))).await.unwrap());
}

#[tokio::test]
async fn cache_store_reports_ttl_and_length() {
    let clock = ManualClock::new();
    let store = MemoryCacheStore::new().with_clock(Arc::new(clock.clone()));
    store
        .set_bytes("a", Bytes::from_static(b"1"), Duration::from_secs(10))
        .await
        .unwrap();
    store
        .set_bytes("b", Bytes::from_static(b"2"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(store.len(), 2);
    clock.advance(Duration::from_secs(4));
    assert_eq!(store.ttl("a"), Some(Duration::from_secs(6)));
    assert_eq!(store.ttl("b"), None);
    assert_eq!(store.len(), 1);
    assert!(!store.is_empty());
}

#[tokio::test]
async fn doubles_work_as_trait_objects() {
    let _: Arc<dyn CacheStore> = Arc::new(MemoryCacheStore::new());
    let _: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    let _: Arc<dyn RateLimiter> =
        Arc::new(MemoryRateLimiter::gcra(1, Duration::from_secs(1), 1).unwrap());
    let _: Arc<dyn RevocationStore> = Arc::new(MemoryRevocationStore::new());
    let _: Arc<dyn StreamProducer> = Arc::new(MemoryStreamProducer::new());
    let bus = MemoryPubSub::new();
    let _: Arc<dyn Publisher> = Arc::new(bus.clone());
    let _: Arc<dyn Subscriber> = Arc::new(bus);
}
