//! Helpers shared by the test binaries.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::Duration;

use fredkit_conn::Redis;
use fredkit_core::KeySpace;
use fredkit_streams::{StreamAdmin, StreamKeys, WorkerConfig, WorkerConfigBuilder};
use serde::{Deserialize, Serialize};

/// Bounds every wait so a broken build fails instead of hanging.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) n: u64,
}

pub(crate) async fn connect(url: &str) -> Redis {
    fredkit_testkit::connect(url).await.unwrap()
}

/// Keys of a fresh stream for this test.
pub(crate) fn keys(test: &str) -> StreamKeys {
    let prefix = fredkit_testkit::unique_prefix(test);
    let space = KeySpace::new(prefix.trim_end_matches(':')).unwrap();
    StreamKeys::new(&space, "jobs").unwrap()
}

/// A worker configuration with short timings for tests: handlers may run
/// 200 ms, entries are retried / taken over after 1 s idle (the 800 ms
/// margin covers the acknowledgement even on a loaded 2-core machine).
pub(crate) fn fast(group: &str) -> WorkerConfigBuilder {
    WorkerConfig::builder(group)
        .block(Duration::from_millis(100))
        .handler_timeout(Duration::from_millis(200))
        .min_idle(Duration::from_millis(1000))
        .claim_interval(Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(10))
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after
/// [`DEADLINE`].
pub(crate) async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn pending(admin: &StreamAdmin, group: &str) -> u64 {
    admin.pending(group).await.unwrap().total
}
