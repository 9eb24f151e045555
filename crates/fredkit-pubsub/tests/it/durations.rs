//! Issue #14: `Duration::MAX` as a timeout passed `build()` and then
//! panicked ("overflow when multiplying duration by scalar") in
//! `Redis::connect` and in `Subscriber`, which reaches the same duration
//! arithmetic (probe bound, reconnect wait, resubscribe bound). Now every
//! extreme is either refused by `build()` with a config error naming the
//! field, or a `Subscriber` on it subscribes and delivers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_conn::{Redis, RedisConfig};
use fredkit_pubsub::{Delivery, Publisher, Subscriber};
use fredkit_testkit::{shared_url, unique_prefix, Topology};
use futures::StreamExt;
use rstest::rstest;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(24 * 3600);
const DEADLINE: Duration = Duration::from_secs(15);

#[rstest]
#[case::one_day(DAY)]
#[case::max(Duration::MAX)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_are_refused_or_the_subscriber_delivers(#[case] timeout: Duration) {
    let built = RedisConfig::builder()
        .url(shared_url(Topology::Standalone).unwrap())
        .connect_timeout(timeout)
        .command_timeout(timeout)
        .build();
    let config = match built {
        Ok(config) => config,
        Err(e) => {
            assert_eq!(e.kind(), fredkit_core::ErrorKind::Config, "{e}");
            assert!(e.to_string().contains("_timeout"), "{e}");
            return;
        }
    };
    let redis = Redis::connect(config).await.unwrap();
    let test = async {
        let subscriber = Subscriber::new(&redis).await.unwrap();
        let channel = format!("{}ch", unique_prefix("pubsub_durations"));
        let mut sub = subscriber.subscribe::<u64>(&channel).await.unwrap();
        let receivers = Publisher::new(&redis)
            .publish(&channel, &7u64)
            .await
            .unwrap();
        assert_eq!(receivers, 1);
        match sub.next().await {
            Some(Delivery::Message(m)) => assert_eq!(m.payload.unwrap(), 7),
            other => panic!("expected the message, got {other:?}"),
        }
    };
    tokio::time::timeout(DEADLINE, test)
        .await
        .expect("a subscriber with 24 h timeouts hung");
}
