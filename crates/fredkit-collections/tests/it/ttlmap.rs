//! TtlMap against real servers, standalone and a 3-master cluster: exact
//! concurrent quantities, TTL refreshed by every write, garbage as typed
//! errors, and a merge across slots that is exact even when interrupted
//! between its steps and retried.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use fred::prelude::*;
use fredkit_collections::{MergeOutcome, MergeRule, TtlMap};
use fredkit_conn::Redis;
use fredkit_core::ErrorKind;
use fredkit_testkit::{connect, key_slot, shared_url, unique_prefix, Topology};
use rstest::rstest;

const LONG: Duration = Duration::from_secs(3600);

async fn redis(topology: Topology) -> Redis {
    connect(&shared_url(topology).unwrap()).await.unwrap()
}

async fn pttl(redis: &Redis, key: &str) -> i64 {
    redis.client().pttl(key).await.unwrap()
}

/// 64 tasks on two handles each add 1 to one quantity: exactly 64.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_adds_give_exactly_64(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let (ra, rb) = (redis(topology).await, redis(topology).await);
    let prefix = unique_prefix("ttlmap_adds");
    let a: TtlMap<String> = TtlMap::new(&ra, &prefix, LONG).unwrap();
    let b: TtlMap<String> = TtlMap::new(&rb, &prefix, LONG).unwrap();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let m = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            m.add("cart-1", "sku-1", 1).await.unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    // Every add saw a distinct new quantity: 1..=64.
    assert_eq!(seen, (1..=64).collect::<Vec<i64>>());
    assert_eq!(a.quantity("cart-1", "sku-1").await.unwrap(), 64);
    assert_eq!(
        b.quantities("cart-1").await.unwrap().get("sku-1"),
        Some(&64)
    );

    // Down to zero, then removed only when zero.
    assert_eq!(a.add("cart-1", "sku-1", -63).await.unwrap(), 1);
    assert!(!a.remove_if_zero("cart-1", "sku-1").await.unwrap());
    assert_eq!(a.add("cart-1", "sku-1", -1).await.unwrap(), 0);
    assert!(a.remove_if_zero("cart-1", "sku-1").await.unwrap());
    assert!(a.quantities("cart-1").await.unwrap().is_empty());
}

/// Values round-trip through the codec; remove drops value and quantity.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_round_trip_and_remove_drops_both(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Line {
        title: String,
        price_cents: u64,
    }
    let r = redis(topology).await;
    let m: TtlMap<Line> = TtlMap::new(&r, unique_prefix("ttlmap_values"), LONG).unwrap();
    let line = Line {
        title: "mug".into(),
        price_cents: 1299,
    };
    assert_eq!(m.get("c", "sku-1").await.unwrap(), None);
    m.set("c", "sku-1", &line).await.unwrap();
    m.add("c", "sku-1", 2).await.unwrap();
    assert_eq!(m.get("c", "sku-1").await.unwrap(), Some(line.clone()));
    let all = m.all("c").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all.get("sku-1"), Some(&line));
    assert!(m.remove("c", "sku-1").await.unwrap());
    assert!(!m.remove("c", "sku-1").await.unwrap());
    assert_eq!(m.get("c", "sku-1").await.unwrap(), None);
    assert_eq!(m.quantity("c", "sku-1").await.unwrap(), 0);
    // Removing the last field removed the key.
    let exists: i64 = r.client().exists(m.key("c").unwrap()).await.unwrap();
    assert_eq!(exists, 0);
}

