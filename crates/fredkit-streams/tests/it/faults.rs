//! Fault tests on private servers: a Redis restart with AOF on while workers
//! run. Named `fault_*` so nextest runs them one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, fast, keys, pending, wait_until, Job};
use fred::interfaces::StreamsInterface;
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_streams::{Message, Producer, StreamAdmin, StreamId, StreamKeys, Worker};
use fredkit_testkit::{key_slot, ClusterOptions, RedisCluster, RedisServer, ServerOptions};

/// A private deployment with AOF on that can be restarted.
enum Deployment {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    fn url(&self) -> String {
        match self {
            Deployment::Standalone(s) => s.url(),
            Deployment::Cluster(c) => c.url(),
        }
    }

    /// SIGKILLs and restarts the server holding `key` (AOF on: `appendfsync
    /// everysec`, the Redis default, which the testkit keeps).
    fn restart_owner_of(mut self, key: &str) -> Self {
        match &mut self {
            Deployment::Standalone(s) => s.restart().unwrap(),
            Deployment::Cluster(c) => {
                let i = c.master_index_for_slot(key_slot(key.as_bytes())).unwrap();
                c.masters_mut()[i].restart().unwrap();
                c.wait_healthy(Duration::from_secs(30)).unwrap();
            }
        }
        self
    }
}

type Successes = Arc<Mutex<HashMap<StreamId, (u64, u32)>>>;

