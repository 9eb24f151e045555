//! Faults (serial: names start with `fault_`): Redis killed, an instance
//! cut off from Redis while a change is made — standalone (a killed server,
//! a TCP proxy) and cluster (a killed private cluster, an ACL cut).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fredkit_conn::Redis;
use fredkit_flags::{
    acl_rule, Context, FlagAdmin, FlagDef, Flags, FlagsOptions, KeySpace, Source, Write,
};
use fredkit_testkit::{
    connect, delete_acl_user, set_acl_user, shared_url, unique_prefix, url_as, ClusterOptions,
    RedisCluster, RedisServer, Topology,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::eventually;

/// Redis killed: evaluations keep answering from the snapshot and the
/// outage is counted; an instance started while it is down serves the
/// snapshot file (or, without one, the defaults in code) and says so; once
/// Redis is back it loads from Redis. Standalone only: the kill is of the
/// test's own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_killed_evaluations_keep_answering() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    let redis = connect(&url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    let options = || {
        FlagsOptions::default()
            .sync_interval(Duration::from_millis(100))
            .default_enabled("beta", false)
            .snapshot_file(&file)
    };
    let admin = FlagAdmin::new(&redis, "app:flags").unwrap();
    let b = Flags::with_options(&redis, "app:flags", options())
        .await
        .unwrap();
    let w = admin
        .set("beta", &FlagDef::on().deny_user("9"), &Write::by("t"))
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    assert_eq!(b.metrics().outages, 0);

    server.kill().unwrap();
    eventually("the outage is counted", Duration::from_secs(10), || {
        b.metrics().outages >= 1
    })
    .await;
    for i in 0..10_000u32 {
        let id = i.to_string();
        assert_eq!(b.is_enabled("beta", &Context::user(&id)), i != 9);
    }
    let m = b.metrics();
    assert_eq!(m.outages, 1, "{m:?}");
    assert!(m.failed_syncs >= 1);

    // A start while Redis is down: the snapshot file, counted.
    let down = Redis::from_url(&url).await.unwrap();
    let c = Flags::with_options(&down, "app:flags", options())
        .await
        .unwrap();
    assert_eq!(c.source(), Source::File);
    assert!(c.is_enabled("beta", &Context::user("1")));
    assert!(!c.is_enabled("beta", &Context::user("9")));
    assert_eq!((c.metrics().fallback_starts, c.metrics().outages), (1, 1));
    // Without a file: the defaults in code.
    let d = Flags::with_options(
        &down,
        "app:flags",
        FlagsOptions::default().default_enabled("beta", true),
    )
    .await
    .unwrap();
    assert_eq!(d.source(), Source::Defaults);
    assert!(d.is_enabled("beta", &Context::user("9")));
    assert!(!d.is_enabled("other", &Context::user("9")));
    assert_eq!(d.metrics().fallback_starts, 1);

    // Redis back (empty: no persistence): c loads from Redis.
    server.restart().unwrap();
    let w = admin
        .set("beta", &FlagDef::off(), &Write::by("t"))
        .await
        .unwrap();
    assert_eq!(w.version, 1, "the restarted server is empty");
    eventually("c loads from Redis again", Duration::from_secs(30), || {
        c.source() == Source::Redis && !c.is_enabled("beta", &Context::user("1"))
    })
    .await;
    eventually("b too", Duration::from_secs(30), || {
        !b.is_enabled("beta", &Context::user("1"))
    })
    .await;
}

/// A TCP proxy that can cut every connection through it and refuse new
/// ones until restored: a network cut of one client, the server running on.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                k.lock().unwrap().push(task);
            }
        });
        Proxy {
            port,
            cut,
            conns,
            accept,
        }
    }

    async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// An instance cut off from Redis (its connections through a proxy that
