//! fredkit-cache against real servers, standalone and cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface};
use fred::types::{Expiration, Value};
use fredkit_cache::{Cache, CacheOptions, CacheOptionsBuilder, FillError, L1Options, Origin};
use fredkit_conn::Redis;
use fredkit_testkit::{
    shared_url, unique_prefix, ClusterOptions, RedisCluster, RedisServer, Topology,
};
use rstest::rstest;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item-{id}"),
    }
}

async fn connect(url: &str) -> Redis {
    fredkit_testkit::connect(url).await.unwrap()
}

fn prefix(test: &str) -> String {
    unique_prefix(test).trim_end_matches(':').to_string()
}

fn opts(prefix: &str) -> CacheOptionsBuilder {
    CacheOptions::builder(prefix)
}

async fn cache(redis: &Redis, o: CacheOptionsBuilder) -> Cache<Item> {
    Cache::new(redis, o.build().unwrap()).await.unwrap()
}

/// Polls `check` every 10 ms until it returns true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_runs_once_for_500_concurrent_callers_on_two_instances(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    // Two instances with separate connections, as two processes would be.
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let p = prefix("stampede");
    let a = cache(&ra, opts(&p)).await;
    let b = cache(&rb, opts(&p)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..500 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            c.get_or_set("hot", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Slow enough that every caller arrives while it runs.
                tokio::time::sleep(Duration::from_millis(300)).await;
                item(7)
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), item(7));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "factory must run exactly once"
    );
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!(ma.factory_calls + mb.factory_calls, 1);
    assert_eq!(ma.fill_wait_timeouts + mb.fill_wait_timeouts, 0);
    // The lock is gone after the fill.
    let lock: Option<String> = ra.client().get(format!("{p}:lock:{{hot}}")).await.unwrap();
    assert_eq!(lock, None);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_value_is_served_when_the_factory_fails_after_logical_expiry(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("failsafe"))
            .ttl(Duration::from_millis(200))
            .max_stale(Duration::from_secs(60)),
    )
    .await;
    assert_eq!(
        c.get_or_set("k", || async { item(1) }).await.unwrap(),
        item(1)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Logically expired: plain get says miss.
    assert_eq!(c.get("k").await.unwrap(), None);
    let f = c
        .fetch("k", || async { Err::<Option<Item>, _>("db down") })
        .await
        .unwrap();
    assert_eq!(f.value, Some(item(1)));
    assert!(f.stale);
    assert_eq!(f.origin, Origin::L2);
    assert_eq!(c.metrics().stale_served, 1);
    assert_eq!(c.metrics().factory_errors, 1);
    // Nothing to fall back on: the factory's error comes back, nothing cached.
    let e = c
        .get_or_try_set("other", || async { Err::<Item, _>("db down") })
        .await
        .unwrap_err();
    assert!(matches!(e, FillError::Factory("db down")), "{e:?}");
    assert_eq!(c.get("other").await.unwrap(), None);
    // A working factory replaces the stale value.
    assert_eq!(
        c.get_or_set("k", || async { item(2) }).await.unwrap(),
        item(2)
    );
    assert_eq!(c.get("k").await.unwrap(), Some(item(2)));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entry_is_a_miss_that_is_deleted_and_counted(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("garbage");
    let c = cache(&redis, opts(&p)).await;
    let planted: [&[u8]; 3] = [b"not an envelope", b"FK\x01\x00", &[0xFF; 40]];
    for (i, bytes) in planted.iter().enumerate() {
        let key = format!("g{i}");
        let data_key = format!("{p}:{{{key}}}");
        redis
            .client()
            .set::<(), _, _>(
                data_key.as_str(),
                bytes.to_vec(),
                Some(Expiration::EX(60)),
                None,
                false,
            )
            .await
            .unwrap();
        assert_eq!(c.get(&key).await.unwrap(), None);
        assert!(
            eventually(DEADLINE, || async {
                redis
                    .client()
                    .exists::<i64, _>(data_key.as_str())
                    .await
                    .unwrap()
                    == 0
            })
            .await,
            "garbage under {data_key} was not deleted"
        );
    }
    // A valid envelope holding the wrong type is garbage too.
    let strings: Cache<String> = Cache::new(&redis, opts(&p).build().unwrap()).await.unwrap();
    strings.set("typed", &"text".to_string()).await.unwrap();
    assert_eq!(c.get("typed").await.unwrap(), None);
    // A hash under the key (a foreign writer) as well.
    let hash_key = format!("{p}:{{h}}");
    redis
        .client()
        .hset::<(), _, _>(hash_key.as_str(), ("f", "v"))
        .await
        .unwrap();
    assert_eq!(c.get("h").await.unwrap(), None);
    assert_eq!(c.metrics().decode_failures, 5);
    // get_or_set treats garbage as a miss: no error.
    redis
        .client()
        .set::<(), _, _>(format!("{p}:{{g0}}"), "junk", None, None, false)
        .await
        .unwrap();
    assert_eq!(
        c.get_or_set("g0", || async { item(3) }).await.unwrap(),
        item(3)
    );
    assert_eq!(c.get("g0").await.unwrap(), Some(item(3)));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_returns_1000_values_in_order_across_slots(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(&redis, opts(&prefix("many"))).await;
    let items: Vec<(String, Item)> = (0..1000).map(|i| (format!("k{i}"), item(i))).collect();
    c.set_many(&items).await.unwrap();
    let mut keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
    keys.insert(500, "absent".to_string());
    let got = c.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 1001);
    for (i, v) in got.iter().enumerate() {
        match i.cmp(&500) {
            std::cmp::Ordering::Less => assert_eq!(v.as_ref(), Some(&item(i as u64))),
            std::cmp::Ordering::Equal => assert_eq!(v, &None),
            std::cmp::Ordering::Greater => assert_eq!(v.as_ref(), Some(&item(i as u64 - 1))),
        }
    }
    assert_eq!(c.metrics().l2_hits, 1000);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_deletes_only_matching_entries_on_every_node(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(&redis, opts(&prefix("invprefix")).l1(L1Options::new())).await;
    let mut items: Vec<(String, Item)> = (0..300).map(|i| (format!("user:{i}"), item(i))).collect();
    items.extend((0..50).map(|i| (format!("order:{i}"), item(i))));
    items.push(("user*[x]".to_string(), item(999)));
    c.set_many(&items).await.unwrap();
    let deleted = c.invalidate_prefix("user:").await.unwrap();
    assert_eq!(deleted, 300);
    assert_eq!(c.get("user:7").await.unwrap(), None);
    assert_eq!(c.get("order:7").await.unwrap(), Some(item(7)));
    assert_eq!(c.get("user*[x]").await.unwrap(), Some(item(999)));
    // Glob characters in the prefix are literal (escaped in MATCH): "o*"
    // and "?rder" must match nothing, "user*[" exactly the one key.
    c.set("ordinal", &item(1)).await.unwrap();
    assert_eq!(c.invalidate_prefix("o*").await.unwrap(), 0);
    assert_eq!(c.invalidate_prefix("?rder").await.unwrap(), 0);
    assert_eq!(c.invalidate_prefix("[o]").await.unwrap(), 0);
    assert_eq!(c.invalidate_prefix("user*[").await.unwrap(), 1);
    assert_eq!(c.get("user*[x]").await.unwrap(), None);
    assert_eq!(c.get("order:7").await.unwrap(), Some(item(7)));
    assert_eq!(c.invalidate_prefix("").await.unwrap(), 51);
    assert_eq!(c.get("order:7").await.unwrap(), None);
}

/// Makes `b` hold an L1 copy of `key` = `want`: waits until A's invalidation
/// of the write has arrived (it would drop an earlier copy), then reads twice
/// and checks the second read was an L1 hit.
async fn hold_l1_copy(b: &Cache<Item>, seen: u64, key: &str, want: &Item) {
    assert!(
        eventually(DEADLINE, || async {
            b.metrics().invalidations_received > seen
        })
        .await
    );
    assert_eq!(b.get(key).await.unwrap().as_ref(), Some(want));
    let hits = b.metrics().l1_hits;
    assert_eq!(b.get(key).await.unwrap().as_ref(), Some(want));
    assert_eq!(
        b.metrics().l1_hits,
        hits + 1,
        "B should answer from its L1 copy"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_b_sees_instance_a_update_within_a_second(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let p = prefix("l1coherent");
    let l1 = L1Options::new().ttl(Duration::from_secs(60));
    let a = cache(&ra, opts(&p).l1(l1.clone())).await;
    let b = cache(&rb, opts(&p).l1(l1)).await;
    let seen = b.metrics().invalidations_received;
    a.set("k", &item(1)).await.unwrap();
    hold_l1_copy(&b, seen, "k", &item(1)).await;
    for v in 2..5 {
        a.set("k", &item(v)).await.unwrap();
        assert!(
            eventually(Duration::from_secs(1), || async {
                b.get("k").await.unwrap() == Some(item(v))
            })
            .await,
            "B still serves an old value 1 s after A wrote {v}"
        );
    }
    a.remove("k").await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            b.get("k").await.unwrap().is_none()
        })
        .await
    );
    assert_eq!(
        b.metrics().l1_flushes,
        0,
        "no gap expected on a healthy connection"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_copy_never_outlives_its_ttl_even_without_invalidations(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let p = prefix("l1ttl");
    // B hears nothing (invalidation off): only the L1 TTL bounds its copy.
    let a = cache(&ra, opts(&p)).await;
    let b = cache(
        &rb,
        opts(&p)
            .invalidation(false)
            .l1(L1Options::new().ttl(Duration::from_millis(300))),
    )
    .await;
    a.set("k", &item(1)).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), Some(item(1)));
    let l1_hits = b.metrics().l1_hits;
    a.set("k", &item(2)).await.unwrap();
    // Once the L1 TTL has passed since B's copy was made (which was before
    // A's write), B never answers with it. No upper bound on how long
    // anything takes: a slow box only makes this more certain.
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..3 {
        assert_eq!(
            b.get("k").await.unwrap(),
            Some(item(2)),
            "L1 copy served past its TTL"
        );
    }
    // And the copy did serve while young (else this test proves nothing):
    // B's next reads hit L1 again with the new value.
    assert!(b.metrics().l1_hits > l1_hits);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_values_are_cached_for_the_negative_ttl(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("negative")).negative_ttl(Duration::from_secs(30)),
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let lookup = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<Item>, String>(None)
        }
    };
    for _ in 0..3 {
        assert_eq!(
            c.get_or_try_set_optional("missing", lookup(calls.clone()))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A non-optional caller does not take the absence for a value.
    assert_eq!(
        c.get_or_set("missing", || async { item(5) }).await.unwrap(),
        item(5)
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.get("missing").await.unwrap(), Some(item(5)));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_returns_the_cached_value_and_refreshes_once(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("eager"))
            .ttl(Duration::from_secs(2))
            .eager_refresh(0.5),
    )
    .await;
    c.set("k", &item(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..20 {
        let calls = Arc::clone(&calls);
        let v = c
            .get_or_set("k", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                item(2)
            })
            .await
            .unwrap();
        if i == 0 {
            // The refresh starts after this hit read the entry: the caller
            // gets the cached value at once, not the factory's.
            assert_eq!(v, item(1));
        } else {
            assert!(v == item(1) || v == item(2), "{v:?}");
        }
    }
    assert!(
        eventually(DEADLINE, || async {
            c.get("k").await.unwrap() == Some(item(2))
        })
        .await
    );
    // The refreshed entry is fresh for another 2 s: no second refresh.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.metrics().eager_refreshes, 1);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_serves_stale_and_the_factory_result_is_stored_later(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("soft"))
            .ttl(Duration::from_millis(100))
            .soft_timeout(Duration::from_millis(50))
            .hard_timeout(Duration::from_secs(1)),
    )
    .await;
    c.set("k", &item(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let f = c
        .fetch("k", || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, String>(Some(item(2)))
        })
        .await
        .unwrap();
    assert_eq!((f.value, f.stale), (Some(item(1)), true));
    assert_eq!(c.metrics().factory_timeouts, 1);
    // The factory finished in the background and its value was stored
    // (the value is fresh for 100 ms: read it through get_or_set's hit path).
    assert!(
        eventually(DEADLINE, || async {
            redis
                .client()
                .get::<Option<Vec<u8>>, _>(format!("{}:{{k}}", c.options().keys().prefix()))
                .await
                .unwrap()
                .is_some_and(|b| b.windows(6).any(|w| w == b"item-2"))
        })
        .await
    );
    // Hard timeout with nothing stale: a timeout error.
    let e = c
        .fetch("cold", || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, String>(Some(item(3)))
        })
        .await;
    // soft_timeout only applies with a stale value; the hard one is 1 s.
    assert!(
        matches!(e, Err(FillError::Timeout(d)) if d == Duration::from_secs(1)),
        "{e:?}"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_fill_lock_taken_by_another_filler_is_not_released_by_the_first(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("lockowner");
    let c = cache(&redis, opts(&p).lock_ttl(Duration::from_millis(100))).await;
    let lock_key = format!("{p}:lock:{{k}}");
    let fill = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_set("k", || async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                item(1)
            })
            .await
        })
    };
    // Our fill takes the lock (its watchdog renews it while the factory
    // runs); then it is lost anyway (as after a failover to a replica that
    // never saw it) and another process takes it: overwritten here.
    assert!(
        eventually(DEADLINE, || async {
            redis
                .client()
                .exists::<i64, _>(lock_key.as_str())
                .await
                .unwrap()
                == 1
        })
        .await
    );
    redis
        .client()
        .set::<(), _, _>(
            lock_key.as_str(),
            "other",
            Some(Expiration::EX(30)),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(fill.await.unwrap().unwrap(), item(1));
    let holder: Option<String> = redis.client().get(lock_key.as_str()).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some("other"),
        "the first filler deleted (or its watchdog shortened) a lock it no longer owned"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_compressed_and_round_trip(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("lz4");
    let c: Cache<String> = Cache::new(&redis, opts(&p).compress_above(Some(1024)).build().unwrap())
        .await
        .unwrap();
    let big = "fredkit ".repeat(10_000);
    c.set("big", &big).await.unwrap();
    let stored: Vec<u8> = redis.client().get(format!("{p}:{{big}}")).await.unwrap();
    assert!(
        stored.len() < big.len() / 10,
        "stored {} bytes",
        stored.len()
    );
    assert_eq!(c.get("big").await.unwrap(), Some(big));
}

// ---------------------------------------------------------------- faults

/// Builds the cache used by the outage tests: a quick breaker so the outage
/// is noticed after a few calls.
fn outage_opts(p: &str) -> CacheOptionsBuilder {
    opts(p)
        .ttl(Duration::from_millis(200))
        .max_stale(Duration::from_secs(60))
        .breaker(
            fredkit_core::CircuitBreaker::builder()
                .minimum_throughput(2)
                .break_duration(Duration::from_millis(500))
                .build()
                .unwrap(),
        )
}

/// A private deployment the outage test may kill.
enum Private {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Private {
    fn start(topology: Topology) -> Private {
        match topology {
            Topology::Cluster => {
                Private::Cluster(RedisCluster::start(ClusterOptions::default()).unwrap())
            }
            _ => Private::Server(RedisServer::start().unwrap()),
        }
    }

    fn url(&self) -> String {
        match self {
            Private::Server(s) => s.url(),
            Private::Cluster(c) => c.url(),
        }
    }

    /// The index of the master serving cache key `key` (its hash tag).
    fn owner(&self, key: &str) -> usize {
        match self {
            Private::Server(_) => 0,
            Private::Cluster(c) => c
                .master_index_for_slot(fredkit_testkit::key_slot(key.as_bytes()))
                .unwrap(),
        }
    }

    fn kill(&mut self, owner: usize) {
        match self {
            Private::Server(s) => s.kill().unwrap(),
            Private::Cluster(c) => c.masters_mut()[owner].kill().unwrap(),
        }
    }

    fn restart(&mut self, owner: usize) {
        match self {
            Private::Server(s) => s.restart().unwrap(),
            Private::Cluster(c) => {
                c.masters_mut()[owner].restart().unwrap();
                c.wait_healthy(DEADLINE).unwrap();
            }
        }
    }
}

impl Private {
    /// SIGSTOP (`true`) or SIGCONT (`false`) the server (cluster: master
    /// `owner`); after SIGCONT a cluster is waited healthy again.
    fn pause(&self, owner: usize, pause: bool) {
        let server = match self {
            Private::Server(s) => s,
            Private::Cluster(c) => &c.masters()[owner],
        };
        if pause {
            server.pause().unwrap();
        } else {
            server.resume().unwrap();
            if let Private::Cluster(c) = self {
                c.wait_healthy(DEADLINE).unwrap();
            }
        }
    }

    /// `n` cache keys whose entries live on master `owner` (any on a server).
    fn keys_on(&self, owner: usize, n: usize) -> Vec<String> {
        (0..10_000)
            .map(|i| format!("p{i}"))
            .filter(|k| self.owner(k) == owner)
            .take(n)
            .collect()
    }

    fn kill_all(&mut self) {
        match self {
            Private::Server(s) => s.kill().unwrap(),
            Private::Cluster(c) => c.masters_mut().iter_mut().for_each(|m| m.kill().unwrap()),
        }
    }

    fn restart_all(&mut self) {
        match self {
            Private::Server(s) => s.restart().unwrap(),
            Private::Cluster(c) => {
                c.masters_mut()
                    .iter_mut()
                    .for_each(|m| m.restart().unwrap());
                c.wait_healthy(DEADLINE).unwrap();
            }
        }
    }
}

/// Start-up with Redis down: `Cache::new` succeeds, `get_or_set` answers
/// from the factory, and L1 serves nothing until the invalidation
/// subscription is confirmed (made in the background once Redis is up);
/// from then on L1 invalidation between two instances works.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cache_starts_with_redis_down_and_turns_l1_on_once_subscribed_after_restart(
    #[case] topology: Topology,
) {
    let mut deployment = Private::start(topology);
    deployment.kill_all();
    // Lazy connect: the handles are made while nothing listens.
    let ra = Redis::from_url(&deployment.url()).await.unwrap();
    let rb = Redis::from_url(&deployment.url()).await.unwrap();
    let p = prefix("startdown");
    let o = || {
        outage_opts(&p)
            .ttl(Duration::from_secs(60))
            .l1(L1Options::new().ttl(Duration::from_secs(60)))
            .build()
            .unwrap()
    };
    let a: Cache<Item> = tokio::time::timeout(DEADLINE, Cache::new(&ra, o()))
        .await
        .expect("Cache::new hung with Redis down")
        .expect("Cache::new failed with Redis down");
    let b: Cache<Item> = tokio::time::timeout(DEADLINE, Cache::new(&rb, o()))
        .await
        .expect("Cache::new hung with Redis down")
        .expect("Cache::new failed with Redis down");
    assert!(!a.is_ready() && !b.is_ready());

    // Redis down, L1 not live: every call is the factory's (an L1 copy of
    // the first value would answer the second call).
    for v in 1..=3 {
        assert_eq!(
            a.get_or_set("k", move || async move { item(v) })
                .await
                .unwrap(),
            item(v)
        );
    }
    assert_eq!(a.metrics().factory_calls, 3);
    assert_eq!(a.metrics().l1_hits, 0);
    assert!(a.wait_ready(Duration::from_millis(50)).await.is_err());

    deployment.restart_all();
    a.wait_ready(DEADLINE).await.unwrap();
    b.wait_ready(DEADLINE).await.unwrap();
    assert!(a.is_ready() && b.is_ready());

    // Writes resume (once A's breaker lets them through), and B follows A.
    let seen = b.metrics().invalidations_received;
    assert!(
        eventually(DEADLINE, || async { a.set("k", &item(10)).await.is_ok() }).await,
        "writes did not resume after the restart"
    );
    hold_l1_copy(&b, seen, "k", &item(10)).await;
    for v in 11..14 {
        a.set("k", &item(v)).await.unwrap();
        assert!(
            eventually(Duration::from_secs(1), || async {
                b.get("k").await.unwrap() == Some(item(v))
            })
            .await,
            "B still serves an old value 1 s after A wrote {v}"
        );
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_killed_serves_stale_from_l1_falls_back_to_factory_and_resumes_after_restart(
    #[case] topology: Topology,
) {
    let mut deployment = Private::start(topology);
    let redis = connect(&deployment.url()).await;
    let p = prefix("killed");
    let with_l1 = cache(
        &redis,
        outage_opts(&p).l1(L1Options::new().ttl(Duration::from_millis(200))),
    )
    .await;
    let no_l1 = cache(&redis, outage_opts(&p).invalidation(false)).await;
    // Every key used below lives on the server (cluster: master) we kill.
    let owner = deployment.owner("k");
    let on_owner: Vec<String> = (0..1000)
        .map(|i| format!("n{i}"))
        .filter(|k| deployment.owner(k) == owner)
        .take(6)
        .collect();
    with_l1.set("k", &item(1)).await.unwrap();
    assert_eq!(with_l1.get("k").await.unwrap(), Some(item(1)));

    deployment.kill(owner);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the logical TTL
                                                          // L1 on: the factory fails, the stale L1 copy is served.
    let f = with_l1
        .fetch("k", || async { Err::<Option<Item>, _>("source down too") })
        .await
        .unwrap();
    assert_eq!(
        (f.value, f.stale, f.origin),
        (Some(item(1)), true, Origin::L1)
    );
    assert!(with_l1.metrics().stale_served >= 1);
    // L1 off: get_or_set falls back to the factory, no error.
    for k in &on_owner[..5] {
        assert_eq!(
            no_l1.get_or_set(k, || async { item(9) }).await.unwrap(),
            item(9)
        );
    }
    assert!(no_l1.metrics().redis_errors >= 1);
    assert_eq!(no_l1.metrics().factory_calls, 5);

    deployment.restart(owner);
    // Writes resume (after the breaker's break duration).
    let after = &on_owner[5];
    assert!(
        eventually(DEADLINE, || async {
            no_l1
                .set_with_ttl(after, &item(4), Duration::from_secs(60))
                .await
                .is_ok()
        })
        .await,
        "writes did not resume after the restart"
    );
    let fresh = cache(
        &connect(&deployment.url()).await,
        opts(&p).invalidation(false),
    )
    .await;
    // get fails open (None) while the fresh connection still meets the
    // cluster settling: retry reads, the value must be there.
    assert_eq!(fresh.get(after).await.unwrap(), Some(item(4)));
}

/// Kills every pub/sub connection on `nodes` while A keeps writing, then
/// checks B serves A's last write once its subscriber is back.
async fn b_serves_nothing_older_than_a_last_write_after_pubsub_kill(url: &str, kill: impl Fn()) {
    let (ra, rb) = (connect(url).await, connect(url).await);
    let p = prefix("pubsubkill");
    let l1 = L1Options::new().ttl(Duration::from_secs(60));
    let b = cache(&rb, opts(&p).l1(l1.clone())).await;
    let a = cache(&ra, opts(&p).l1(l1)).await;
    let seen = b.metrics().invalidations_received;
    a.set("k", &item(1)).await.unwrap();
    hold_l1_copy(&b, seen, "k", &item(1)).await;
    let flushes = b.metrics().l1_flushes;

    kill();
    for v in 2..=5 {
        a.set("k", &item(v)).await.unwrap();
    }
    // B notices: its subscriber comes back, reports the gap, L1 is flushed.
    assert!(
        eventually(DEADLINE, || async { b.metrics().l1_flushes > flushes }).await,
        "B never noticed the lost invalidations"
    );
    // From then on B serves A's last write, never an older one.
    for _ in 0..20 {
        assert_eq!(b.get("k").await.unwrap(), Some(item(5)));
    }
    a.set("k", &item(6)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            b.get("k").await.unwrap() == Some(item(6))
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_client_kill_of_b_subscriber_never_leaves_b_serving_an_old_value() {
    let server = RedisServer::start().unwrap();
    b_serves_nothing_older_than_a_last_write_after_pubsub_kill(&server.url(), || {
        server
            .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_kill_of_b_subscriber_never_leaves_b_serving_an_old_value() {
    let cluster = RedisCluster::start(ClusterOptions::default()).unwrap();
    b_serves_nothing_older_than_a_last_write_after_pubsub_kill(&cluster.url(), || {
        for m in cluster.masters() {
            m.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
        }
    })
    .await;
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_report_l1_l2_and_factory(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(&redis, opts(&prefix("origin")).l1(L1Options::new())).await;
    let f = || async { Ok::<_, String>(Some(item(1))) };
    assert_eq!(c.fetch("k", f).await.unwrap().origin, Origin::Factory);
    assert_eq!(c.fetch("k", f).await.unwrap().origin, Origin::L1);
    c.flush_l1();
    assert_eq!(c.fetch("k", f).await.unwrap().origin, Origin::L2);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_store_keeps_the_cache_store_contract(#[case] topology: Topology) {
    use fredkit_cache::RedisCacheStore;
    use fredkit_core::traits::{CacheStore, CacheStoreExt};
    use fredkit_core::MsgPack;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let store: Arc<dyn CacheStore> = Arc::new(RedisCacheStore::new(&redis));
    let key = format!("{}:store", prefix("store"));
    assert_eq!(store.get::<Item, _>(&MsgPack, &key).await.unwrap(), None);
    store
        .set(&MsgPack, &key, &item(1), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        store.get::<Item, _>(&MsgPack, &key).await.unwrap(),
        Some(item(1))
    );
    let pttl: i64 = redis.client().pttl(key.as_str()).await.unwrap();
    assert!(pttl > 0 && pttl <= 300, "{pttl}");
    assert_eq!(
        store
            .set_bytes(&key, "x".into(), Duration::ZERO)
            .await
            .unwrap_err()
            .kind(),
        fredkit_core::ErrorKind::InvalidInput
    );
    assert!(store.remove(&key).await.unwrap());
    assert!(!store.remove(&key).await.unwrap());
    assert_eq!(store.get_bytes(&key).await.unwrap(), None);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_slower_than_the_lock_ttl_still_runs_once_across_instances(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let p = prefix("lockwatchdog");
    // The factory takes 4x the lock TTL; waiters would wait far longer.
    let o = || {
        opts(&p)
            .lock_ttl(Duration::from_millis(150))
            .fill_wait(Duration::from_secs(10))
    };
    let (a, b) = (cache(&ra, o()).await, cache(&rb, o()).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let factory = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(600)).await;
            item(3)
        }
    };
    let first = {
        let (a, calls) = (a.clone(), Arc::clone(&calls));
        tokio::spawn(async move { a.get_or_set("k", factory(calls)).await })
    };
    // B arrives once A's fill holds the lock.
    let lock_key = format!("{p}:lock:{{k}}");
    assert!(
        eventually(DEADLINE, || async {
            ra.client()
                .exists::<i64, _>(lock_key.as_str())
                .await
                .unwrap()
                == 1
        })
        .await
    );
    let second = b
        .get_or_set("k", factory(Arc::clone(&calls)))
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().unwrap(), item(3));
    assert_eq!(second, item(3));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the fill lock expired while the factory ran and another instance filled too"
    );
    let lock: Option<String> = ra.client().get(lock_key.as_str()).await.unwrap();
    assert_eq!(lock, None, "the lock is released after the fill");
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_stops_waiting_after_fill_wait_and_calls_the_factory_itself(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("waitbound");
    let c = cache(&redis, opts(&p).fill_wait(Duration::from_millis(300))).await;
    // Another "process" holds the fill lock and never finishes.
    redis
        .client()
        .set::<(), _, _>(
            format!("{p}:lock:{{k}}"),
            "stuck",
            Some(Expiration::EX(30)),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        c.get_or_set("k", || async { item(1) }).await.unwrap(),
        item(1)
    );
    let m = c.metrics();
    assert_eq!(
        (m.fill_lock_waits, m.fill_wait_timeouts, m.factory_calls),
        (1, 1, 1)
    );
    assert_eq!(
        c.get("k").await.unwrap(),
        Some(item(1)),
        "the value is stored"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_fillers_lock_expires_and_a_waiter_takes_over(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("deadfiller");
    let c = cache(&redis, opts(&p)).await; // fill_wait 10 s
                                           // A filler that died holding a lock with 200 ms left.
    redis
        .client()
        .set::<(), _, _>(
            format!("{p}:lock:{{k}}"),
            "dead",
            Some(Expiration::PX(200)),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        c.get_or_set("k", || async { item(1) }).await.unwrap(),
        item(1)
    );
    let m = c.metrics();
    assert_eq!(
        (m.fill_lock_waits, m.fill_wait_timeouts, m.factory_calls),
        (1, 0, 1)
    );
}

/// The wire form of an invalidation message, to forge one.
#[derive(Debug, Serialize, Deserialize)]
struct ForgedInvalidation {
    i: u64,
    s: u64,
    k: Vec<String>,
    a: bool,
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_gap_in_invalidations_flushes_the_whole_l1(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let p = prefix("seqgap");
    let l1 = L1Options::new().ttl(Duration::from_secs(60));
    let b = cache(&rb, opts(&p).l1(l1.clone())).await;
    let a = cache(&ra, opts(&p).l1(l1)).await;
    let seen = b.metrics().invalidations_received;
    a.set("k", &item(1)).await.unwrap(); // A's message 1
    hold_l1_copy(&b, seen, "k", &item(1)).await;
    // A message of A's was lost: B next hears A's message 3, about another key.
    let publisher = fredkit_pubsub::Publisher::new(&ra);
    let forged = ForgedInvalidation {
        i: a.instance_id(),
        s: 3,
        k: vec!["other".into()],
        a: false,
    };
    publisher
        .publish(&format!("{p}:invalidations"), &forged)
        .await
        .unwrap();
    assert!(
        eventually(DEADLINE, || async { b.metrics().l1_flushes == 1 }).await,
        "B did not notice the missing message"
    );
    // B's copy of "k" went with the flush: the next read asks Redis.
    let l2_hits = b.metrics().l2_hits;
    assert_eq!(b.get("k").await.unwrap(), Some(item(1)));
    assert_eq!(b.metrics().l2_hits, l2_hits + 1);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_live_ttl_plus_jitter_plus_max_stale_in_redis(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("jitter");
    let c = cache(
        &redis,
        opts(&p)
            .ttl(Duration::from_secs(100))
            .ttl_jitter(Duration::from_secs(50))
            .max_stale(Duration::from_secs(1000)),
    )
    .await;
    let items: Vec<(String, Item)> = (0..50).map(|i| (format!("j{i}"), item(i))).collect();
    c.set_many(&items).await.unwrap();
    let mut ttls = std::collections::BTreeSet::new();
    for (k, _) in &items {
        let pttl: i64 = redis.client().pttl(format!("{p}:{{{k}}}")).await.unwrap();
        assert!((1_099_000..=1_150_000).contains(&pttl), "{k}: {pttl}");
        ttls.insert(pttl / 1000);
    }
    assert!(ttls.len() > 5, "jitter should spread expiries: {ttls:?}");
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_gets_one_call_per_wave_of_concurrent_misses(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(&redis, opts(&prefix("failwave"))).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, calls) = (c.clone(), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            c.get_or_try_set("k", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
                Err::<Item, _>("db down")
            })
            .await
        }));
    }
    let (mut own, mut joined) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(FillError::Factory("db down")) => own += 1,
            Err(FillError::JoinedFillFailed) => joined += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((own, joined), (1, 49));
    assert_eq!(c.get("k").await.unwrap(), None, "nothing cached");
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_set_never_errors_because_a_joined_fallible_fill_failed(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(&redis, opts(&prefix("joinfail"))).await;
    let started = Arc::new(AtomicUsize::new(0));
    let failing = {
        let (c, started) = (c.clone(), Arc::clone(&started));
        tokio::spawn(async move {
            c.get_or_try_set("k", move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err::<Item, _>("db down")
            })
            .await
        })
    };
    // Joins the failing fill (same key, same process) while it runs.
    assert!(eventually(DEADLINE, || async { started.load(Ordering::SeqCst) == 1 }).await);
    let v = c.get_or_set("k", || async { item(5) }).await;
    assert!(matches!(
        failing.await.unwrap(),
        Err(FillError::Factory("db down"))
    ));
    assert_eq!(
        v.unwrap(),
        item(5),
        "get_or_set's own infallible factory can answer: no error"
    );
    assert_eq!(c.get("k").await.unwrap(), Some(item(5)));
}

/// Redis frozen with SIGSTOP (accepts connections, answers nothing): no call
/// hangs past the command timeout (1 s here), `get_or_set` answers from the
/// factory or the stale value, and the breaker opens, after which Redis is
/// not waited for at all. After SIGCONT writes resume. On a cluster the
/// master owning every key used is the one paused.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_redis_never_hangs_a_call_and_opens_the_breaker(#[case] topology: Topology) {
    let deployment = Private::start(topology);
    let redis = connect(&deployment.url()).await;
    let owner = deployment.owner("old");
    let keys = deployment.keys_on(owner, 6);
    let p = prefix("paused");
    let o = outage_opts(&p).breaker(
        fredkit_core::CircuitBreaker::builder()
            .minimum_throughput(2)
            .break_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let c = cache(&redis, o).await;
    c.set("old", &item(1)).await.unwrap();
    // Logically expired, physically kept for fail-safe.
    tokio::time::sleep(Duration::from_millis(250)).await;
    deployment.pause(owner, true);
    // Bound: the command timeout (1 s) plus generous scheduling slack. A call
    // that waits for the paused server without a timeout never returns.
    let bound = Duration::from_secs(4);
    let stale = tokio::time::timeout(
        bound,
        c.get_or_try_set("old", || async { Err::<Item, _>("db down") }),
    )
    .await
    .expect("get_or_try_set hung on a paused Redis");
    // Redis did not answer the GET, so there is no L2 stale value, and L1 is
    // off: the factory's error is all there is.
    assert!(
        matches!(stale, Err(FillError::Factory("db down"))),
        "{stale:?}"
    );
    for i in 0..4u64 {
        let v = tokio::time::timeout(
            bound,
            c.get_or_set(&keys[i as usize], move || async move { item(i) }),
        )
        .await
        .expect("get_or_set hung on a paused Redis");
        assert_eq!(v.unwrap(), item(i));
        let g = tokio::time::timeout(bound, c.get(&keys[4]))
            .await
            .expect("get hung on a paused Redis");
        assert_eq!(g.unwrap(), None);
    }
    assert_eq!(
        c.breaker().state(),
        fredkit_core::BreakerState::Open,
        "the breaker must open after repeated timeouts"
    );
    let before = c.metrics().redis_errors;
    // Open breaker: calls do not go to Redis (they are rejected at once and
    // counted), and still answer from the factory.
    assert_eq!(
        c.get_or_set(&keys[5], || async { item(9) }).await.unwrap(),
        item(9)
    );
    assert!(c.metrics().redis_errors > before);
    deployment.pause(owner, false);
    // Another cache on the same Redis (its own breaker) writes at once.
    let d = cache(&redis, opts(&p)).await;
    assert!(
        eventually(DEADLINE, || async {
            d.set("after", &item(2)).await.is_ok()
        })
        .await,
        "writes resume after SIGCONT"
    );
    assert_eq!(d.get("after").await.unwrap(), Some(item(2)));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_only_within_the_readers_max_stale(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("stalebound");
    // A writer that keeps entries an hour past their logical expiry.
    let writer = cache(
        &redis,
        opts(&p)
            .ttl(Duration::from_millis(100))
            .max_stale(Duration::from_secs(3600)),
    )
    .await;
    // A reader that accepts values at most 100 ms past it.
    let reader = cache(&redis, opts(&p).max_stale(Duration::from_millis(100))).await;
    writer.set("k", &item(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = reader
        .fetch("k", || async { Err::<Option<Item>, _>("db down") })
        .await;
    assert!(
        matches!(r, Err(FillError::Factory("db down"))),
        "a value 300 ms past its expiry was served with max_stale 100 ms: {r:?}"
    );
    assert_eq!(reader.metrics().stale_served, 0);
    // The writer (max_stale 1 h) still gets it.
    let w = writer
        .fetch("k", || async { Err::<Option<Item>, _>("db down") })
        .await
        .unwrap();
    assert!(w.stale && w.value == Some(item(1)));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_factory_releases_the_lock_and_leaves_no_flight_behind(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("panicfill");
    let c = cache(&redis, opts(&p)).await;
    let r = c
        .get_or_set("k", || async {
            if true {
                panic!("factory bug");
            }
            item(0)
        })
        .await;
    assert!(r.is_err(), "{r:?}");
    let lock: Option<String> = redis.client().get(format!("{p}:lock:{{k}}")).await.unwrap();
    // Released in the background: wait for it, bounded.
    let lock_key = format!("{p}:lock:{{k}}");
    assert!(
        lock.is_none()
            || eventually(DEADLINE, || async {
                redis
                    .client()
                    .exists::<i64, _>(lock_key.as_str())
                    .await
                    .unwrap()
                    == 0
            })
            .await
    );
    // The next caller fills at once (no stale flight, no held lock to wait for).
    assert_eq!(
        c.get_or_set("k", || async { item(1) }).await.unwrap(),
        item(1)
    );
    let m = c.metrics();
    assert_eq!((m.factory_calls, m.fill_lock_waits), (2, 0));
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_caller_leaves_the_fill_running_for_the_others(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("cancelfill");
    let c = cache(&redis, opts(&p)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let factory = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            item(4)
        }
    };
    let first = {
        let (c, calls) = (c.clone(), Arc::clone(&calls));
        tokio::spawn(async move { c.get_or_set("k", factory(calls)).await })
    };
    assert!(eventually(DEADLINE, || async { calls.load(Ordering::SeqCst) == 1 }).await);
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // A caller arriving now joins the running fill instead of starting one.
    assert_eq!(
        c.get_or_set("k", factory(Arc::clone(&calls)))
            .await
            .unwrap(),
        item(4)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let lock: Option<String> = redis.client().get(format!("{p}:lock:{{k}}")).await.unwrap();
    assert_eq!(lock, None);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_timeout_without_stale_is_an_error_and_the_late_value_is_stored(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("hardto")).hard_timeout(Duration::from_millis(100)),
    )
    .await;
    let r = c
        .get_or_try_set("k", || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, std::io::Error>(item(8))
        })
        .await;
    assert!(matches!(r, Err(FillError::Timeout(_))), "{r:?}");
    assert_eq!(c.metrics().factory_timeouts, 1);
    assert!(
        eventually(DEADLINE, || async {
            c.get("k").await.unwrap() == Some(item(8))
        })
        .await,
        "the factory's late result is stored"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_factory_holds_the_fill_lock_at_most_fill_wait_plus_lock_ttl(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("hungfill");
    let c = cache(
        &redis,
        opts(&p)
            .lock_ttl(Duration::from_millis(150))
            .fill_wait(Duration::from_millis(300))
            .hard_timeout(Duration::from_millis(50)),
    )
    .await;
    let r = c
        .get_or_set("k", || async {
            std::future::pending::<()>().await;
            item(0)
        })
        .await;
    assert!(r.is_err(), "hard timeout, no stale: {r:?}");
    let lock_key = format!("{p}:lock:{{k}}");
    assert_eq!(
        redis
            .client()
            .exists::<i64, _>(lock_key.as_str())
            .await
            .unwrap(),
        1,
        "renewed while the factory runs"
    );
    // Renewal stops after fill_wait: the lock expires though the factory
    // never ends, so another process can fill.
    assert!(
        eventually(DEADLINE, || async {
            redis
                .client()
                .exists::<i64, _>(lock_key.as_str())
                .await
                .unwrap()
                == 0
        })
        .await,
        "a hung factory held the fill lock forever"
    );
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_keeps_duplicates_and_order_with_l1_hits_and_garbage_mixed_in(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("manymix");
    let c = cache(&redis, opts(&p).l1(L1Options::new())).await;
    // 2 500 keys: over the 1 000-key standalone chunk, many slots on a cluster.
    let items: Vec<(String, Item)> = (0..2500).map(|i| (format!("m{i}"), item(i))).collect();
    c.set_many(&items).await.unwrap();
    // Only half of them in L1 (an instance that just wrote holds them all:
    // drop that one's copies and read half back).
    c.flush_l1();
    for (k, _) in items.iter().step_by(2) {
        c.get(k).await.unwrap();
    }
    redis
        .client()
        .set::<(), _, _>(
            format!("{p}:{{junk}}"),
            "not an envelope",
            Some(Expiration::EX(60)),
            None,
            false,
        )
        .await
        .unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut want: Vec<Option<Item>> = Vec::new();
    for i in (0..2500u64).rev() {
        keys.push(format!("m{i}"));
        want.push(Some(item(i)));
        if i % 7 == 0 {
            keys.push(format!("m{i}")); // duplicate, right after
            want.push(Some(item(i)));
            keys.push("junk".to_string());
            want.push(None);
        }
    }
    let got = c.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "position {i} ({})", keys[i]);
    }
    assert!(c.metrics().decode_failures >= 1);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_timeout_also_bounds_the_wait_for_another_process_fill(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("hardwait");
    let c = cache(
        &redis,
        opts(&p)
            .ttl(Duration::from_millis(100))
            .fill_wait(Duration::from_secs(30))
            .hard_timeout(Duration::from_millis(200)),
    )
    .await;
    // Another process is filling (holds the lock) and is slow.
    redis
        .client()
        .set::<(), _, _>(
            format!("{p}:lock:{{k}}"),
            "slow",
            Some(Expiration::EX(60)),
            None,
            false,
        )
        .await
        .unwrap();
    // No stale value: a timeout error, and no second factory run (that
    // would be a stampede of every waiting process after hard_timeout).
    let r = c.get_or_set("k", || async { item(1) }).await;
    assert_eq!(
        r.unwrap_err().kind(),
        fredkit_core::ErrorKind::Timeout,
        "waited for the other filler past the hard timeout"
    );
    assert_eq!(c.metrics().factory_calls, 0);
    // With a stale value: served (stale) at the hard timeout.
    redis
        .client()
        .del::<(), _>(format!("{p}:lock:{{s}}"))
        .await
        .unwrap();
    c.set("s", &item(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis
        .client()
        .set::<(), _, _>(
            format!("{p}:lock:{{s}}"),
            "slow",
            Some(Expiration::EX(60)),
            None,
            false,
        )
        .await
        .unwrap();
    let f = c
        .fetch("s", || async { Ok::<_, String>(Some(item(3))) })
        .await
        .unwrap();
    assert_eq!((f.value, f.stale), (Some(item(2)), true));
    assert_eq!(c.metrics().factory_calls, 0);
}

/// An empty key is refused by every entry point (with L1 on, so the L1
/// paths are covered too) with `InvalidInput` and a message that says the
/// key is empty and what to pass — not the key-space message about hash
/// tags. The factory never runs and nothing is counted as a miss or hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_is_refused_by_every_entry_point_saying_so() {
    use fredkit_cache::RedisCacheStore;
    use fredkit_core::traits::CacheStore;
    use std::sync::atomic::AtomicU64;
    let redis = connect(&shared_url(Topology::Standalone).unwrap()).await;
    let c = cache(&redis, opts(&prefix("empty_key")).l1(L1Options::new())).await;
    let runs = Arc::new(AtomicU64::new(0));
    let empty = |what: &str, e: fredkit_core::Error| {
        assert_eq!(
            e.kind(),
            fredkit_core::ErrorKind::InvalidInput,
            "{what}: {e}"
        );
        let m = e.to_string();
        assert!(
            m.contains("cache key is empty") && m.contains("pass"),
            "{what}: {m}"
        );
        assert!(!m.contains("hash tag"), "{what}: {m}");
    };
    let factory = |runs: Arc<AtomicU64>| {
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(item(1)))
        }
    };
    empty("get", c.get("").await.unwrap_err());
    empty("set", c.set("", &item(1)).await.unwrap_err());
    empty(
        "set_with_ttl",
        c.set_with_ttl("", &item(1), Duration::from_secs(5))
            .await
            .unwrap_err(),
    );
    empty("remove", c.remove("").await.unwrap_err());
    let r = runs.clone();
    empty(
        "get_or_set",
        c.get_or_set("", move || async move {
            r.fetch_add(1, Ordering::SeqCst);
            item(1)
        })
        .await
        .unwrap_err(),
    );
    let r = runs.clone();
    let plain = move || async move {
        r.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(item(1))
    };
    match c.get_or_try_set("", plain).await.unwrap_err() {
        FillError::Cache(e) => empty("get_or_try_set", e),
        other => panic!("get_or_try_set: {other:?}"),
    }
    match c
        .get_or_try_set_optional("", factory(runs.clone()))
        .await
        .unwrap_err()
    {
        FillError::Cache(e) => empty("get_or_try_set_optional", e),
        other => panic!("get_or_try_set_optional: {other:?}"),
    }
    match c.fetch("", factory(runs.clone())).await.unwrap_err() {
        FillError::Cache(e) => empty("fetch", e),
        other => panic!("fetch: {other:?}"),
    }
    empty("get_many", c.get_many(&["a", ""]).await.unwrap_err());
    empty(
        "set_many",
        c.set_many(&[("a", item(1)), ("", item(2))])
            .await
            .unwrap_err(),
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a factory ran for an empty key"
    );
    let store = RedisCacheStore::new(&redis);
    empty("store get_bytes", store.get_bytes("").await.unwrap_err());
    empty(
        "store set_bytes",
        store
            .set_bytes("", "x".into(), Duration::from_secs(5))
            .await
            .unwrap_err(),
    );
    empty("store remove", store.remove("").await.unwrap_err());
}

/// A TTL the cache cannot store (under 1 ms, over 100 years, up to
/// `Duration::MAX`) is refused before any round trip by the raw store and by
/// `Cache::set_with_ttl` alike, with `InvalidInput` naming the key and the
/// bound (the store sent the larger ones to Redis, which answered a bare
/// "invalid expire time"; the smaller ones did not name the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ttl_is_refused_naming_the_key() {
    use fredkit_cache::RedisCacheStore;
    use fredkit_core::traits::CacheStore;
    let redis = connect(&shared_url(Topology::Standalone).unwrap()).await;
    let p = prefix("bad_ttl");
    let c = cache(&redis, opts(&p)).await;
    let store = RedisCacheStore::new(&redis);
    let key = format!("{p}:store");
    let century = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    let bad = [
        (Duration::ZERO, "at least 1 ms"),
        (Duration::from_micros(999), "at least 1 ms"),
        (century + Duration::from_millis(1), "at most 100 years"),
        (Duration::MAX, "at most 100 years"),
    ];
    let named = |what: &str, key: &str, bound: &str, e: fredkit_core::Error| {
        assert_eq!(
            e.kind(),
            fredkit_core::ErrorKind::InvalidInput,
            "{what}: {e}"
        );
        let m = e.to_string();
        assert!(m.contains(&format!("{key:?}")), "{what}: no key in {m}");
        assert!(m.contains(bound), "{what}: {m}");
    };
    for (ttl, bound) in bad {
        let e = store.set_bytes(&key, "x".into(), ttl).await.unwrap_err();
        named(&format!("store {ttl:?}"), &key, bound, e);
        let e = c.set_with_ttl("item", &item(1), ttl).await.unwrap_err();
        named(&format!("cache {ttl:?}"), "item", bound, e);
    }
    assert_eq!(store.get_bytes(&key).await.unwrap(), None);
    assert_eq!(c.get("item").await.unwrap(), None);
    // The bounds themselves are accepted.
    store
        .set_bytes(&key, "x".into(), Duration::from_millis(1))
        .await
        .unwrap();
    store.set_bytes(&key, "x".into(), century).await.unwrap();
    c.set_with_ttl("item", &item(1), century).await.unwrap();
    assert!(store.remove(&key).await.unwrap());
    c.remove("item").await.unwrap();
}

// ------------------------------------------------ issue #15: proven claims

/// A cached absence lives `negative_ttl` — not `ttl`, and with neither
/// jitter nor `max_stale` added (an absence is never served stale): its
/// PTTL is at most `negative_ttl`, and once it has passed the factory runs
/// again, although `ttl` (60 s) would still cover it.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_absence_lives_negative_ttl_not_ttl_and_gets_no_jitter_or_max_stale(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("negttl");
    let negative = Duration::from_millis(400);
    let c = cache(
        &redis,
        opts(&p)
            .ttl(Duration::from_secs(60))
            .ttl_jitter(Duration::from_secs(30))
            .max_stale(Duration::from_secs(600))
            .negative_ttl(negative),
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let lookup = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<Item>, String>(None)
        }
    };
    let absent = c
        .get_or_try_set_optional("gone", lookup(calls.clone()))
        .await
        .unwrap();
    assert_eq!(absent, None);
    let pttl: i64 = redis.client().pttl(format!("{p}:{{gone}}")).await.unwrap();
    // -2: already gone (a stall of this box longer than negative_ttl
    // between the store and this read), which is within the bound too.
    assert!(
        pttl == -2 || (1..=400).contains(&pttl),
        "a cached absence must expire within negative_ttl (400 ms): PTTL {pttl}"
    );
    // Past negative_ttl the factory runs again.
    tokio::time::sleep(negative + Duration::from_millis(100)).await;
    let before = calls.load(Ordering::SeqCst);
    c.get_or_try_set_optional("gone", lookup(calls.clone()))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "the absence outlived negative_ttl"
    );
}

/// `misses` counts callers that found no fresh entry (every `get`,
/// `get_or_set` and `get_many` key that went without), `l2_hits` the ones
/// Redis answered, `l1_hits` the ones L1 answered: an exact known sequence.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_and_hits_are_counted_exactly_for_a_known_sequence(#[case] topology: Topology) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("counts")).l1(L1Options::new().ttl(Duration::from_secs(60))),
    )
    .await;
    let m = |c: &Cache<Item>| {
        let m = c.metrics();
        (m.misses, m.l2_hits, m.l1_hits, m.factory_calls)
    };
    assert_eq!(m(&c), (0, 0, 0, 0));
    assert_eq!(c.get("a").await.unwrap(), None); // absent: miss
    assert_eq!(m(&c), (1, 0, 0, 0));
    assert_eq!(
        c.get_or_set("a", || async { item(1) }).await.unwrap(),
        item(1)
    ); // miss + fill
    assert_eq!(m(&c), (2, 0, 0, 1));
    assert_eq!(c.get("a").await.unwrap(), Some(item(1))); // the fill's L1 copy
    assert_eq!(m(&c), (2, 0, 1, 1));
    c.flush_l1();
    assert_eq!(c.get("a").await.unwrap(), Some(item(1))); // Redis
    assert_eq!(m(&c), (2, 1, 1, 1));
    assert_eq!(
        c.get_or_set("a", || async { item(9) }).await.unwrap(),
        item(1)
    ); // L1
    assert_eq!(m(&c), (2, 1, 2, 1));
    // Logically expired (kept for fail-safe): a miss, then a fill.
    c.set_with_ttl("b", &item(2), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.flush_l1();
    assert_eq!(c.get("b").await.unwrap(), None);
    assert_eq!(m(&c), (3, 1, 2, 1));
    assert_eq!(
        c.get_or_set("b", || async { item(3) }).await.unwrap(),
        item(3)
    );
    assert_eq!(m(&c), (4, 1, 2, 2));
    // get_many: one miss per key without a fresh entry.
    c.flush_l1();
    let got = c.get_many(&["a", "b", "c", "d"]).await.unwrap();
    assert_eq!(got, vec![Some(item(1)), Some(item(3)), None, None]);
    assert_eq!(m(&c), (6, 3, 2, 2));
}

/// Under a stampede, `misses` counts callers, not loads: 25 concurrent
/// `get_or_set` callers on each of two instances count 25 misses each while
/// the factory runs once in all (the docs of `CacheMetrics::misses`). The
/// factory holds its value until all 50 misses are counted, so no caller
/// can come late and hit.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_count_every_caller_of_a_stampede_while_the_factory_runs_once(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let p = prefix("stampedecount");
    let a = cache(&ra, opts(&p)).await;
    let b = cache(&rb, opts(&p)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (a, b, calls) = (a.clone(), b.clone(), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            c.get_or_set("k", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Hold the value until every caller has counted its miss
                // (bounded, under `fill_wait`: a build that counts loads
                // fails below).
                let _ = eventually(Duration::from_secs(5), || async {
                    a.metrics().misses + b.metrics().misses >= 50
                })
                .await;
                item(7)
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), item(7));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load for the stampede");
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!((ma.misses, mb.misses), (25, 25), "one miss per caller");
    assert_eq!(ma.factory_calls + mb.factory_calls, 1);
    assert_eq!(ma.l2_hits + mb.l2_hits + ma.l1_hits + mb.l1_hits, 0);
}

/// L1 flush on pub/sub lag, made deterministic: B's invalidation listener
/// runs on a runtime of its own (`frozen`, current-thread) that the test
/// stops driving, while B's shared subscriber (`receiver_capacity(1)`, the
/// knob) keeps receiving on the main runtime. Meanwhile A overwrites `k`
/// (its message is lost to B's lag) and ten other publishers send one
/// message each (sequence 1 each: the message B reads after the lag is in
/// sequence, so only the lag can tell B it lost something). Once B's
/// listener runs again it reads `Lagged`, then the last message; from then
/// on B never serves its old L1 copy.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
fn an_l1_whose_invalidation_receiver_lags_is_flushed_and_never_serves_the_old_value(
    #[case] topology: Topology,
) {
    use fredkit_pubsub::{Delivery, PubSubOptions, Subscriber};
    use futures::StreamExt;
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let frozen = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = shared_url(topology).unwrap();
    let p = prefix("l1lag");
    let channel = format!("{p}:invalidations");
    let l1 = L1Options::new().ttl(Duration::from_secs(60));
    let (a, rb, subscriber, mut watch) = main.block_on(async {
        let (ra, rb) = (connect(&url).await, connect(&url).await);
        let a = cache(&ra, opts(&p).l1(l1.clone())).await;
        // Made on the main runtime: its dispatcher keeps running there.
        let subscriber = Subscriber::with_codec(
            &rb,
            fredkit_core::MsgPack,
            PubSubOptions::default().receiver_capacity(1),
        )
        .await
        .unwrap();
        // Tells the test when the dispatcher has handed a message over.
        let watch = subscriber
            .subscribe::<ForgedInvalidation>(&channel)
            .await
            .unwrap();
        (a, rb, subscriber, watch)
    });
    // B's listener task lives on `frozen`: it runs only inside block_on.
    let b: Cache<Item> = frozen.block_on(async {
        let b = Cache::with_codec(
            &rb,
            fredkit_core::MsgPack,
            opts(&p).l1(l1).build().unwrap(),
            Some(&subscriber),
        )
        .await
        .unwrap();
        b.wait_ready(DEADLINE).await.unwrap();
        b
    });
    let seen = b.metrics().invalidations_received;
    main.block_on(a.set("k", &item(1))).unwrap();
    frozen.block_on(hold_l1_copy(&b, seen, "k", &item(1)));
    let flushes = b.metrics().l1_flushes;

    // B's listener is frozen from here on.
    main.block_on(async {
        a.set("k", &item(2)).await.unwrap();
        // A's message (sequence 2) leaves before the others.
        assert!(
            eventually(DEADLINE, || async {
                a.metrics().invalidations_published == 2
            })
            .await
        );
        let publisher = fredkit_pubsub::Publisher::new(&rb);
        for n in 0..10u64 {
            let forged = ForgedInvalidation {
                i: 1_000 + n,
                s: 1,
                k: vec![format!("other{n}")],
                a: false,
            };
            publisher.publish(&channel, &forged).await.unwrap();
        }
        // Wait until the dispatcher has handed the last one over.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, watch.next())
                .await
                .expect("the forged messages never arrived");
            if let Some(Delivery::Message(m)) = next {
                if m.payload.map(|f| f.i).ok() == Some(1_009) {
                    break;
                }
            }
        }
    });
    // B's listener runs again: it reads the lag, then the last message.
    let before = b.metrics().invalidations_received;
    frozen.block_on(async {
        assert!(
            eventually(DEADLINE, || async {
                b.metrics().invalidations_received > before
            })
            .await,
            "B's listener never caught up"
        );
        assert_eq!(
            b.metrics().invalidations_received,
            before + 1,
            "B should have read exactly one message after the lag"
        );
        assert_eq!(
            b.metrics().l1_flushes,
            flushes + 1,
            "the lag must flush B's L1"
        );
        for _ in 0..5 {
            assert_eq!(
                b.get("k").await.unwrap(),
                Some(item(2)),
                "B served its old L1 copy after the lag"
            );
        }
    });
    drop(b);
    drop(frozen);
    main.block_on(async move {
        drop((a, subscriber, watch, rb));
    });
}

/// An invalidation message received twice (fred resends a `PUBLISH` whose
/// reply was lost: see fredkit-pubsub) repeats a sequence number: B takes
/// it for a possible loss and flushes its L1 (the safe side), then goes on
/// with the next message in sequence.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_invalidation_flushes_the_l1_once(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let (ra, rb) = (connect(&url).await, connect(&url).await);
    let p = prefix("dupinv");
    let l1 = L1Options::new().ttl(Duration::from_secs(60));
    let b = cache(&rb, opts(&p).l1(l1.clone())).await;
    let a = cache(&ra, opts(&p).l1(l1)).await;
    let seen = b.metrics().invalidations_received;
    a.set("k", &item(1)).await.unwrap(); // A's message 1
    hold_l1_copy(&b, seen, "k", &item(1)).await;
    // A's message 1 again, as fred's resend would deliver it.
    let forged = ForgedInvalidation {
        i: a.instance_id(),
        s: 1,
        k: vec!["k".into()],
        a: false,
    };
    fredkit_pubsub::Publisher::new(&ra)
        .publish(&format!("{p}:invalidations"), &forged)
        .await
        .unwrap();
    assert!(
        eventually(DEADLINE, || async {
            b.metrics().invalidations_received == seen + 2
        })
        .await
    );
    assert_eq!(b.metrics().l1_flushes, 1, "the repeated sequence flushes");
    // A's message 2 is in sequence again: no further flush.
    a.set("k", &item(2)).await.unwrap();
    assert!(
        eventually(DEADLINE, || async {
            b.metrics().invalidations_received == seen + 3
        })
        .await
    );
    assert_eq!(b.metrics().l1_flushes, 1);
    assert_eq!(b.get("k").await.unwrap(), Some(item(2)));
}

/// #17: callers and loads are counted apart. 20 concurrent callers of a
/// cold key on one instance count 20 `misses` (callers), 1 `load` (the
/// factory run they caused) and 19 `coalesced`; hits and misses give the
/// caller-side `hit_ratio`; an eager refresh runs the factory
/// (`factory_calls`) but is no load.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_count_factory_runs_for_misses_apart_from_callers_and_refreshes(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("loads"))
            .ttl(Duration::from_secs(2))
            .eager_refresh(0.5),
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c2, calls) = (c.clone(), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            let watch = c2.clone();
            c2.get_or_set("k", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Hold the value until every caller has counted its miss.
                let _ = eventually(Duration::from_secs(5), || async {
                    watch.metrics().misses >= 20
                })
                .await;
                item(1)
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), item(1));
    }
    let m = c.metrics();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        (m.misses, m.loads, m.coalesced, m.factory_calls),
        (20, 1, 19, 1),
        "{m:?}"
    );
    assert_eq!(m.hit_ratio(), Some(0.0));
    for _ in 0..10 {
        assert_eq!(c.get("k").await.unwrap(), Some(item(1)));
    }
    let m = c.metrics();
    assert_eq!((m.hits(), m.misses, m.reads()), (10, 20, 30));
    assert_eq!(m.hit_ratio(), Some(10.0 / 30.0));
    // Past the eager-refresh point (half of the 2 s TTL): a hit that starts
    // a refresh. The refresh runs the factory but is no load.
    let before = c.metrics();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = c.get_or_set("k", || async { item(2) }).await.unwrap();
    assert_eq!(v, item(1));
    assert!(eventually(DEADLINE, || async { c.metrics().factory_calls == 2 }).await);
    let d = c.metrics().since(&before);
    assert_eq!(
        (
            d.hits(),
            d.misses,
            d.loads,
            d.factory_calls,
            d.eager_refreshes
        ),
        (1, 0, 0, 1, 1),
        "{d:?}"
    );
    assert_eq!(d.hit_ratio(), Some(1.0));
    assert_eq!(c.metrics().loads, 1);
}

// ------------------------------------------------- eager refresh, 4 processes

/// The storm test's shape, scaled down from the issue's (TTL 2 s, refresh at
/// 0.5, 900 ms factory, 8 s) to keep CI short with the same margins: the
/// factory takes 30 % of the TTL and ends 40 % of the TTL before expiry.
const STORM_TTL_MS: u64 = 1000;
const STORM_EAGER: f64 = 0.3;
const STORM_FACTORY_MS: u64 = 300;
const STORM_RUN_MS: u64 = 3000;
const STORM_KEYS: usize = 10;
const STORM_TASKS: usize = 16;
const STORM_PROCESSES: usize = 4;

fn storm_opts(p: &str) -> CacheOptionsBuilder {
    opts(p)
        .ttl(Duration::from_millis(STORM_TTL_MS))
        .max_stale(Duration::from_secs(10))
        .eager_refresh(STORM_EAGER)
        .l1(L1Options::new())
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Run by the storm test below as one of its processes (the test binary
/// re-executed with FKC_STORM_URL set). Prints READY, waits for a line on
/// stdin, reads 10 hot keys from 16 tasks for STORM_RUN_MS, then prints one
/// `RUN key start end` line per factory run it completed and a `DONE` line.
/// Run normally (without the variable) it does nothing.
#[test]
fn child_process_of_eager_refresh_storm_test() {
    use std::io::{BufRead, Write};
    let Ok(url) = std::env::var("FKC_STORM_URL") else {
        return;
    };
    let p = std::env::var("FKC_STORM_PREFIX").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = connect(&url).await;
        let c = cache(&redis, storm_opts(&p)).await;
        c.wait_ready(DEADLINE).await.unwrap();
        println!("\nREADY");
        std::io::stdout().flush().unwrap();
        let mut go = String::new();
        std::io::stdin().lock().read_line(&mut go).unwrap();
        let runs = Arc::new(std::sync::Mutex::new(Vec::<(usize, u64, u64)>::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let too_old = Arc::new(AtomicUsize::new(0));
        let stale = Arc::new(AtomicUsize::new(0));
        let end = tokio::time::Instant::now() + Duration::from_millis(STORM_RUN_MS);
        let mut tasks = Vec::new();
        for t in 0..STORM_TASKS {
            let (c, runs, started, too_old, stale) = (
                c.clone(),
                Arc::clone(&runs),
                Arc::clone(&started),
                Arc::clone(&too_old),
                Arc::clone(&stale),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while tokio::time::Instant::now() < end {
                    i = (i + 1) % STORM_KEYS;
                    let (runs, started) = (Arc::clone(&runs), Arc::clone(&started));
                    let f = c
                        .fetch(&format!("hot{i}"), move || async move {
                            let start = wall_ms();
                            started.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(STORM_FACTORY_MS)).await;
                            let done = wall_ms();
                            runs.lock().unwrap().push((i, start, done));
                            Ok::<_, std::convert::Infallible>(Some(item(done)))
                        })
                        .await
                        .unwrap();
                    if f.stale {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                    // The value carries when its factory ended; the entry was
                    // created just after: served past its TTL, it is too old.
                    let age = wall_ms().saturating_sub(f.value.unwrap().id);
                    if age > STORM_TTL_MS + 200 {
                        too_old.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let runs = runs.lock().unwrap().clone();
        for (k, s, e) in &runs {
            println!("RUN {k} {s} {e}");
        }
        let m = c.metrics();
        println!(
            "DONE started={} too_old={} stale={} refreshes={} skips={} l1_hits={} misses={}",
            started.load(Ordering::SeqCst),
            too_old.load(Ordering::SeqCst),
            stale.load(Ordering::SeqCst),
            m.eager_refreshes,
            m.eager_refresh_skips,
            m.l1_hits,
            m.misses
        );
        std::io::stdout().flush().unwrap();
    });
}

/// Sums `INFO commandstats` calls of EVALSHA + EVAL over every master.
async fn scripts_sent(urls: &[String]) -> u64 {
    let mut total = 0;
    for url in urls {
        let r = connect(url).await;
        let info: String = r
            .client()
            .custom(fred::cmd!("INFO"), vec!["commandstats"])
            .await
            .unwrap();
        for line in info.lines() {
            if line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:") {
                let calls = line
                    .split([':', ','])
                    .find_map(|f| f.strip_prefix("calls="))
                    .unwrap();
                total += calls.parse::<u64>().unwrap();
            }
        }
    }
    total
}

/// Issue #22's storm: 4 processes × 16 tasks on 10 hot keys with eager
/// refresh and L1. Per refresh point, one factory run in all (runs of a key
/// never overlap), at most 3 scripts per process (the winner's lock + store,
/// one lost `fill_acquire` per other process, which then backs off), and no
/// value older than the TTL served. Before the fix, a process that lost the
/// race sent `fill_acquire` on every hit for as long as the winner's
/// factory ran.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_across_4_processes_sends_at_most_3_scripts_per_refresh_point_per_process(
    #[case] topology: Topology,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let private = Private::start(topology);
    let url = private.url();
    let master_urls: Vec<String> = match &private {
        Private::Server(s) => vec![s.url()],
        Private::Cluster(c) => c.masters().iter().map(|m| m.url()).collect(),
    };
    let p = prefix("storm");
    let child_test = fredkit_testkit::test_name!(child_process_of_eager_refresh_storm_test);
    let mut children = Vec::new();
    for _ in 0..STORM_PROCESSES {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &child_test, "--nocapture", "--test-threads=1"])
            .env("FKC_STORM_URL", &url)
            .env("FKC_STORM_PREFIX", &p)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line == "READY" {
                    return;
                }
            }
            panic!("a storm child exited before READY");
        })
        .await
        .expect("a storm child was not READY within 60 s");
        children.push((child, lines));
    }
    // Warm the keys, forget the scripts sent so far, and start all at once.
    let redis = connect(&url).await;
    let warm = cache(&redis, storm_opts(&p)).await;
    for i in 0..STORM_KEYS {
        warm.set(&format!("hot{i}"), &item(wall_ms()))
            .await
            .unwrap();
    }
    for u in &master_urls {
        let r = connect(u).await;
        let _: String = r
            .client()
            .custom(fred::cmd!("CONFIG"), vec!["RESETSTAT"])
            .await
            .unwrap();
    }
    for (child, _) in children.iter_mut() {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        stdin.flush().await.unwrap();
    }
    let mut runs: Vec<(usize, u64, u64)> = Vec::new();
    let (mut started, mut too_old, mut stale, mut refreshes, mut skips) = (0, 0, 0, 0, 0);
    for (mut child, mut lines) in children {
        let mut done = false;
        while let Some(line) = lines.next_line().await.unwrap() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first() {
                Some(&"RUN") => runs.push((
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )),
                Some(&"DONE") => {
                    done = true;
                    let get = |name: &str| -> u64 {
                        f.iter()
                            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                            .unwrap()
                            .parse()
                            .unwrap()
                    };
                    started += get("started");
                    too_old += get("too_old");
                    stale += get("stale");
                    refreshes += get("refreshes");
                    skips += get("skips");
                    eprintln!("child: {line}");
                }
                _ => {}
            }
        }
        assert!(child.wait().await.unwrap().success());
        assert!(done, "a storm child ended without its DONE line");
    }
    let scripts = scripts_sent(&master_urls).await;
    let points = started;
    eprintln!(
        "storm {topology:?}: {points} refresh points ({refreshes} refreshes, {skips} skips), \
         {scripts} scripts = {:.2} per refresh point per process",
        scripts as f64 / points.max(1) as f64 / STORM_PROCESSES as f64
    );
    assert_eq!(too_old, 0, "values older than the TTL were served");
    assert_eq!(stale, 0, "stale values were served");
    // One factory run per refresh point: the runs of a key never overlap.
    runs.sort();
    for w in runs.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(
                w[1].1 >= w[0].2,
                "two factory runs of key {} overlapped: {:?} and {:?}",
                w[0].0,
                w[0],
                w[1]
            );
        }
    }
    // Each refresh point is at least STORM_EAGER × TTL after the previous.
    let per_key_max = STORM_RUN_MS / (STORM_EAGER * STORM_TTL_MS as f64) as u64 + 2;
    assert!(points >= STORM_KEYS as u64, "{points} refresh points");
    assert!(
        points <= per_key_max * STORM_KEYS as u64,
        "{points} refresh points"
    );
    assert_eq!(
        refreshes, points,
        "eager_refreshes counts refreshes started"
    );
    assert!(
        scripts <= 3 * points * STORM_PROCESSES as u64,
        "{scripts} scripts for {points} refresh points on {STORM_PROCESSES} processes"
    );
}

