//! fredkit-revocation scripts replayed after a lost reply (issue #15): fred
//! sends a command again when its connection closed with the command in
//! flight; when the server had already run it (the reply was lost), the
//! script runs twice. Standalone, through a proxy that loses one reply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::KeysInterface;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_core::FailMode;
use fredkit_revocation::{RevocationOptions, Revocations, Revoked, TokenClaims};
use fredkit_testkit::{unique_prefix, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
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

/// Each revocation script, its reply lost after the server ran it and
/// fred's resend run again, keeps its invariant: `revoke` leaves the record
/// until exactly `exp` + leeway, answers `Now` (the resend recognises the
/// record its first run wrote; it used to answer `Already`) and its event
/// is published (a store whose local cache never read the token knows it
/// from the event: no lost invalidation); `revoke_subject_now` returns the
/// cut-off in force, a second of the call; `track` counts the token once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_connection_cut_after_the_server_ran_a_revocation_script_resend_keeps_every_invariant(
) {
    let server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let proxy = CutProxy::start(server.addr().parse().unwrap()).await;
    let redis = connect(&proxy.url()).await;
    let direct = connect(&server.url()).await;
    let p = prefix("revocation_lost_reply");
    let options = || {
        RevocationOptions::builder(FailMode::Closed)
            .prefix(p.clone())
            .max_token_lifetime(Duration::from_secs(3600))
            .expiry_leeway(Duration::from_secs(61))
    };
    let store = Revocations::new(&redis, options().build().unwrap())
        .await
        .unwrap();
    #[cfg(feature = "local-cache")]
    let watcher = Revocations::new(
        &direct,
        options()
            .local_cache(fredkit_revocation::LocalCacheOptions::default())
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let t = now_secs();
    let claims = |jti: &str, sub: &str| TokenClaims {
        jti: jti.into(),
        sub: sub.into(),
        org: None,
        iat: t,
        exp: t + 600,
    };
    // Load every script first: a lost NOSCRIPT reply would not be a replay.
    store
        .revoke("warm", UNIX_EPOCH + Duration::from_secs(t + 600))
        .await
        .unwrap();
    store.revoke_subject_now("warm").await.unwrap();
    store.track(&claims("warm", "warm")).await.unwrap();
    let replayed = |what: &str, before: u64| {
        let (seen, cuts) = proxy.counts();
        assert_eq!(cuts, 1, "{what}: the reply was not lost");
        assert_eq!(seen, 2, "{what}: fred did not send it again");
        assert_eq!(script_calls(&server) - before, 2, "{what}: not run twice");
    };

    // revoke_jti
    #[cfg(feature = "local-cache")]
    let events = {
        // The two warm-up events are in first.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while watcher.metrics().events_received < 2 {
            assert!(std::time::Instant::now() < deadline, "no warm-up events");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        watcher.metrics().events_received
    };
    let before = script_calls(&server);
    proxy.arm(&sha(include_str!("../../scripts/revoke_jti.lua")));
    let outcome = store
        .revoke("j1", UNIX_EPOCH + Duration::from_secs(t + 600))
        .await
        .unwrap();
    replayed("revoke_jti", before);
    assert_eq!(
        outcome,
        Revoked::Now,
        "the replay found its own first run's record: still this call's revocation"
    );
    let expiry = server
        .command(&["PEXPIRETIME", &format!("{p}:jti:j1")])
        .unwrap()
        .as_int()
        .unwrap();
    assert_eq!(
        expiry,
        ((t + 600 + 61) * 1000) as i64,
        "exp + leeway, exactly"
    );
    assert!(store.is_revoked("j1").await.unwrap());
    #[cfg(feature = "local-cache")]
    {
        // The event went out: the watcher, which never read j1, knows it
        // without a round trip.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while watcher.metrics().events_received < events + 1 {
            assert!(std::time::Instant::now() < deadline, "no event for j1");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reads = watcher.metrics().redis_reads;
        assert!(watcher.check(&claims("j1", "x")).await.unwrap());
        assert_eq!(
            watcher.metrics().redis_reads,
            reads,
            "j1 known from its event"
        );
    }

    // revoke_cutoff with "now": the answer is the cut-off in force.
    let before = script_calls(&server);
    let t0 = now_secs();
    proxy.arm(&sha(include_str!("../../scripts/revoke_cutoff.lua")));
    let cut = store.revoke_subject_now("s1").await.unwrap();
    let t1 = now_secs();
    replayed("revoke_cutoff", before);
    assert!((t0..=t1).contains(&cut), "{t0} <= {cut} <= {t1}");
    let stored: Option<String> = direct.client().get(format!("{p}:sub:s1")).await.unwrap();
    assert_eq!(
        stored,
        Some(cut.to_string()),
        "the caller's cut-off is in force"
    );

    // track: counted once.
    let before = script_calls(&server);
    proxy.arm(&sha(include_str!("../../scripts/track.lua")));
    let n = store.track(&claims("tk1", "s2")).await.unwrap();
    replayed("track", before);
    assert_eq!(n, 1, "tracked once");
    let active = store.list_active("s2").await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(
        active[0].expires_at,
        UNIX_EPOCH + Duration::from_secs(t + 600 + 61),
        "exp + leeway, unchanged by the replay"
    );
}

#[cfg(feature = "local-cache")]
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
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .expect("no reply from the raw connection")
            .unwrap();
        out.push(line.trim_end().to_string());
    }
    out
}

