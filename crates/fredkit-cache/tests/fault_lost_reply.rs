//! fredkit-cache scripts replayed after a lost reply (issue #15): fred sends
//! a command again when its connection closed with the command in flight;
//! when the server had already run it (the reply was lost), the script runs
//! twice. Standalone, through a proxy that loses one reply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::interfaces::KeysInterface;
use fredkit_cache::{Cache, CacheOptions, FillError};
use fredkit_conn::{Redis, RedisConfig};
use fredkit_testkit::{unique_prefix, RedisServer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
}

fn prefix(test: &str) -> String {
    unique_prefix(test).trim_end_matches(':').to_string()
}

async fn connect(url: &str) -> Redis {
    let redis = Redis::connect(RedisConfig::from_url(url).unwrap())
        .await
        .unwrap();
    redis.wait_connected().await.unwrap();
    redis
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

async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// A TCP proxy in front of one server that can lose one reply: once armed
/// with a marker, the next client command containing it is forwarded (the
/// server runs it), then the server's next reply on that connection is
/// dropped and both sides are closed, as when a connection dies just after
/// the server ran the command. fred reconnects and sends it again.
struct CutProxy {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    _lost: Arc<Mutex<Vec<u8>>>,
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
            _lost: lost,
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

    fn url(&self) -> String {
        format!("redis://{}?command_timeout=5s", self.addr)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sha(source: &str) -> String {
    fred::util::sha1_hash(source)
}

/// Each fill script, its reply lost after the server ran it and fred's
/// resend run again, keeps its invariant:
///
/// - `fill_acquire` (`SET NX PX` of the lock + `GET`): the resend finds the
///   filler's own lock and must report it as taken by this filler — not by
///   "another filler", which made the filler wait for itself until the lock
///   expired or `fill_wait` ran out (the bug this test found);
/// - `fill_store_release`: the value is stored, the lock is gone;
/// - `fill_release` (after a failed factory): the lock is gone, the next
///   filler loads at once;
/// - `fill_extend` (the watchdog): the lock stays held past `lock_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_connection_cut_after_the_server_ran_a_fill_script_resend_keeps_every_invariant(
) {
    let server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let proxy = CutProxy::start(server.addr().parse().unwrap()).await;
    let redis = connect(&proxy.url()).await;
    let direct = connect(&server.url()).await;
    let p = prefix("cache_lost_reply");
    let options = || {
        CacheOptions::builder(p.clone())
            .ttl(Duration::from_secs(60))
            .max_stale(Duration::from_secs(60))
            .lock_ttl(Duration::from_secs(3))
            .fill_wait(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    let c: Cache<Item> = Cache::new(&redis, options()).await.unwrap();
    let rival: Cache<Item> = Cache::new(&direct, options()).await.unwrap();
    let get = |key: String| {
        let direct = direct.clone();
        async move {
            direct
                .client()
                .get::<Option<Vec<u8>>, _>(key)
                .await
                .unwrap()
        }
    };
    // Load every script first: a lost NOSCRIPT reply would not be a replay.
    c.get_or_set("warm", || async { Item { id: 0 } })
        .await
        .unwrap();
    let _ = c
        .get_or_try_set("warm2", || async { Err::<Item, _>("no") })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the background release
    let acquire = sha(include_str!("../scripts/fill_acquire.lua"));
    let store = sha(include_str!("../scripts/fill_store_release.lua"));
    let release = sha(include_str!("../scripts/fill_release.lua"));
    let extend = sha(include_str!("../scripts/fill_extend.lua"));
    let replayed = |what: &str| {
        let (seen, cuts) = proxy.counts();
        assert_eq!(cuts, 1, "{what}: the reply was not lost");
        assert_eq!(seen, 2, "{what}: fred did not send it again");
    };

    // fill_acquire: the resend's lock is this filler's own.
    let before = script_calls(&server);
    proxy.arm(&acquire);
    let v = tokio::time::timeout(DEADLINE, c.get_or_set("a", || async { Item { id: 1 } }))
        .await
        .expect("get_or_set hung")
        .unwrap();
    replayed("fill_acquire");
    assert_eq!(v, Item { id: 1 });
    assert_eq!(
        script_calls(&server) - before,
        3,
        "acquire twice, then store + release"
    );
    let m = c.metrics();
    assert_eq!(
        (m.fill_lock_waits, m.fill_wait_timeouts),
        (0, 0),
        "the filler waited for its own lock"
    );
    assert_eq!(
        get(format!("{p}:lock:{{a}}")).await,
        None,
        "lock left behind"
    );
    assert_eq!(rival.get("a").await.unwrap(), Some(Item { id: 1 }));

    // fill_store_release: stored once, lock gone.
    let calls = c.metrics().factory_calls;
    proxy.arm(&store);
    let v = c
        .get_or_set("b", || async { Item { id: 2 } })
        .await
        .unwrap();
    replayed("fill_store_release");
    assert_eq!(v, Item { id: 2 });
    assert_eq!(c.metrics().factory_calls, calls + 1);
    assert_eq!(
        get(format!("{p}:lock:{{b}}")).await,
        None,
        "lock left behind"
    );
    assert_eq!(rival.get("b").await.unwrap(), Some(Item { id: 2 }));
    let pttl: i64 = direct.client().pttl(format!("{p}:{{b}}")).await.unwrap();
    assert!((1..=120_000).contains(&pttl), "ttl + max_stale: {pttl}");

    // fill_release after a failed factory: the lock is gone.
    proxy.arm(&release);
    let failed = c
        .get_or_try_set("c", || async { Err::<Item, _>("db down") })
        .await;
    assert!(matches!(failed, Err(FillError::Factory("db down"))));
    assert!(
        eventually(DEADLINE, || proxy.counts() == (2, 1)).await,
        "fill_release: not lost and resent: {:?}",
        proxy.counts()
    );
    assert!(
        get(format!("{p}:lock:{{c}}")).await.is_none(),
        "lock left behind after the release"
    );
    let waits = rival.metrics().fill_lock_waits;
    assert_eq!(
        rival
            .get_or_set("c", || async { Item { id: 3 } })
            .await
            .unwrap(),
        Item { id: 3 }
    );
    assert_eq!(
        rival.metrics().fill_lock_waits,
        waits,
        "the lock was still held"
    );

    // fill_extend: the watchdog's renewal, its reply lost and resent, keeps
    // the lock held past lock_ttl (3 s) while the factory runs.
    let go = Arc::new(tokio::sync::Notify::new());
    proxy.arm(&extend);
    let fill = {
        let (c, go) = (c.clone(), go.clone());
        tokio::spawn(async move {
            c.get_or_set("d", move || async move {
                go.notified().await;
                Item { id: 4 }
            })
            .await
        })
    };
    assert!(
        eventually(DEADLINE, || proxy.counts() == (2, 1)).await,
        "fill_extend: not lost and resent: {:?}",
        proxy.counts()
    );
    // Past lock_ttl after the replayed renewal: held only if renewed since.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        get(format!("{p}:lock:{{d}}")).await.is_some(),
        "the lock expired under a live filler"
    );
    go.notify_one();
    assert_eq!(fill.await.unwrap().unwrap(), Item { id: 4 });
    assert_eq!(get(format!("{p}:lock:{{d}}")).await, None);
}

/// Sends commands over a fresh raw connection (one write) and returns the
/// first `lines` lines of the replies.
async fn raw_commands(addr: &str, commands: &[&[&str]], lines: usize) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = String::new();
    for args in commands {
        req.push_str(&format!("*{}\r\n", args.len()));
        for a in *args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    }
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(conn);
    let mut out = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
            .await
            .expect("no reply from the raw connection")
            .unwrap();
        out.push(line.trim_end().to_string());
    }
    out
}

/// Runs `op` with `CLIENT PAUSE WRITE` on `node` (reads go on, so the op's
/// `GET` is answered and its first script is held) and, queued behind that
/// script, a transaction that writes `marker` (a key on `node`, so that it
/// is held too) and runs
/// `CLIENT KILL TYPE normal` (every command connection but its own): when
/// the pause ends the server runs the script, then kills the connection
/// before the reply is written. fred reconnects and sends the script again.
/// Returns the op's output and how many scripts `node` ran meanwhile.
async fn with_reply_killed<T>(
    node: &RedisServer,
    marker: &str,
    op: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let before = script_calls(node);
    let addr = node.addr();
    let paused = raw_commands(&addr, &[&["CLIENT", "PAUSE", "2000", "WRITE"]], 1).await;
    assert_eq!(paused, ["+OK"]);
    let kill = async {
        // Wait until the op's script is held by the pause (a blocked
        // client), so the transaction is queued behind it.
        let until = tokio::time::Instant::now() + Duration::from_millis(1_500);
        while tokio::time::Instant::now() < until {
            let info = node.command(&["INFO", "clients"]).unwrap();
            let text = String::from_utf8_lossy(info.as_bytes().unwrap()).to_string();
            if text
                .lines()
                .any(|l| l.starts_with("blocked_clients:") && l != "blocked_clients:0")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        raw_commands(
            &addr,
            &[
                &["MULTI"],
                &["SET", marker, "1"],
                &["CLIENT", "KILL", "TYPE", "normal"],
                &["EXEC"],
            ],
            6,
        )
        .await
    };
    let (out, killed) = tokio::join!(op, kill);
    assert!(
        killed[5].starts_with(':') && killed[5] != ":0",
        "no connection was killed: {killed:?}"
    );
    (out, script_calls(node) - before)
}

/// The `fill_acquire` replay on a 3-master cluster: the master owning the
/// key runs the script, the connection is killed before the reply (the
/// `CLIENT PAUSE ALL` / `CLIENT KILL` recipe), fred resends it; the filler
/// must take the resend's lock as its own, not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_client_killed_after_the_master_ran_fill_acquire_the_filler_does_not_wait_for_itself(
) {
    use fredkit_testkit::{key_slot, ClusterOptions, RedisCluster};
    let cluster = tokio::task::spawn_blocking(|| {
        RedisCluster::start(ClusterOptions::default().node_timeout(Duration::from_secs(15)))
            .unwrap()
    })
    .await
    .unwrap();
    // One client in the pool (the default), a command timeout long enough
    // for the pause and the resend.
    let url = format!("{}&command_timeout=5s", cluster.url());
    let redis = connect(&url).await;
    let direct = connect(&cluster.url()).await;
    let p = prefix("cache_cluster_lost_reply");
    let options = || {
        CacheOptions::builder(p.clone())
            .ttl(Duration::from_secs(60))
            .lock_ttl(Duration::from_secs(3))
            .fill_wait(Duration::from_secs(20))
            .invalidation(false)
            .build()
            .unwrap()
    };
    let c: Cache<Item> = Cache::new(&redis, options()).await.unwrap();
    let rival: Cache<Item> = Cache::new(&direct, options()).await.unwrap();
    let key = (0..10_000)
        .map(|i| format!("a{i}"))
        .find(|k| {
            cluster
                .master_index_for_slot(key_slot(k.as_bytes()))
                .unwrap()
                == 0
        })
        .unwrap();
    let node = &cluster.masters()[0];
    // Load the scripts on that master first.
    let warm = (0..10_000)
        .map(|i| format!("w{i}"))
        .find(|k| {
            cluster
                .master_index_for_slot(key_slot(k.as_bytes()))
                .unwrap()
                == 0
        })
        .unwrap();
    c.get_or_set(&warm, || async { Item { id: 0 } })
        .await
        .unwrap();

    let marker = format!("{{{key}}}kill-marker");
    let (v, runs) = with_reply_killed(
        node,
        &marker,
        tokio::time::timeout(DEADLINE, c.get_or_set(&key, || async { Item { id: 1 } })),
    )
    .await;
    assert_eq!(v.expect("get_or_set hung").unwrap(), Item { id: 1 });
    let m = c.metrics();
    assert_eq!(
        (m.fill_lock_waits, m.fill_wait_timeouts, m.factory_calls),
        (0, 0, 2),
        "the filler waited for its own lock"
    );
    assert_eq!(
        runs, 3,
        "acquire, reply lost, acquire resent, store + release"
    );
    let lock: Option<String> = direct
        .client()
        .get(format!("{p}:lock:{{{key}}}"))
        .await
        .unwrap();
    assert_eq!(lock, None, "lock left behind");
    assert_eq!(rival.get(&key).await.unwrap(), Some(Item { id: 1 }));
}