// ------------------------------------------------------------------- tags

/// 10,000 entries, 9,000 of them under 100 tags (90 each), on 2 instances
/// with L1 (and a third without, reading Redis only): `invalidate_tag` of 50
/// tags makes each of their 4,500 entries a miss on every instance — from
/// L1 on both (B hears it through the invalidation channel; its L1 TTL is
/// far longer than the wait) and from Redis — while the 5,500 others (the
/// other tags' and the 1,000 untagged) are untouched and still served from
/// L1.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_makes_every_tagged_entry_a_miss_on_both_instances_l1_and_l2(
    #[case] topology: Topology,
) {
    use fredkit_cache::EntryOptions;
    use futures::StreamExt;
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("tags");
    let with_l1 = || {
        opts(&p).ttl(Duration::from_secs(120)).l1(L1Options::new()
            .max_entries(20_000)
            .ttl(Duration::from_secs(120)))
    };
    let a = cache(&redis, with_l1()).await;
    let b = cache(&redis, with_l1()).await;
    let c = cache(&redis, opts(&p).ttl(Duration::from_secs(120))).await;
    const N: u64 = 10_000;
    const TAGGED: u64 = 9_000;
    let tag_of = |i: u64| (i < TAGGED).then(|| format!("t{}", i % 100));
    futures::stream::iter(0..N)
        .map(|i| {
            let a = a.clone();
            async move {
                let o = match tag_of(i) {
                    Some(t) => EntryOptions::new().tags([t, "all-tagged".to_string()]),
                    None => EntryOptions::new(),
                };
                a.set_with(&format!("k{i}"), &item(i), &o).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let keys: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let all: Vec<Option<Item>> = (0..N).map(|i| Some(item(i))).collect();
    // B's L1 takes a copy of each (from Redis, tags checked there), once
    // the invalidations of A's writes stopped arriving (a copy read while
    // one is in flight is not kept).
    assert_eq!(a.get_many(&keys).await.unwrap(), all);
    assert!(
        eventually(DEADLINE, || async {
            let before = b.metrics();
            assert_eq!(b.get_many(&keys).await.unwrap(), all);
            b.metrics().since(&before).l1_hits == N
        })
        .await,
        "B holds every copy in L1"
    );

    for t in 0..50 {
        a.invalidate_tag(&format!("t{t}")).await.unwrap();
    }
    let expected: Vec<Option<Item>> = (0..N)
        .map(|i| match i < TAGGED && i % 100 < 50 {
            true => None,
            false => Some(item(i)),
        })
        .collect();
    let gone = expected.iter().filter(|v| v.is_none()).count() as u64;
    assert_eq!(gone, 4_500);
    // Redis (an instance without L1) and A's L1: at once.
    assert_eq!(c.get_many(&keys).await.unwrap(), expected);
    let before_a = a.metrics();
    assert_eq!(a.get_many(&keys).await.unwrap(), expected);
    assert_eq!(a.metrics().since(&before_a).l1_hits, N - gone);
    // B's L1: once the invalidation message arrived (its L1 TTL is 120 s).
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.get_many(&keys).await.unwrap() == expected
        })
        .await,
        "B still serves entries under an invalidated tag"
    );
    let before_b = b.metrics();
    assert_eq!(b.get_many(&keys).await.unwrap(), expected);
    let d = b.metrics().since(&before_b);
    assert_eq!(
        d.l1_hits,
        N - gone,
        "untouched entries are still L1 hits on B"
    );
    assert_eq!(d.misses, gone);
    // One at a time too, and a fill writes under the new version.
    assert_eq!(b.get("k0").await.unwrap(), None);
    let refilled = b
        .fetch_with("k0", &EntryOptions::new().tags(["t0"]), || async {
            Ok::<_, std::convert::Infallible>(Some(item(7)))
        })
        .await
        .unwrap();
    assert_eq!(refilled.origin, Origin::Factory);
    assert_eq!(c.get("k0").await.unwrap(), Some(item(7)));
    // A second tag of the same entries: all 9,000 tagged entries go.
    a.invalidate_tag("all-tagged").await.unwrap();
    assert_eq!(c.get("k1").await.unwrap(), None);
    assert_eq!(
        c.get("k0").await.unwrap(),
        Some(item(7)),
        "k0 has only t0 now"
    );
    assert_eq!(
        c.get(&format!("k{TAGGED}")).await.unwrap(),
        Some(item(TAGGED))
    );
}

