//! Feed against real servers, standalone and a 3-master cluster: capped at
//! every moment under 10,000 concurrent pushes, newest kept, TTL, garbage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::prelude::*;
use fredkit_collections::Feed;
use fredkit_core::ErrorKind;
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

const TASKS: u32 = 50;
const PER_TASK: u32 = 200;
const CAP: u32 = 100;

/// 10,000 pushes from 50 tasks on two handles, cap 100: an observer never
/// sees more than 100 items; at the end exactly 100, and for every task the
/// items kept are its newest ones, newest first (a trim keeping the oldest,
/// or a push without a trim, fails).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_pushes_stay_capped_and_keep_the_newest(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let (ra, rb, ro) = (
        connect(&url).await.unwrap(),
        connect(&url).await.unwrap(),
        connect(&url).await.unwrap(),
    );
    let prefix = unique_prefix("feed_cap");
    let a: Feed<(u32, u32)> = Feed::new(&ra, &prefix, CAP, Duration::from_secs(3600)).unwrap();
    let b: Feed<(u32, u32)> = Feed::new(&rb, &prefix, CAP, Duration::from_secs(3600)).unwrap();
    let observer: Feed<(u32, u32)> =
        Feed::new(&ro, &prefix, CAP, Duration::from_secs(3600)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let observations = Arc::new(AtomicU64::new(0));
    let watch = {
        let (done, observations) = (Arc::clone(&done), Arc::clone(&observations));
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(Ordering::SeqCst) {
                let n = observer.len("news").await.unwrap();
                max = max.max(n);
                observations.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            max
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let f = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let len = f.push("news", &(t, i)).await.unwrap();
                assert!(len <= u64::from(CAP), "push saw length {len}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let max = watch.await.unwrap();
    assert!(observations.load(Ordering::SeqCst) > 0);
    assert!(max <= u64::from(CAP), "an observer saw {max} items");

    assert_eq!(a.len("news").await.unwrap(), u64::from(CAP));
    let items = a.latest("news", 1000).await.unwrap();
    assert_eq!(items.len(), CAP as usize);
    // Per task, the kept items are its newest, newest first.
    let mut per_task: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (t, i) in &items {
        per_task.entry(*t).or_default().push(*i);
    }
    for (t, kept) in per_task {
        let want: Vec<u32> = (0..PER_TASK).rev().take(kept.len()).collect();
        assert_eq!(kept, want, "task {t} kept {kept:?}");
    }
    // The very last push is the newest of all... of its task; and a
    // sequential tail is kept whole, in order.
    for i in 0..150u32 {
        a.push("news", &(9999, i)).await.unwrap();
    }
    let items = b.latest("news", CAP).await.unwrap();
    let want: Vec<(u32, u32)> = (50..150).rev().map(|i| (9999, i)).collect();
    assert_eq!(items, want);
    assert_eq!(b.latest("news", 3).await.unwrap(), want[..3].to_vec());
}

/// Each push resets the TTL; garbage is a typed error naming the key.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_refreshes_the_ttl_and_garbage_is_a_typed_error(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = connect(&shared_url(topology).unwrap()).await.unwrap();
    let f: Feed<String> =
        Feed::new(&r, unique_prefix("feed_ttl"), 3, Duration::from_secs(60)).unwrap();
    let key = f.key("x").unwrap();
    f.push("x", &"a".to_string()).await.unwrap();
    let _: bool = r.client().pexpire(&key, 5_000, None).await.unwrap();
    f.push("x", &"b".to_string()).await.unwrap();
    let left: i64 = r.client().pttl(&key).await.unwrap();
    assert!(left > 30_000 && left <= 60_000, "PTTL {left}");

    let g = f.key("garbage").unwrap();
    let _: () = r.client().set(&g, "junk", None, None, false).await.unwrap();
    for e in [
        f.push("garbage", &"a".to_string())
            .await
            .map(drop)
            .unwrap_err(),
        f.latest("garbage", 3).await.map(drop).unwrap_err(),
        f.len("garbage").await.map(drop).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains(&g), "{e}");
    }
    let _: i64 = r.client().lpush(&key, "\u{c1}").await.unwrap();
    let e = f.latest("x", 3).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");
    assert!(
        e.to_string().contains(&key) && e.to_string().contains("item 0"),
        "{e}"
    );
    assert!(Feed::<String>::new(&r, "p", 0, Duration::from_secs(1)).is_err());
}

/// With a maximum age, items older than it (server clock) are not returned
/// and are trimmed by the next call, reads included; an item without a
/// time prefix (garbage, or pushed without the limit) counts as expired:
/// skipped, and trimmed once it is the oldest. The cap still holds.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_older_than_the_max_age_are_not_returned_and_are_trimmed(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = connect(&shared_url(topology).unwrap()).await.unwrap();
    let f: Feed<String> = Feed::new(&r, unique_prefix("feed_age"), 3, Duration::from_secs(60))
        .unwrap()
        .with_max_age(Duration::from_millis(1500))
        .unwrap();
    assert_eq!(f.max_age(), Some(Duration::from_millis(1500)));
    let key = f.key("x").unwrap();
    let s = |v: &str| v.to_string();
    f.push("x", &s("a")).await.unwrap();
    f.push("x", &s("b")).await.unwrap();
    assert_eq!(f.latest("x", 10).await.unwrap(), vec![s("b"), s("a")]);
    // Garbage at the oldest end.
    let _: i64 = r.client().rpush(&key, "junk-tail").await.unwrap();
    assert_eq!(f.latest("x", 10).await.unwrap(), vec![s("b"), s("a")]);
    let raw: i64 = r.client().llen(&key).await.unwrap();
    assert_eq!(raw, 2, "the undated tail item was trimmed by a read");

    // More than the max age later (by any clock: the sleep is longer).
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(f.latest("x", 10).await.unwrap().is_empty());
    let raw: i64 = r.client().llen(&key).await.unwrap();
    assert_eq!(raw, 0, "expired items were not trimmed by the read");

    f.push("x", &s("c")).await.unwrap();
    // Garbage in the middle is skipped (and dropped by the cap later).
    let _: i64 = r.client().lpush(&key, "junk-middle").await.unwrap();
    for v in ["d", "e"] {
        f.push("x", &s(v)).await.unwrap();
    }
    assert_eq!(f.latest("x", 10).await.unwrap(), vec![s("e"), s("d")]);
    // Capped at 3 on the push of "e" ([e, d, junk-middle]), then the junk,
    // now the oldest, trimmed.
    assert_eq!(f.len("x").await.unwrap(), 2);
    f.push("x", &s("f")).await.unwrap();
    assert_eq!(
        f.latest("x", 10).await.unwrap(),
        vec![s("f"), s("e"), s("d")]
    );
    let left: i64 = r.client().pttl(&key).await.unwrap();
    assert!(left > 30_000 && left <= 60_000, "PTTL {left}");

    // Garbage under the key is still a typed error.
    let g = f.key("garbage").unwrap();
    let _: () = r.client().set(&g, "junk", None, None, false).await.unwrap();
    let e = f.latest("garbage", 3).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains(&g), "{e}");
    assert!(f.clone().with_max_age(Duration::ZERO).is_err());
}
