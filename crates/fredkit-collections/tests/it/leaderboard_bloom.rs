//! Leaderboard and BloomFilter against real servers, standalone and a
//! 3-master cluster: ranks of 10,000 members against a reference computed
//! here, the submit rules and ties, periodic boards; 100,000 Bloom items
//! all present and the measured false-positive rate within 1.5x; garbage as
//! typed errors. (One binary for both, to keep CI's link time down.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::HashMap, time::Duration};

use fred::prelude::*;
use fredkit_collections::{BloomFilter, Leaderboard, Order, Period, Ranked, Submit};
use fredkit_conn::Redis;
use fredkit_core::ErrorKind;
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use futures::{stream, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rstest::rstest;

async fn redis(topology: Topology) -> Redis {
    connect(&shared_url(topology).unwrap()).await.unwrap()
}

fn ranked(member: &str, score: f64, rank: u64) -> Ranked {
    Ranked {
        member: member.to_string(),
        score,
        rank,
    }
}

/// The documented order and ranks, computed independently: best score
/// first, ties by member name; rank = 1 + the number strictly better.
fn reference(scores: &HashMap<String, f64>, high_first: bool) -> Vec<Ranked> {
    let mut all: Vec<(String, f64)> = scores.iter().map(|(m, s)| (m.clone(), *s)).collect();
    all.sort_by(|a, b| {
        let by_score = if high_first {
            b.1.total_cmp(&a.1)
        } else {
            a.1.total_cmp(&b.1)
        };
        by_score.then_with(|| a.0.cmp(&b.0))
    });
    all.iter()
        .map(|(m, s)| {
            let better = all
                .iter()
                .take_while(|(_, o)| if high_first { o > s } else { o < s })
                .count() as u64;
            ranked(m, *s, better + 1)
        })
        .collect()
}

/// 10,000 members with many tied scores, submitted concurrently (best of
/// several tries each): size, top 10, every 37th member's rank and the
/// neighbourhoods of a few match the reference.
/// (The order only changes the scores' sign inside the script, the same on
/// any topology: low-first runs on standalone only, to save CI time.)
#[rstest]
#[case::standalone_high_first(Topology::Standalone, Order::HighFirst)]
#[case::cluster_high_first(Topology::Cluster, Order::HighFirst)]
#[case::standalone_low_first(Topology::Standalone, Order::LowFirst)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_rank_as_the_reference_says(
    #[case] topology: Topology,
    #[case] order: Order,
) {
    let r = redis(topology).await;
    let lb = Leaderboard::builder(&r, unique_prefix("lb_10k"))
        .order(order)
        .build()
        .unwrap();
    let high_first = order == Order::HighFirst;
    let mut rng = StdRng::seed_from_u64(21);
    // Two submits per member; Best keeps the better one.
    let mut submits = Vec::new();
    let mut best: HashMap<String, f64> = HashMap::new();
    for i in 0..10_000 {
        let member = format!("m{i:05}");
        for _ in 0..2 {
            let s = f64::from(rng.gen_range(0..3000_i32)) / 2.0;
            let e = best.entry(member.clone()).or_insert(s);
            if (high_first && s > *e) || (!high_first && s < *e) {
                *e = s;
            }
            submits.push((member.clone(), s));
        }
    }
    let want = reference(&best, high_first);
    stream::iter(submits)
        .for_each_concurrent(64, |(m, s)| {
            let lb = &lb;
            async move {
                lb.submit("game", &m, s, Submit::Best).await.unwrap();
            }
        })
        .await;

    assert_eq!(lb.size("game").await.unwrap(), 10_000);
    assert_eq!(lb.top("game", 10).await.unwrap(), want[..10].to_vec());
    let by_member: HashMap<&str, &Ranked> = want.iter().map(|w| (w.member.as_str(), w)).collect();
    let sample: Vec<String> = (0..10_000)
        .step_by(37)
        .map(|i| format!("m{i:05}"))
        .collect();
    let got: Vec<Option<Ranked>> = stream::iter(sample.clone())
        .map(|m| {
            let lb = &lb;
            async move { lb.rank("game", &m).await.unwrap() }
        })
        .buffered(64)
        .collect()
        .await;
    for (m, got) in sample.iter().zip(got) {
        assert_eq!(got.as_ref(), Some(by_member[m.as_str()]), "{m}");
    }
    for pos in [0usize, 1, 500, 5_000, 9_998, 9_999] {
        let m = &want[pos].member;
        let lo = pos.saturating_sub(3);
        let hi = (pos + 3).min(9_999);
        assert_eq!(
            lb.around("game", m, 3).await.unwrap(),
            want[lo..=hi].to_vec(),
            "around {m}"
        );
    }
    assert_eq!(lb.rank("game", "nobody").await.unwrap(), None);
    assert!(lb.around("game", "nobody", 3).await.unwrap().is_empty());
}

