//! Every crate's counters and latency histograms reach a `metrics` recorder
//! (feature `metrics`) under the names and labels of docs/observability.md,
//! with the exact counts of a scripted load — and agree with the crate's own
//! `metrics()` snapshot.
//!
//! The crates are built with their `metrics` features here (this crate's
//! dev-dependencies). Each test installs a global debugging recorder: nextest runs every test in
//! its own process, so recorders do not mix.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, SystemTime};

use fredkit_conn::Redis;
use fredkit_core::{FailMode, KeySpace};
use fredkit_testkit::{shared_redis, unique_prefix, Topology};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rstest::rstest;

/// Installs the process's recorder (once per test process).
fn recorder() -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("one recorder per test process (nextest runs each test alone)");
    snapshotter
}

/// One reading of the recorder (reading resets the debugging recorder's
/// values, so each test reads once, after its load).
struct Reading(Vec<Metric>);

/// A metric's name, labels and value.
type Metric = (String, Vec<(String, String)>, DebugValue);

fn take(snap: &Snapshotter) -> Reading {
    Reading(
        snap.snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect();
                (key.name().to_string(), labels, value)
            })
            .collect(),
    )
}

impl Reading {
    /// The summed counter value and the number of histogram samples under
    /// `name` with (at least) `labels`.
    fn read(&self, name: &str, labels: &[(&str, &str)]) -> (u64, usize) {
        let (mut count, mut samples) = (0, 0);
        for (n, have, value) in &self.0 {
            let has = |k: &str, v: &str| have.iter().any(|(hk, hv)| hk == k && hv == v);
            if n != name || !labels.iter().all(|(k, v)| has(k, v)) {
                continue;
            }
            match value {
                DebugValue::Counter(c) => count += c,
                DebugValue::Histogram(h) => samples += h.len(),
                DebugValue::Gauge(_) => {}
            }
        }
        (count, samples)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.read(name, labels).0
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.read(name, labels).1
    }
}

