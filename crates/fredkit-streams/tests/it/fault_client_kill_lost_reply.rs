//! Scripts whose reply is lost: the server ran them, then the connection
//! was killed before the reply left, and fred sent them again on a new
//! connection, where they ran a second time. The delivery contract holds
//! through the double run: an entry is dead-lettered once, never twice, a
//! dead letter is replayed once, and nothing is lost.
//!
//! How the reply is lost, deterministically: the server is frozen
//! (SIGSTOP, waited for until the process is stopped); the command is sent;
//! once its bytes are in the server socket's receive queue
//! (`/proc/net/tcp`), a connection opened beforehand sends `CLIENT KILL TYPE
//! normal SKIPME yes`, and once those bytes are queued too the server
//! resumes. It handles the sockets in the order their data arrived: it runs
//! the script, then kills the connection whose reply was still waiting to be
//! written. Each test checks from the SLOWLOG (every command logged) that
//! the script did run twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{keys, wait_until, Job};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use fredkit_conn::{Redis, RedisConfig};
use fredkit_streams::{Message, Producer, StreamAdmin, Worker, WorkerConfig};
use fredkit_testkit::{with_lost_reply, RedisServer, Reply, ServerOptions};

/// A server that logs every command in its SLOWLOG.
fn server() -> RedisServer {
    RedisServer::start_with(
        ServerOptions::default()
            .arg("slowlog-log-slower-than", "0")
            .arg("slowlog-max-len", "100000"),
    )
    .unwrap()
}

/// How many times a script (`EVALSHA` or `EVAL`) ran with `arg` among its
/// arguments, from the SLOWLOG.
fn script_runs_with(server: &RedisServer, arg: &str) -> usize {
    let Reply::Array(Some(entries)) = server.command(&["SLOWLOG", "GET", "-1"]).unwrap() else {
        panic!("SLOWLOG GET");
    };
    entries
        .iter()
        .filter(|e| {
            let Reply::Array(Some(fields)) = e else {
                return false;
            };
            let Some(Reply::Array(Some(args))) = fields.get(3) else {
                return false;
            };
            let args: Vec<&str> = args.iter().filter_map(Reply::as_str).collect();
            matches!(args.first(), Some(&"EVALSHA") | Some(&"EVAL")) && args.contains(&arg)
        })
        .count()
}

/// A client whose commands wait 10 s before timing out: the freeze is far
/// shorter, so nothing but the kill ends the first attempt.
async fn client(server: &RedisServer) -> Redis {
    let config = RedisConfig::builder()
        .url(server.url())
        .command_timeout(Duration::from_secs(10))
        .pool_size(1)
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    redis.wait_connected().await.unwrap();
    redis
}

/// A handler fails on the only delivery allowed (`max_deliveries(1)`), so
/// the worker dead-letters the entry; that script's reply is lost and fred
/// runs it again. The entry is dead-lettered once (one dead letter, nothing
/// pending) and the worker counts it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_dead_letter_reply_dead_letters_the_entry_once() {
    let server = server();
    let redis = client(&server).await;
    let keys = keys("lost_dead_letter");
    let admin = StreamAdmin::new(&redis, keys.clone());
    // A long error makes the dead-letter script's command the only one of
    // 400 bytes or more.
    let error = format!("poison: {}", "x".repeat(400));
    // Cached, so the worker's EVALSHA runs it (no NOSCRIPT round).
    let _: String = redis
        .client()
        .script_load(include_str!("../../scripts/dead_letter.lua"))
        .await
        .unwrap();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = {
        let go = go.clone();
        let error = error.clone();
        Worker::start(
            &redis,
            keys.clone(),
            WorkerConfig::builder("g")
                .concurrency(1)
                .max_deliveries(1)
                .block(Duration::from_millis(100))
                .handler_timeout(Duration::from_secs(30))
                .min_idle(Duration::from_secs(60))
                .claim_interval(Duration::from_secs(60))
                .build()
                .unwrap(),
            move |m: Message<Job>| {
                let started_tx = started_tx.clone();
                let go = go.clone();
                let error = error.clone();
                async move {
                    started_tx.send(m.id.as_str().to_string()).unwrap();
                    go.acquire().await.unwrap().forget();
                    Err::<(), String>(error)
                }
            },
        )
        .await
        .unwrap()
    };
    let id = Producer::<Job>::new(&redis, keys.clone())
        .publish(&Job { n: 1 })
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(30), started_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered, id.as_str());

    with_lost_reply(&server, 400, async move { go.add_permits(1) })
        .await
        .unwrap();

    wait_until("the entry is no longer pending", || async {
        common::pending(&admin, "g").await == 0
    })
    .await;
    wait_until("the resent dead-letter script ran", || async {
        script_runs_with(&server, id.as_str()) >= 2
    })
    .await;
    // Both runs are over (the second one answered the worker).
    let metrics = worker.shutdown().await.metrics;
    assert_eq!(
        script_runs_with(&server, id.as_str()),
        2,
        "the dead-letter script ran once, then once more when fred resent it"
    );
    let dead = admin.dead_letters(100).await.unwrap();
    assert_eq!(dead.len(), 1, "dead-lettered once, not twice: {dead:?}");
    assert_eq!(
        dead[0].original_id.as_ref().map(|i| i.as_str()),
        Some(id.as_str())
    );
    assert_eq!(dead[0].error, error);
    assert_eq!(common::pending(&admin, "g").await, 0);
    assert_eq!(metrics.dead_lettered, 1, "counted once: {metrics:?}");
}