// ---------------------------------------------------------- auto-recovery

/// Auto-recovery: Redis (the key's master) SIGSTOPped, instance A's breaker
/// open, A removes a key: the removal cannot reach Redis and is queued.
/// After SIGCONT, A replays it (UNLINK + invalidation message) and B, which
/// held the old value in its L1 (TTL 60 s), stops serving it within 1 s.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_redis_a_removal_is_queued_and_replayed_on_recovery(
    #[case] topology: Topology,
) {
    let deployment = Private::start(topology);
    let redis = connect(&deployment.url()).await;
    let owner = deployment.owner("k");
    let others = deployment.keys_on(owner, 2);
    let p = prefix("recovery");
    let l1 = || L1Options::new().ttl(Duration::from_secs(60));
    let a = cache(
        &redis,
        opts(&p).l1(l1()).breaker(
            fredkit_core::CircuitBreaker::builder()
                .minimum_throughput(2)
                .break_duration(Duration::from_secs(60))
                .build()
                .unwrap(),
        ),
    )
    .await;
    let b = cache(&redis, opts(&p).l1(l1())).await;
    let seen = b.metrics().invalidations_received;
    a.set("k", &item(1)).await.unwrap();
    hold_l1_copy(&b, seen, "k", &item(1)).await;

    deployment.pause(owner, true);
    for k in &others {
        assert_eq!(a.get(k).await.unwrap(), None); // times out: a breaker failure
    }
    assert_eq!(a.breaker().state(), fredkit_core::BreakerState::Open);
    assert!(a.remove("k").await.is_err(), "Redis is paused");
    assert_eq!(a.metrics().recovery_queued, 1);
    assert_eq!(
        b.get("k").await.unwrap(),
        Some(item(1)),
        "B's L1 still has it"
    );

    deployment.pause(owner, false);
    let recovered = std::time::Instant::now();
    let gone = eventually(Duration::from_secs(1), || async {
        b.get("k").await.unwrap().is_none()
    })
    .await;
    eprintln!(
        "B stopped serving the old value {:?} after recovery",
        recovered.elapsed()
    );
    assert!(
        gone,
        "B still serves the removed value 1 s after Redis came back"
    );
    assert_eq!(a.metrics().recovery_replayed, 1);
    let exists: i64 = redis.client().exists(format!("{p}:{{k}}")).await.unwrap();
    assert_eq!(exists, 0, "the queued UNLINK reached Redis");
}

