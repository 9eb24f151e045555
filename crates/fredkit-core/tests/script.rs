//! `Script` against real Redis: EVALSHA, the NOSCRIPT fallback (alone and
//! pipelined), per-node script caches on a cluster, and script errors.
//!
//! Tests that only run scripts use the shared deployments of the test kit;
//! tests that flush script caches get their own server (or the one
//! flushable cluster of this binary, taken in turn) so they cannot disturb
//! each other.

// Test plumbing: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use fred::prelude::{Builder, Client, ClientLike, Config};
use fredkit_core::{ErrorKind, KeySpace, Result, Script};
use fredkit_testkit::{
    key_slot, shared_url, unique_prefix, ClusterOptions, RedisCluster, RedisServer, Topology,
};
use rstest::rstest;
use tokio::sync::Mutex;

static INCR_BY: Script = Script::new("incr_by", include_str!("scripts/incr_by.lua"));
static FAIL_WITH: Script = Script::new("fail_with", include_str!("scripts/fail_with.lua"));
static ECHO: Script = Script::new("echo", include_str!("scripts/echo.lua"));

async fn connect(url: &str) -> Client {
    let config = Config::from_url(url).expect("test kit URL parses");
    let client = Builder::from_config(config).build().expect("client builds");
    client.init().await.expect("client connects");
    client
}

fn keys(test: &str) -> KeySpace {
    // The test kit's prefix ends with ':'; a KeySpace prefix must not.
    let prefix = unique_prefix(test);
    KeySpace::new(prefix.trim_end_matches(':')).expect("test kit prefix is a valid key prefix")
}

fn cached_on(server: &RedisServer, script: &Script) -> bool {
    let reply = server
        .command(&["SCRIPT", "EXISTS", script.sha1()])
        .expect("SCRIPT EXISTS");
    reply
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r.as_int())
        == Some(1)
}

fn flush_scripts(server: &RedisServer) {
    let reply = server.command(&["SCRIPT", "FLUSH"]).expect("SCRIPT FLUSH");
    assert!(!reply.is_error(), "{reply:?}");
    assert!(!cached_on(server, &INCR_BY));
}

/// The cluster of this binary that tests may flush, one test at a time.
async fn flushable_cluster() -> tokio::sync::MutexGuard<'static, RedisCluster> {
    static CLUSTER: OnceLock<Mutex<RedisCluster>> = OnceLock::new();
    let cell = CLUSTER.get_or_init(|| {
        Mutex::new(RedisCluster::start(ClusterOptions::default()).expect("cluster starts"))
    });
    cell.lock().await
}

/// One tag per master, so that keys built with them spread over every node.
fn tag_per_master(cluster: &RedisCluster) -> Vec<String> {
    let mut tags: Vec<Option<String>> = vec![None; cluster.masters().len()];
    for n in 0.. {
        let tag = format!("entity{n}");
        let master = cluster
            .master_index_for_slot(key_slot(tag.as_bytes()))
            .expect("slot owner");
        tags[master].get_or_insert(tag);
        if tags.iter().all(Option::is_some) {
            break;
        }
    }
    tags.into_iter().flatten().collect()
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test]
async fn exec_returns_the_script_reply(#[case] topology: Topology) {
    let client = connect(&shared_url(topology).unwrap()).await;
    let key = keys("exec_returns_the_script_reply")
        .tagged("c", ["n"])
        .unwrap();
    let first: i64 = INCR_BY.exec(&client, key.as_str(), 5).await.unwrap();
    let second: i64 = INCR_BY.exec(&client, key.as_str(), 2).await.unwrap();
    assert_eq!((first, second), (5, 7));
    let echoed: String = ECHO.exec(&client, (), "hello").await.unwrap();
    assert_eq!(echoed, "hello");
}

#[tokio::test]
async fn exec_recovers_from_noscript_after_script_flush() {
    let server = RedisServer::start().unwrap();
    let client = connect(&server.url()).await;
    let key = keys("exec_recovers").key(["n"]);

    let _: i64 = INCR_BY.exec(&client, key.as_str(), 1).await.unwrap();
    assert!(cached_on(&server, &INCR_BY));
    flush_scripts(&server);

    let n: i64 = INCR_BY.exec(&client, key.as_str(), 1).await.unwrap();
    assert_eq!(n, 2, "the script ran exactly once more");
    assert!(
        cached_on(&server, &INCR_BY),
        "the EVAL fallback cached the script again"
    );
}

