//! fredkit-lock claims proven against real faults (issue #15): Redlock's
//! concurrency and validity check on 5 independent servers with paused
//! nodes and a stalled client, a holder PROCESS SIGKILLed (no drop runs),
//! replica confirmation on a cluster with replicas, fencing across a cluster
//! master's data loss, and replies lost in flight (fred resends the script).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::{ClientInterface, ClientLike, KeysInterface};
use fredkit_conn::{Redis, RedisConfig};
use fredkit_core::ErrorKind;
use fredkit_lock::{FencedStore, FencedWrite, LockManager, LockOptions, Redlock, RedlockOptions};
use fredkit_testkit::{
    key_slot, shared_url, unique_prefix, ClusterOptions, IndependentServers, RedisCluster,
    RedisServer, Topology,
};
use rstest::rstest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Bounds every wait so a broken build fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// Connects with a command timeout of `timeout` (appended to the URL).
async fn connect_with(url: &str, timeout: &str) -> Redis {
    let sep = if url.contains('?') { '&' } else { '?' };
    let redis = Redis::connect(
        RedisConfig::from_url(&format!("{url}{sep}command_timeout={timeout}")).unwrap(),
    )
    .await
    .unwrap();
    redis.wait_connected().await.unwrap();
    redis
}

async fn connect(url: &str) -> Redis {
    fredkit_testkit::connect(url).await.unwrap()
}

/// A prefix KeySpace accepts (testkit's ends with ':').
fn prefix(test: &str) -> String {
    unique_prefix(test).trim_end_matches(':').to_string()
}

fn opts(ttl_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::builder()
        .ttl(Duration::from_millis(ttl_ms))
        .wait(Duration::from_millis(wait_ms))
        .build()
        .unwrap()
}

async fn start_independent(n: usize) -> IndependentServers {
    tokio::task::spawn_blocking(move || IndependentServers::start(n).unwrap())
        .await
        .unwrap()
}

/// How many scripts (`EVAL` + `EVALSHA`) `server` has run.
fn script_calls(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "commandstats"]).unwrap();
    let text = String::from_utf8_lossy(info.as_bytes().unwrap()).to_string();
    text.lines()
        .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.command(&["EXISTS", key]).unwrap().as_int().unwrap() == 1
}

// ---------------------------------------------------------------- Redlock

/// Redlock asks every node at once: with 2 of 5 nodes frozen (SIGSTOP) a
/// round costs one node timeout, not the sum of the frozen nodes' timeouts
/// (a sequential round takes >= 2 x node_timeout here). The validity is
/// exactly `ttl - elapsed - drift` with the round's elapsed time, which is
/// at least the node timeout (the frozen nodes never answered) and at most
/// what the caller measured around `acquire`. The frozen nodes' `SET`s land
/// when they resume and the release queued behind them deletes them: the
/// lock is then free on all 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redlock_paused_nodes_cost_one_node_timeout_not_their_sum() {
    let servers = start_independent(5).await;
    let mut nodes = Vec::new();
    let mut others = Vec::new();
    for url in servers.urls() {
        // fred's own command timeout must not end a frozen node's SET first.
        nodes.push(connect_with(&url, "30s").await);
        others.push(connect_with(&url, "30s").await);
    }
    let node_timeout = Duration::from_secs(3);
    let o = RedlockOptions::builder()
        .ttl(Duration::from_secs(30))
        .node_timeout(node_timeout)
        .retries(0)
        .build()
        .unwrap();
    let p = prefix("redlock_concurrent");
    let redlock = Redlock::new(nodes, &p, o.clone()).unwrap();
    let rival = Redlock::new(
        others,
        &p,
        RedlockOptions::builder()
            .retries(0)
            .node_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
    .unwrap();
    // Warm up every connection (and the release script) while all answer.
    redlock
        .acquire("warm")
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();

    servers.servers()[0].pause().unwrap();
    servers.servers()[1].pause().unwrap();
    let started = Instant::now();
    let r = redlock.acquire("job").await;
    let elapsed = started.elapsed();
    let held_elsewhere = rival.acquire("job").await;
    servers.servers()[0].resume().unwrap();
    servers.servers()[1].resume().unwrap();
    let g = r.unwrap().expect("3 of 5 answering is a quorum");
    // Concurrent: ~1 x node_timeout. Sequential: >= 2 x node_timeout (6 s).
    assert!(
        elapsed < node_timeout * 3 / 2 + Duration::from_millis(500),
        "a round with 2 frozen nodes took {elapsed:?}: the nodes were not asked concurrently (node timeout {node_timeout:?})"
    );
    // validity = ttl - round elapsed - drift, round elapsed in [node_timeout, elapsed].
    let ceiling = o.ttl() - node_timeout - o.drift();
    let floor = o.ttl() - elapsed - o.drift();
    assert!(
        g.validity() <= ceiling && g.validity() >= floor,
        "validity {:?} must be ttl - elapsed - drift, within [{floor:?}, {ceiling:?}]",
        g.validity()
    );
    assert!(g.remaining() <= g.validity());
    assert!(
        matches!(held_elsewhere, Ok(None)),
        "the 3 answering nodes hold it: {held_elsewhere:?}"
    );
    assert_eq!(g.release().await.unwrap(), 5, "all 5 answer again");
    // The resumed nodes ran the late SET and the release behind it.
    let key = format!("{p}:{{job}}:lock");
    for s in servers.servers() {
        assert!(!exists(s, &key), "{} still holds the lock", s.addr());
    }
    rival
        .acquire("job")
        .await
        .unwrap()
        .expect("free on all 5")
        .release()
        .await
        .unwrap();
}