async fn start_worker(redis: &Redis, keys: &StreamKeys, successes: &Successes) -> Worker<Job> {
    let successes = Arc::clone(successes);
    Worker::start(
        redis,
        keys.clone(),
        fast("g").concurrency(16).count(16).build().unwrap(),
        move |m: Message<Job>| {
            let mut s = successes.lock().unwrap();
            s.entry(m.id.clone()).or_insert((m.payload.n, 0)).1 += 1;
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap()
}

async fn restart_while_working(deployment: Deployment) {
    const BEFORE: u64 = 300;
    const TOTAL: u64 = 1000;
    const WORKERS: usize = 2;
    let redis = connect(&deployment.url()).await;
    let keys = keys("aof_restart");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let successes: Successes = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(start_worker(&redis, &keys, &successes).await);
    }

    // Phase 1: handled and acknowledged before the restart.
    for r in producer
        .publish_batch(&(0..BEFORE).map(|n| Job { n }).collect::<Vec<_>>())
        .await
    {
        r.unwrap();
    }
    wait_until("phase 1 handled and acknowledged", || {
        let successes = Arc::clone(&successes);
        let admin = admin.clone();
        async move {
            successes.lock().unwrap().len() as u64 == BEFORE && pending(&admin, "g").await == 0
        }
    })
    .await;
    let acked_before: HashMap<StreamId, u64> = successes
        .lock()
        .unwrap()
        .iter()
        .map(|(id, (n, _))| (id.clone(), *n))
        .collect();

    // Phase 2: keep publishing (retrying failed publishes) while the server restarts.
    let published = Arc::new(AtomicU64::new(BEFORE));
    let publisher = {
        let producer = producer.clone();
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            for n in BEFORE..TOTAL {
                loop {
                    match producer.publish(&Job { n }).await {
                        Ok(_) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                published.fetch_add(1, Ordering::SeqCst);
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    wait_until("phase 2 under way", || {
        let published = Arc::clone(&published);
        async move { published.load(Ordering::SeqCst) >= BEFORE + 200 }
    })
    .await;
    let stream_key = keys.stream().to_string();
    let deployment = tokio::task::spawn_blocking(move || deployment.restart_owner_of(&stream_key))
        .await
        .unwrap();
    let published_at_restart = published.load(Ordering::SeqCst);
    let handled_at_restart = successes.lock().unwrap().len() as u64;
    publisher.await.unwrap();

    wait_until("every job handled, nothing pending", || {
        let successes = Arc::clone(&successes);
        let admin = admin.clone();
        async move {
            let mut jobs: Vec<u64> = successes
                .lock()
                .unwrap()
                .values()
                .map(|(n, _)| *n)
                .collect();
            jobs.sort_unstable();
            jobs.dedup();
            jobs.len() as u64 == TOTAL && matches!(admin.pending("g").await, Ok(p) if p.total == 0)
        }
    })
    .await;
    let mut reports = Vec::new();
    for w in workers {
        reports.push(w.shutdown().await);
    }

    let successes = successes.lock().unwrap().clone();
    for (id, n) in &acked_before {
        assert_eq!(
            successes[id].1, 1,
            "job {n} ({id}) was acknowledged before the restart and was handled again"
        );
    }
    let duplicates: u32 = successes.values().map(|(_, c)| c - 1).sum();
    // At least once: only entries handled around the restart, whose XACK did
    // not reach Redis before min_idle, may be handled again, and at most as
    // many as can be in flight at once.
    assert!(
        duplicates as usize <= WORKERS * 16,
        "{duplicates} duplicate handlings"
    );
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
    assert_eq!(admin.pending("g").await.unwrap().total, 0);
    // The restart happened mid-flow (otherwise the test proves nothing).
    assert!(
        published_at_restart < TOTAL && handled_at_restart < TOTAL,
        "restart came too late: {published_at_restart} published, {handled_at_restart} handled"
    );
    let read_errors: u64 = reports.iter().map(|r| r.metrics.read_errors).sum();
    println!(
        "published at restart: {published_at_restart}; handled at restart: {handled_at_restart}; \
         duplicates after restart: {duplicates}; read errors: {read_errors}"
    );
    drop(deployment);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_restart_with_aof_loses_nothing_and_redelivers_no_acknowledged_entry_standalone() {
    let server = RedisServer::start_with(ServerOptions::default().aof(true)).unwrap();
    restart_while_working(Deployment::Standalone(server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_restart_with_aof_loses_nothing_and_redelivers_no_acknowledged_entry_cluster() {
    let cluster = RedisCluster::start(
        ClusterOptions::default().server_options(ServerOptions::default().aof(true)),
    )
    .unwrap();
    restart_while_working(Deployment::Cluster(cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_of_every_connection_while_working_loses_nothing() {
    const TOTAL: u64 = 600;
    let server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    let keys = keys("client_kill");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let successes: Successes = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(start_worker(&redis, &keys, &successes).await);
    }
    let publisher = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for n in 0..TOTAL {
                while producer.publish(&Job { n }).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if n % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut kills = 0;
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(60)).await;
        // The workers' dedicated connections, the shared pool, everything.
        let killed = server
            .command(&["CLIENT", "KILL", "TYPE", "normal"])
            .unwrap();
        kills += killed.as_int().unwrap_or(0);
    }
    publisher.await.unwrap();
    assert!(kills > 0, "connections were killed while working");
    wait_until("every job handled, nothing pending", || {
        let successes = Arc::clone(&successes);
        let admin = admin.clone();
        async move {
            let mut jobs: Vec<u64> = successes
                .lock()
                .unwrap()
                .values()
                .map(|(n, _)| *n)
                .collect();
            jobs.sort_unstable();
            jobs.dedup();
            jobs.len() as u64 == TOTAL && matches!(admin.pending("g").await, Ok(p) if p.total == 0)
        }
    })
    .await;
    for w in workers {
        w.shutdown().await;
    }
    let successes = successes.lock().unwrap().clone();
    let duplicates: u32 = successes.values().map(|(_, c)| c - 1).sum();
    assert!(
        duplicates as usize <= 2 * 16,
        "{duplicates} duplicate handlings"
    );
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
    println!("connections killed: {kills}; duplicates: {duplicates}");
}

/// A server frozen with SIGSTOP while a worker acknowledges through its
/// background acknowledger: shutdown during the pause must not hang, every
/// handled entry it leaves pending is in the report's `unacked`, and a second
/// worker then finishes everything (nothing lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_paused_server_shutdown_is_bounded_reports_handled_but_unacked_entries_and_loses_nothing(
) {
    const TOTAL: u64 = 400;
    let server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    let keys = keys("paused");
    let admin = StreamAdmin::new(&redis, keys.clone());
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let successes: Successes = Arc::default();
    let record = Arc::clone(&successes);
    // Handlers that wait a little: batches run as tasks and their successes
    // go through the background acknowledger.
    let w1 = Worker::start(
        &redis,
        keys.clone(),
        fast("g")
            .concurrency(16)
            .count(16)
            .shutdown_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
        move |m: Message<Job>| {
            let record = Arc::clone(&record);
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut s = record.lock().unwrap();
                s.entry(m.id.clone()).or_insert((m.payload.n, 0)).1 += 1;
                Ok::<(), String>(())
            }
        },
    )
    .await
    .unwrap();
    for r in producer
        .publish_batch(&(0..TOTAL).map(|n| Job { n }).collect::<Vec<_>>())
        .await
    {
        r.unwrap();
    }
    wait_until("some jobs handled", || {
        let successes = Arc::clone(&successes);
        async move { successes.lock().unwrap().len() >= 50 }
    })
    .await;
    server.pause().unwrap();
    // Let acknowledgements pile up and fail against the frozen server.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = tokio::time::timeout(Duration::from_secs(30), w1.shutdown())
        .await
        .expect("shutdown hung while the server was paused");
    server.resume().unwrap();
    // Entries pending now that a handler had finished must be the report's
    // `unacked`. (A read that timed out during the pause may also have
    // delivered entries to nobody once the server woke up: those were never
    // handled and come back through XAUTOCLAIM below.)
    let detail: Value = redis
        .client()
        .xpending(keys.stream(), "g", ("-", "+", 10_000))
        .await
        .unwrap();
    let handled_ids: HashSet<StreamId> = successes.lock().unwrap().keys().cloned().collect();
    let mut handled_but_pending = 0;
    for item in detail.into_array() {
        let id = item.into_array().into_iter().next().unwrap();
        let id = StreamId::new(id.as_string().unwrap());
        if handled_ids.contains(&id) {
            handled_but_pending += 1;
        }
    }
    assert!(
        handled_but_pending <= report.unacked,
        "{handled_but_pending} handled entries pending after the shutdown, but the report \
         accounts for only {} unacknowledged: {report:?}",
        report.unacked,
    );

    let record = Arc::clone(&successes);
    let w2 = Worker::start(
        &redis,
        keys.clone(),
        fast("g").build().unwrap(),
        move |m: Message<Job>| {
            let mut s = record.lock().unwrap();
            s.entry(m.id.clone()).or_insert((m.payload.n, 0)).1 += 1;
            async { Ok::<(), String>(()) }
        },
    )
    .await
    .unwrap();
    wait_until("every job handled, nothing pending", || {
        let successes = Arc::clone(&successes);
        let admin = admin.clone();
        async move {
            successes.lock().unwrap().len() as u64 == TOTAL
                && matches!(admin.pending("g").await, Ok(p) if p.total == 0)
        }
    })
    .await;
    w2.shutdown().await;
    assert_eq!(admin.dead_letter_count().await.unwrap(), 0);
    println!("first worker's report: {report:?}");
}

/// Acknowledgements Redis refuses for good (here: an ACL without `XACK`)
/// leave the entries pending, and the shutdown report counts every one of
/// them, including those the background acknowledger gave up on before the
/// shutdown began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_refused_acknowledgements_are_all_counted_as_unacked_in_the_report() {
    const N: u64 = 40;
    let server = RedisServer::start().unwrap();
    server
        .command(&[
            "ACL", "SETUSER", "noack", "on", ">pw", "~*", "&*", "+@all", "-xack",
        ])
        .unwrap();
    let admin_redis = connect(&server.url()).await;
    let url = server.url().replacen("redis://", "redis://noack:pw@", 1);
    let redis = connect(&url).await;
    let keys = keys("refused_ack");
    let admin = StreamAdmin::new(&admin_redis, keys.clone());
    let handled = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&handled);
    // Handlers that wait: their batches run as tasks and acknowledge through
    // the background acknowledger.
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g").concurrency(8).count(8).build().unwrap(),
        move |_m: Message<Job>| {
            let h = Arc::clone(&h);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        },
    )
    .await
    .unwrap();
    let producer = Producer::<Job>::new(&admin_redis, keys.clone());
    for r in producer
        .publish_batch(&(0..N).map(|n| Job { n }).collect::<Vec<_>>())
        .await
    {
        r.unwrap();
    }
    wait_until("every job handled and its XACK refused", || {
        let handled = Arc::clone(&handled);
        let m = worker.metrics();
        async move {
            handled.load(Ordering::SeqCst) == N
                && m.ack_errors > 0
                && m.ack_calls == m.ack_errors
                && m.handled == N
        }
    })
    .await;
    let report = worker.shutdown().await;
    assert_eq!(report.metrics.acked, 0);
    assert_eq!(pending(&admin, "g").await, N, "nothing was acknowledged");
    assert_eq!(
        report.unacked, N,
        "every handled entry left pending is in the report: {report:?}"
    );
    assert!(!report.consumer_removed);
}

/// With Redis gone for good, a shutdown gives up on its acknowledgements at
/// its deadline: it returns within `shutdown_timeout` plus the read in
/// progress and a couple of command timeouts, and reports the entries it
/// could not acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_gone_shutdown_gives_up_on_acks_at_its_deadline() {
    let mut server = RedisServer::start().unwrap();
    let redis = connect(&server.url()).await;
    let keys = keys("gone");
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(AtomicU64::new(0));
    let (r, s) = (Arc::clone(&release), Arc::clone(&started));
    let shutdown_timeout = Duration::from_secs(2);
    let worker = Worker::start(
        &redis,
        keys.clone(),
        fast("g")
            .handler_timeout(Duration::from_secs(20))
            .min_idle(Duration::from_secs(30))
            .shutdown_timeout(shutdown_timeout)
            .build()
            .unwrap(),
        move |_m: Message<Job>| {
            let (r, s) = (Arc::clone(&r), Arc::clone(&s));
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                r.notified().await;
                Ok::<(), String>(())
            }
        },
    )
    .await
    .unwrap();
    for n in 0..4 {
        producer.publish(&Job { n }).await.unwrap();
    }
    wait_until("four handlers waiting", || {
        let started = Arc::clone(&started);
        async move { started.load(Ordering::SeqCst) == 4 }
    })
    .await;
    // Redis dies; the handlers then succeed, but nothing can be acknowledged.
    server.kill().unwrap();
    release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = tokio::time::Instant::now();
    let report = worker.shutdown().await;
    let took = began.elapsed();
    assert_eq!(report.metrics.handled, 4);
    assert_eq!(report.unacked, 4, "{report:?}");
    let command_timeout = redis.config().command_timeout();
    let bound = shutdown_timeout + Duration::from_millis(100) + command_timeout * 3;
    assert!(
        took <= bound + Duration::from_secs(1),
        "shutdown took {took:?}, past its deadline ({bound:?} + 1 s slack)"
    );
}

/// Sentinel: the master goes silent (SIGSTOP: no RST, like a dead host) and
/// the sentinels promote the replica. The worker's blocking read times out on
/// the silent connection; the worker must reconnect it (and so ask the
/// sentinels again) instead of waiting for the kernel, and everything
/// published after the failover is handled. Without the reconnect its reads
/// time out until the master comes back, and nothing new is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_silent_sentinel_master_worker_follows_the_failover_and_loses_nothing() {
    const BEFORE: u64 = 50;
    const TOTAL: u64 = 100;
    let group = fredkit_testkit::SentinelGroup::start().unwrap();
    let redis = connect(&group.url()).await;
    let keys = keys("silent_master");
    let producer = Producer::<Job>::new(&redis, keys.clone());
    let successes: Successes = Arc::default();
    let worker = start_worker(&redis, &keys, &successes).await;
    let handled = |successes: &Successes| -> HashSet<u64> {
        successes
            .lock()
            .unwrap()
            .values()
            .map(|(n, _)| *n)
            .collect()
    };

    for n in 0..BEFORE {
        producer.publish(&Job { n }).await.unwrap();
    }
    wait_until("the first entries handled", || {
        let done = handled(&successes).len() as u64 == BEFORE;
        async move { done }
    })
    .await;

    let old = group.master_addr().unwrap();
    let paused = group.server_by_addr(&old).unwrap();
    paused.pause().unwrap();
    // Publish the rest, each retried until the new master takes it (a retry
    // after a lost reply may append a duplicate: at-least-once).
    for n in BEFORE..TOTAL {
        let deadline = tokio::time::Instant::now() + common::DEADLINE;
        while let Err(e) = producer.publish(&Job { n }).await {
            assert!(e.is_unavailable(), "unexpected publish error: {e}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "publish still failing: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_ne!(group.master_addr().unwrap(), old, "no failover happened");
    wait_until("every entry published after the failover handled", || {
        let done = handled(&successes).len() as u64 == TOTAL;
        async move { done }
    })
    .await;
    let all = handled(&successes);
    assert_eq!(all, (0..TOTAL).collect::<HashSet<u64>>());
    paused.resume().unwrap();
    worker.shutdown().await;
}

/// Start-up never needs Redis: `Worker::start` against a server that is
/// down returns (it used to fail) — before the server is started, within
/// a bound far below the (here 30 s) connect timeout — and counts the
/// failed group creation; once the server is up the worker creates the
/// group in the background and handles every entry published after, each
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_worker_started_while_redis_is_down_works_after_restart() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill().unwrap();
    let config = fredkit_conn::RedisConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    let keys = keys("down_at_start");
    let seen = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));
    let s = Arc::clone(&seen);
    let started = std::time::Instant::now();
    let worker = tokio::time::timeout(
        Duration::from_secs(60),
        Worker::start(
            &redis,
            keys.clone(),
            fast("g").build().unwrap(),
            move |m: Message<Job>| {
                let s = Arc::clone(&s);
                async move {
                    *s.lock().unwrap().entry(m.payload.n).or_default() += 1;
                    Ok::<(), String>(())
                }
            },
        ),
    )
    .await
    .expect("Worker::start hung while Redis was down")
    .expect("Worker::start failed while Redis was down");
    let took = started.elapsed();
    // Ordering: it returned while nothing listened on the port.
    assert!(!server.is_running());
    // Generous for a loaded box, far below the 30 s connect timeout.
    assert!(
        took < Duration::from_secs(10),
        "Worker::start took {took:?} while Redis was down"
    );
    assert!(worker.is_running());
    assert!(worker.metrics().group_create_failures >= 1);

    tokio::task::block_in_place(|| server.restart()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), redis.wait_connected())
        .await
        .expect("the shared connection did not come up")
        .unwrap();
    let producer = Producer::new(&redis, keys.clone());
    const N: u64 = 100;
    for n in 0..N {
        producer.publish(&Job { n }).await.unwrap();
    }
    wait_until("every entry handled", || {
        let seen = Arc::clone(&seen);
        async move { seen.lock().unwrap().len() as u64 == N }
    })
    .await;
    let report = worker.shutdown().await;
    {
        let seen = seen.lock().unwrap();
        assert!(
            (0..N).all(|n| seen.get(&n) == Some(&1)),
            "lost or duplicated entries: {seen:?}"
        );
    }
    assert_eq!(report.metrics.acked, N, "{report:?}");
    let admin = StreamAdmin::new(&redis, keys);
    assert_eq!(pending(&admin, "g").await, 0);
}
