//! `Publisher` and `Subscriber` pass fredkit-core's pub/sub contract suite
//! (fredkit_testkit::contract::pubsub), the same suite the in-memory double passes, on
//! standalone and cluster: one publisher, two subscribers (two subscriber connections).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fredkit_pubsub::{Publisher, Subscriber};
use fredkit_testkit::contract;
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

#[rstest]
// PUBLISH counts the receivers of the node that ran it: exact on a standalone only.
#[case::standalone(Topology::Standalone, true)]
#[case::cluster(Topology::Cluster, false)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_subscriber_keep_the_pubsub_contract(
    #[case] topology: Topology,
    #[case] counts_receivers: bool,
) {
    let url = shared_url(topology).unwrap();
    let redis = connect(&url).await.unwrap();
    let publisher = Publisher::new(&redis);
    let s1 = Subscriber::new(&redis).await.unwrap();
    let s2 = Subscriber::new(&redis).await.unwrap();
    let ns = unique_prefix("pubsub_contract");
    contract::pubsub(
        &publisher,
        &s1,
        &s2,
        ns.trim_end_matches(':'),
        counts_receivers,
    )
    .await
    .unwrap();
}
