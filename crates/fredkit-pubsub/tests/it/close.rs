//! `Subscriber::close`: no task of the subscriber left while its handles are
//! held, every subscription ended, no warning logged (ours or fred's,
//! captured from the tracing output) when the server then goes away,
//! idempotent, and no subscribing afterwards. Needs a process of its own
//! (nextest runs every test in one): it installs the global log capture and
//! counts the runtime's tasks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
use fredkit_testkit::capture;

use std::time::Duration;

use fredkit_core::ErrorKind;
use fredkit_pubsub::{Delivery, Publisher, Subscriber};
use fredkit_testkit::{connect, shared_url, unique_prefix, RedisServer, Topology};
use futures::StreamExt;
use rstest::rstest;

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until the runtime's task count is back to `baseline`:
/// an aborted task leaves the count when the runtime next polls it.
async fn settle(baseline: usize) -> usize {
    for _ in 0..400 {
        if alive() <= baseline {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    alive()
}

/// A subscriber with live subscriptions (a channel, and on a standalone
/// server a pattern) that received a message is closed twice (once from a
/// clone, once concurrently). Then, with its handle still held: no task of
/// it is left (its three tasks and fred's connection task), each
/// subscription's stream ends, subscribing again fails with a connection
/// error. On a server of the test's own, the server is then killed while
/// the runtime and the closed subscriber live on: nothing is logged at WARN
/// or above (a subscriber connection left open logs fred's "Connection
/// reset by peer" and reconnect failures).
#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
fn close_leaves_no_task_and_logs_no_warning(#[case] topology: Topology) {
    let _ = capture::Logs::install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = match topology {
        Topology::Standalone => Some(RedisServer::start().unwrap()),
        _ => None,
    };
    let url = match &server {
        Some(s) => s.url(),
        None => shared_url(topology).unwrap(),
    };
    let after_close = rt.block_on(async {
        let redis = connect(&url).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let baseline = alive();
        let channel = unique_prefix("close");
        let subscriber = Subscriber::new(&redis).await.unwrap();
        let mut messages = subscriber.subscribe::<u64>(&channel).await.unwrap();
        let mut pattern = match topology {
            Topology::Standalone => Some(
                subscriber
                    .psubscribe::<u64>(&format!("{channel}*"))
                    .await
                    .unwrap(),
            ),
            _ => None,
        };
        Publisher::new(&redis)
            .publish(&channel, &7u64)
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("no message before close");
        assert!(
            matches!(&first, Some(Delivery::Message(m)) if *m.payload.as_ref().unwrap() == 7),
            "{first:?}"
        );
        assert!(alive() > baseline, "the subscriber runs tasks");

        // From here on nothing may be logged at WARN or above.
        let logs = capture::Logs::install();
        let clone = subscriber.clone();
        tokio::join!(subscriber.close(), clone.close());
        subscriber.close().await; // idempotent

        assert_eq!(
            settle(baseline).await,
            baseline,
            "a task of the closed subscriber is left"
        );
        // Each subscription ends (after what it had already received).
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while messages.next().await.is_some() {}
            if let Some(p) = pattern.as_mut() {
                while p.next().await.is_some() {}
            }
        })
        .await;
        assert!(ended.is_ok(), "a subscription did not end after close");
        let again = subscriber.subscribe::<u64>(&channel).await.unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Connection, "{again}");
        drop((messages, pattern));

        redis.shutdown().await.unwrap();
        if let Some(server) = server.take() {
            // Redis goes away while the closed subscriber is still held.
            drop(server);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop((subscriber, clone));
        logs
    });
    drop(rt);
    let warnings = after_close.warnings();
    assert!(warnings.is_empty(), "warnings after close: {warnings:#?}");
}