/// A claim pass whose reply is lost runs twice. The entries it found with
/// too many deliveries are dead-lettered once (the first run acknowledged
/// them, so the second cannot claim them again); the others are handed out
/// by the second run or stay pending for the claiming consumer (taken over
/// after `min_idle`): nothing is lost, nothing is dead-lettered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_claim_reply_dead_letters_once_and_loses_nothing() {
    let server = server();
    let redis = client(&server).await;
    let keys = keys("lost_claim");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let c = redis.client();
    let _: () = c
        .xgroup_create(keys.stream(), "g", "$", true)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..4 {
        let id: String = c
            .xadd(
                keys.stream(),
                false,
                None,
                "*",
                ("payload", format!("{{\"n\":{n}}}")),
            )
            .await
            .unwrap();
        ids.push(id);
    }
    // A crashed consumer read them all; two were delivered 5 times.
    let _: Value = c
        .xreadgroup("g", "crashed", Some(10), None, false, keys.stream(), ">")
        .await
        .unwrap();
    for id in &ids[..2] {
        let _: Value = c
            .custom(
                CustomCommand::new_static("XCLAIM", ClusterHash::FirstKey, false),
                vec![
                    keys.stream(),
                    "g",
                    "crashed",
                    "0",
                    id.as_str(),
                    "RETRYCOUNT",
                    "5",
                ],
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The worker's claim script, as the worker calls it: max deliveries 3,
    // min idle 1 ms (so the resent run can claim again whatever is idle).
    let source = include_str!("../../scripts/claim.lua");
    let reply: Value = {
        let c = c.clone();
        let keys = vec![keys.stream().to_string(), keys.dead_letter().to_string()];
        with_lost_reply(&server, 100, async move {
            c.eval::<Value, _, _, _>(
                source,
                keys,
                vec!["g", "claimer", "1", "0-0", "100", "3", "0", "0"],
            )
            .await
        })
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(
        script_runs_with(&server, "claimer"),
        2,
        "the claim script ran once, then once more when fred resent it"
    );
    let dead = admin.dead_letters(100).await.unwrap();
    let mut dead_ids: Vec<String> = dead
        .iter()
        .map(|d| d.original_id.as_ref().unwrap().as_str().to_string())
        .collect();
    dead_ids.sort();
    assert_eq!(
        dead_ids,
        ids[..2].to_vec(),
        "dead-lettered once each, not twice"
    );
    // The other two: pending for the claimer (whether the second run handed
    // them out or not), none lost.
    let pending: Vec<(String, String, u64, u64)> = c
        .xpending(keys.stream(), "g", ("-", "+", 10))
        .await
        .unwrap();
    let mut left: Vec<String> = pending.iter().map(|p| p.0.clone()).collect();
    left.sort();
    assert_eq!(left, ids[2..].to_vec(), "{pending:?}");
    assert!(pending.iter().all(|p| p.1 == "claimer"), "{pending:?}");
    // The second run's reply: [cursor, entries, deleted, dead, ...]; it
    // dead-lettered nothing more.
    let Value::Array(parts) = reply else {
        panic!("claim reply {reply:?}");
    };
    assert_eq!(
        parts[3].as_i64(),
        Some(0),
        "the resent run dead-lettered again: {parts:?}"
    );
}

/// A replay of 2 dead letters whose reply is lost runs twice and replays 4
/// (documented: up to twice the count), each dead letter once: every one of
/// the 6 is either still a dead letter or replayed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_replay_reply_replays_each_dead_letter_once() {
    let server = server();
    let redis = client(&server).await;
    let keys = keys("lost_replay");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let c = redis.client();
    let originals: Vec<String> = (0..6).map(|n| format!("{}-0", 1000 + n)).collect();
    for (n, original) in originals.iter().enumerate() {
        let _: String = c
            .xadd(
                keys.dead_letter(),
                false,
                None,
                "*",
                vec![
                    ("payload", format!("{{\"n\":{n}}}")),
                    ("dlq.id", original.clone()),
                    ("dlq.group", "g".to_string()),
                    ("dlq.error", "e".to_string()),
                ],
            )
            .await
            .unwrap();
    }
    // Cached, so the EVALSHA runs it (no NOSCRIPT round).
    let _: String = c
        .script_load(include_str!("../../scripts/replay.lua"))
        .await
        .unwrap();
    let report = {
        let admin = StreamAdmin::new(&redis, keys.clone());
        with_lost_reply(
            &server,
            80,
            async move { admin.replay_dead_letters(2).await },
        )
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(
        script_runs_with(&server, keys.dead_letter()),
        2,
        "the replay script ran once, then once more when fred resent it"
    );
    assert_eq!(report.replayed, 2, "the second run's own count: {report:?}");
    let replayed: Vec<(String, HashMap<String, String>)> =
        c.xrange(keys.stream(), "-", "+", None).await.unwrap();
    let mut replayed_from: Vec<String> = replayed
        .iter()
        .map(|(_, f)| f.get("dlq.replayed_from").unwrap().clone())
        .collect();
    replayed_from.sort();
    let mut left: Vec<String> = admin
        .dead_letters(100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.original_id.unwrap().as_str().to_string())
        .collect();
    left.sort();
    assert_eq!(
        replayed_from,
        originals[..4].to_vec(),
        "replayed once each, oldest first"
    );
    assert_eq!(left, originals[4..].to_vec(), "the rest still dead letters");
}