/// A round whose acquisition took the TTL less the drift allowance is
/// refused, although every node said yes and their keys still live, and the
/// keys are released on every node. The client is stalled (a GC pause, a
/// descheduled VM) between sending the `SET`s and reading the replies:
/// `ttl - drift <= elapsed < ttl`, so only the drift allowance refuses it.
/// (The builder keeps `node_timeout <= ttl / 10`, so slow nodes alone can
/// never make a concurrent round exceed its validity; a stalled client can.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redlock_round_stalled_past_its_validity_is_refused_and_released_on_all_nodes() {
    let servers = start_independent(5).await;
    let mut nodes = Vec::new();
    for url in servers.urls() {
        nodes.push(connect_with(&url, "30s").await);
    }
    let ttl = Duration::from_secs(10);
    let o = RedlockOptions::builder()
        .ttl(ttl)
        .node_timeout(Duration::from_millis(200))
        .retries(0)
        .build()
        .unwrap();
    assert_eq!(o.drift(), Duration::from_millis(102));
    let p = prefix("redlock_validity");
    let redlock = Redlock::new(nodes, &p, o.clone()).unwrap();
    redlock
        .acquire("warm")
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    let before: Vec<u64> = servers.servers().iter().map(script_calls).collect();

    let mut fut = Box::pin(redlock.acquire("job"));
    // The first poll starts the round and sends the SETs (fred's tasks run
    // on the runtime's workers, the replies arrive meanwhile)...
    assert!(futures::poll!(&mut fut).is_pending());
    // ...and the caller stalls for half the drift allowance short of the TTL.
    std::thread::sleep(ttl - o.drift() / 2);
    let r = tokio::time::timeout(DEADLINE, fut).await.unwrap();
    assert!(
        matches!(r, Ok(None)),
        "a round slower than ttl - drift must be refused, got {r:?}"
    );
    let key = format!("{p}:{{job}}:lock");
    for (s, before) in servers.servers().iter().zip(before) {
        assert!(
            script_calls(s) > before,
            "the refused round was not released on {}",
            s.addr()
        );
        assert!(!exists(s, &key), "{} still holds the lock", s.addr());
    }
}

// ------------------------------------------------------- SIGKILLed holder

const CHILD_URL: &str = "FREDKIT_LOCK_TEST_CHILD_URL";
const CHILD_PREFIX: &str = "FREDKIT_LOCK_TEST_CHILD_PREFIX";
const CHILD_TTL_MS: &str = "FREDKIT_LOCK_TEST_CHILD_TTL_MS";

/// Not a test: the holder process of
/// `fault_holder_process_sigkilled_frees_the_lock_at_its_ttl_not_before`,
/// which runs this test binary again with `--exact --ignored`. It takes the
/// lock, prints `GRANTED <fencing token>` and holds it until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a fault test; does nothing on its own"]
async fn child_process_holding_a_lock_until_killed() {
    let (Ok(url), Ok(p), Ok(ttl)) = (
        std::env::var(CHILD_URL),
        std::env::var(CHILD_PREFIX),
        std::env::var(CHILD_TTL_MS),
    ) else {
        return;
    };
    let m = LockManager::new(&connect(&url).await, &p).unwrap();
    let g = m
        .acquire("job", &opts(ttl.parse().unwrap(), 0))
        .await
        .unwrap()
        .expect("the lock is free when the child starts");
    println!("GRANTED {}", g.fencing_token());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    // Only SIGKILL ends this: no drop, no release.
    std::future::pending::<()>().await;
    drop(g);
}

