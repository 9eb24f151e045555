//! A planned cluster failover (`CLUSTER FAILOVER` on a replica, what a
//! rolling upgrade does) under steady writes: the primary pauses its
//! clients until the replica has caught up, so no acknowledged write may be
//! lost, and the client follows the slots' new owner (MOVED) by itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::prelude::*;
use fredkit_testkit::{key_slot, ClusterOptions, RedisCluster, RedisServer};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn role(server: &RedisServer) -> Option<String> {
    let reply = server.command(&["ROLE"]).ok()?;
    reply.as_array()?.first()?.as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_planned_cluster_failover_loses_no_acknowledged_write() {
    let cluster = RedisCluster::start(ClusterOptions::default().replicas_per_master(1)).unwrap();
    let redis = fredkit_testkit::connect(&cluster.url()).await.unwrap();
    // A key on master 0's slots, and one on another master's.
    let tag_on = |master: usize| {
        (0..)
            .map(|i| format!("{{t{i}}}"))
            .find(|t| {
                cluster
                    .master_index_for_slot(key_slot(t.as_bytes()))
                    .unwrap()
                    == master
            })
            .unwrap()
    };
    let moved_key = format!("{}ids", tag_on(0));
    let other_key = format!("{}ids", tag_on(1));
    let replica_addr = cluster.replicas_of(0)[0].addr();

    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(Mutex::new(Vec::<(String, u64, Instant)>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for n in 0..6 {
        let key = if n % 3 == 2 {
            other_key.clone()
        } else {
            moved_key.clone()
        };
        let (redis, stop, ids, acks, failures) = (
            redis.clone(),
            stop.clone(),
            ids.clone(),
            acks.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                match redis.client().sadd::<i64, _, _>(key.as_str(), id).await {
                    Ok(_) => acks.lock().unwrap().push((key.clone(), id, Instant::now())),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let replica = &cluster.replicas_of(0)[0];
    let reply = replica.command(&["CLUSTER", "FAILOVER"]).unwrap();
    assert!(!reply.is_error(), "CLUSTER FAILOVER refused: {reply:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while role(replica).as_deref() != Some("master")
        || role(&cluster.masters()[0]).as_deref() != Some("slave")
    {
        assert!(
            Instant::now() < deadline,
            "the manual failover did not complete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = Instant::now();
    // Keep writing until writes to the moved slots have succeeded for 2 s.
    loop {
        let last = acks
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(k, _, _)| *k == moved_key)
            .map(|(_, _, at)| *at);
        if matches!(last, Some(at) if at > promoted + Duration::from_secs(2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write reached the promoted replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let members = |server: &RedisServer, key: &str| -> HashSet<u64> {
        server
            .command(&["SMEMBERS", key])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                std::str::from_utf8(r.as_bytes().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let new_owner = cluster.node_by_addr(&replica_addr).unwrap();
    let on_moved = members(new_owner, &moved_key);
    let other_owner = cluster
        .owner_of_slot(key_slot(other_key.as_bytes()))
        .unwrap();
    let on_other = members(other_owner, &other_key);
    let acks = acks.lock().unwrap().clone();
    let lost: Vec<u64> = acks
        .iter()
        .filter(|(k, id, _)| {
            if *k == moved_key {
                !on_moved.contains(id)
            } else {
                !on_other.contains(id)
            }
        })
        .map(|(_, id, _)| *id)
        .collect();
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "{} acknowledged, {} lost, {} failed calls: {:?}",
        acks.len(),
        lost.len(),
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "calls failed during a planned cluster failover (the client must follow MOVED without errors): {failures:?}"
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost in a planned cluster failover: {lost:?}"
    );
    redis.shutdown().await.unwrap();
}
