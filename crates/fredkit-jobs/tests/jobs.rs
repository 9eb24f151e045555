//! fredkit-jobs against real servers, standalone and a 3-master cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unused)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fredkit_conn::Redis;
use fredkit_jobs::{
    ErrorKind, Job, JobBackoff, JobOptions, JobState, Keep, Queue, Scheduler, Worker, WorkerConfig,
};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

async fn redis(topology: Topology) -> Redis {
    connect(&shared_url(topology).unwrap()).await.unwrap()
}

/// Polls `f` every 20 ms until it is true, at most `secs` seconds.
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn server_ms(r: &Redis) -> i64 {
    let v: Vec<String> = r
        .client()
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .unwrap();
    v[0].parse::<i64>().unwrap() * 1000 + v[1].parse::<i64>().unwrap() / 1000
}

fn fast() -> WorkerConfig {
    WorkerConfig::new().block(Duration::from_millis(500))
}

/// Jobs run, complete with their result; counts, job(id) and unknown ids.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_with_their_result(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let q: Queue<u64> = Queue::new(&r, unique_prefix("jobs_complete"), "q").unwrap();
    for i in 0..50u64 {
        q.enqueue_with(&i, JobOptions::new().id(format!("j:{i}")))
            .await
            .unwrap();
    }
    let bulk: Vec<(u64, JobOptions)> = (50..100u64)
        .map(|i| (i, JobOptions::new().id(format!("j:{i}"))))
        .collect();
    let res = q
        .enqueue_bulk(bulk.iter().map(|(j, o)| (j, o.clone())))
        .await;
    assert!(res.iter().all(|r| r.as_ref().unwrap().added));
    let w = Worker::start(&q, fast().concurrency(8), |job: Job<u64>| async move {
        job.progress(50).await.unwrap();
        Ok::<_, String>(job.payload * 2)
    })
    .unwrap();
    assert!(eventually(20, || async { q.counts().await.unwrap().completed == 100 }).await);
    let report = w.shutdown().await;
    assert_eq!(report.metrics.completed, 100);
    let c = q.counts().await.unwrap();
    assert_eq!(
        (c.waiting, c.active, c.delayed, c.failed, c.dead),
        (0, 0, 0, 0, 0)
    );
    let info = q.job::<u64>("j:7").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.result, Some(14));
    assert_eq!(info.payload, Ok(7));
    assert_eq!(info.attempts, 1);
    assert_eq!(info.attempt_starts.len(), 1);
    assert_eq!(info.progress, Some(50));
    assert!(q.job::<u64>("no-such-job").await.unwrap().is_none());
}
