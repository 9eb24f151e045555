//! Every duration the builder accepts works against a real server: the
//! extremes of each range connect (`lazy(false)`, so `wait_connected` runs),
//! run a command, report health, open a subscriber connection and shut
//! down, with no overflow anywhere (issue #14: `Duration::MAX` used to pass
//! `build()` and panic in `Redis::connect`). `Duration::MAX` and
//! `Duration::ZERO` are refused by `build()`: see the `config` tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::interfaces::{KeysInterface, PubsubInterface};
use fredkit_conn::{ReconnectConfig, Redis, RedisConfig};
use fredkit_testkit::{shared_url, unique_prefix, Topology};
use rstest::rstest;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Connect, one command, health, a subscriber, shutdown: bounded so that a
/// hang fails instead of stalling the run.
async fn exercise(config: RedisConfig) {
    let test = async {
        let redis = Redis::connect(config).await.unwrap();
        let key = format!("{}k", unique_prefix("durations"));
        let _: () = redis
            .client()
            .set(&key, "v", None, None, false)
            .await
            .unwrap();
        let v: Option<String> = redis.client().get(&key).await.unwrap();
        assert_eq!(v.as_deref(), Some("v"));
        let health = redis.health().await;
        assert!(health.reachable, "{health}");

        let subscriber = redis.subscriber().unwrap();
        // The longest wait there is: must not overflow.
        subscriber.wait_connected(Duration::MAX).await.unwrap();
        subscriber.subscribe("fredkit-durations").await.unwrap();
        drop(subscriber);

        redis.shutdown().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("a connection with extreme durations hung");
}

fn reconnect(initial: Duration, max: Duration, jitter: Duration) -> ReconnectConfig {
    ReconnectConfig {
        initial_delay: initial,
        max_delay: max,
        jitter,
        max_attempts: 0,
    }
}

#[rstest]
#[case::longest_timeouts(DAY, DAY, ReconnectConfig::default())]
#[case::longest_connect_timeout(DAY, Duration::from_secs(1), ReconnectConfig::default())]
#[case::longest_command_timeout(Duration::from_secs(5), DAY, ReconnectConfig::default())]
#[case::longest_reconnect_cap(
    DAY,
    DAY,
    reconnect(Duration::from_millis(1), Duration::from_secs(3600), Duration::ZERO)
)]
#[case::shortest_reconnect_delays(
    Duration::from_secs(5),
    Duration::from_secs(1),
    reconnect(Duration::from_millis(1), Duration::from_millis(1), Duration::ZERO)
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_extremes_connect_and_run_commands(
    #[case] connect_timeout: Duration,
    #[case] command_timeout: Duration,
    #[case] reconnect: ReconnectConfig,
) {
    let config = RedisConfig::builder()
        .url(shared_url(Topology::Standalone).unwrap())
        .connect_timeout(connect_timeout)
        .command_timeout(command_timeout)
        .reconnect(reconnect)
        .lazy(false)
        .build()
        .unwrap();
    exercise(config).await;
}

#[rstest]
#[case::connect_timeout(RedisConfig::builder().connect_timeout(Duration::MAX), "connect_timeout")]
#[case::command_timeout(RedisConfig::builder().command_timeout(Duration::MAX), "command_timeout")]
#[case::connect_timeout_zero(RedisConfig::builder().connect_timeout(Duration::ZERO), "connect_timeout")]
#[case::command_timeout_zero(RedisConfig::builder().command_timeout(Duration::ZERO), "command_timeout")]
#[tokio::test]
async fn refused_extremes_never_reach_connect(
    #[case] builder: fredkit_conn::RedisConfigBuilder,
    #[case] field: &str,
) {
    let e = builder
        .url(shared_url(Topology::Standalone).unwrap())
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), fredkit_core::ErrorKind::Config, "{e}");
    assert!(e.to_string().contains(field), "{e}");
}
