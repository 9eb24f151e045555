//! `RedisCacheStore` passes fredkit-core's `CacheStore` contract suite
//! (fredkit_testkit::contract::cache_store), the same suite the in-memory double
//! passes, on standalone and cluster: two stores on two connections, one suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_cache::RedisCacheStore;
use fredkit_testkit::contract::{self, Time};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_store_keeps_the_cache_store_contract(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let (one, two) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    let (a, b) = (RedisCacheStore::new(&one), RedisCacheStore::new(&two));
    let ns = unique_prefix("cache_contract");
    contract::cache_store(&a, &b, ns.trim_end_matches(':'), &Time::Real)
        .await
        .unwrap();
}