// ------------------------------------------------ XFetch, fail-safe throttle

/// XFetch (beta 1, 200 ms factory, TTL 5 s) next to the fixed fraction
/// (0.5) under the same steady load, 16 tasks on 2 hot keys each, L1 on:
/// after warm-up no caller of the XFetch cache misses (none waits on a
/// factory: every refresh ran ahead of expiry, in the background), and its
/// refreshes stay within 2x of the fixed-fraction cache's.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfetch_refreshes_ahead_of_expiry_with_no_miss_and_at_most_twice_the_fixed_refreshes(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let base = |p: &str| opts(p).ttl(Duration::from_secs(5)).l1(L1Options::new());
    let x = cache(&redis, base(&prefix("xfetch")).xfetch(1.0)).await;
    let f = cache(&redis, base(&prefix("xfetch_fixed")).eager_refresh(0.5)).await;
    let factory = || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        item(wall_ms())
    };
    for c in [&x, &f] {
        for k in ["a", "b"] {
            c.get_or_set(k, factory).await.unwrap();
        }
    }
    let (x0, f0) = (x.metrics(), f.metrics());
    // Past the warm-up entries' expiry: each key needs a refresh.
    let end = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let (x, f) = (x.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while tokio::time::Instant::now() < end {
                i += 1;
                let k = if i % 2 == 0 { "a" } else { "b" };
                x.get_or_set(k, factory).await.unwrap();
                f.get_or_set(k, factory).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (xd, fd) = (x.metrics().since(&x0), f.metrics().since(&f0));
    eprintln!(
        "{topology:?}: xfetch {} refreshes, {} misses, {} hits; fixed 0.5: {} refreshes, {} misses",
        xd.eager_refreshes,
        xd.misses,
        xd.hits(),
        fd.eager_refreshes,
        fd.misses
    );
    assert_eq!(
        xd.misses, 0,
        "a caller of the XFetch cache waited on a factory"
    );
    assert_eq!(xd.loads, 0);
    assert!(
        xd.eager_refreshes >= 2,
        "XFetch refreshed {} times",
        xd.eager_refreshes
    );
    assert!(
        xd.eager_refreshes <= 2 * fd.eager_refreshes.max(1),
        "XFetch {} refreshes against {} with the fixed fraction",
        xd.eager_refreshes,
        fd.eager_refreshes
    );
}

/// Fail-safe throttle: the factory fails and the stale value is served;
/// for the throttle duration the failing factory is not called again (10
/// calls, 1 factory run), then it is.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_throttle_reuses_the_stale_value_instead_of_calling_a_failing_factory(
    #[case] topology: Topology,
) {
    let redis = connect(&shared_url(topology).unwrap()).await;
    let c = cache(
        &redis,
        opts(&prefix("throttle"))
            .ttl(Duration::from_millis(100))
            .max_stale(Duration::from_secs(60))
            .fail_safe_throttle(Duration::from_millis(600)),
    )
    .await;
    c.set("k", &item(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = |calls: &Arc<AtomicUsize>| {
        let calls = Arc::clone(calls);
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<Option<Item>, _>("db down")
        }
    };
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let v = c.fetch("k", failing(&calls)).await.unwrap();
        assert_eq!((v.value, v.stale), (Some(item(1)), true));
    }
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "too slow to test"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the failing factory was called again"
    );
    tokio::time::sleep(Duration::from_millis(650)).await;
    let v = c.fetch("k", failing(&calls)).await.unwrap();
    assert_eq!((v.value, v.stale), (Some(item(1)), true));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "after the throttle, the factory is asked again"
    );
}