/// Best / Latest / Increment, ties (1, 2, 2, 2, 5) listed by name, remove,
/// non-finite scores refused, an optional TTL, garbage a typed error.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_rules_ties_and_garbage(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let lb = Leaderboard::builder(&r, unique_prefix("lb_rules"))
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(lb.submit("b", "a", 10.0, Submit::Best).await.unwrap(), 10.0);
    assert_eq!(lb.submit("b", "a", 5.0, Submit::Best).await.unwrap(), 10.0);
    assert_eq!(lb.submit("b", "a", 15.0, Submit::Best).await.unwrap(), 15.0);
    assert_eq!(lb.submit("b", "a", 7.0, Submit::Latest).await.unwrap(), 7.0);
    assert_eq!(
        lb.submit("b", "a", 3.0, Submit::Increment).await.unwrap(),
        10.0
    );
    assert_eq!(
        lb.submit("b", "z", -2.5, Submit::Increment).await.unwrap(),
        -2.5
    );
    for m in ["d", "c"] {
        lb.submit("b", m, 10.0, Submit::Latest).await.unwrap();
    }
    lb.submit("b", "top", 20.0, Submit::Best).await.unwrap();
    let want = vec![
        ranked("top", 20.0, 1),
        ranked("a", 10.0, 2),
        ranked("c", 10.0, 2),
        ranked("d", 10.0, 2),
        ranked("z", -2.5, 5),
    ];
    assert_eq!(lb.top("b", 10).await.unwrap(), want);
    assert_eq!(lb.rank("b", "d").await.unwrap(), Some(want[3].clone()));
    assert_eq!(lb.around("b", "c", 1).await.unwrap(), want[1..4].to_vec());
    assert_eq!(lb.around("b", "top", 1).await.unwrap(), want[..2].to_vec());
    assert_eq!(lb.around("b", "z", 0).await.unwrap(), want[4..].to_vec());
    assert!(lb.remove("b", "a").await.unwrap());
    assert!(!lb.remove("b", "a").await.unwrap());
    assert_eq!(lb.size("b").await.unwrap(), 4);
    assert_eq!(lb.rank("b", "z").await.unwrap(), Some(ranked("z", -2.5, 4)));
    let left: i64 = r.client().pttl(lb.key("b").unwrap()).await.unwrap();
    assert!(left > 30_000 && left <= 60_000, "PTTL {left}");
    for bad in [f64::NAN, f64::INFINITY] {
        let e = lb.submit("b", "a", bad, Submit::Best).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    // Lower is better: Best keeps the lower.
    let laps = Leaderboard::builder(&r, unique_prefix("lb_low"))
        .order(Order::LowFirst)
        .build()
        .unwrap();
    laps.submit("b", "x", 61.5, Submit::Best).await.unwrap();
    assert_eq!(
        laps.submit("b", "x", 59.0, Submit::Best).await.unwrap(),
        59.0
    );
    assert_eq!(
        laps.submit("b", "x", 70.0, Submit::Best).await.unwrap(),
        59.0
    );
    laps.submit("b", "y", 59.0, Submit::Best).await.unwrap();
    laps.submit("b", "w", 60.0, Submit::Best).await.unwrap();
    assert_eq!(
        laps.top("b", 3).await.unwrap(),
        vec![
            ranked("x", 59.0, 1),
            ranked("y", 59.0, 1),
            ranked("w", 60.0, 3)
        ]
    );

    // Garbage under the key: every operation a Protocol error naming it,
    // nothing written.
    let key = lb.key("g").unwrap();
    let _: () = r
        .client()
        .set(&key, "junk", None, None, false)
        .await
        .unwrap();
    let errors = vec![
        lb.submit("g", "a", 1.0, Submit::Best)
            .await
            .map(drop)
            .unwrap_err(),
        lb.top("g", 3).await.map(drop).unwrap_err(),
        lb.rank("g", "a").await.map(drop).unwrap_err(),
        lb.around("g", "a", 1).await.map(drop).unwrap_err(),
        lb.size("g").await.map(drop).unwrap_err(),
        lb.remove("g", "a").await.map(drop).unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains(&key), "{e}");
    }
    let v: String = r.client().get(&key).await.unwrap();
    assert_eq!(v, "junk");
}

