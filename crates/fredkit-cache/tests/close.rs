//! `Cache::close`: no task of the cache left, no warning logged (ours or
//! fred's, captured from the tracing output) through the runtime's
//! shutdown, idempotent, and the cache still works on Redis alone — its
//! writes still invalidate other instances' L1. A binary of its own: it
//! installs the global log capture and counts the runtime's tasks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "support/capture.rs"]
mod capture;

use std::time::Duration;

use fredkit_cache::{Cache, CacheOptions, L1Options};
use fredkit_core::MsgPack;
use fredkit_pubsub::Subscriber;
use fredkit_testkit::{connect, shared_url, unique_prefix, RedisServer, Topology};
use rstest::rstest;

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until the runtime's task count is back to `baseline`:
/// an aborted task leaves the count when the runtime next polls it, a
/// subscriber's `QUIT` within one round trip.
async fn settle(baseline: usize) -> usize {
    for _ in 0..400 {
        if alive() <= baseline {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    alive()
}

/// Polls `check` every 10 ms, at most 15 s.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1500 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Reads `k` until the read is an L1 hit of `want` (bounded).
async fn holds_copy(c: &Cache<u64>, want: u64) -> bool {
    eventually(|| async {
        let before = c.metrics().l1_hits;
        c.get("k").await.unwrap() == Some(want) && c.metrics().l1_hits == before + 1
    })
    .await
}

/// Three instances with L1 (their own subscribers, or one shared) are used
/// — a copy held in B's L1, an invalidation received — then A and B are
/// closed (B twice, once from a clone). Closed A's next write still reaches
/// C's L1 (C stays open); closed B reads it from Redis (its L1 is off).
/// Once C is closed too, no task of the caches is left, although their
/// handles are still held; a caller's shared subscriber still works. On a
/// server of the test's own, the server is then killed while the runtime
/// (and the closed caches) live on, as at the end of a test or when Redis
/// goes away before the process: nothing is logged at WARN or above (a
/// subscriber connection left open logs fred's "Connection reset by peer"
/// and reconnect failures).
#[rstest]
#[case::standalone_own(Topology::Standalone, false)]
#[case::standalone_shared(Topology::Standalone, true)]
#[case::cluster_own(Topology::Cluster, false)]
fn close_leaves_no_task_and_logs_no_warning(#[case] topology: Topology, #[case] shared: bool) {
    let _ = capture::Logs::install();
    let after_close: std::sync::Mutex<Option<capture::Logs>> = std::sync::Mutex::new(None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Standalone: a server of its own, killed at the end.
    let mut server = match topology {
        Topology::Standalone => Some(RedisServer::start().unwrap()),
        _ => None,
    };
    let url = match &server {
        Some(s) => s.url(),
        None => shared_url(topology).unwrap(),
    };
    rt.block_on(async {
        let redis = connect(&url).await.unwrap();
        let before_subscriber = alive();
        let subscriber = if shared {
            Some(Subscriber::new(&redis).await.unwrap())
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let baseline = alive();
        let prefix = unique_prefix("close");
        let prefix = prefix.trim_end_matches(':').to_string();
        let make = || async {
            let o = CacheOptions::builder(prefix.as_str())
                .l1(L1Options::new().ttl(Duration::from_secs(60)))
                .ttl(Duration::from_secs(60))
                .build()
                .unwrap();
            let c: Cache<u64> = Cache::with_codec(&redis, MsgPack, o, subscriber.as_ref())
                .await
                .unwrap();
            c.wait_ready(Duration::from_secs(10)).await.unwrap();
            c
        };
        let (a, b, c) = (make().await, make().await, make().await);
        assert!(alive() > baseline, "the caches run tasks");

        a.set("k", &1).await.unwrap();
        assert_eq!(b.get("k").await.unwrap(), Some(1));
        assert_eq!(c.get("k").await.unwrap(), Some(1));
        // (A's own invalidation may still be on its way and drop the first
        // copy: read until one is held.)
        assert!(holds_copy(&b, 1).await, "B holds an L1 copy");
        a.set("k", &2).await.unwrap();
        assert!(
            eventually(|| async { b.get("k").await.unwrap() == Some(2) }).await,
            "B received A's invalidation"
        );
        assert!(eventually(|| async { c.get("k").await.unwrap() == Some(2) }).await);

        // From here on nothing may be logged at WARN or above (what a
        // loaded box logs while the caches start up is not the question).
        *after_close.lock().unwrap() = Some(capture::Logs::install());
        a.close().await;
        b.close().await;
        b.clone().close().await; // idempotent, from a clone too

        // Closed A's write still invalidates C's copy; closed B reads Redis.
        assert!(holds_copy(&c, 2).await, "C holds an L1 copy");
        a.set("k", &3).await.unwrap();
        assert!(
            eventually(|| async { c.get("k").await.unwrap() == Some(3) }).await,
            "C received closed A's invalidation"
        );
        let b_l1 = b.metrics().l1_hits;
        assert_eq!(b.get("k").await.unwrap(), Some(3));
        assert_eq!(b.get("k").await.unwrap(), Some(3));
        assert_eq!(b.metrics().l1_hits, b_l1, "closed B's L1 is off");

        c.close().await;
        assert_eq!(
            settle(baseline).await,
            baseline,
            "a task of a closed cache is left"
        );
        if let Some(s) = &subscriber {
            // The caller's subscriber was not closed.
            let _sub = s.subscribe_bytes("after-close").await.unwrap();
        }
        if let Some(s) = subscriber {
            // The caller's subscriber is the caller's to close: let it go
            // and wait until its connection's QUIT has run (its tasks are
            // gone), as the cache does for its own.
            let mut gone = s.gaps();
            drop(s);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while gone.changed().await.is_ok() {}
            })
            .await;
            assert_eq!(settle(before_subscriber).await, before_subscriber);
        }
        redis.shutdown().await.unwrap();
        if let Some(server) = server.take() {
            // Redis goes away while the closed caches are still held.
            drop(server);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop((a, b, c));
    });
    drop(rt);
    let logs = after_close.lock().unwrap().take().unwrap();
    let warnings = logs.warnings();
    assert!(warnings.is_empty(), "warnings after close: {warnings:#?}");
}