async fn setup(topology: Topology, name: &str) -> (Snapshotter, Redis, KeySpace) {
    let snap = recorder();
    let redis = shared_redis(topology).await.unwrap();
    let keys = KeySpace::new(unique_prefix(name)).unwrap();
    (snap, redis, keys)
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_metrics_count_every_grant_contention_and_release(#[case] topology: Topology) {
    use fredkit_lock::{LockManager, LockOptions};
    let (snap, redis, keys) = setup(topology, "metrics_lock").await;
    let p = keys.prefix().to_string();
    let locks = LockManager::new(&redis, keys).unwrap();
    let opts = LockOptions::builder()
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut guards = Vec::new();
    for r in ["a", "b", "c"] {
        guards.push(locks.acquire(r, &opts).await.unwrap().expect("free"));
    }
    assert!(locks.acquire("a", &opts).await.unwrap().is_none());
    for g in guards {
        assert!(g.release().await.unwrap());
    }
    let m = take(&snap);
    let l = [("prefix", p.as_str())];
    let with = |o: &'static str| [("prefix", p.as_str()), ("outcome", o)];
    assert_eq!(m.counter("fredkit_lock_acquire_total", &with("granted")), 3);
    assert_eq!(
        m.counter("fredkit_lock_acquire_total", &with("contended")),
        1
    );
    assert_eq!(
        m.counter("fredkit_lock_release_total", &with("released")),
        3
    );
    assert_eq!(m.samples("fredkit_lock_acquire_wait_seconds", &l), 4);
    assert_eq!(m.samples("fredkit_lock_hold_seconds", &l), 3);
    let own = locks.metrics();
    assert_eq!((own.acquired, own.contended, own.released), (3, 1, 3));
    locks.close().await;
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_metrics_count_every_decision(#[case] topology: Topology) {
    use fredkit_ratelimit::{Limit, Limiter};
    let (snap, redis, keys) = setup(topology, "metrics_ratelimit").await;
    let p = keys.prefix().to_string();
    let limiter = Limiter::builder(&redis, keys)
        .limit(Limit::gcra(2, Duration::from_secs(60)))
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    for _ in 0..5 {
        limiter.check("user", 1).await.unwrap();
    }
    let m = take(&snap);
    let with = |o: &'static str| [("prefix", p.as_str()), ("outcome", o)];
    assert_eq!(
        m.counter("fredkit_ratelimit_check_total", &with("allowed")),
        2
    );
    assert_eq!(
        m.counter("fredkit_ratelimit_check_total", &with("denied")),
        3
    );
    assert_eq!(
        m.samples("fredkit_ratelimit_check_seconds", &[("prefix", p.as_str())]),
        5
    );
    let own = limiter.metrics();
    assert_eq!((own.allowed, own.denied), (2, 3));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_metrics_count_reads_and_hits(#[case] topology: Topology) {
    use fredkit_revocation::{RevocationOptions, Revocations};
    let (snap, redis, keys) = setup(topology, "metrics_revocation").await;
    let p = keys.prefix().to_string();
    let store = Revocations::new(
        &redis,
        RevocationOptions::builder(FailMode::Closed)
            .prefix(keys)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    store
        .revoke("gone", SystemTime::now() + Duration::from_secs(600))
        .await
        .unwrap();
    assert!(store.is_revoked("gone").await.unwrap());
    assert!(!store.is_revoked("fine").await.unwrap());
    assert!(!store.is_revoked("fine2").await.unwrap());
    let m = take(&snap);
    let l = [("prefix", p.as_str())];
    assert_eq!(m.counter("fredkit_revocation_redis_reads_total", &l), 3);
    assert_eq!(m.counter("fredkit_revocation_revoked_total", &l), 1);
    assert_eq!(m.counter("fredkit_revocation_read_failures_total", &l), 0);
    assert_eq!(m.samples("fredkit_revocation_read_seconds", &l), 3);
    let own = store.metrics();
    assert_eq!((own.checks, own.revoked_hits), (3, 1));
    store.close().await;
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_pubsub_metrics_count_every_message(#[case] topology: Topology) {
    use fredkit_pubsub::{Delivery, Publisher, Subscriber};
    use fredkit_streams::{Message, Producer, StreamKeys, Worker, WorkerConfig};
    let (snap, redis, keys) = setup(topology, "metrics_streams").await;
    let stream_keys = StreamKeys::new(&keys, "orders").unwrap();
    let stream = stream_keys.stream().to_string();
    let worker = Worker::start(
        &redis,
        stream_keys.clone(),
        WorkerConfig::builder("billing")
            .block(Duration::from_millis(100))
            .build()
            .unwrap(),
        |_m: Message<u32>| async move { Ok::<_, String>(()) },
    )
    .await
    .unwrap();
    let producer = Producer::<u32>::new(&redis, stream_keys);
    for i in 0..5 {
        producer.publish(&i).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while worker.metrics().acked < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = worker.shutdown().await;
    assert_eq!(report.metrics.handled, 5, "{report:?}");
    let m = take(&snap);
    let s = [("stream", stream.as_str()), ("group", "billing")];
    assert_eq!(
        m.counter(
            "fredkit_streams_publish_total",
            &[("stream", stream.as_str()), ("outcome", "ok")]
        ),
        5
    );
    assert_eq!(m.counter("fredkit_streams_handled_total", &s), 5);
    assert_eq!(m.counter("fredkit_streams_delivered_total", &s), 5);
    assert_eq!(
        m.counter("fredkit_streams_acked_total", &s),
        report.metrics.acked
    );
    assert_eq!(m.samples("fredkit_streams_handler_seconds", &s), 5);
    assert_eq!(m.samples("fredkit_streams_wait_seconds", &s), 5);

    let channel = keys.key(["events"]);
    let subscriber = Subscriber::new(&redis).await.unwrap();
    let mut events = subscriber.subscribe::<String>(&channel).await.unwrap();
    let publisher = Publisher::new(&redis);
    for m in ["a", "b"] {
        publisher.publish(&channel, m).await.unwrap();
    }
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Delivery::Message(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    let m = take(&snap);
    assert_eq!(
        m.counter("fredkit_pubsub_published_total", &[("role", "publisher")]),
        2
    );
    assert_eq!(
        m.counter("fredkit_pubsub_received_total", &[("role", "subscriber")]),
        2
    );
    drop(events);
    subscriber.close().await;
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_metrics_count_hits_misses_and_loads(#[case] topology: Topology) {
    use fredkit_cache::{Cache, CacheOptions, L1Options};
    let (snap, redis, keys) = setup(topology, "metrics_cache").await;
    let p = keys.prefix().to_string();
    let l2_only: Cache<String> = Cache::new(
        &redis,
        CacheOptions::builder(keys.clone())
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    // A miss (and one load), then two L2 hits.
    for _ in 0..3 {
        let v = l2_only
            .get_or_set("k", || async { "v".to_string() })
            .await
            .unwrap();
        assert_eq!(v, "v");
    }
    assert_eq!(l2_only.get("absent").await.unwrap(), None);
    let with_l1: Cache<String> = Cache::new(
        &redis,
        CacheOptions::builder(keys)
            .ttl(Duration::from_secs(60))
            .l1(L1Options::new())
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    with_l1.wait_ready(Duration::from_secs(10)).await.unwrap();
    // An L2 hit that fills L1, then two L1 hits.
    for _ in 0..3 {
        assert_eq!(with_l1.get("k").await.unwrap().as_deref(), Some("v"));
    }
    let m = take(&snap);
    let get = |o: &'static str| [("prefix", p.as_str()), ("outcome", o)];
    assert_eq!(m.counter("fredkit_cache_get_total", &get("miss")), 2);
    assert_eq!(m.counter("fredkit_cache_get_total", &get("l2_hit")), 3);
    assert_eq!(m.counter("fredkit_cache_get_total", &get("l1_hit")), 2);
    assert_eq!(
        m.counter("fredkit_cache_loads_total", &[("prefix", p.as_str())]),
        1
    );
    let (a, b) = (l2_only.metrics(), with_l1.metrics());
    assert_eq!(
        (
            a.misses + b.misses,
            a.l2_hits + b.l2_hits,
            a.l1_hits + b.l1_hits
        ),
        (2, 3, 2)
    );
    l2_only.close().await;
    with_l1.close().await;
}
