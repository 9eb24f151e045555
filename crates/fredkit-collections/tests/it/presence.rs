//! Presence against real servers, standalone and a 3-master cluster:
//! lapsed heartbeats are never reported and are trimmed away; concurrent
//! heartbeats all count; garbage is a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fred::prelude::*;
use fredkit_collections::Presence;
use fredkit_core::ErrorKind;
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

/// a and b beat; after more than the window only c's fresh beat counts:
/// a and b are neither listed, counted nor "online", and they are gone from
/// the sorted set (trimmed on the write, no sweeper).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_members_are_not_reported_after_the_window(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = connect(&shared_url(topology).unwrap()).await.unwrap();
    let window = Duration::from_millis(3000);
    let p = Presence::new(&r, unique_prefix("presence_lapse"), window).unwrap();
    assert_eq!(p.heartbeat("room", "a").await.unwrap(), 1);
    assert_eq!(p.heartbeat("room", "b").await.unwrap(), 2);
    assert_eq!(p.heartbeat("room", "b").await.unwrap(), 2);
    assert!(p.is_online("room", "a").await.unwrap());
    let key = p.key("room").unwrap();
    let left: i64 = r.client().pttl(&key).await.unwrap();
    assert!(left > 0 && left <= 3000, "PTTL {left}");

    // d beats half-way, which keeps the room's key alive: only the trim
    // can drop a and b.
    tokio::time::sleep(Duration::from_millis(1650)).await;
    p.heartbeat("room", "d").await.unwrap();
    // More than the window after a and b (by any clock: the sleeps are
    // longer), less than it after d.
    tokio::time::sleep(Duration::from_millis(1650)).await;
    assert_eq!(p.heartbeat("room", "c").await.unwrap(), 2);
    let raw: i64 = r.client().zcard(&key).await.unwrap();
    assert_eq!(raw, 2, "lapsed members were not trimmed");
    assert_eq!(
        p.online("room").await.unwrap(),
        vec!["c".to_string(), "d".to_string()]
    );
    assert_eq!(p.count("room").await.unwrap(), 2);
    assert!(!p.is_online("room", "a").await.unwrap());
    assert!(p.is_online("room", "d").await.unwrap());
    assert_eq!(p.leave("room", "d").await.unwrap(), 1);
    assert_eq!(p.leave("room", "c").await.unwrap(), 0);
    assert!(p.online("room").await.unwrap().is_empty());
}

/// A read alone (no write since) also drops lapsed members.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_alone_hide_lapsed_members(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = connect(&shared_url(topology).unwrap()).await.unwrap();
    let p = Presence::new(
        &r,
        unique_prefix("presence_read"),
        Duration::from_millis(3000),
    )
    .unwrap();
    p.heartbeat("room", "a").await.unwrap();
    let key = p.key("room").unwrap();
    // Keep the key alive past the window so only the trim can hide "a".
    let _: bool = r.client().persist(&key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert!(p.online("room").await.unwrap().is_empty());
    assert_eq!(p.count("room").await.unwrap(), 0);
    assert!(!p.is_online("room", "a").await.unwrap());
}

/// 64 members beating concurrently are all online; each beat's count is at
/// most 64; garbage is a Protocol error naming the key.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_heartbeats_all_count_and_garbage_is_typed(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = connect(&shared_url(topology).unwrap()).await.unwrap();
    let p = Presence::new(&r, unique_prefix("presence_many"), Duration::from_secs(60)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            p.heartbeat("room", &format!("u{i}")).await.unwrap()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap() <= 64);
    }
    assert_eq!(p.count("room").await.unwrap(), 64);
    assert_eq!(p.online("room").await.unwrap().len(), 64);

    let g = p.key("garbage").unwrap();
    let _: () = r.client().set(&g, "junk", None, None, false).await.unwrap();
    let e = p.heartbeat("garbage", "a").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains(&g), "{e}");
}
