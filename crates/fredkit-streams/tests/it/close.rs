//! `Worker::close` (= `shutdown`): no task of the worker left, no warning
//! logged (ours or fred's, captured from the tracing output) when the server
//! goes away afterwards while the `Worker` is still held, and idempotent.
//! Needs a process of its own (nextest runs every test in one): it installs
//! the global log capture and counts the runtime's tasks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
use fredkit_testkit::capture;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fredkit_core::KeySpace;
use fredkit_streams::{Message, Producer, StreamKeys, Worker, WorkerConfig};
use fredkit_testkit::{connect, unique_prefix, RedisServer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    n: u64,
}

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until the runtime's task count is back to `baseline`
/// (an ended task leaves the count when the runtime next polls it, a
/// connection's background `QUIT` within one round trip).
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

/// A worker handles 20 jobs and is closed (twice, once through a handle)
/// while the `Worker` value is still held: every job acknowledged, no task
/// of the worker left; then the server is killed: nothing is logged at WARN
/// or above (a read connection left open logs fred's "Connection reset by
/// peer" and reconnect failures).
#[test]
fn close_leaves_no_task_and_logs_no_warning() {
    let _ = capture::Logs::install();
    let after_close: std::sync::Mutex<Option<capture::Logs>> = std::sync::Mutex::new(None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Some(RedisServer::start().unwrap());
    let url = server.as_ref().unwrap().url();
    rt.block_on(async {
        let redis = connect(&url).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let baseline = alive();
        let prefix = unique_prefix("close");
        let space = KeySpace::new(prefix.trim_end_matches(':')).unwrap();
        let keys = StreamKeys::new(&space, "jobs").unwrap();
        let handled = Arc::new(AtomicU64::new(0));
        let h = Arc::clone(&handled);
        let config = WorkerConfig::builder("g")
            .block(Duration::from_millis(100))
            .build()
            .unwrap();
        let worker = Worker::start(&redis, keys.clone(), config, move |_m: Message<Job>| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), String>(()) }
        })
        .await
        .unwrap();
        assert!(alive() > baseline, "the worker runs tasks");
        let producer = Producer::<Job>::new(&redis, keys);
        for n in 0..20 {
            producer.publish(&Job { n }).await.unwrap();
        }
        for _ in 0..3000 {
            if worker.metrics().acked == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // From here on nothing may be logged at WARN or above (what a
        // loaded box logs while the worker starts is not the question).
        *after_close.lock().unwrap() = Some(capture::Logs::install());
        let report = worker.close().await;
        assert_eq!(report.metrics.acked, 20, "{report:?}");
        assert_eq!((report.unacked, report.abandoned), (0, 0), "{report:?}");
        assert_eq!(worker.handle().shutdown().await, report, "idempotent");
        assert_eq!(handled.load(Ordering::SeqCst), 20);
        assert_eq!(
            settle(baseline).await,
            baseline,
            "a task of a closed worker is left"
        );
        redis.shutdown().await.unwrap();
        // Redis goes away while the closed worker is still held.
        drop(server.take());
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(worker);
    });
    drop(rt);
    let logs = after_close.lock().unwrap().take().unwrap();
    let warnings = logs.warnings();
    assert!(warnings.is_empty(), "warnings after close: {warnings:#?}");
}