/// Every kind of write resets the TTL to the full TTL; reads do not; the
/// map is gone after the TTL. Asserted with PTTL bounds, not wall timing.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_refreshes_the_ttl_and_the_map_expires(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let ttl = Duration::from_millis(60_000);
    let m: TtlMap<u32> = TtlMap::new(&r, unique_prefix("ttlmap_ttl"), ttl).unwrap();
    let key = m.key("c").unwrap();

    type Write = fn(&TtlMap<u32>) -> futures::future::BoxFuture<'_, ()>;
    let writes: [(&str, Write); 5] = [
        ("add", |m| {
            Box::pin(async { m.add("c", "a", 1).await.map(drop).unwrap() })
        }),
        ("set", |m| {
            Box::pin(async { m.set("c", "a", &7).await.unwrap() })
        }),
        ("add other", |m| {
            Box::pin(async { m.add("c", "b", 0).await.map(drop).unwrap() })
        }),
        ("remove_if_zero", |m| {
            Box::pin(async { m.remove_if_zero("c", "a").await.map(drop).unwrap() })
        }),
        ("remove", |m| {
            Box::pin(async { m.remove("c", "b").await.map(drop).unwrap() })
        }),
    ];
    m.add("c", "keep", 1).await.unwrap();
    for (name, write) in writes {
        // Shorten the TTL behind the map's back, then write: back to full.
        let _: bool = r.client().pexpire(&key, 5_000, None).await.unwrap();
        write(&m).await;
        let left = pttl(&r, &key).await;
        assert!(
            left > 30_000 && left <= 60_000,
            "{name} left PTTL {left}, wanted the full 60 s TTL back"
        );
        // Reads leave it alone.
        let _: bool = r.client().pexpire(&key, 5_000, None).await.unwrap();
        m.quantities("c").await.unwrap();
        m.get("c", "a").await.unwrap();
        assert!(pttl(&r, &key).await <= 5_000, "a read refreshed the TTL");
    }

    // A short TTL: gone after it.
    let short: TtlMap<u32> = TtlMap::new(
        &r,
        unique_prefix("ttlmap_ttl_short"),
        Duration::from_millis(1000),
    )
    .unwrap();
    short.add("c", "a", 1).await.unwrap();
    let left = pttl(&r, &short.key("c").unwrap()).await;
    // -2 (already gone on a very slow box) is fine, -1 (no TTL) is not.
    assert!(left != -1 && left <= 1000, "PTTL {left}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(short.quantity("c", "a").await.unwrap(), 0);
    assert_eq!(pttl(&r, &short.key("c").unwrap()).await, -2);
}

/// Garbage under a key or in a field: typed errors naming the key, nothing
/// written.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_a_typed_error_naming_the_key(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let m: TtlMap<String> = TtlMap::new(&r, unique_prefix("ttlmap_garbage"), LONG).unwrap();
    // A string where the hash should be.
    let key = m.key("str").unwrap();
    let _: () = r
        .client()
        .set(&key, "junk", None, None, false)
        .await
        .unwrap();
    m.add("src", "a", 1).await.unwrap();
    for e in [
        m.add("str", "a", 1).await.unwrap_err(),
        m.set("str", "a", &"x".to_string()).await.unwrap_err(),
        m.quantity("str", "a").await.unwrap_err(),
        m.all("str").await.unwrap_err(),
        m.merge_into("str", "other").await.unwrap_err(),
        m.merge_into("src", "str").await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains(&key), "{e}");
    }
    let v: String = r.client().get(&key).await.unwrap();
    assert_eq!(v, "junk");

    // A quantity that is not an integer, a value that is not MessagePack.
    let key = m.key("c").unwrap();
    let _: () = r
        .client()
        .hset(&key, [("n:a", "ten"), ("v:b", "\u{c1}")])
        .await
        .unwrap();
    for e in [
        m.add("c", "a", 1).await.unwrap_err(),
        m.quantity("c", "a").await.unwrap_err(),
        m.remove_if_zero("c", "a").await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(
            e.to_string().contains(&key) && e.to_string().contains("n:a"),
            "{e}"
        );
    }
    let e = m.get("c", "b").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");
    assert!(
        e.to_string().contains(&key) && e.to_string().contains("\"b\""),
        "{e}"
    );
    let raw: String = r.client().hget(&key, "n:a").await.unwrap();
    assert_eq!(raw, "ten");
}