/// A holder whose process is SIGKILLed runs no destructor and sends no
/// release: its lock stays until its TTL runs out (a try right after the
/// kill is refused), and then another acquirer gets it, with a greater
/// fencing token, without waiting much past the TTL.
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_holder_process_sigkilled_frees_the_lock_at_its_ttl_not_before(
    #[case] topology: Topology,
) {
    let url = shared_url(topology).unwrap();
    let p = prefix("lock_sigkill");
    let ttl = Duration::from_secs(4);
    let other = LockManager::new(&connect(&url).await, &p).unwrap();
    let spawned = Instant::now();
    let child_test = fredkit_testkit::test_name!(child_process_holding_a_lock_until_killed);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &child_test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, &url)
        .env(CHILD_PREFIX, &p)
        .env(CHILD_TTL_MS, ttl.as_millis().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let child_token: u64 = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints `test <name> ... ` without a newline before it.
            if let Some((_, t)) = line.split_once("GRANTED ") {
                return t.trim().parse().unwrap();
            }
        }
        panic!("the child exited without a grant");
    })
    .await
    .expect("the child never reported its grant");
    let reported = Instant::now();
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");

    assert!(
        other
            .acquire("job", &opts(5_000, 0))
            .await
            .unwrap()
            .is_none(),
        "the killed holder's lock must last until its TTL"
    );
    let next = other
        .acquire(
            "job",
            &opts(5_000, (ttl + Duration::from_secs(5)).as_millis() as u64),
        )
        .await
        .unwrap()
        .expect("the lock frees once the killed holder's TTL runs out");
    let got = Instant::now();
    // The grant happened after the spawn, so it expired at least a TTL later.
    assert!(
        got.duration_since(spawned) >= ttl,
        "granted {:?} after the child started, before its {ttl:?} TTL ran out",
        got.duration_since(spawned)
    );
    assert!(
        got.duration_since(reported) < ttl + Duration::from_secs(3),
        "the waiter took {:?} after the grant was reported (TTL {ttl:?})",
        got.duration_since(reported)
    );
    assert!(next.fencing_token() > child_token);
    assert!(next.release().await.unwrap());
}

// ------------------------------------------------------------- clusters

/// A resource whose lock lives on master `index` of `cluster`.
fn resource_on(cluster: &RedisCluster, index: usize, tag: &str) -> String {
    (0..10_000)
        .map(|i| format!("{tag}{i}"))
        .find(|r| {
            cluster
                .master_index_for_slot(key_slot(r.as_bytes()))
                .unwrap()
                == index
        })
        .unwrap()
}

async fn start_cluster(opts: ClusterOptions) -> RedisCluster {
    tokio::task::spawn_blocking(move || RedisCluster::start(opts).unwrap())
        .await
        .unwrap()
}

