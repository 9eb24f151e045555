//! `LockManager` passes fredkit-core's `DistributedLock` contract suite
//! (fredkit_testkit::contract::distributed_lock), the same suite the in-memory double
//! passes, on standalone and cluster: two managers on two connections and one prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_lock::LockManager;
use fredkit_testkit::contract::{self, Time};
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_manager_keeps_the_distributed_lock_contract(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let (one, two) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    let prefix = unique_prefix("lock_contract");
    let prefix = prefix.trim_end_matches(':');
    let a = LockManager::new(&one, prefix).unwrap();
    let b = LockManager::new(&two, prefix).unwrap();
    contract::distributed_lock(&a, &b, "res", &Time::Real)
        .await
        .unwrap();
    a.close().await;
    b.close().await;
}
