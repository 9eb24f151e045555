//! A fault on one cluster master touches only the slots it serves (issue #14).
//!
//! Real clusters (3 masters, 1 replica each, 1 s node timeout so that a
//! replica is promoted within a few seconds). While one master is paused
//! (SIGSTOP: silent, no RST) or killed (SIGKILL: RST, then refused
//! connections), an open-loop load of SET + GET on keys of the two healthy
//! masters must never fail and keep its p99 latency under the command
//! timeout; the faulty master's slots must come back once its replica is
//! promoted.
//!
//! The load is open-loop (every task starts an operation every
//! [`OP_INTERVAL`] whether or not the previous one finished), so a stall of
//! the whole client shows up as a share of slow operations proportional to
//! its length, not as one slow operation per task lost among thousands of
//! fast ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::prelude::*;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_testkit::{key_slot, ClusterOptions, RedisCluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// fredkit's default command timeout, the bound the healthy slots' p99 must stay under.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Concurrent load tasks.
const TASKS: usize = 4;
/// Each task starts one SET + GET this often.
const OP_INTERVAL: Duration = Duration::from_millis(10);
/// Keys per healthy master.
const KEYS_PER_MASTER: usize = 8;
/// Upper bound for one command, hangs included (a hang counts as a failure).
const NO_HANG: Duration = Duration::from_secs(5);
/// How long the faulty master's slots may take to come back (failover + client re-routing).
const RECOVERY: Duration = Duration::from_secs(30);

/// One finished command of the load.
struct Op {
    started: Instant,
    latency: Duration,
    error: Option<String>,
}

#[derive(Default)]
struct Record {
    ops: Mutex<Vec<Op>>,
}

impl Record {
    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }
}

/// Open-loop SET + GET on `keys` from [`TASKS`] tasks until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    record: Arc<Record>,
}

impl Load {
    fn start(redis: &Redis, keys: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Record::default());
        let keys = Arc::new(keys);
        let tasks = (0..TASKS)
            .map(|t| {
                let (redis, keys, stop, record) =
                    (redis.clone(), keys.clone(), stop.clone(), record.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(OP_INTERVAL);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    let mut ops = tokio::task::JoinSet::new();
                    let mut n: usize = 0;
                    while !stop.load(Ordering::SeqCst) {
                        tick.tick().await;
                        let key = keys[(t + n * TASKS) % keys.len()].clone();
                        let value = format!("{t}-{n}");
                        n += 1;
                        let (redis, record) = (redis.clone(), record.clone());
                        ops.spawn(async move { set_then_get(&redis, &key, &value, &record).await });
                        while ops.try_join_next().is_some() {}
                    }
                    while ops.join_next().await.is_some() {}
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            record,
        }
    }

    async fn stop(self) -> Vec<Op> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.record)
            .ok()
            .expect("every load task ended")
            .ops
            .into_inner()
            .unwrap()
    }
}

/// SET then GET `key`, each command recorded on its own; the GET must see the SET.
async fn set_then_get(redis: &Redis, key: &str, value: &str, record: &Record) {
    let started = Instant::now();
    let set = tokio::time::timeout(
        NO_HANG,
        redis
            .client()
            .set::<(), _, _>(key, value, None, None, false),
    )
    .await;
    let error = match set {
        Err(_) => Some(format!("SET {key} hung for {NO_HANG:?}")),
        Ok(Err(e)) => Some(format!("SET {key}: {e}")),
        Ok(Ok(())) => None,
    };
    let failed = error.is_some();
    record.push(Op {
        started,
        latency: started.elapsed(),
        error,
    });
    if failed {
        return;
    }
    let started = Instant::now();
    let get = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>(key)).await;
    let error = match get {
        Err(_) => Some(format!("GET {key} hung for {NO_HANG:?}")),
        Ok(Err(e)) => Some(format!("GET {key}: {e}")),
        // Another task may have written the key in between: any value of the load will do,
        // a missing key will not (nothing acknowledged may be lost on a healthy master).
        Ok(Ok(None)) => Some(format!("GET {key}: the key is gone")),
        Ok(Ok(Some(_))) => None,
    };
    record.push(Op {
        started,
        latency: started.elapsed(),
        error,
    });
}

/// The `q`-quantile of `latencies` (nearest rank).
fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort_unstable();
    let rank = ((latencies.len() as f64) * q).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1]
}