async fn server_ms(r: &Redis, key: &str) -> u64 {
    // TIME on the node that serves `key`'s slot.
    let t: Vec<String> = r
        .client()
        .eval("return redis.call('TIME')", vec![key.to_string()], ())
        .await
        .unwrap();
    t[0].parse::<u64>().unwrap() * 1000 + t[1].parse::<u64>().unwrap() / 1000
}

/// A periodic board writes to the current period's key (by the server's
/// clock), which expires `keep` after its period ends; the next period
/// starts empty and the previous one stays readable; daily and weekly
/// boards name their keys by UTC day and Monday-based week.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_boards_roll_over_and_expire(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let period = 2_000u64;
    let keep = 10_000u64;
    let lb = Leaderboard::builder(&r, unique_prefix("lb_period"))
        .period(
            Period::Every(Duration::from_millis(period)),
            Duration::from_millis(keep),
        )
        .build()
        .unwrap();
    let base = lb.key("b").unwrap();
    let before = server_ms(&r, &base).await;
    lb.submit("b", "a", 3.0, Submit::Increment).await.unwrap();
    lb.submit("b", "a", 4.0, Submit::Increment).await.unwrap();
    let after = server_ms(&r, &base).await;
    assert_eq!(lb.top("b", 5).await.unwrap(), vec![ranked("a", 7.0, 1)]);
    // The period key is one of the periods the submits could fall in.
    let mut found = None;
    for idx in before / period..=after / period {
        let k = format!("{base}:{idx}");
        let n: i64 = r.client().exists(&k).await.unwrap();
        if n == 1 {
            found = Some((k, idx));
        }
    }
    let (k, idx) = found.expect("no key for the current period");
    let pttl: i64 = r.client().pttl(&k).await.unwrap();
    let ends = (idx + 1) * period + keep;
    assert!(
        pttl > 0 && pttl as u64 <= ends.saturating_sub(before),
        "PTTL {pttl}, key should expire at {ends} (server ms), submitted from {before}"
    );

    // Into the next period (by the server's clock, with 200 ms to spare):
    // a new, empty board; the previous one is still readable.
    let wait = ((idx + 1) * period).saturating_sub(after) + 200;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert!(lb.top("b", 5).await.unwrap().is_empty());
    assert_eq!(lb.size("b").await.unwrap(), 0);
    assert!(!lb.remove("b", "a").await.unwrap());
    let t1 = server_ms(&r, &base).await;
    let prev = lb.top_previous("b", 5).await.unwrap();
    let t2 = server_ms(&r, &base).await;
    // (Skipped only if a stalled machine let the next period pass too.)
    if t1 / period == idx + 1 && t2 / period == idx + 1 {
        assert_eq!(prev, vec![ranked("a", 7.0, 1)]);
    }
    assert_eq!(lb.rank("b", "a").await.unwrap(), None);

    // Daily and weekly boards: the key of the UTC day / Monday-based week.
    for (p, len, offset) in [
        (Period::Daily, 86_400_000u64, 0u64),
        (Period::Weekly, 7 * 86_400_000, 3 * 86_400_000),
    ] {
        let lb = Leaderboard::builder(&r, unique_prefix("lb_days"))
            .period(p, Duration::from_secs(86_400))
            .build()
            .unwrap();
        let base = lb.key("b").unwrap();
        let before = server_ms(&r, &base).await;
        lb.submit("b", "a", 1.0, Submit::Latest).await.unwrap();
        let after = server_ms(&r, &base).await;
        let mut n = 0;
        for idx in (before + offset) / len..=(after + offset) / len {
            let e: i64 = r.client().exists(format!("{base}:{idx}")).await.unwrap();
            n += e;
        }
        assert_eq!(n, 1, "{p:?}: no key named after the server's period");
        assert!(lb.top_previous("b", 1).await.unwrap().is_empty());
    }
    let all_time = Leaderboard::builder(&r, unique_prefix("lb_x"))
        .build()
        .unwrap();
    let e = all_time.top_previous("b", 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let e = Leaderboard::builder(&r, "x")
        .period(
            Period::Every(Duration::from_millis(10)),
            Duration::from_secs(1),
        )
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

/// 100,000 inserted keys all report present; on 100,000 keys never
/// inserted the measured false-positive rate is within 1.5x the configured
/// 1 %. Bulk calls: one pipeline each.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bloom_has_no_false_negatives_and_its_false_positive_rate_holds(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    const N: usize = 100_000;
    let r = redis(topology).await;
    let bf = BloomFilter::builder(&r, unique_prefix("bloom_rate"), N as u64)
        .false_positive_rate(0.01)
        .build()
        .unwrap();
    assert_eq!((bf.bits(), bf.hashes()), (958_506, 7));
    let present: Vec<String> = (0..N).map(|i| format!("product:{i}")).collect();
    let absent: Vec<String> = (0..N).map(|i| format!("missing:{i}")).collect();
    let started = std::time::Instant::now();
    let added = bf.insert_many("skus", &present).await.unwrap();
    println!("insert_many of {N}: {:?}", started.elapsed());
    assert_eq!(added.len(), N);
    // Nearly every item was new (a few collide with earlier ones).
    assert!(added.iter().filter(|a| **a).count() > N * 98 / 100);
    let started = std::time::Instant::now();
    let found = bf.contains_many("skus", &present).await.unwrap();
    println!("contains_many of {N}: {:?}", started.elapsed());
    assert_eq!(found.len(), N);
    assert!(found.iter().all(|f| *f), "a false negative");
    let fp = bf
        .contains_many("skus", &absent)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| *f)
        .count();
    let rate = fp as f64 / N as f64;
    println!("measured false-positive rate: {rate} ({fp} of {N})");
    assert!(rate <= 0.015, "false-positive rate {rate} > 1.5 x 0.01");
}

