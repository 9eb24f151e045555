//! `LockManager::close` and `Redlock::close`: no task of the crate left, no
//! warning logged (ours or fred's, captured from the tracing output) through
//! the runtime's shutdown, idempotent, and the manager still grants locks
//! afterwards. Needs a process of its own (nextest runs every test in one):
//! it installs the global log capture and counts the runtime's tasks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
use fredkit_testkit::capture;

use std::time::Duration;

use fredkit_lock::{LockManager, LockOptions};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until the runtime's task count is back to `baseline`:
/// an aborted task leaves the count when the runtime next polls it, a
/// connection's `QUIT` within one round trip.
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

fn prefix(test: &str) -> String {
    unique_prefix(test).trim_end_matches(':').to_string()
}

/// A manager that has used everything it owns — the wake-up subscription
/// (a waiter woken by a release), the replica-confirmation connection (a
/// try on a server without replicas, refused as designed), background
/// releases (a dropped guard, a dropped permit) — is closed twice (once
/// from a clone). Then no task of it is left; it still grants and releases
/// a lock and polls for a busy one without subscribing again; and nothing
/// is logged at WARN or above until the runtime is gone.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
fn close_leaves_no_task_and_logs_no_warning(#[case] topology: Topology) {
    let logs = capture::Logs::install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = connect(&shared_url(topology).unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let baseline = alive();
        let m = LockManager::new(&redis, prefix("lock_close")).unwrap();

        // The wake-up subscription: a waiter woken by the holder's release.
        let holder = m
            .acquire("r", &LockOptions::default())
            .await
            .unwrap()
            .unwrap();
        let waiting = tokio::spawn({
            let m = m.clone();
            async move {
                // The fallback poll is slower than the wait, so only the
                // wake-up message can grant this waiter in time (a prompt
                // poll could win the race with the message under load, and
                // then nothing counts the wake-up).
                let slow_poll = fredkit_core::Backoff::builder()
                    .initial(Duration::from_secs(25))
                    .max(Duration::from_secs(25))
                    .build()
                    .unwrap();
                let o = LockOptions::builder()
                    .ttl(Duration::from_secs(10))
                    .wait(Duration::from_secs(20))
                    .poll_backoff(slow_poll)
                    .build()
                    .unwrap();
                m.acquire("r", &o).await.unwrap().unwrap().release().await
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while m.metrics().contended == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the waiter never tried"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(holder.release().await.unwrap());
        assert!(waiting.await.unwrap().unwrap());
        assert!(m.metrics().wakeups >= 1, "woken by the subscription");

        // The replica-confirmation connection (no replicas: refused).
        let confirmed = LockOptions::builder()
            .replicas(1, Duration::from_millis(50))
            .build()
            .unwrap();
        assert!(m.acquire("c", &confirmed).await.is_err());

        // Background releases of a dropped guard and a dropped permit.
        drop(
            m.acquire("d", &LockOptions::default())
                .await
                .unwrap()
                .unwrap(),
        );
        let sem = m.semaphore("s", 2).unwrap();
        drop(sem.acquire(&LockOptions::default()).await.unwrap().unwrap());
        assert!(alive() > baseline, "the manager runs tasks");

        m.close().await;
        m.clone().close().await; // idempotent, from a clone too
        assert_eq!(
            settle(baseline).await,
            baseline,
            "a task of a closed manager is left"
        );

        // Still grants and releases; a busy lock is polled, not subscribed to.
        let g = m
            .acquire("d", &LockOptions::default())
            .await
            .unwrap()
            .expect("the dropped guard was released before close returned");
        let short_wait = LockOptions::builder()
            .ttl(Duration::from_secs(10))
            .wait(Duration::from_millis(100))
            .build()
            .unwrap();
        assert!(m.acquire("d", &short_wait).await.unwrap().is_none());
        assert!(g.release().await.unwrap());
        assert_eq!(settle(baseline).await, baseline, "close subscribed again");
        m.close().await;
        drop((m, sem));
        redis.shutdown().await.unwrap();
    });
    drop(rt);
    let warnings = logs.warnings();
    assert!(warnings.is_empty(), "warnings after close: {warnings:#?}");
}
