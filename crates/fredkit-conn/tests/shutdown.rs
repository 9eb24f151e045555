//! `Redis::shutdown` closes what the handle owns — its pool's connections and
//! every background task it started — and nothing else: a dedicated
//! connection made from it stays usable until dropped. Commands afterwards
//! fail without waiting; a second shutdown is harmless.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::interfaces::{ClientLike, KeysInterface};
use fredkit_conn::{Redis, RedisConfig};
use fredkit_testkit::RedisServer;
use std::time::Duration;

/// Tasks alive on this runtime once the counts settle (aborted tasks finish
/// at their next poll).
async fn settled_tasks() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut last = metrics.num_alive_tasks();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = metrics.num_alive_tasks();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_pool_and_every_task_of_the_handle_but_not_dedicated() {
    let server = RedisServer::start().unwrap();
    let baseline = settled_tasks().await;

    let config = RedisConfig::builder()
        .url(server.url())
        .pool_size(2)
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    redis.wait_connected().await.unwrap();
    let dedicated = redis.dedicated().unwrap();
    dedicated
        .wait_connected(Duration::from_secs(5))
        .await
        .unwrap();
    let _: () = redis
        .client()
        .set("k", "v", None, None, false)
        .await
        .unwrap();
    let with_dedicated = settled_tasks().await;

    redis.shutdown().await.unwrap();
    // Only the dedicated connection's task is left (one per fred client).
    let after = settled_tasks().await;
    assert!(
        after <= baseline + 1,
        "tasks: {baseline} before the handle, {with_dedicated} with it, {after} after shutdown"
    );
    assert!(!redis.pool().is_connected());

    // The dedicated connection is not the pool's: it still answers.
    let v: Option<String> = dedicated.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));

    // A command on the closed pool fails without waiting for a reconnection.
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        redis.client().get::<Option<String>, _>("k"),
    )
    .await
    .expect("a command after shutdown hung");
    assert!(r.is_err(), "{r:?}");

    // Twice is harmless.
    let _ = redis.shutdown().await;
    drop(dedicated);
    drop(redis);
}