/// drops them) keeps answering from its snapshot while a change is made;
/// once the cut ends it resubscribes, gets a Gap, reloads, and applies the
/// change — with the periodic check off (1 h), the Gap is the only way it
/// can learn of it. Standalone (a proxy in front of a cluster would need
/// its redirections rewritten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_change_made_while_cut_off_is_applied_after_reconnect() {
    let url = shared_url(Topology::Standalone).unwrap();
    let upstream = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(upstream).await;
    let prefix = unique_prefix("flags_cut");
    let admin = FlagAdmin::new(&connect(&url).await.unwrap(), prefix.as_str()).unwrap();
    admin
        .set("f", &FlagDef::off(), &Write::by("t"))
        .await
        .unwrap();
    let through = connect(&format!("redis://127.0.0.1:{}", proxy.port))
        .await
        .unwrap();
    let b = Flags::with_options(
        &through,
        prefix.as_str(),
        FlagsOptions::default().sync_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let ctx = Context::user("1");
    assert!(!b.is_enabled("f", &ctx));
    let gaps = b.metrics().gaps;

    proxy.cut().await;
    let w = admin
        .set("f", &FlagDef::on(), &Write::by("t"))
        .await
        .unwrap();
    // Cut off: the message cannot arrive; evaluations answer the snapshot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..1000 {
        assert!(!b.is_enabled("f", &ctx));
    }
    assert!(b.version() < w.version);

    proxy.restore();
    eventually(
        "the change is applied after the reconnect",
        Duration::from_secs(30),
        || b.is_enabled("f", &ctx),
    )
    .await;
    assert_eq!(b.version(), w.version);
    let m = b.metrics();
    assert!(m.gaps > gaps, "applied without a gap: {m:?}");
    assert!(m.reloads >= 2, "{m:?}");
}

