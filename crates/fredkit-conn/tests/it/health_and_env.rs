//! `Redis::health()`'s latency and `RedisConfig::from_env`'s success path,
//! against real servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::prelude::*;
use fredkit_conn::{Node, Redis, RedisConfig, Topology};
use fredkit_testkit::RedisServer;
use std::time::{Duration, Instant};

/// The latency reported is the PING's round trip: with every client paused
/// for 400 ms, a probe sent right after reports at least the rest of the
/// pause (a lower bound only, so a slow machine cannot fail it); an
/// unpaused probe reports a latency below its own wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_ping_round_trip_as_latency() {
    let server = RedisServer::start().unwrap();
    let redis = fredkit_testkit::connect(&server.url()).await.unwrap();

    let started = Instant::now();
    let health = redis.health().await;
    let wall = started.elapsed();
    assert!(health.reachable, "{health}");
    let latency = health
        .latency
        .unwrap_or_else(|| panic!("no latency: {health}"));
    assert!(
        latency > Duration::ZERO && latency <= wall,
        "{latency:?} vs {wall:?}"
    );

    let pause = Duration::from_millis(400);
    let paused_at = Instant::now();
    server.client_pause(pause).unwrap();
    let rest = pause.saturating_sub(paused_at.elapsed());
    let health = redis.health().await;
    assert!(health.reachable, "{health}");
    let latency = health
        .latency
        .unwrap_or_else(|| panic!("no latency: {health}"));
    assert!(
        latency + Duration::from_millis(50) >= rest,
        "latency {latency:?} while the server was paused for {rest:?} more"
    );

    // Unreachable: no latency, and the error says why.
    server.pause().unwrap();
    let health = redis.health().await;
    server.resume().unwrap();
    assert!(!health.reachable, "{health}");
    assert_eq!(health.latency, None);
    assert!(health.error.is_some(), "{health}");
}

/// `REDIS_URL` is read, parsed and connected to (each nextest test runs in
/// its own process, so setting the variable here touches no other test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_env_reads_redis_url_and_connects() {
    let server = RedisServer::start().unwrap();
    std::env::set_var(
        "REDIS_URL",
        format!("{}/3?command_timeout=2s", server.url()),
    );

    let config = RedisConfig::from_env().unwrap();
    assert_eq!(
        config.topology(),
        &Topology::Standalone(Node {
            host: "127.0.0.1".into(),
            port: server.port()
        })
    );
    assert_eq!(config.database(), Some(3));
    assert_eq!(config.command_timeout(), Duration::from_secs(2));

    let redis = Redis::from_env().await.unwrap();
    redis.wait_connected().await.unwrap();
    redis
        .client()
        .set::<(), _, _>("from-env", "yes", None, None, false)
        .await
        .unwrap();
    let v: Option<String> = redis.client().get("from-env").await.unwrap();
    assert_eq!(v.as_deref(), Some("yes"));
    let db0 = server.command(&["GET", "from-env"]).unwrap();
    assert!(db0.is_nil(), "the key landed in database 0: {db0:?}");
    redis.shutdown().await.unwrap();

    std::env::remove_var("REDIS_URL");
    let missing = RedisConfig::from_env().unwrap_err();
    assert!(missing.to_string().contains("REDIS_URL"), "{missing}");
}