/// Asserts that no command of the load failed and that the p99 latency of
/// the commands started after `fault` stayed under the command timeout.
fn assert_healthy_slots_unaffected(ops: &[Op], fault: Instant, what: &str) {
    let errors: Vec<&Op> = ops.iter().filter(|o| o.error.is_some()).collect();
    let mut all: Vec<Duration> = ops.iter().map(|o| o.latency).collect();
    let mut after: Vec<Duration> = ops
        .iter()
        .filter(|o| o.started >= fault)
        .map(|o| o.latency)
        .collect();
    print_timeline(ops, fault, what);
    let p99_all = quantile(&mut all, 0.99);
    let p99_after = quantile(&mut after, 0.99);
    let p50_after = quantile(&mut after, 0.50);
    let max_after = after.last().copied().unwrap_or_default();
    let slow_after = after.iter().filter(|l| **l >= COMMAND_TIMEOUT).count();
    eprintln!(
        "{what}: {} commands on healthy slots ({} after the fault): {} failed; after the fault \
         p50 {p50_after:?}, p99 {p99_after:?}, max {max_after:?}, {slow_after} at or over the \
         command timeout; p99 of the whole run {p99_all:?}",
        ops.len(),
        after.len(),
        errors.len(),
    );
    assert!(
        after.len() > 200,
        "{what}: too few commands after the fault to judge ({})",
        after.len()
    );
    if let Some(first) = errors.first() {
        panic!(
            "{what}: {} of {} commands on the HEALTHY masters' slots failed; the first, {:?} after \
             the fault: {}",
            errors.len(),
            ops.len(),
            first.started.saturating_duration_since(fault),
            first.error.as_deref().unwrap_or_default()
        );
    }
    assert!(
        p99_after < COMMAND_TIMEOUT,
        "{what}: p99 latency on the healthy masters' slots after the fault was {p99_after:?}, \
         not under the command timeout {COMMAND_TIMEOUT:?}"
    );
}

/// Prints, per half second from the fault on, how many commands started, how many
/// failed and the slowest: where a stall was, if any.
fn print_timeline(ops: &[Op], fault: Instant, what: &str) {
    let bucket = Duration::from_millis(500);
    let mut lines = Vec::new();
    let end = ops.iter().map(|o| o.started).max().unwrap_or(fault);
    let mut from = fault;
    while from <= end {
        let to = from + bucket;
        let in_bucket: Vec<&Op> = ops
            .iter()
            .filter(|o| o.started >= from && o.started < to)
            .collect();
        let failed = in_bucket.iter().filter(|o| o.error.is_some()).count();
        let max = in_bucket
            .iter()
            .map(|o| o.latency)
            .max()
            .unwrap_or_default();
        lines.push(format!(
            "  +{:>5.1}s {:>4} ops {:>4} failed, slowest {:?}",
            from.duration_since(fault).as_secs_f64(),
            in_bucket.len(),
            failed,
            max
        ));
        from = to;
    }
    eprintln!("{what}: timeline after the fault\n{}", lines.join("\n"));
}