/// Two ids whose maps are on different slots of the cluster.
fn ids_on_two_slots(m: &TtlMap<String>) -> (String, String) {
    let from = "anon-1".to_string();
    let s = key_slot(m.key(&from).unwrap().as_bytes());
    for i in 0..1000 {
        let to = format!("user-{i}");
        if key_slot(m.key(&to).unwrap().as_bytes()) != s {
            return (from, to);
        }
    }
    panic!("no id on another slot");
}

async fn fill(m: &TtlMap<String>, from: &str, to: &str) {
    m.add(from, "sku-1", 2).await.unwrap();
    m.add(from, "sku-2", 5).await.unwrap();
    m.set(from, "sku-2", &"anon note".to_string())
        .await
        .unwrap();
    m.set(from, "sku-3", &"only a value".to_string())
        .await
        .unwrap();
    m.add(to, "sku-1", 1).await.unwrap();
    m.add(to, "sku-9", 4).await.unwrap();
    m.set(to, "sku-2", &"user note".to_string()).await.unwrap();
}

async fn assert_merged(r: &Redis, m: &TtlMap<String>, from: &str, to: &str) {
    let q = m.quantities(to).await.unwrap();
    assert_eq!(
        q.into_iter().collect::<Vec<_>>(),
        vec![
            ("sku-1".to_string(), 3),
            ("sku-2".to_string(), 5),
            ("sku-9".to_string(), 4)
        ]
    );
    let v = m.all(to).await.unwrap();
    assert_eq!(v.get("sku-2").map(String::as_str), Some("user note"));
    assert_eq!(v.get("sku-3").map(String::as_str), Some("only a value"));
    assert_eq!(v.len(), 2);
    let exists: i64 = r.client().exists(m.key(from).unwrap()).await.unwrap();
    assert_eq!(exists, 0, "the source is deleted");
    // The target keeps its TTL.
    let left = pttl(r, &m.key(to).unwrap()).await;
    assert!(left > 0, "PTTL {left}");
    // The source id is usable again, as a fresh map.
    m.add(from, "sku-1", 1).await.unwrap();
    assert_eq!(m.quantities(from).await.unwrap().len(), 1);
}

