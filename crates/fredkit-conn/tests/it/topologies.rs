//! fredkit-conn against real servers: every topology, and the faults a
//! service meets (restart, CLIENT KILL, pause, sentinel and cluster failover).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::prelude::*;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_core::ErrorKind;
use fredkit_testkit::{
    key_slot, shared_url, unique_prefix, ClusterOptions, RedisCluster, RedisServer, SentinelGroup,
    Topology,
};
use rstest::rstest;
use std::time::{Duration, Instant};

/// Upper bound for "does not hang": the command timeout plus scheduling slack.
const NO_HANG: Duration = Duration::from_millis(2_500);

async fn connect(url: &str) -> Redis {
    let redis = Redis::connect(RedisConfig::from_url(url).unwrap())
        .await
        .unwrap();
    redis.wait_connected().await.unwrap();
    redis
}

/// Runs `SET key value` until it succeeds, each attempt bounded by NO_HANG;
/// returns how many attempts failed. Panics if `deadline` passes first.
async fn set_until_ok(redis: &Redis, key: &str, value: &str, deadline: Duration) -> usize {
    let start = Instant::now();
    let mut failures = 0;
    loop {
        let attempt = tokio::time::timeout(
            NO_HANG,
            redis
                .client()
                .set::<(), _, _>(key, value, None, None, false),
        )
        .await
        .unwrap_or_else(|_| panic!("SET {key} hung past {NO_HANG:?}"));
        match attempt {
            Ok(()) => return failures,
            Err(e) => {
                failures += 1;
                let e = fredkit_core::Error::from(e);
                assert!(
                    e.is_unavailable(),
                    "only unavailability errors are expected during a fault, got {e}"
                );
                assert!(
                    start.elapsed() < deadline,
                    "SET {key} still failing after {deadline:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[case::sentinel(Topology::Sentinel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_health_work_on_every_topology(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let redis = connect(&url).await;
    let prefix = unique_prefix("conn_topology");
    // Keys on many slots, so a cluster routes to every master.
    for i in 0..50 {
        let key = format!("{prefix}k{i}");
        redis
            .client()
            .set::<(), _, _>(&key, i, None, None, false)
            .await
            .unwrap();
        let v: i64 = redis.client().get(&key).await.unwrap();
        assert_eq!(v, i);
    }
    let health = redis.health().await;
    assert!(health.reachable, "{health}");
    assert_eq!(health.topology, format!("{topology:?}").to_lowercase());
    assert!(health.server_version.is_some(), "{health}");
    assert!(!health.nodes.is_empty(), "{health}");
    if topology == Topology::Cluster {
        assert_eq!(health.nodes.len(), 3, "3 masters: {health}");
    }
    redis.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_a_timeout_after_the_connect_timeout_never_a_hang() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let eager = RedisConfig::builder()
        .standalone("127.0.0.1", port)
        .connect_timeout(Duration::from_millis(500))
        .lazy(false)
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), Redis::connect(eager))
        .await
        .expect("eager connect hung")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string().contains(&port.to_string()),
        "names the server: {err}"
    );

    // Lazy connect succeeds, and a command fails after the command timeout.
    let lazy = RedisConfig::builder()
        .standalone("127.0.0.1", port)
        .command_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let redis = Redis::connect(lazy).await.unwrap();
    let r = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>("k"))
        .await
        .expect("GET on an unreachable server hung");
    assert_eq!(
        fredkit_core::Error::from(r.unwrap_err()).kind(),
        ErrorKind::Timeout
    );
    let health = tokio::time::timeout(NO_HANG, redis.health())
        .await
        .expect("health hung");
    assert!(!health.reachable);
    assert!(health.error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_succeed_after_a_server_restart_without_user_action() {
    let mut server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    set_until_ok(&redis, "before", "1", Duration::from_secs(1)).await;

    server.kill().unwrap();
    // While it is down: errors, each within the command timeout.
    let r = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>("before"))
        .await
        .expect("GET hung while the server was down");
    assert!(fredkit_core::Error::from(r.unwrap_err()).is_unavailable());

    server.restart().unwrap();
    set_until_ok(&redis, "after", "2", Duration::from_secs(15)).await;
    let v: Option<String> = redis.client().get("after").await.unwrap();
    assert_eq!(v.as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_succeed_after_client_kill_without_user_action() {
    let server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    set_until_ok(&redis, "k", "1", Duration::from_secs(1)).await;
    for round in 0..3 {
        server
            .command(&["CLIENT", "KILL", "TYPE", "normal"])
            .unwrap();
        let failures = set_until_ok(&redis, "k", &round.to_string(), Duration::from_secs(10)).await;
        // fred retries the command on the new connection: usually no failure at all.
        assert!(failures < 20);
        let v: Option<String> = redis.client().get("k").await.unwrap();
        assert_eq!(v, Some(round.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_gives_timeouts_not_hangs_and_commands_resume_after() {
    let server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    set_until_ok(&redis, "k", "1", Duration::from_secs(1)).await;
    server.pause().unwrap();
    for _ in 0..2 {
        let r = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>("k"))
            .await
            .expect("GET hung on a paused server");
        assert_eq!(
            fredkit_core::Error::from(r.unwrap_err()).kind(),
            ErrorKind::Timeout
        );
    }
    server.resume().unwrap();
    set_until_ok(&redis, "k", "2", Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_and_writes_resume() {
    let group = SentinelGroup::start().unwrap();
    let redis = connect(&group.url()).await;
    set_until_ok(&redis, "k", "before", Duration::from_secs(1)).await;
    let old = group.master_addr().unwrap();
    let new = group.failover().unwrap();
    assert_ne!(old, new);
    // Until Sentinel reconfigures the old primary it still accepts writes
    // (Sentinel's async-replication window, not the client's doing). Once it
    // is a replica, Sentinel kills its clients and fred must re-resolve.
    let demoted = group.server_by_addr(&old).unwrap();
    let start = Instant::now();
    loop {
        let role = demoted.command(&["ROLE"]).unwrap();
        let role = role
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r.as_str().map(str::to_string));
        if role.as_deref() == Some("slave") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "old primary never demoted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes must reach the new primary (a write to the demoted one would fail READONLY).
    set_until_ok(&redis, "k", "after", Duration::from_secs(15)).await;
    let on_new = group
        .server_by_addr(&new)
        .unwrap()
        .command(&["GET", "k"])
        .unwrap();
    assert_eq!(
        on_new.as_bytes(),
        Some(&b"after"[..]),
        "the write landed on the new primary"
    );
    let v: Option<String> = redis.client().get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("after"));
    let health = redis.health().await;
    assert!(health.reachable, "{health}");
    assert!(
        health.nodes.contains(&new),
        "health should show the new primary {new}: {health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_kill_recovers_on_its_slots_within_15_seconds() {
    let mut cluster =
        RedisCluster::start(ClusterOptions::default().replicas_per_master(1)).unwrap();
    let redis = connect(&cluster.url()).await;
    // One key per master, found by slot.
    let mut keys: Vec<Option<String>> = vec![None; cluster.masters().len()];
    for i in 0.. {
        let key = format!("k{i}");
        let owner = cluster
            .master_index_for_slot(key_slot(key.as_bytes()))
            .unwrap();
        if keys[owner].is_none() {
            keys[owner] = Some(key);
        }
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    let keys: Vec<String> = keys.into_iter().flatten().collect();
    for k in &keys {
        set_until_ok(&redis, k, "before", Duration::from_secs(2)).await;
    }
    let victim = cluster
        .master_index_for_slot(key_slot(keys[0].as_bytes()))
        .unwrap();
    cluster.masters_mut()[victim].kill().unwrap();

    let killed_at = Instant::now();
    set_until_ok(&redis, &keys[0], "after", Duration::from_secs(15)).await;
    assert!(killed_at.elapsed() < Duration::from_secs(15));
    // And the other masters' slots keep working.
    for k in &keys[1..] {
        set_until_ok(&redis, k, "after", Duration::from_secs(5)).await;
    }
    for k in &keys {
        let v: Option<String> = redis.client().get(k).await.unwrap();
        assert_eq!(v.as_deref(), Some("after"), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_on_a_dedicated_connection_does_not_stall_the_shared_one() {
    let url = shared_url(Topology::Standalone).unwrap();
    let redis = connect(&url).await;
    let list = format!("{}list", unique_prefix("dedicated"));
    let dedicated = redis.dedicated().unwrap();
    dedicated
        .wait_connected(Duration::from_secs(5))
        .await
        .unwrap();
    let blocked = {
        let list = list.clone();
        let client = dedicated.client().clone();
        tokio::spawn(async move {
            client
                .with_options(&Options {
                    timeout: Some(Duration::from_secs(30)),
                    ..Default::default()
                })
                .blpop::<Option<(String, String)>, _>(&list, 20.0)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..100 {
        let _: () = redis
            .client()
            .set("shared", i, None, None, false)
            .await
            .unwrap();
    }
    assert!(!blocked.is_finished(), "BLPOP must still be waiting");
    let _: i64 = redis.client().rpush(&list, "wake").await.unwrap();
    let got = blocked.await.unwrap().unwrap();
    assert_eq!(got, Some((list.clone(), "wake".to_string())));
}

#[tokio::test]
async fn password_protected_server_connects_with_the_password_and_refuses_without() {
    let server = RedisServer::start_with(
        fredkit_testkit::ServerOptions::default().password("hunter2-secret"),
    )
    .unwrap();
    let redis = connect(&server.url()).await;
    let _: () = redis
        .client()
        .set("k", "v", None, None, false)
        .await
        .unwrap();
    assert!(!format!("{redis:?}").contains("hunter2-secret"));

    let wrong = RedisConfig::builder()
        .url(server.url())
        .password("wrong-pass")
        .connect_timeout(Duration::from_millis(800))
        .lazy(false)
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), Redis::connect(wrong))
        .await
        .expect("connect with a wrong password hung")
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2-secret"));
    assert!(!err.to_string().contains("wrong-pass"), "{err}");
}

#[tokio::test]
async fn after_shutdown_commands_fail_instead_of_hanging() {
    let url = shared_url(Topology::Standalone).unwrap();
    let redis = connect(&url).await;
    redis.shutdown().await.unwrap();
    let r = tokio::time::timeout(NO_HANG, redis.client().get::<Option<String>, _>("k"))
        .await
        .expect("GET after shutdown hung");
    assert!(r.is_err());
}

fn connected_clients(server: &RedisServer) -> i64 {
    let info = server.command(&["INFO", "clients"]).unwrap();
    let text = String::from_utf8_lossy(info.as_bytes().unwrap()).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_closes_its_connections() {
    let server = RedisServer::start().unwrap();
    let baseline = connected_clients(&server);
    let redis = connect(&server.url()).await;
    let clone = redis.clone();
    let dedicated = redis.dedicated().unwrap();
    dedicated
        .wait_connected(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(connected_clients(&server), baseline + 2);
    drop(redis);
    drop(dedicated);
    // One clone still alive: the shared connection stays.
    let start = Instant::now();
    while connected_clients(&server) != baseline + 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dedicated connection not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _: () = clone
        .client()
        .set("k", "v", None, None, false)
        .await
        .unwrap();
    drop(clone);
    while connected_clients(&server) != baseline {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "shared connection not closed after the last handle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that stops answering without closing the connection (SIGSTOP
/// here; a dead host or a half-open TCP connection look the same to the
/// client) is given up on after the unresponsive timeout (3 s with the
/// default 1 s command timeout): the pool reconnects instead of waiting for
/// the kernel. Without that the old connection simply carries on after the
/// resume, with the same `CLIENT ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_past_the_unresponsive_timeout_is_replaced() {
    let server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    set_until_ok(&redis, "k", "1", Duration::from_secs(5)).await;
    let before: i64 = redis.client().client_id().await.unwrap();

    server.pause().unwrap();
    // Longer than the unresponsive timeout plus one probe interval.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.resume().unwrap();

    set_until_ok(&redis, "k", "2", Duration::from_secs(15)).await;
    let after: i64 = redis.client().client_id().await.unwrap();
    assert_ne!(
        before, after,
        "the connection that went silent for 5 s was kept instead of replaced"
    );
    redis.shutdown().await.unwrap();
}

/// A cluster master that goes silent without closing its connections (no
/// RST: SIGSTOP here, a dead host in production) is failed over by the
/// cluster; the client must notice the silent connection and re-read the
/// topology. The master stays paused throughout: without dead-connection
/// detection every command on its slots times out until the kernel gives up
/// on the connection (minutes), and no MOVED ever arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_master_is_followed_to_its_replica() {
    let cluster = RedisCluster::start(ClusterOptions::default().replicas_per_master(1)).unwrap();
    let redis = connect(&cluster.url()).await;
    let key = "silent-master";
    set_until_ok(&redis, key, "before", Duration::from_secs(5)).await;
    let victim = cluster
        .master_index_for_slot(key_slot(key.as_bytes()))
        .unwrap();
    cluster.masters()[victim].pause().unwrap();

    set_until_ok(&redis, key, "after", Duration::from_secs(30)).await;
    let v: Option<String> = redis.client().get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("after"));
    cluster.masters()[victim].resume().unwrap();
    redis.shutdown().await.unwrap();
}

/// The same with Sentinel: the master goes silent, the sentinels promote the
/// replica, and the client, having given up on the silent connection, asks
/// the sentinels again and writes to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sentinel_master_is_followed_to_the_new_one() {
    let group = SentinelGroup::start().unwrap();
    let redis = connect(&group.url()).await;
    set_until_ok(&redis, "k", "before", Duration::from_secs(5)).await;
    let old = group.master_addr().unwrap();
    let paused = group.server_by_addr(&old).unwrap();
    paused.pause().unwrap();

    set_until_ok(&redis, "k", "after", Duration::from_secs(45)).await;
    assert_ne!(group.master_addr().unwrap(), old, "no failover happened");
    let v: Option<String> = redis.client().get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("after"));
    paused.resume().unwrap();
    redis.shutdown().await.unwrap();
}