// ------------------------------------------------------- adaptive entries

/// Adaptive entries: the factory decides from its value the entry's TTL and
/// fail-safe window (PTTL in Redis shows both), or not to cache it at all
/// (nothing in Redis, the next call runs the factory again).
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_factory_sets_its_entrys_ttl_and_fail_safe_or_skips_caching(
    #[case] topology: Topology,
) {
    use fredkit_cache::{Adapted, EntryOptions};
    let redis = connect(&shared_url(topology).unwrap()).await;
    let p = prefix("adaptive");
    let c = cache(
        &redis,
        opts(&p)
            .ttl(Duration::from_secs(300))
            .max_stale(Duration::from_secs(600))
            .l1(L1Options::new()),
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let adaptive = |id: u64| {
        let calls = Arc::clone(&calls);
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let a = Adapted::new(Some(item(id)));
            Ok::<_, std::convert::Infallible>(match id {
                1 => a
                    .ttl(Duration::from_secs(2))
                    .max_stale(Duration::from_secs(3)),
                _ => a.skip_caching(),
            })
        }
    };
    let none = EntryOptions::new();
    let f = c.fetch_adaptive("short", &none, adaptive(1)).await.unwrap();
    assert_eq!(f.value, Some(item(1)));
    let pttl: i64 = redis.client().pttl(format!("{p}:{{short}}")).await.unwrap();
    assert!(
        pttl > 4_000 && pttl <= 5_000,
        "PTTL {pttl}: ttl 2 s + max_stale 3 s"
    );
    for _ in 0..2 {
        let f = c.fetch_adaptive("skip", &none, adaptive(2)).await.unwrap();
        assert_eq!((f.value, f.origin), (Some(item(2)), Origin::Factory));
    }
    let exists: i64 = redis
        .client()
        .exists(format!("{p}:{{skip}}"))
        .await
        .unwrap();
    assert_eq!(exists, 0, "a skipped value is not written");
    assert_eq!(c.get("skip").await.unwrap(), None, "nor kept in L1");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// -------------------------------------------------- tracking (any writer)

/// Tracking connections (CLIENT LIST `flags` with `t`) on each master.
async fn tracking_ids(urls: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for u in urls {
        let r = connect(u).await;
        let list: String = r
            .client()
            .custom(fred::cmd!("CLIENT"), vec!["LIST"])
            .await
            .unwrap();
        let ids = list
            .lines()
            .filter(|l| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix("flags="))
                    .is_some_and(|f| f.contains('t'))
            })
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_string)
            .collect();
        out.push((u.clone(), ids));
    }
    out
}

