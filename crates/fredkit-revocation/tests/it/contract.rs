//! `Revocations` passes fredkit-core's `RevocationStore` contract suite
//! (fredkit_testkit::contract::revocation_store), the same suite the in-memory double
//! passes, on standalone and cluster: two stores on two connections and one prefix,
//! with the default leeway (0) and with a 1 s leeway as the stated margin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fredkit_conn::Redis;
use fredkit_revocation::{FailMode, RevocationOptions, Revocations};
use fredkit_testkit::contract::{self, Time};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

async fn store(redis: &Redis, prefix: &str, leeway: Duration) -> Revocations {
    let options = RevocationOptions::builder(FailMode::Closed)
        .prefix(prefix)
        .expiry_leeway(leeway)
        .build()
        .unwrap();
    Revocations::new(redis, options).await.unwrap()
}

#[rstest]
#[case::standalone(Topology::Standalone, Duration::ZERO)]
#[case::standalone_leeway(Topology::Standalone, Duration::from_secs(1))]
#[case::cluster(Topology::Cluster, Duration::ZERO)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_keep_the_revocation_store_contract(
    #[case] topology: Topology,
    #[case] leeway: Duration,
) {
    let url = shared_url(topology).unwrap();
    let (one, two) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    let prefix = unique_prefix("revocation_contract");
    let prefix = prefix.trim_end_matches(':');
    let a = store(&one, prefix, leeway).await;
    let b = store(&two, prefix, leeway).await;
    contract::revocation_store(&a, &b, "t", &Time::Real, leeway)
        .await
        .unwrap();
    a.close().await;
    b.close().await;
}