/// Single inserts and checks, sizing validated at build, the TTL set at
/// creation, and garbage (wrong type, a string that is not this filter, a
/// filter with other sizing) a Protocol error naming the key, nothing
/// written.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bloom_single_calls_sizing_and_garbage(
    #[values(Topology::Standalone, Topology::Cluster)] topology: Topology,
) {
    let r = redis(topology).await;
    let prefix = unique_prefix("bloom_misc");
    let bf = BloomFilter::builder(&r, &prefix, 1000)
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    assert!(!bf.contains("f", "a").await.unwrap());
    let key = bf.key("f").unwrap();
    let n: i64 = r.client().exists(&key).await.unwrap();
    assert_eq!(n, 0, "a check created the filter");
    assert!(bf.insert("f", "a").await.unwrap());
    assert!(!bf.insert("f", "a").await.unwrap());
    assert!(bf.contains("f", "a").await.unwrap());
    assert!(bf.contains("f", b"a").await.unwrap());
    let left: i64 = r.client().pttl(&key).await.unwrap();
    assert!(left > 30_000 && left <= 60_000, "PTTL {left}");
    assert_eq!(
        bf.insert_many("f", &["b", "b", "a"]).await.unwrap(),
        vec![true, false, false]
    );
    assert!(bf.insert_many::<&str>("f", &[]).await.unwrap().is_empty());

    for (n, p) in [
        (0u64, 0.01),
        (10, 0.0),
        (10, 1.0),
        (10, f64::NAN),
        (u64::MAX, 0.01),
    ] {
        let e = BloomFilter::builder(&r, "x", n)
            .false_positive_rate(p)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{n} {p}: {e}");
    }
    let big = BloomFilter::builder(&r, "x", 1_000_000)
        .false_positive_rate(0.001)
        .build()
        .unwrap();
    assert_eq!((big.bits(), big.hashes()), (14_377_588, 10));

    // Same name and prefix, other sizing: refused, not silently wrong.
    let other = BloomFilter::builder(&r, &prefix, 5000).build().unwrap();
    let g_hash = bf.key("h").unwrap();
    let _: () = r.client().hset(&g_hash, [("a", "b")]).await.unwrap();
    let g_str = bf.key("s").unwrap();
    let _: () = r
        .client()
        .set(&g_str, "junk", None, None, false)
        .await
        .unwrap();
    let errors = vec![
        (other.insert("f", "a").await.unwrap_err(), key.clone()),
        (other.contains("f", "a").await.unwrap_err(), key.clone()),
        (bf.insert("h", "a").await.unwrap_err(), g_hash.clone()),
        (bf.contains_many("h", &["a"]).await.unwrap_err(), g_hash),
        (bf.insert("s", "a").await.unwrap_err(), g_str.clone()),
        (bf.contains("s", "a").await.unwrap_err(), g_str.clone()),
    ];
    for (e, k) in errors {
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains(&k), "{e}");
    }
    let v: String = r.client().get(&g_str).await.unwrap();
    assert_eq!(v, "junk");
}