/// Invalidation from any writer (`InvalidationMode::Both`): a plain `SET`
/// from a client that is not fredkit (the bytes of another entry copied
/// under the key) is never served from either instance's L1 100 ms later.
/// `CLIENT KILL` of the tracking connections: L1 flushed, tracking back on
/// (every master), and the next outside write is seen again.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_tracking_outside_writes_reach_every_l1_and_client_kill_of_tracking_flushes_it(
    #[case] topology: Topology,
) {
    use fredkit_cache::InvalidationMode;
    let deployment = Private::start(topology);
    let redis = connect(&deployment.url()).await;
    let masters: Vec<String> = match &deployment {
        Private::Server(s) => vec![s.url()],
        Private::Cluster(c) => c.masters().iter().map(|m| m.url()).collect(),
    };
    let p = prefix("tracking");
    let o = || {
        opts(&p)
            .l1(L1Options::new().ttl(Duration::from_secs(60)))
            .invalidation_mode(InvalidationMode::Both)
    };
    let a = cache(&redis, o()).await;
    let b = cache(&redis, o()).await;
    for c in [&a, &b] {
        c.wait_ready(DEADLINE).await.unwrap();
    }
    a.set("v1", &item(1)).await.unwrap();
    a.set("v2", &item(2)).await.unwrap();
    a.set("k", &item(1)).await.unwrap();
    let bytes = |k: &str| {
        let (redis, key) = (redis.clone(), format!("{p}:{{{k}}}"));
        async move {
            let b: bytes::Bytes = redis.client().get(key).await.unwrap();
            b
        }
    };
    let outside_set = |k: &str, value: bytes::Bytes| {
        let (redis, key) = (redis.clone(), format!("{p}:{{{k}}}"));
        async move {
            let _: () = redis
                .client()
                .set(key, value, None, None, false)
                .await
                .unwrap();
        }
    };
    // Both hold k = 1 in L1.
    for c in [&a, &b] {
        assert!(
            eventually(DEADLINE, || async {
                let hits = c.metrics().l1_hits;
                c.get("k").await.unwrap() == Some(item(1)) && c.metrics().l1_hits > hits
            })
            .await
        );
    }
    outside_set("k", bytes("v2").await).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for c in [&a, &b] {
        assert_eq!(
            c.get("k").await.unwrap(),
            Some(item(2)),
            "an L1 kept the old value"
        );
    }

    // Kill the tracking connections (A's and B's, on every master).
    let flushes = b.metrics().l1_flushes;
    for (url, ids) in tracking_ids(&masters).await {
        assert!(!ids.is_empty(), "no tracking connection on {url}");
        let r = connect(&url).await;
        for id in ids {
            let _: Value = r
                .client()
                .custom(fred::cmd!("CLIENT"), vec!["KILL", "ID", id.as_str()])
                .await
                .unwrap();
        }
    }
    assert!(
        eventually(DEADLINE, || async {
            b.metrics().tracking_reconnects >= 1 && b.metrics().l1_flushes > flushes
        })
        .await,
        "B's L1 was not flushed after its tracking connection was killed"
    );
    // Tracking back on, on every master, for both instances.
    assert!(
        eventually(DEADLINE, || async {
            tracking_ids(&masters)
                .await
                .iter()
                .all(|(_, ids)| ids.len() >= 2)
        })
        .await,
        "tracking not back on: {:?}",
        tracking_ids(&masters).await
    );
    tokio::time::sleep(Duration::from_millis(50)).await; // the re-enable's own flush
    for c in [&a, &b] {
        assert!(
            eventually(DEADLINE, || async {
                let hits = c.metrics().l1_hits;
                c.get("k").await.unwrap() == Some(item(2)) && c.metrics().l1_hits > hits
            })
            .await
        );
    }
    outside_set("k", bytes("v1").await).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for c in [&a, &b] {
        assert_eq!(
            c.get("k").await.unwrap(),
            Some(item(1)),
            "an outside write after the reconnect was not seen"
        );
    }
}
