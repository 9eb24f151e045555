//! `Revocations::close` with the local cache: no task left, no warning
//! logged (ours or fred's, captured from the tracing output), idempotent,
//! and the store still answers (from Redis) afterwards. A binary of its
//! own: it installs the global log capture and counts the runtime's tasks.
#![cfg(feature = "local-cache")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
use fredkit_testkit::capture;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fredkit_core::FailMode;
use fredkit_pubsub::Subscriber;
use fredkit_revocation::{LocalCacheOptions, RevocationOptions, Revocations, TokenClaims};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until the runtime's task count is back to `baseline`:
/// an aborted task leaves the count when the runtime next polls it.
async fn settle(baseline: usize) -> usize {
    for _ in 0..200 {
        if alive() <= baseline {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    alive()
}

fn options(prefix: &str) -> RevocationOptions {
    RevocationOptions::builder(FailMode::Closed)
        .prefix(prefix)
        .max_token_lifetime(Duration::from_secs(3600))
        .local_cache(LocalCacheOptions::default().ttl(Duration::from_secs(60)))
        .build()
        .unwrap()
}

/// A store with the local cache (its own subscriber, or the caller's) is
/// used — a revocation, an event received, answers from memory — then
/// closed twice: no task of the store is left, nothing is logged at WARN
/// or above until the runtime is gone, the caller's subscriber (if any)
/// still works, and the store answers from Redis.
#[rstest]
#[case::own_subscriber(false)]
#[case::shared_subscriber(true)]
fn close_leaves_no_task_and_logs_no_warning(#[case] shared: bool) {
    let logs = capture::Logs::install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The stores outlive the runtime, as in a `main` that returns: only
    // `close` (and `Redis::shutdown`) run before the runtime goes.
    let kept = rt.block_on(async {
        let redis = connect(&shared_url(Topology::Standalone).unwrap())
            .await
            .unwrap();
        let subscriber = if shared {
            Some(Subscriber::new(&redis).await.unwrap())
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let baseline = alive();
        let prefix = unique_prefix("close");
        let prefix = prefix.trim_end_matches(':');
        let (a, b) = match &subscriber {
            Some(s) => (
                Revocations::with_subscriber(&redis, options(prefix), s)
                    .await
                    .unwrap(),
                Revocations::with_subscriber(&redis, options(prefix), s)
                    .await
                    .unwrap(),
            ),
            None => (
                Revocations::new(&redis, options(prefix)).await.unwrap(),
                Revocations::new(&redis, options(prefix)).await.unwrap(),
            ),
        };
        assert!(alive() > baseline, "the stores run listener tasks");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = TokenClaims {
            jti: "t1".into(),
            sub: "sue".into(),
            org: None,
            iat: now,
            exp: now + 600,
        };
        a.revoke(&token.jti, UNIX_EPOCH + Duration::from_secs(token.exp))
            .await
            .unwrap();
        // B learns it from the event: answered without a read.
        let mut seen = false;
        for _ in 0..200 {
            if b.metrics().events_received >= 1 {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "B received the revocation event");
        assert!(b.is_revoked("t1").await.unwrap());
        assert_eq!(b.metrics().redis_reads, 0);

        a.close().await;
        b.close().await;
        b.clone().close().await; // idempotent, from a clone too
        assert_eq!(
            settle(baseline).await,
            baseline,
            "a task of a closed store is left"
        );

        // Still answers, now from Redis.
        assert!(b.check(&token).await.unwrap());
        assert_eq!(b.metrics().redis_reads, 1);
        if let Some(s) = &subscriber {
            // The caller's subscriber was not closed.
            let _sub = s.subscribe_bytes("after-close").await.unwrap();
        }
        redis.shutdown().await.unwrap();
        (a, b, subscriber)
    });
    drop(rt);
    drop(kept);
    let warnings = logs.warnings();
    assert!(warnings.is_empty(), "warnings after close: {warnings:#?}");
}
