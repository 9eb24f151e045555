//! `Limiter` passes fredkit-core's `RateLimiter` contract suites
//! (fredkit_testkit::contract::rate_limiter and rate_limiter_refill), the same suites the
//! in-memory double passes, for every algorithm, on standalone and cluster: two limiters
//! on two connections and one prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fredkit_conn::Redis;
use fredkit_core::FailMode;
use fredkit_ratelimit::{Limit, Limiter};
use fredkit_testkit::contract::{self, Time};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

fn limiter(redis: &Redis, prefix: &str, limit: Limit) -> Limiter {
    Limiter::builder(redis, prefix)
        .limit(limit)
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap()
}

/// Long windows: nothing refills while the suite counts, and the sliding counter's
/// aligned windows are practically never crossed during a run.
const LONG: Duration = Duration::from_secs(30 * 86_400);

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_keeps_the_rate_limiter_contract_for_every_algorithm(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let (one, two) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    for (name, limit) in [
        ("fixed_window", Limit::fixed_window(10, LONG)),
        ("sliding_log", Limit::sliding_log(10, LONG)),
        ("sliding_counter", Limit::sliding_counter(10, LONG)),
        ("gcra", Limit::gcra(10, LONG)),
        ("gcra_burst", Limit::gcra(3, LONG).burst(7)),
    ] {
        let prefix = unique_prefix(&format!("rl_contract_{name}"));
        let prefix = prefix.trim_end_matches(':');
        let a = limiter(&one, prefix, limit.clone());
        let b = limiter(&two, prefix, limit);
        println!("{name}");
        contract::rate_limiter(&a, &b, "id").await.unwrap();
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_refills_as_its_decisions_say_for_every_algorithm(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let redis = connect(&url).await.unwrap();
    let short = Duration::from_millis(300);
    for (name, limit) in [
        ("fixed_window", Limit::fixed_window(5, short)),
        ("sliding_log", Limit::sliding_log(5, short)),
        ("sliding_counter", Limit::sliding_counter(5, short)),
        ("gcra", Limit::gcra(5, short)),
    ] {
        let prefix = unique_prefix(&format!("rl_refill_{name}"));
        let l = limiter(&redis, prefix.trim_end_matches(':'), limit);
        println!("{name}");
        contract::rate_limiter_refill(&l, "id", &Time::Real)
            .await
            .unwrap();
    }
}
