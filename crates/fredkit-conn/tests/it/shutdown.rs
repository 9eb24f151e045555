//! `Redis::shutdown` closes what the handle owns — its pool's connections and
//! every background task it started — and nothing else: a dedicated
//! connection made from it stays usable until closed. Commands afterwards
//! fail without waiting; a second shutdown is harmless. `Dedicated::close`
//! closes a dedicated or subscriber connection for good: no task left, no
//! warning when the server then goes away (captured from the tracing output,
//! so every test here closes what it opens before its server goes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::interfaces::{ClientLike, EventInterface, KeysInterface, ListInterface, PubsubInterface};
use fredkit_conn::{Redis, RedisConfig};
use fredkit_testkit::RedisServer;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// This process's tracing output (fred's `log` records included), WARN and up.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs the capture once per process; its output from now on.
    fn install() -> (Captured, usize) {
        static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        let captured = CAPTURED
            .get_or_init(|| {
                let captured = Captured::default();
                let writer = captured.clone();
                let _ = tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::WARN)
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .try_init();
                captured
            })
            .clone();
        let from = captured.0.lock().unwrap().len();
        (captured, from)
    }

    fn since(&self, from: usize) -> String {
        let all = self.0.lock().unwrap();
        String::from_utf8_lossy(&all[from.min(all.len())..]).into_owned()
    }
}

/// Tasks alive on this runtime once the counts settle (aborted tasks finish
/// at their next poll).
async fn settled_tasks() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut last = metrics.num_alive_tasks();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = metrics.num_alive_tasks();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_pool_and_every_task_of_the_handle_but_not_dedicated() {
    let server = RedisServer::start().unwrap();
    let baseline = settled_tasks().await;

    let config = RedisConfig::builder()
        .url(server.url())
        .pool_size(2)
        .build()
        .unwrap();
    let redis = Redis::connect(config).await.unwrap();
    redis.wait_connected().await.unwrap();
    let dedicated = redis.dedicated().unwrap();
    dedicated
        .wait_connected(Duration::from_secs(5))
        .await
        .unwrap();
    let _: () = redis
        .client()
        .set("k", "v", None, None, false)
        .await
        .unwrap();
    let with_dedicated = settled_tasks().await;

    redis.shutdown().await.unwrap();
    // Only the dedicated connection's task is left (one per fred client).
    let after = settled_tasks().await;
    assert!(
        after <= baseline + 1,
        "tasks: {baseline} before the handle, {with_dedicated} with it, {after} after shutdown"
    );
    assert!(!redis.pool().is_connected());

    // The dedicated connection is not the pool's: it still answers.
    let v: Option<String> = dedicated.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));

    // A command on the closed pool fails without waiting for a reconnection.
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        redis.client().get::<Option<String>, _>("k"),
    )
    .await
    .expect("a command after shutdown hung");
    assert!(r.is_err(), "{r:?}");

    // Twice is harmless.
    let _ = redis.shutdown().await;
    dedicated.close().await.unwrap();
    drop(dedicated);
    drop(redis);
}

/// A dedicated connection with a blocking command in flight, a raw
/// subscriber connection with a subscription and a replica-confirmed
/// writer's connection are closed (the dedicated one twice at once, then
/// again; the writer from a clone, then again). `close` waits for the blocking command
/// (answered, not cut off), then nothing of them is left running while
/// they are still held; a command on the closed connection fails at once;
/// and when the server then goes away, nothing is logged at WARN or above
/// (a connection left open logs fred's "Connection reset by peer" and
/// reconnect failures).
#[test]
fn dedicated_close_leaves_no_task_and_logs_no_warning() {
    let (captured, _) = Captured::install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Some(RedisServer::start().unwrap());
    let url = server.as_ref().unwrap().url();
    let from = rt.block_on(async {
        let redis = Redis::connect(RedisConfig::from_url(&url).unwrap())
            .await
            .unwrap();
        redis.wait_connected().await.unwrap();
        let baseline = settled_tasks().await;

        let dedicated = Arc::new(redis.dedicated().unwrap());
        dedicated
            .wait_connected(Duration::from_secs(5))
            .await
            .unwrap();
        let subscriber = redis.subscriber().unwrap();
        subscriber
            .wait_connected(Duration::from_secs(5))
            .await
            .unwrap();
        let mut messages = subscriber.message_rx();
        subscriber.subscribe("close-test").await.unwrap();
        // A replica-confirmed writer owns a dedicated connection too.
        let confirmed = redis.confirmed(1, Duration::from_millis(100)).unwrap();
        assert!(
            settled_tasks().await > baseline,
            "the connections run tasks"
        );

        let (_, from) = Captured::install();
        // A blocking command in flight (its own 10 s timeout; it waits up
        // to 5 s), answered by a push made while `close` waits for it.
        let blocked = {
            let d = Arc::clone(&dedicated);
            tokio::spawn(async move {
                let options = fred::prelude::Options {
                    timeout: Some(Duration::from_secs(10)),
                    ..Default::default()
                };
                d.with_options(&options)
                    .blpop::<Option<(String, String)>, _>("close-test:list", 5.0)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let push = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _: i64 = redis.client().lpush("close-test:list", "v").await.unwrap();
        };
        let (a, b, ()) = tokio::join!(dedicated.close(), dedicated.close(), push);
        a.unwrap();
        b.unwrap();
        dedicated.close().await.unwrap(); // idempotent
        subscriber.close().await.unwrap();
        confirmed.clone().close().await.unwrap();
        confirmed.close().await.unwrap();
        let answered = blocked.await.unwrap().unwrap();
        assert_eq!(
            answered,
            Some(("close-test:list".to_string(), "v".to_string())),
            "the blocking command was cut off"
        );

        assert_eq!(
            settled_tasks().await,
            baseline,
            "a task of a closed connection is left"
        );
        assert!(!dedicated.is_connected() && !subscriber.is_connected());
        // Closed: commands fail without waiting for a reconnection.
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            dedicated.get::<Option<String>, _>("k"),
        )
        .await
        .expect("a command after close hung");
        assert!(r.is_err(), "{r:?}");
        let w = tokio::time::timeout(
            Duration::from_secs(20),
            confirmed.write("k", |c| async move {
                c.set::<(), _, _>("k", "v", None, None, false).await
            }),
        )
        .await
        .expect("a confirmed write after close hung");
        assert!(w.is_err(), "{w:?}");
        // The subscriber's message stream has ended.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while !matches!(
                messages.recv().await,
                Err(tokio::sync::broadcast::error::RecvError::Closed)
            ) {}
        })
        .await;
        assert!(ended.is_ok(), "the subscriber's messages did not end");

        redis.shutdown().await.unwrap();
        // Redis goes away while the closed connections are still held.
        drop(server.take());
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop((dedicated, subscriber, confirmed));
        from
    });
    drop(rt);
    let text = captured.since(from);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "warnings after close: {warnings:#?}");
}