/// Replica confirmation on a cluster with a replica per master: `WAIT` must
/// go to the master that ran the grant (the lock key's slot), on the same
/// connection. With one master's replica frozen (SIGSTOP), a lock on that
/// master is refused with a Timeout and undone, while locks on the other
/// masters are confirmed. `WAIT` sent to any other master would count that
/// master's healthy replica (this connection wrote nothing there) and pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_replica_confirmation_waits_on_the_lock_keys_master() {
    let cluster = start_cluster(
        ClusterOptions::default()
            .replicas_per_master(1)
            // A frozen replica must not be failed over or reconfigured.
            .node_timeout(Duration::from_secs(15)),
    )
    .await;
    let redis = connect(&cluster.url()).await;
    let m = LockManager::new(&redis, prefix("lock_cluster_wait")).unwrap();
    let confirmed = |t: Duration| {
        LockOptions::builder()
            .ttl(Duration::from_secs(10))
            .replicas(1, t)
            .build()
            .unwrap()
    };
    let resources: Vec<String> = (0..3).map(|i| resource_on(&cluster, i, "w")).collect();
    for r in &resources {
        m.acquire(r, &confirmed(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{r}: all replicas up, confirmed"))
            .release()
            .await
            .unwrap();
    }
    for (i, r) in resources.iter().enumerate() {
        let replica = &cluster.replicas_of(i)[0];
        replica.pause().unwrap();
        let refused = m.acquire(r, &confirmed(Duration::from_millis(300))).await;
        let mut others = Vec::new();
        for (j, other) in resources.iter().enumerate() {
            if j != i {
                others.push((
                    other,
                    m.acquire(other, &confirmed(Duration::from_secs(5))).await,
                ));
            }
        }
        replica.resume().unwrap();
        let err = refused.expect_err("master's replica frozen: must not be confirmed");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{r}: {err}");
        assert!(
            err.to_string().contains("only 0 of 1 replicas"),
            "{r}: {err}"
        );
        // The refused grant was undone: free at once.
        m.acquire(r, &opts(1_000, 0))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{r}: the refused grant was not undone"))
            .release()
            .await
            .unwrap();
        for (other, got) in others {
            let g = got
                .unwrap()
                .unwrap_or_else(|| panic!("{other}: its master's replica is up, confirmed"));
            assert!(g.release().await.unwrap());
        }
    }
}

/// A cluster master restarted without persistence lost its keys, fencing
/// counters included; the next tokens for its resources are still greater
/// than every earlier one, so the storage (elsewhere) accepts the new holder
/// and would refuse the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_fencing_tokens_keep_increasing_after_a_master_lost_its_data() {
    let mut cluster = start_cluster(ClusterOptions::default()).await;
    let url = cluster.url();
    let p = prefix("lock_cluster_fence_loss");
    let store = FencedStore::new(
        &connect(&shared_url(Topology::Standalone).unwrap()).await,
        &p,
    )
    .unwrap();
    let r = resource_on(&cluster, 0, "doc");
    let fence = format!("{p}:{{{r}}}:fence");
    let mut tokens = Vec::new();
    {
        let m = LockManager::new(&connect(&url).await, &p).unwrap();
        for _ in 0..3 {
            let g = m.acquire(&r, &opts(5_000, 0)).await.unwrap().unwrap();
            tokens.push(g.fencing_token());
            assert_eq!(
                store.write(&r, "v", g.fencing_token(), None).await.unwrap(),
                FencedWrite::Written
            );
            assert!(g.release().await.unwrap());
        }
    }
    assert!(exists(&cluster.masters()[0], &fence));
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.masters_mut()[0].restart().unwrap();
        cluster.wait_healthy(DEADLINE).unwrap();
        cluster
    })
    .await
    .unwrap();
    assert!(
        !exists(&cluster.masters()[0], &fence),
        "the restart must have lost the fencing counter"
    );
    let m = LockManager::new(&connect(&url).await, &p).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut after = 0;
    while after < 2 {
        match m.acquire(&r, &opts(5_000, 0)).await {
            Ok(Some(g)) => {
                tokens.push(g.fencing_token());
                assert_eq!(
                    store
                        .write(&r, "new", g.fencing_token(), None)
                        .await
                        .unwrap(),
                    FencedWrite::Written,
                    "a holder after the data loss is not fenced off: {tokens:?}"
                );
                assert!(g.release().await.unwrap());
                after += 1;
            }
            other => {
                assert!(Instant::now() < deadline, "never recovered: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase across the data loss: {tokens:?}"
    );
    // The old holder's token is refused by the storage.
    assert!(matches!(
        store.write(&r, "stale", tokens[2], None).await.unwrap(),
        FencedWrite::Rejected { .. }
    ));
}

// ------------------------------------------------- replies lost in flight

/// A TCP proxy in front of one server that can lose one reply: once armed
/// with a marker, the next client command containing it is forwarded (the
/// server runs it), then the server's next reply on that connection is
/// dropped and both sides are closed, as when a connection dies just after
/// the server ran the command. fred reconnects and sends it again.
struct CutProxy {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    lost: Arc<Mutex<Vec<u8>>>,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    seen: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream: std::net::SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let marker: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let seen = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let (m, s, c, a, l) = (
            marker.clone(),
            seen.clone(),
            cuts.clone(),
            armed.clone(),
            lost.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (m, s, c, armed, l) = (m.clone(), s.clone(), c.clone(), a.clone(), l.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let cut_here = AtomicBool::new(false);
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let hit = m.lock().unwrap().as_ref().is_some_and(|mk| {
                                buf[..n].windows(mk.len()).any(|w| w == mk.as_slice())
                            });
                            if hit {
                                s.fetch_add(1, Ordering::SeqCst);
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            if hit && armed.swap(false, Ordering::SeqCst) {
                                cut_here.store(true, Ordering::SeqCst);
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            // A liveness PING answered meanwhile is not the
                            // reply to lose: pass it on.
                            if cut_here.load(Ordering::SeqCst) && &buf[..n] != b"+PONG\r\n" {
                                *l.lock().unwrap() = buf[..n].to_vec();
                                c.fetch_add(1, Ordering::SeqCst);
                                return; // reply lost; both sockets close
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        CutProxy {
            addr,
            marker,
            seen,
            cuts,
            armed,
            lost,
            task,
        }
    }

    /// Loses the reply to the next command containing `marker`; counts the
    /// commands containing it from now on.
    fn arm(&self, marker: &str) {
        *self.marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
        self.seen.store(0, Ordering::SeqCst);
        self.cuts.store(0, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// (commands containing the marker, replies lost) since `arm`.
    fn counts(&self) -> (usize, usize) {
        (
            self.seen.load(Ordering::SeqCst),
            self.cuts.load(Ordering::SeqCst),
        )
    }

    /// The bytes of the last reply lost.
    fn lost_reply(&self) -> String {
        String::from_utf8_lossy(&self.lost.lock().unwrap()).to_string()
    }

    fn url(&self) -> String {
        format!("redis://{}?command_timeout=5s", self.addr)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// fred sends a command again when its connection closed with the command
/// in flight; when the server had already run it (the reply was lost), the
/// script runs twice. For every lock script the second run must keep the
/// invariant: the acquire is the same grant (one fencing token, the lock
/// held by the caller's token), the extend holds, the release leaves the
/// lock free, the permit is one permit (no double permit), the fenced write
/// is written (not refused as stale by its own first run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_connection_cut_after_the_server_ran_a_script_resend_keeps_every_invariant() {
    let server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let proxy = CutProxy::start(server.addr().parse().unwrap()).await;
    let redis = connect(&proxy.url()).await;
    let direct = connect(&server.url()).await;
    let p = prefix("lock_lost_reply");
    let m = LockManager::new(&redis, &p).unwrap();
    let rival = LockManager::new(&direct, &p).unwrap();
    let store = FencedStore::new(&redis, &p).unwrap();
    let get = |key: String| {
        let direct = direct.clone();
        async move { direct.client().get::<Option<String>, _>(key).await.unwrap() }
    };
    // Load every script first: a lost NOSCRIPT reply would not be a replay.
    let g = m.acquire("warm", &opts(5_000, 0)).await.unwrap().unwrap();
    g.extend(Duration::from_secs(5)).await.unwrap();
    g.release().await.unwrap();
    let sem = m.semaphore("warm", 1).unwrap();
    sem.acquire(&opts(5_000, 0))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    store.write("warm", "w", 1, None).await.unwrap();

    // The server ran the script twice: once for the lost reply, once resent.
    let replayed = |what: &str, before: u64| {
        let (seen, cuts) = proxy.counts();
        assert_eq!(cuts, 1, "{what}: the reply was not lost");
        assert_eq!(seen, 2, "{what}: fred did not send it again");
        assert_eq!(script_calls(&server) - before, 2, "{what}: not run twice");
    };

    // Acquire: the replay is the same grant.
    let before = script_calls(&server);
    proxy.arm("{acq}");
    let g = m
        .acquire("acq", &opts(30_000, 0))
        .await
        .unwrap()
        .expect("the replayed grant is the caller's, not 'busy'");
    replayed("acquire", before);
    let lost = proxy.lost_reply();
    assert!(
        lost.contains(&format!(":{}\r\n", g.fencing_token())),
        "the lost reply {lost:?} must be the same grant as the replay's ({})",
        g.fencing_token()
    );
    let lease = g.lease();
    assert_eq!(
        get(format!("{p}:{{acq}}:lock")).await.as_deref(),
        Some(lease.token.as_str()),
        "held by the caller's token"
    );
    assert_eq!(
        get(format!("{p}:{{acq}}:fence")).await,
        Some(g.fencing_token().to_string()),
        "one grant: the counter is the caller's token"
    );
    assert!(rival
        .acquire("acq", &opts(1_000, 0))
        .await
        .unwrap()
        .is_none());

    // Extend: still held, with the new TTL.
    let before = script_calls(&server);
    proxy.arm("{acq}");
    assert!(g.extend(Duration::from_secs(60)).await.unwrap());
    replayed("extend", before);
    let pttl: i64 = direct
        .client()
        .pttl(format!("{p}:{{acq}}:lock"))
        .await
        .unwrap();
    assert!(pttl > 30_000, "extended to 60 s: {pttl}");

    // Release: the lock is free (the replay itself reports `false`).
    let before = script_calls(&server);
    proxy.arm("{acq}");
    let released = g.release().await;
    replayed("release", before);
    assert!(released.is_ok(), "{released:?}");
    assert_eq!(
        get(format!("{p}:{{acq}}:lock")).await,
        None,
        "no lost release"
    );
    rival
        .acquire("acq", &opts(1_000, 0))
        .await
        .unwrap()
        .expect("free after the release")
        .release()
        .await
        .unwrap();

    // Semaphore acquire (1 permit): the replay is that permit, not a second.
    let sem = m.semaphore("sema", 1).unwrap();
    let before = script_calls(&server);
    proxy.arm("{sema}");
    let permit = sem
        .acquire(&opts(30_000, 0))
        .await
        .unwrap()
        .expect("the replayed permit is the caller's");
    replayed("semaphore acquire", before);
    assert_eq!(sem.held().await.unwrap(), 1, "no double permit");
    assert!(rival
        .semaphore("sema", 1)
        .unwrap()
        .acquire(&opts(1_000, 0))
        .await
        .unwrap()
        .is_none());
    let before = script_calls(&server);
    proxy.arm("{sema}");
    let released = permit.release().await;
    replayed("semaphore release", before);
    assert!(released.is_ok(), "{released:?}");
    assert_eq!(sem.held().await.unwrap(), 0, "no lost permit release");

    // Fenced write: written once, not refused by its own first run.
    let before = script_calls(&server);
    proxy.arm("{fv}");
    let w = store.write("fv", "x", 42, None).await.unwrap();
    replayed("fenced write", before);
    assert_eq!(w, FencedWrite::Written);
    assert_eq!(get(format!("{p}:{{fv}}:value")).await.as_deref(), Some("x"));
    assert_eq!(get(format!("{p}:{{fv}}:seen")).await.as_deref(), Some("42"));
    assert!(matches!(
        store.write("fv", "old", 41, None).await.unwrap(),
        FencedWrite::Rejected { newest: 42 }
    ));
}

/// A cluster master SIGKILLed after grants its replica never received (the
/// replication link broken while the replica was stopped): the promoted
/// replica's fencing counter is behind, and its next tokens must still be
/// greater than every token granted before, lost ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_master_kill_with_lost_grants_fencing_tokens_never_go_backwards() {
    let mut cluster = start_cluster(ClusterOptions::default().replicas_per_master(1)).await;
    let redis = connect_with(&cluster.url(), "1s").await;
    let p = prefix("lock_cluster_failover");
    let m = LockManager::new(&redis, &p).unwrap();
    let r = resource_on(&cluster, 0, "f");
    let fence = format!("{p}:{{{r}}}:fence");
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let g = m.acquire(&r, &opts(5_000, 0)).await.unwrap().unwrap();
        tokens.push(g.fencing_token());
        assert!(g.release().await.unwrap());
    }
    // Let the replica catch up, then cut it off and grant more on the master.
    let master = &cluster.masters()[0];
    let replica = &cluster.replicas_of(0)[0];
    let deadline = Instant::now() + DEADLINE;
    // (A cluster replica answers GET with MOVED: compare replication offsets.)
    let offset = |s: &RedisServer| {
        let info = s.command(&["INFO", "replication"]).unwrap();
        String::from_utf8_lossy(info.as_bytes().unwrap())
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    while offset(replica) < offset(master) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica.pause().unwrap();
    let killed = master
        .command(&["CLIENT", "KILL", "TYPE", "replica"])
        .unwrap();
    assert_eq!(killed.as_int(), Some(1), "{killed:?}");
    for _ in 0..3 {
        let g = m.acquire(&r, &opts(5_000, 0)).await.unwrap().unwrap();
        tokens.push(g.fencing_token());
        assert!(g.release().await.unwrap());
    }
    let lost_counter = master.command(&["GET", &fence]).unwrap();
    assert_eq!(
        lost_counter.as_str(),
        Some(tokens[5].to_string().as_str()),
        "the master granted the last 3"
    );
    let replica_addr = replica.addr();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.masters_mut()[0].kill().unwrap();
        cluster
            .nodes()
            .iter()
            .find(|n| n.addr() == replica_addr)
            .unwrap()
            .resume()
            .unwrap();
        cluster.wait_healthy(DEADLINE).unwrap();
        cluster
    })
    .await
    .unwrap();
    let promoted = cluster.owner_of_slot(key_slot(r.as_bytes())).unwrap();
    let behind = promoted.command(&["GET", &fence]).unwrap();
    assert_eq!(
        behind.as_str(),
        Some(tokens[2].to_string().as_str()),
        "the promoted replica missed the last grants"
    );
    let deadline = Instant::now() + DEADLINE;
    let mut after = 0;
    while after < 3 {
        match m.acquire(&r, &opts(5_000, 0)).await {
            Ok(Some(g)) => {
                tokens.push(g.fencing_token());
                assert!(g.release().await.unwrap());
                after += 1;
            }
            other => {
                assert!(Instant::now() < deadline, "never granted again: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase across the failover: {tokens:?}"
    );
}

/// The watchdog on a cluster: the master of the lock's slot stops answering
/// (SIGSTOP) past the TTL; the guard is marked lost, its later release
/// returns `false`, and after the resume another holder gets the lock (it
/// expired on the server's clock during the pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_master_paused_past_ttl_marks_watchdog_guard_lost() {
    let cluster = start_cluster(
        // No failure detection during the pause: the same master resumes.
        ClusterOptions::default().node_timeout(Duration::from_secs(15)),
    )
    .await;
    let url = cluster.url();
    let p = prefix("lock_cluster_watchdog_lost");
    let holder_m = LockManager::new(&connect_with(&url, "300ms").await, &p).unwrap();
    let other = LockManager::new(&connect(&url).await, &p).unwrap();
    let r = resource_on(&cluster, 1, "wd");
    let o = LockOptions::builder()
        .ttl(Duration::from_millis(300))
        .watchdog(true)
        .build()
        .unwrap();
    let g = holder_m.acquire(&r, &o).await.unwrap().unwrap();
    let master = &cluster.masters()[1];
    master.pause().unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), g.lost()).await;
    std::thread::sleep(Duration::from_millis(200));
    master.resume().unwrap();
    assert!(
        lost.is_ok(),
        "lost() must fire when the lock's master is silent past the TTL"
    );
    assert!(holder_m.metrics().lost >= 1);
    let deadline = Instant::now() + DEADLINE;
    let new = loop {
        match other.acquire(&r, &opts(10_000, 2_000)).await {
            Ok(Some(new)) => break new,
            got => {
                assert!(Instant::now() < deadline, "never granted again: {got:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(new.fencing_token() > g.fencing_token());
    assert!(
        !g.release().await.unwrap(),
        "the lost guard's release spares the new holder"
    );
    assert!(other.acquire(&r, &opts(1_000, 0)).await.unwrap().is_none());
    assert!(new.release().await.unwrap());
}

/// Sends one command over a fresh raw connection and returns the first line
/// of the reply.
async fn raw_command(addr: &str, args: &[&str]) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(conn)
        .read_line(&mut line)
        .await
        .unwrap();
    line.trim_end().to_string()
}

/// Runs `op` with `CLIENT PAUSE ALL` on `node` and, queued behind its
/// command, `CLIENT KILL` of the connection `id`: when the pause ends the
/// server runs the command, then kills the connection before the reply is
/// written. fred reconnects and sends the command again. Returns the op's
/// output and how many scripts `node` ran meanwhile.
async fn with_reply_killed<T>(
    node: &RedisServer,
    id: i64,
    op: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let before = script_calls(node);
    node.client_pause(Duration::from_millis(2_000)).unwrap();
    let addr = node.addr();
    let kill = async {
        // The op's command is in the server long before this (a local write).
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        raw_command(&addr, &["CLIENT", "KILL", "ID", &id.to_string()]).await
    };
    let (out, killed) = tokio::join!(op, kill);
    assert_eq!(killed, ":1", "the connection was killed");
    (out, script_calls(node) - before)
}

/// The lost-reply replay on a cluster: the connection to the master that
/// owns the key is killed right after the master ran the script (the
/// `CLIENT PAUSE ALL` / `CLIENT KILL` recipe), fred resends it, and every
/// script keeps its invariant, as in the proxy test on standalone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_client_killed_after_the_master_ran_a_script_resend_keeps_every_invariant() {
    let cluster =
        start_cluster(ClusterOptions::default().node_timeout(Duration::from_secs(15))).await;
    let redis = connect_with(&cluster.url(), "5s").await;
    let direct = connect(&cluster.url()).await;
    let p = prefix("lock_cluster_lost_reply");
    let m = LockManager::new(&redis, &p).unwrap();
    let rival = LockManager::new(&direct, &p).unwrap();
    let store = FencedStore::new(&redis, &p).unwrap();
    let node = &cluster.masters()[0];
    let (lock_r, sem_r, value_r) = (
        resource_on(&cluster, 0, "acq"),
        resource_on(&cluster, 0, "sem"),
        resource_on(&cluster, 0, "fv"),
    );
    // fred's connection to master 0 (a new one after every kill).
    let conn_id = || {
        let client = redis.client().clone();
        let slot = key_slot(lock_r.as_bytes());
        async move {
            let o = fred::prelude::Options {
                cluster_hash: Some(fred::types::ClusterHash::Custom(slot)),
                ..Default::default()
            };
            client.with_options(&o).client_id::<i64>().await.unwrap()
        }
    };
    let get = |key: String| {
        let direct = direct.clone();
        async move { direct.client().get::<Option<String>, _>(key).await.unwrap() }
    };
    // Load every script first.
    let g = m.acquire(&lock_r, &opts(5_000, 0)).await.unwrap().unwrap();
    g.extend(Duration::from_secs(5)).await.unwrap();
    g.release().await.unwrap();
    let sem = m.semaphore(&sem_r, 1).unwrap();
    sem.acquire(&opts(5_000, 0))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    store.write(&value_r, "w", 1, None).await.unwrap();

    let (g, runs) =
        with_reply_killed(node, conn_id().await, m.acquire(&lock_r, &opts(30_000, 0))).await;
    assert_eq!(runs, 2, "acquire: run, reply lost, resent");
    let g = g.unwrap().expect("the replayed grant is the caller's");
    assert_eq!(
        get(format!("{p}:{{{lock_r}}}:lock")).await.as_deref(),
        Some(g.lease().token.as_str())
    );
    assert_eq!(
        get(format!("{p}:{{{lock_r}}}:fence")).await,
        Some(g.fencing_token().to_string()),
        "one grant"
    );
    assert!(rival
        .acquire(&lock_r, &opts(1_000, 0))
        .await
        .unwrap()
        .is_none());

    let (extended, runs) =
        with_reply_killed(node, conn_id().await, g.extend(Duration::from_secs(60))).await;
    assert_eq!(runs, 2, "extend");
    assert!(extended.unwrap());
    let pttl: i64 = direct
        .client()
        .pttl(format!("{p}:{{{lock_r}}}:lock"))
        .await
        .unwrap();
    assert!(pttl > 30_000, "{pttl}");

    let (released, runs) = with_reply_killed(node, conn_id().await, g.release()).await;
    assert_eq!(runs, 2, "release");
    assert!(released.is_ok(), "{released:?}");
    assert_eq!(
        get(format!("{p}:{{{lock_r}}}:lock")).await,
        None,
        "no lost release"
    );

    let (permit, runs) =
        with_reply_killed(node, conn_id().await, sem.acquire(&opts(30_000, 0))).await;
    assert_eq!(runs, 2, "semaphore acquire");
    let permit = permit
        .unwrap()
        .expect("the replayed permit is the caller's");
    assert_eq!(sem.held().await.unwrap(), 1, "no double permit");
    let (released, runs) = with_reply_killed(node, conn_id().await, permit.release()).await;
    assert_eq!(runs, 2, "semaphore release");
    assert!(released.is_ok(), "{released:?}");
    assert_eq!(sem.held().await.unwrap(), 0);

    let (w, runs) =
        with_reply_killed(node, conn_id().await, store.write(&value_r, "x", 42, None)).await;
    assert_eq!(runs, 2, "fenced write");
    assert_eq!(w.unwrap(), FencedWrite::Written);
    assert_eq!(
        get(format!("{p}:{{{value_r}}}:value")).await.as_deref(),
        Some("x")
    );
}
