//! `Redis::dedicated()` on a 3-master cluster: a blocking command on the
//! dedicated connection, on keys of every master in turn, neither stalls the
//! shared pool's commands (to every master) nor misses what is pushed while
//! it waits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::streams::XReadResponse;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_testkit::{key_slot, shared_url, unique_prefix, Topology};

/// Bound for "the shared command did not hang": far above a loaded CI
/// round trip, far below the 20 s the blocking commands wait.
const NO_HANG: Duration = Duration::from_secs(5);

/// A per-command timeout longer than the block.
fn long() -> Options {
    Options {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    }
}

/// One key name (with `prefix` and a hash tag) per master of the cluster,
/// in master order.
fn keys_per_master(redis: &Redis, prefix: &str) -> Vec<String> {
    let state = redis
        .client()
        .cached_cluster_state()
        .expect("a cluster client knows the slots");
    let masters = state.unique_primary_nodes();
    assert!(masters.len() >= 3, "expected 3 masters, got {masters:?}");
    let mut found: HashMap<String, String> = HashMap::new();
    for i in 0..10_000 {
        let key = format!("{prefix}{{t{i}}}");
        let owner = state.get_server(key_slot(key.as_bytes())).unwrap();
        found.entry(owner.to_string()).or_insert(key);
        if found.len() == masters.len() {
            break;
        }
    }
    let mut keys: Vec<String> = masters
        .iter()
        .map(|m| found.get(&m.to_string()).unwrap().clone())
        .collect();
    keys.sort();
    keys
}

/// 100 SETs spread over every master through the shared pool, each one
/// bounded by NO_HANG.
async fn shared_commands_run(redis: &Redis, keys: &[String], round: usize) {
    for i in 0..100 {
        let key = format!("{}:shared", keys[i % keys.len()]);
        let set = redis.client().set::<(), _, _>(&key, i, None, None, false);
        tokio::time::timeout(NO_HANG, set)
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: shared SET {key} stalled behind the dedicated connection")
            })
            .unwrap();
        let got: i64 = tokio::time::timeout(NO_HANG, redis.client().get(&key))
            .await
            .unwrap_or_else(|_| panic!("round {round}: shared GET {key} stalled"))
            .unwrap();
        assert_eq!(got, i as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_on_a_dedicated_connection_does_not_stall_the_shared_pool_on_a_cluster()
{
    let url = shared_url(Topology::Cluster).unwrap();
    let redis = Redis::connect(RedisConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    redis.wait_connected().await.unwrap();
    let keys = keys_per_master(&redis, &unique_prefix("dedicated_cluster"));
    let dedicated = redis.dedicated().unwrap();
    dedicated
        .wait_connected(Duration::from_secs(5))
        .await
        .unwrap();

    // BLPOP on a list of each master in turn, on the one dedicated connection.
    for (round, key) in keys.iter().enumerate() {
        let list = format!("{key}:list");
        let blocked = {
            let list = list.clone();
            let client = dedicated.client().clone();
            tokio::spawn(async move {
                client
                    .with_options(&long())
                    .blpop::<Option<(String, String)>, _>(&list, 20.0)
                    .await
            })
        };
        // Once the server holds the BLPOP (the client is listed as blocked
        // on it), the shared pool keeps answering on every master.
        wait_blocked(&redis, key).await;
        shared_commands_run(&redis, &keys, round).await;
        assert!(
            !blocked.is_finished(),
            "round {round}: BLPOP must still be waiting"
        );
        let value = format!("wake-{round}");
        let _: i64 = redis.client().rpush(&list, &value).await.unwrap();
        let got = tokio::time::timeout(NO_HANG, blocked)
            .await
            .unwrap_or_else(|_| panic!("round {round}: BLPOP did not get the pushed value"))
            .unwrap()
            .unwrap();
        assert_eq!(got, Some((list.clone(), value)));
    }

    // XREADGROUP BLOCK on a stream of each master in turn.
    for (round, key) in keys.iter().enumerate() {
        let stream = format!("{key}:stream");
        let _: () = redis
            .client()
            .xgroup_create(&stream, "g", "$", true)
            .await
            .unwrap();
        let blocked = {
            let stream = stream.clone();
            let client = dedicated.client().clone();
            tokio::spawn(async move {
                client
                    .with_options(&long())
                    .xreadgroup_map::<String, String, String, String, _, _, _, _>(
                        "g",
                        "c",
                        Some(10),
                        Some(20_000),
                        false,
                        &stream,
                        ">",
                    )
                    .await
            })
        };
        wait_blocked(&redis, key).await;
        shared_commands_run(&redis, &keys, round).await;
        assert!(
            !blocked.is_finished(),
            "round {round}: XREADGROUP must still be waiting"
        );
        let id: String = redis
            .client()
            .xadd(&stream, false, None, "*", ("payload", format!("p{round}")))
            .await
            .unwrap();
        let got: XReadResponse<String, String, String, String> =
            tokio::time::timeout(NO_HANG, blocked)
                .await
                .unwrap_or_else(|_| panic!("round {round}: XREADGROUP missed the entry"))
                .unwrap()
                .unwrap();
        let entries = got.get(&stream).expect("the stream's entries");
        assert_eq!(entries.len(), 1, "{got:?}");
        assert_eq!(entries[0].0, id);
        assert_eq!(
            entries[0].1.get("payload").map(String::as_str),
            Some(format!("p{round}").as_str())
        );
        let pending: Vec<Value> = redis.client().xpending(&stream, "g", ()).await.unwrap();
        assert_eq!(
            pending.first().and_then(Value::as_u64),
            Some(1),
            "the entry is pending for the dedicated reader: {pending:?}"
        );
    }
}

/// Waits until the master serving `key` lists a client blocked in a
/// command (`flags=b`), at most 10 s.
async fn wait_blocked(redis: &Redis, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // CLIENT LIST goes to the node owning the key's slot.
        let list: String = redis
            .client()
            .custom(
                fred::types::CustomCommand::new(
                    "CLIENT",
                    fred::types::ClusterHash::Custom(key_slot(key.as_bytes())),
                    false,
                ),
                vec!["LIST"],
            )
            .await
            .unwrap_or_else(|e| {
                panic!("the shared pool's CLIENT LIST failed while the dedicated connection blocks: {e}")
            });
        let blocked_here = list.lines().any(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields
                .iter()
                .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('b')))
                && fields
                    .iter()
                    .any(|f| *f == "cmd=blpop" || *f == "cmd=xreadgroup")
        });
        if blocked_here {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client blocked on {key}'s master:\n{list}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