/// SET `key` until it succeeds (each attempt bounded); panics after `deadline`.
async fn set_until_ok(redis: &Redis, key: &str, value: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = tokio::time::timeout(
            NO_HANG,
            redis
                .client()
                .set::<(), _, _>(key, value, None, None, false),
        )
        .await;
        if let Ok(Ok(())) = r {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "SET {key} still failing {deadline:?} after the fault: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    cluster: RedisCluster,
    redis: Redis,
    victim: usize,
    /// A key on the victim's slots.
    victim_key: String,
    /// Keys on the other masters' slots.
    healthy_keys: Vec<String>,
}

async fn setup(prefix: &str) -> Setup {
    let cluster = RedisCluster::start(
        ClusterOptions::default()
            .replicas_per_master(1)
            .node_timeout(Duration::from_millis(1000))
            // With the default (`yes`) every node answers CLUSTERDOWN for *every* slot from
            // the moment the master is marked failed until its replica is promoted: the
            // server itself stops the healthy slots, whatever the client does. A deployment
            // that wants a fault to touch only its own slots sets this to `no`.
            .server_options(
                fredkit_testkit::ServerOptions::default()
                    .arg("cluster-require-full-coverage", "no"),
            ),
    )
    .unwrap();
    let redis = Redis::connect(
        RedisConfig::builder()
            .url(cluster.url())
            .command_timeout(COMMAND_TIMEOUT)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    redis.wait_connected().await.unwrap();
    // fred tries cluster nodes in address order when it re-reads the topology
    // (`connect_any`): the victim is the first, the worst case.
    let victim = (0..cluster.masters().len())
        .min_by_key(|&i| cluster.masters()[i].port())
        .unwrap();
    let mut victim_key = None;
    let mut healthy_keys = Vec::new();
    let mut per_master = vec![0usize; cluster.masters().len()];
    for i in 0.. {
        let key = format!("{prefix}:{i}");
        let owner = cluster
            .master_index_for_slot(key_slot(key.as_bytes()))
            .unwrap();
        if owner == victim {
            victim_key.get_or_insert(key);
        } else if per_master[owner] < KEYS_PER_MASTER {
            per_master[owner] += 1;
            healthy_keys.push(key);
        }
        if victim_key.is_some() && healthy_keys.len() == KEYS_PER_MASTER * 2 {
            break;
        }
    }
    let victim_key = victim_key.unwrap();
    for k in healthy_keys.iter().chain([&victim_key]) {
        set_until_ok(&redis, k, "before", Duration::from_secs(5)).await;
    }
    Setup {
        cluster,
        redis,
        victim,
        victim_key,
        healthy_keys,
    }
}

/// Waits until a node other than the victim serves the victim's slot.
async fn wait_promoted(cluster: &RedisCluster, victim: usize, key: &str) {
    let slot = key_slot(key.as_bytes());
    let victim_port = cluster.masters()[victim].port();
    let start = Instant::now();
    loop {
        if let Ok(owner) = cluster.owner_of_slot(slot) {
            if owner.port() != victim_port {
                return;
            }
        }
        assert!(
            start.elapsed() < RECOVERY,
            "no replica promoted for slot {slot} within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A master stopped with SIGSTOP (no RST; a dead host or a network partition look
/// the same) and left paused until its replica is promoted: the healthy masters'
/// slots never notice; the paused master's slots move to the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_master_stalls_only_its_own_slots() {
    let s = setup("paused").await;
    let load = Load::start(&s.redis, s.healthy_keys.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fault = Instant::now();
    s.cluster.masters()[s.victim].pause().unwrap();
    let recovered = set_until_ok(&s.redis, &s.victim_key, "after", RECOVERY).await;
    wait_promoted(&s.cluster, s.victim, &s.victim_key).await;
    // Past the dead-connection timeout (3 s) and a few probe rounds after the promotion.
    tokio::time::sleep(Duration::from_secs(4)).await;
    s.cluster.masters()[s.victim].resume().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ops = load.stop().await;
    eprintln!("paused master: its slots took writes again {recovered:?} after the pause");

    assert_healthy_slots_unaffected(&ops, fault, "paused master");
    let v: Option<String> = s.redis.client().get(&s.victim_key).await.unwrap();
    assert_eq!(v.as_deref(), Some("after"));
    s.redis.shutdown().await.unwrap();
}

/// A master killed with SIGKILL (its connections get an RST, reconnects are
/// refused): the healthy masters' slots never notice; the killed master's slots
/// move to the promoted replica.
///
/// Needs the vendored fred (vendor/fred/PATCHED.md, issue #14): stock fred
/// 10.1 fails its whole topology sync when one listed primary cannot be
/// connected (`try_join_all` in `router/clustered.rs`), and until the killed
/// master's replica is promoted its one router task stays in its
/// reconnection loop, where it writes no node's commands, so every slot
/// timed out (~1,000 failed commands over ~2.5 s with a 1 s node timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_master_kill_stalls_only_its_own_slots() {
    let mut s = setup("killed").await;
    let load = Load::start(&s.redis, s.healthy_keys.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fault = Instant::now();
    s.cluster.masters_mut()[s.victim].kill().unwrap();
    let recovered = set_until_ok(&s.redis, &s.victim_key, "after", RECOVERY).await;
    wait_promoted(&s.cluster, s.victim, &s.victim_key).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ops = load.stop().await;
    eprintln!("killed master: its slots took writes again {recovered:?} after the kill");

    assert_healthy_slots_unaffected(&ops, fault, "killed master");
    let v: Option<String> = s.redis.client().get(&s.victim_key).await.unwrap();
    assert_eq!(v.as_deref(), Some("after"));
    s.redis.shutdown().await.unwrap();
}