#[tokio::test]
async fn exec_pipelined_recovers_from_noscript_after_script_flush() {
    let server = RedisServer::start().unwrap();
    let client = connect(&server.url()).await;
    let ks = keys("pipelined_recovers");
    flush_scripts(&server);

    let calls: Vec<(String, i64)> = (0..5).map(|i| (ks.key([i.to_string()]), i + 1)).collect();
    let results: Vec<Result<i64>> = INCR_BY.exec_pipelined(&client, calls.clone()).await;
    let values: Vec<i64> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(values, vec![1, 2, 3, 4, 5], "each call ran exactly once");
    assert!(cached_on(&server, &INCR_BY));

    // Cached now: same calls again, each applied once more.
    let again: Vec<i64> = INCR_BY
        .exec_pipelined(&client, calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(again, vec![2, 4, 6, 8, 10]);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test]
async fn script_error_carries_the_script_name_and_redis_message(#[case] topology: Topology) {
    let client = connect(&shared_url(topology).unwrap()).await;
    let err = FAIL_WITH
        .exec::<_, (), _, _>(&client, (), "quota exhausted")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Script, "{err}");
    let shown = err.to_string();
    assert!(shown.contains("fail_with"), "{shown}");
    assert!(shown.contains("quota exhausted"), "{shown}");
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test]
async fn pipelined_calls_fail_independently(#[case] topology: Topology) {
    let client = connect(&shared_url(topology).unwrap()).await;
    let results: Vec<Result<String>> = FAIL_WITH
        .exec_pipelined(&client, vec![((), "first"), ((), "second")])
        .await;
    assert_eq!(results.len(), 2);
    for (result, message) in results.iter().zip(["first", "second"]) {
        let err = result.as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Script);
        assert!(err.to_string().contains(message), "{err}");
    }

    let ks = keys("pipelined_calls_fail_independently");
    let key = ks.tagged("t", ["n"]).unwrap();
    let mixed: Vec<Result<i64>> = INCR_BY
        .exec_pipelined(
            &client,
            vec![
                (key.clone(), "1"),
                (key.clone(), "not a number"),
                (key, "2"),
            ],
        )
        .await;
    assert_eq!(*mixed[0].as_ref().unwrap(), 1);
    assert_eq!(mixed[1].as_ref().unwrap_err().kind(), ErrorKind::Script);
    assert_eq!(*mixed[2].as_ref().unwrap(), 3);
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test]
async fn reply_of_the_wrong_type_is_a_protocol_error(#[case] topology: Topology) {
    let client = connect(&shared_url(topology).unwrap()).await;
    let err = ECHO
        .exec::<_, i64, _, _>(&client, (), "not a number")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("echo"), "{err}");
}

#[tokio::test]
async fn exec_recovers_from_noscript_on_every_cluster_master() {
    let cluster = flushable_cluster().await;
    let client = connect(&cluster.url()).await;
    let ks = keys("cluster_exec_recovers");
    let tags = tag_per_master(&cluster);

    cluster.masters().iter().for_each(flush_scripts);
    for (master, tag) in tags.iter().enumerate() {
        let key = ks.tagged(tag, ["n"]).unwrap();
        let n: i64 = INCR_BY.exec(&client, key.as_str(), 3).await.unwrap();
        assert_eq!(n, 3);
        assert!(
            cached_on(&cluster.masters()[master], &INCR_BY),
            "EVAL cached the script on the node that owns {key}"
        );
    }
}

#[tokio::test]
async fn exec_pipelined_recovers_from_noscript_on_every_cluster_master() {
    let cluster = flushable_cluster().await;
    let client = connect(&cluster.url()).await;
    let ks = keys("cluster_pipelined_recovers");
    let tags = tag_per_master(&cluster);

    cluster.masters().iter().for_each(flush_scripts);
    // Two calls per node, on different slots of the batch.
    let calls: Vec<(String, i64)> = tags
        .iter()
        .flat_map(|tag| {
            [
                (ks.tagged(tag, ["a"]).unwrap(), 1),
                (ks.tagged(tag, ["b"]).unwrap(), 10),
            ]
        })
        .collect();
    let results: Vec<Result<i64>> = INCR_BY.exec_pipelined(&client, calls.clone()).await;
    let values: Vec<i64> = results.into_iter().map(|r| r.unwrap()).collect();
    let want: Vec<i64> = calls.iter().map(|(_, by)| *by).collect();
    assert_eq!(values, want, "each call ran exactly once");
    for master in cluster.masters() {
        assert!(cached_on(master, &INCR_BY));
    }
}

#[tokio::test]
async fn load_caches_the_script_on_every_master() {
    let cluster = flushable_cluster().await;
    let client = connect(&cluster.url()).await;
    cluster.masters().iter().for_each(flush_scripts);

    Script::load_all(&client, &[&INCR_BY, &ECHO]).await.unwrap();
    for master in cluster.masters() {
        assert!(cached_on(master, &INCR_BY));
        assert!(cached_on(master, &ECHO));
    }
}

#[tokio::test]
async fn load_works_on_a_single_server() {
    let server = RedisServer::start().unwrap();
    let client = connect(&server.url()).await;
    flush_scripts(&server);
    INCR_BY.load(&client).await.unwrap();
    assert!(cached_on(&server, &INCR_BY));
    let _ = client.quit().await;
}