/// A write whose reply is lost runs twice (fred sends the script again on a
/// new connection): the second run finds its own write id and answers
/// success — not a Conflict, though the write expected the flag absent —
/// and the flag is written once (revision 1, one audit entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_kill_lost_reply_of_a_write_is_not_a_conflict() {
    use fredkit_flags::Expect;
    use fredkit_testkit::{with_lost_reply, Reply, ServerOptions};
    let server = RedisServer::start_with(
        ServerOptions::default()
            .arg("slowlog-log-slower-than", "0")
            .arg("slowlog-max-len", "10000"),
    )
    .unwrap();
    let config = fredkit_conn::RedisConfig::builder()
        .url(server.url())
        .command_timeout(Duration::from_secs(10))
        .pool_size(1)
        .build()
        .unwrap();
    let r = Redis::connect(config).await.unwrap();
    r.wait_connected().await.unwrap();
    let admin = FlagAdmin::new(&r, "lost:flags").unwrap();
    // Loads the script, so the lost one is a single EVALSHA.
    admin
        .set("warm", &FlagDef::on(), &Write::by("t"))
        .await
        .unwrap();
    let marker = format!("lost-reply-{}", "x".repeat(400));
    let def = FlagDef::on().description(marker.clone());
    let a = admin.clone();
    let written = with_lost_reply(&server, 400, async move {
        a.set(
            "lost-reply-flag",
            &def,
            &Write::by("t").expect(Expect::Absent),
        )
        .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(written.rev, 1);
    let Reply::Array(Some(entries)) = server.command(&["SLOWLOG", "GET", "-1"]).unwrap() else {
        panic!("SLOWLOG")
    };
    let runs = entries
        .iter()
        .filter(|e| {
            let Reply::Array(Some(fields)) = e else {
                return false;
            };
            let Some(Reply::Array(Some(args))) = fields.get(3) else {
                return false;
            };
            args.iter()
                .filter_map(Reply::as_str)
                .any(|a| a == "lost-reply-flag")
        })
        .count();
    assert!(
        runs >= 2,
        "the write script ran {runs} times, not twice or more"
    );
    let stored = admin.get("lost-reply-flag").await.unwrap().unwrap();
    assert_eq!(
        (stored.rev, stored.def.description.as_str()),
        (1, marker.as_str())
    );
    let audit = admin.audit(10).await.unwrap();
    assert_eq!(
        audit.iter().filter(|e| e.flag == "lost-reply-flag").count(),
        1
    );
}

/// The whole of a private 3-master cluster killed: evaluations keep
/// answering from the snapshot and the outage is counted once; once every
/// node is back (empty: no persistence) a change made through another
/// connection is applied (by the Gap's reload or the 100 ms periodic check,
/// whichever comes first) and its subscriber resubscribes (a Gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_redis_killed_evaluations_keep_answering() {
    let mut cluster =
        tokio::task::spawn_blocking(|| RedisCluster::start(ClusterOptions::default()).unwrap())
            .await
            .unwrap();
    let url = cluster.url();
    let admin = FlagAdmin::new(&connect(&url).await.unwrap(), "app:flags").unwrap();
    let b = Flags::with_options(
        &connect(&url).await.unwrap(),
        "app:flags",
        FlagsOptions::default()
            .sync_interval(Duration::from_millis(100))
            .default_enabled("beta", false),
    )
    .await
    .unwrap();
    let w = admin
        .set("beta", &FlagDef::on().deny_user("9"), &Write::by("t"))
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    assert_eq!(b.metrics().outages, 0);

    for node in cluster.nodes_mut() {
        node.kill().unwrap();
    }
    eventually("the outage is counted", Duration::from_secs(10), || {
        b.metrics().outages >= 1
    })
    .await;
    for i in 0..10_000u32 {
        let id = i.to_string();
        assert_eq!(b.is_enabled("beta", &Context::user(&id)), i != 9);
    }
    let m = b.metrics();
    assert_eq!(m.outages, 1, "{m:?}");
    assert!(m.failed_syncs >= 1, "{m:?}");
    let gaps = m.gaps;

    let cluster = tokio::task::spawn_blocking(move || {
        for node in cluster.nodes_mut() {
            node.restart().unwrap();
        }
        cluster.wait_healthy(Duration::from_secs(30)).unwrap();
        cluster
    })
    .await
    .unwrap();
    let mut written = None;
    for _ in 0..100 {
        // The admin's connection may still be reconnecting.
        match admin.set("beta", &FlagDef::off(), &Write::by("t")).await {
            Ok(w) => {
                written = Some(w);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let w = written.expect("a write once the cluster is back");
    assert_eq!(w.version, 1, "the restarted cluster is empty");
    eventually("b applies the change", Duration::from_secs(30), || {
        !b.is_enabled("beta", &Context::user("1"))
    })
    .await;
    // Its subscriber is back too (the change may have come first through
    // the periodic check, which sees the version move).
    eventually(
        "b's subscriber resubscribed (a gap)",
        Duration::from_secs(30),
        || b.metrics().gaps > gaps,
    )
    .await;
    drop(cluster);
}

/// An instance cut off on a cluster: it connects as its own ACL user on
/// the shared cluster; removing that user's channel permission on every
/// node makes Redis close its subscriber connection (Redis 7 disconnects
/// clients subscribed to channels they lost) and refuse the resubscription,
/// while its command connection and the server run on. A change made then
/// (through another user) cannot reach it: it keeps answering the old
/// value. Restoring the rule lets the subscriber resubscribe: a Gap, a
/// reload, the new value — with the periodic check off (1 h), the Gap is
/// the only way it can learn of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cluster_a_change_made_while_cut_off_is_applied_after_reconnect() {
    let topology = Topology::Cluster;
    let prefix = unique_prefix("flags_cut_cluster");
    let keys = KeySpace::new(prefix.as_str()).unwrap();
    let user = format!("cut-{}", prefix.replace(':', "-"));
    let rule = acl_rule(&keys);
    let no_channels: String = rule
        .split_whitespace()
        .filter(|t| !t.starts_with('&'))
        .collect::<Vec<_>>()
        .join(" ");
    assert_ne!(rule, no_channels, "the rule names the channel: {rule}");
    set_acl_user(topology, &user, "pw", &rule).unwrap();
    let admin = FlagAdmin::new(
        &connect(&shared_url(topology).unwrap()).await.unwrap(),
        &keys,
    )
    .unwrap();
    admin
        .set("f", &FlagDef::off(), &Write::by("t"))
        .await
        .unwrap();
    let b = Flags::with_options(
        &connect(&url_as(topology, &user, "pw").unwrap())
            .await
            .unwrap(),
        &keys,
        FlagsOptions::default().sync_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let ctx = Context::user("1");
    assert!(!b.is_enabled("f", &ctx));
    // Its subscription works: a change arrives by message.
    let w = admin
        .set("g", &FlagDef::on(), &Write::by("t"))
        .await
        .unwrap();
    assert!(b.wait_for_version(w.version, Duration::from_secs(10)).await);
    let gaps = b.metrics().gaps;

    set_acl_user(topology, &user, "pw", &no_channels).unwrap();
    let w = admin
        .set("f", &FlagDef::on(), &Write::by("t"))
        .await
        .unwrap();
    // Cut off: the message cannot arrive; evaluations answer the snapshot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..1000 {
        assert!(!b.is_enabled("f", &ctx));
    }
    assert!(b.version() < w.version);

    set_acl_user(topology, &user, "pw", &rule).unwrap();
    eventually(
        "the change is applied after the reconnect",
        Duration::from_secs(30),
        || b.is_enabled("f", &ctx),
    )
    .await;
    assert_eq!(b.version(), w.version);
    let m = b.metrics();
    assert!(m.gaps > gaps, "applied without a gap: {m:?}");
    b.close().await;
    delete_acl_user(topology, &user).unwrap();
}
