//! A `PUBLISH` whose reply is lost after the server ran it (the connection
//! died just then) is sent again by fred when it reconnects: the message is
//! delivered twice (issue #15). Standalone, through a proxy that loses one
//! reply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fredkit_conn::{Redis, RedisConfig};
use fredkit_pubsub::{Delivery, Publisher, Subscriber};
use fredkit_testkit::{unique_prefix, RedisServer};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect(url: &str) -> Redis {
    let redis = Redis::connect(RedisConfig::from_url(url).unwrap())
        .await
        .unwrap();
    redis.wait_connected().await.unwrap();
    redis
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

/// Pub/sub is at-most-once per `PUBLISH` the server runs, not per
/// `publish` call: a publish whose reply was lost is resent by fred after
/// the reconnect and its message delivered twice. Consumers must tolerate
/// duplicates (fredkit-cache's invalidations and fredkit-revocation's
/// events do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_client_connection_cut_after_the_server_ran_a_publish_delivers_it_twice() {
    let server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let proxy = CutProxy::start(server.addr().parse().unwrap()).await;
    let through_proxy = connect(&proxy.url()).await;
    let direct = connect(&server.url()).await;
    let channel = format!("{}dup", unique_prefix("pubsub_lost_reply"));
    let subscriber = Subscriber::new(&direct).await.unwrap();
    let mut sub = subscriber.subscribe::<u64>(&channel).await.unwrap();
    let publisher = Publisher::new(&through_proxy);
    proxy.arm(&channel);
    publisher.publish(&channel, &7u64).await.unwrap();
    let (seen, cuts) = proxy.counts();
    assert_eq!(
        (seen, cuts),
        (2, 1),
        "the reply was lost and the PUBLISH resent"
    );
    publisher.publish(&channel, &8u64).await.unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&8) {
        match tokio::time::timeout(Duration::from_secs(15), sub.next())
            .await
            .expect("no message")
        {
            Some(Delivery::Message(m)) => got.push(m.payload.unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, vec![7, 7, 8], "one publish call, two deliveries");
}