/// An uninterrupted merge: quantities summed, the target's values win,
/// the source deleted; a second merge_into finds nothing.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_across_slots_is_exact(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let m: TtlMap<String> = TtlMap::new(&r, unique_prefix("ttlmap_merge"), LONG).unwrap();
    let (from, to) = ids_on_two_slots(&m);
    fill(&m, &from, &to).await;
    let out = m.merge_into(&from, &to).await.unwrap();
    assert_eq!(
        out,
        MergeOutcome::Merged {
            entries: 4,
            applied_now: true
        }
    );
    assert_eq!(
        m.merge_into(&from, &to).await.unwrap(),
        MergeOutcome::NothingToMerge
    );
    // (the fresh 'from' written by assert_merged is merged separately)
    assert_merged(&r, &m, &from, &to).await;
    assert_eq!(
        m.merge_into(&from, &from).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// Where the merge is interrupted.
#[derive(Clone, Copy, Debug)]
enum Interrupt {
    /// After step 1 (source marked), before the target is touched.
    AfterMark,
    /// After step 2 (target updated), before the source is deleted.
    AfterApply,
    /// merge_into's future dropped at its first await points, many times.
    DroppedFuture,
}

/// A merge interrupted between its steps, then retried with merge_into:
/// exact totals (nothing lost, nothing doubled); writes to the marked
/// source are refused meanwhile.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_merge_retried_is_exact(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values(Interrupt::AfterMark, Interrupt::AfterApply, Interrupt::DroppedFuture)] at: Interrupt,
) {
    let r = redis(topology).await;
    let m: TtlMap<String> = TtlMap::new(&r, unique_prefix("ttlmap_merge_crash"), LONG).unwrap();
    let (from, to) = ids_on_two_slots(&m);
    fill(&m, &from, &to).await;
    match at {
        Interrupt::AfterMark => {
            let plan = m.begin_merge(&from, &to).await.unwrap().unwrap();
            // A second begin (a retry) keeps the same merge id.
            let again = m.begin_merge(&from, &to).await.unwrap().unwrap();
            assert_eq!(plan.id(), again.id());
            let e = m.add(&from, "sku-1", 1).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            assert!(e.to_string().contains(&m.key(&from).unwrap()), "{e}");
            let e = m.begin_merge(&from, "someone-else").await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
        }
        Interrupt::AfterApply => {
            let plan = m.begin_merge(&from, &to).await.unwrap().unwrap();
            assert!(m.apply_merge(&plan).await.unwrap());
            // The crashed process's plan applied again adds nothing.
            assert!(!m.apply_merge(&plan).await.unwrap());
        }
        Interrupt::DroppedFuture => {
            for _ in 0..20 {
                let fut = m.merge_into(&from, &to);
                let _ = tokio::time::timeout(Duration::from_micros(300), fut).await;
            }
        }
    }
    let out = m.merge_into(&from, &to).await.unwrap();
    match (at, out) {
        (
            Interrupt::AfterMark,
            MergeOutcome::Merged {
                entries: 4,
                applied_now: true,
            },
        ) => {}
        (
            Interrupt::AfterApply,
            MergeOutcome::Merged {
                entries: 4,
                applied_now: false,
            },
        ) => {}
        (Interrupt::DroppedFuture, _) => {}
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_merged(&r, &m, &from, &to).await;
}

/// Concurrent merge_into calls of the same two maps (two processes at
/// login) still add the source once.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_merges_apply_once(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let m: TtlMap<String> = TtlMap::new(&r, unique_prefix("ttlmap_merge_race"), LONG).unwrap();
    let (from, to) = ids_on_two_slots(&m);
    fill(&m, &from, &to).await;
    let m = Arc::new(m);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (m, from, to) = (Arc::clone(&m), from.clone(), to.clone());
        tasks.push(tokio::spawn(async move {
            m.merge_into(&from, &to).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_merged(&r, &m, &from, &to).await;
}

/// MergeRule::KeepNewer, across slots: per field, the entry written last
/// (server clock) wins whole; a field only one side has is kept; a
/// re-applied plan changes nothing.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_newer_merge_keeps_each_fields_last_write(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let m: TtlMap<String> = TtlMap::new(&r, unique_prefix("ttlmap_newer"), LONG)
        .unwrap()
        .with_merge_rule(MergeRule::KeepNewer);
    assert_eq!(m.merge_rule(), MergeRule::KeepNewer);
    let (from, to) = ids_on_two_slots(&m);
    // Server-ms timestamps: leave a few ms between writes that must order.
    let tick = || tokio::time::sleep(Duration::from_millis(15));
    m.add(&to, "sku-1", 5).await.unwrap();
    m.set(&to, "sku-1", &"old line".to_string()).await.unwrap();
    m.set(&from, "sku-2", &"anon's older note".to_string())
        .await
        .unwrap();
    m.add(&to, "sku-9", 4).await.unwrap();
    tick().await;
    m.add(&from, "sku-1", 2).await.unwrap();
    m.add(&from, "sku-3", 7).await.unwrap();
    tick().await;
    m.set(&to, "sku-2", &"user's newer note".to_string())
        .await
        .unwrap();

    let plan = m.begin_merge(&from, &to).await.unwrap().unwrap();
    assert_eq!(plan.entries(), 3);
    assert!(m.apply_merge(&plan).await.unwrap());
    assert!(!m.apply_merge(&plan).await.unwrap());
    let out = m.merge_into(&from, &to).await.unwrap();
    assert_eq!(
        out,
        MergeOutcome::Merged {
            entries: 3,
            applied_now: false
        }
    );
    let q = m.quantities(&to).await.unwrap();
    assert_eq!(
        q.into_iter().collect::<Vec<_>>(),
        vec![
            ("sku-1".to_string(), 2), // the source's add was later: its entry, whole
            ("sku-3".to_string(), 7), // only in the source
            ("sku-9".to_string(), 4), // only in the target
        ]
    );
    let v = m.all(&to).await.unwrap();
    // sku-1's entry came whole from the source, which had no value.
    assert_eq!(v.get("sku-1"), None);
    assert_eq!(
        v.get("sku-2").map(String::as_str),
        Some("user's newer note")
    );
    let exists: i64 = r.client().exists(m.key(&from).unwrap()).await.unwrap();
    assert_eq!(exists, 0);
}

/// Run by the fault test below as a child process (the test binary
/// re-executed with FKC_CHILD_URL set): starts merge_into and blocks after
/// the step named by FKC_CHILD_STOP_AFTER, printing "PAUSED", until killed.
/// Run normally (without the variable) it does nothing.
#[test]
fn child_process_of_fault_merge_test() {
    let Ok(url) = std::env::var("FKC_CHILD_URL") else {
        return;
    };
    let prefix = std::env::var("FKC_CHILD_PREFIX").unwrap();
    let stop_after = std::env::var("FKC_CHILD_STOP_AFTER").unwrap();
    let from = std::env::var("FKC_CHILD_FROM").unwrap();
    let to = std::env::var("FKC_CHILD_TO").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = connect(&url).await.unwrap();
        let m: TtlMap<String> = TtlMap::new(&r, prefix.as_str(), LONG).unwrap();
        m.merge_into_observed(&from, &to, |step| {
            if step == stop_after {
                use std::io::Write;
                // On a line of its own: libtest has printed "test <name> ... ".
                println!("\nPAUSED after {step}");
                std::io::stdout().flush().unwrap();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .await
        .unwrap();
    });
    panic!("the child finished its merge without pausing");
}

/// A merge whose PROCESS is SIGKILLed between its steps (after the mark,
/// after the apply), then retried by another process with merge_into:
/// nothing lost, nothing doubled; meanwhile the source refuses writes.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_merge_process_killed_between_steps_then_retried_is_exact(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
    #[values("begin", "apply")] stop_after: &str,
) {
    use tokio::io::AsyncBufReadExt;

    let url = shared_url(topology).unwrap();
    let r = connect(&url).await.unwrap();
    let prefix = unique_prefix("ttlmap_merge_kill");
    let m: TtlMap<String> = TtlMap::new(&r, &prefix, LONG).unwrap();
    let (from, to) = ids_on_two_slots(&m);
    fill(&m, &from, &to).await;

    let child_test = fredkit_testkit::test_name!(child_process_of_fault_merge_test);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &child_test, "--nocapture", "--test-threads=1"])
        .env("FKC_CHILD_URL", &url)
        .env("FKC_CHILD_PREFIX", &prefix)
        .env("FKC_CHILD_STOP_AFTER", stop_after)
        .env("FKC_CHILD_FROM", &from)
        .env("FKC_CHILD_TO", &to)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let paused = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(i) = line.find("PAUSED after ") {
                return line[i..].to_string();
            }
        }
        panic!("the child exited without pausing: {:?}", child.try_wait());
    })
    .await
    .expect("the child did not pause within 60 s");
    assert_eq!(paused, format!("PAUSED after {stop_after}"));
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "{status:?}");

    // The killed process left the source marked: writes are refused.
    let e = m.add(&from, "sku-1", 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // After the apply, the target already holds the sum; not before.
    let want_sku1 = if stop_after == "apply" { 3 } else { 1 };
    assert_eq!(m.quantity(&to, "sku-1").await.unwrap(), want_sku1);

    let out = m.merge_into(&from, &to).await.unwrap();
    assert_eq!(
        out,
        MergeOutcome::Merged {
            entries: 4,
            applied_now: stop_after == "begin"
        }
    );
    assert_merged(&r, &m, &from, &to).await;
}