#[cfg(feature = "local-cache")]
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

/// `revoke` replayed on a 3-master cluster (the master owning the token's
/// key runs `revoke_jti`, the connection is killed before the reply, fred
/// resends it): the record lives until exactly `exp` + leeway, the caller is
/// told `Now` and the event is published.
#[cfg(feature = "local-cache")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_client_killed_after_the_master_ran_revoke_jti_the_event_still_goes_out() {
    use fredkit_testkit::{key_slot, ClusterOptions, RedisCluster};
    let cluster = tokio::task::spawn_blocking(|| {
        RedisCluster::start(ClusterOptions::default().node_timeout(Duration::from_secs(15)))
            .unwrap()
    })
    .await
    .unwrap();
    let redis = connect(&format!("{}&command_timeout=5s", cluster.url())).await;
    let direct = connect(&cluster.url()).await;
    let p = prefix("revocation_cluster_lost_reply");
    let options = || {
        RevocationOptions::builder(FailMode::Closed)
            .prefix(p.clone())
            .max_token_lifetime(Duration::from_secs(3600))
            .expiry_leeway(Duration::from_secs(61))
    };
    let store = Revocations::new(&redis, options().build().unwrap())
        .await
        .unwrap();
    let watcher = Revocations::new(
        &direct,
        options()
            .local_cache(fredkit_revocation::LocalCacheOptions::default())
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    // Token ids whose keys live on master 0.
    let on_master0 = |tag: &str| {
        (0..10_000)
            .map(|i| format!("{tag}{i}"))
            .find(|j| {
                let key = format!("{p}:jti:{j}");
                cluster
                    .master_index_for_slot(key_slot(key.as_bytes()))
                    .unwrap()
                    == 0
            })
            .unwrap()
    };
    let (warm, jti) = (on_master0("warm"), on_master0("j"));
    let t = now_secs();
    let exp = UNIX_EPOCH + Duration::from_secs(t + 600);
    store.revoke(&warm, exp).await.unwrap(); // loads the script there
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while watcher.metrics().events_received < 1 {
        assert!(std::time::Instant::now() < deadline, "no warm-up event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let node = &cluster.masters()[0];
    // A key of master 0 for the killer's held transaction.
    let marker = (0..10_000)
        .map(|i| format!("kill-marker{i}"))
        .find(|k| {
            cluster
                .master_index_for_slot(key_slot(k.as_bytes()))
                .unwrap()
                == 0
        })
        .unwrap();
    let (outcome, runs) = with_reply_killed(node, &marker, store.revoke(&jti, exp)).await;
    assert_eq!(runs, 2, "run, reply lost, resent");
    let outcome = outcome.unwrap();
    assert_eq!(
        outcome,
        Revoked::Now,
        "the replay found its own first run's record: still this call's revocation"
    );
    let expiry = node
        .command(&["PEXPIRETIME", &format!("{p}:jti:{jti}")])
        .unwrap()
        .as_int()
        .unwrap();
    assert_eq!(
        expiry,
        ((t + 600 + 61) * 1000) as i64,
        "exp + leeway, exactly"
    );
    while watcher.metrics().events_received < 2 {
        assert!(std::time::Instant::now() < deadline, "no event for {jti}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = watcher.metrics();
    let claims = TokenClaims {
        jti: jti.clone(),
        sub: "x".into(),
        org: None,
        iat: t,
        exp: t + 600,
    };
    assert!(watcher.check(&claims).await.unwrap());
    let after = watcher.metrics();
    // Known from its event — unless the watcher's own subscriber saw a gap
    // in between (the kill on master 0 can reach it too) and flushed its
    // cache, which then rightly asks Redis.
    if after.cache_flushes == before.cache_flushes {
        assert_eq!(
            after.redis_reads, before.redis_reads,
            "known from its event"
        );
    }
}
