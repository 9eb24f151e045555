//! Demo section: fredkit-streams.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{bail, Result};
use fred::prelude::*;
use fredkit_core::{KeySpace, MsgPack};
use fredkit_streams::{
    Message, Producer, ProducerConfig, StreamAdmin, StreamKeys, Worker, WorkerConfig,
    TRACE_ID_HEADER,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const SECTION: Section = Section {
    name: "streams",
    title: "fredkit-streams: at-least-once workers on Redis Streams",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    cents: u64,
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn tour(demo: &Demo) -> Result<()> {
    let redis = &demo.redis;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let space = KeySpace::new(format!("demo:streams:{nonce:08x}"))?;
    let keys = StreamKeys::new(&space, "orders")?;
    step(
        "StreamKeys::new(&KeySpace::new(\"demo:streams:…\")?, \"orders\")",
        format!(
            "stream {} and dead letters {} (one hash tag: one cluster slot)",
            keys.stream(),
            keys.dead_letter()
        ),
    );

    let producer = Producer::<Order>::with_config(
        redis,
        keys.clone(),
        ProducerConfig::builder()
            .event_type("order.created")
            .build()?,
        MsgPack,
    );
    let mut ids = Vec::new();
    for id in 1..=8 {
        let trace = format!("trace-{id:04}");
        ids.push(
            producer
                .publish_with(
                    &Order {
                        id,
                        cents: 100 * id,
                    },
                    &[(TRACE_ID_HEADER, &trace)],
                )
                .await?,
        );
    }
    step(
        "producer.publish_with(&Order { .. }, &[(\"trace_id\", ..)]) x8",
        format!(
            "ids {} … {} (MAXLEN ~ 1,000,000 trimming in the same XADD)",
            ids[0], ids[7]
        ),
    );
    let _: String = redis
        .client()
        .xadd(
            keys.stream(),
            false,
            None,
            "*",
            vec![("payload", "not msgpack")],
        )
        .await?;
    step("a raw XADD with a garbage payload", "appended");

    // Order 3 fails once (retried after min_idle); order 7 always fails
    // (dead-lettered after 3 deliveries).
    let fixed = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let config = WorkerConfig::builder("billing")
        .concurrency(8)
        .block(Duration::from_millis(100))
        .handler_timeout(Duration::from_millis(200))
        .min_idle(Duration::from_millis(500))
        .claim_interval(Duration::from_millis(100))
        .max_deliveries(3)
        .build()?;
    let (f, l) = (Arc::clone(&fixed), Arc::clone(&log));
    let worker = Worker::start(redis, keys.clone(), config, move |m: Message<Order>| {
        let fail = (m.payload.id == 3 && m.deliveries == 1)
            || (m.payload.id == 7 && !f.load(Ordering::SeqCst));
        l.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
            "order {} delivery {} trace {} -> {}",
            m.payload.id,
            m.deliveries,
            m.trace_id().unwrap_or("-"),
            if fail { "Err" } else { "Ok" }
        ));
        async move {
            if fail {
                Err(format!("card declined for order {}", m.payload.id))
            } else {
                Ok(())
            }
        }
    })
    .await?;
    step(
        "Worker::start(&redis, keys, WorkerConfig::builder(\"billing\")…, handler)",
        format!(
            "consumer {} reading with XREADGROUP BLOCK on its own connection",
            worker.consumer()
        ),
    );

    let admin = StreamAdmin::new(redis, keys.clone());
    wait_for("7 orders handled", || worker.metrics().handled == 7).await?;
    loop {
        if admin.dead_letter_count().await? == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = log.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
    step("what the handler saw", lines);
    let m = worker.metrics();
    step(
        "worker.metrics()",
        format!(
            "handled {}, failed {}, retried {}, dead-lettered {} (decode errors {}), reclaimed {}",
            m.handled, m.failed, m.retried, m.dead_lettered, m.decode_errors, m.reclaimed
        ),
    );
    let mut dead = String::new();
    for d in admin.dead_letters(10).await? {
        let what = match d.decode::<Order, _>(&MsgPack) {
            Ok(o) => format!("order {}", o.id),
            Err(_) => "undecodable entry".to_string(),
        };
        dead.push_str(&format!(
            "{what}: {} deliveries, last error: {}\n",
            d.deliveries, d.error
        ));
    }
    step("admin.dead_letters(10)", dead.trim_end());
    let g = admin.group("billing").await?;
    let pending = admin.pending("billing").await?;
    step(
        "admin.group(\"billing\") / admin.pending(\"billing\")",
        format!(
            "lag {:?}, pending {} (nothing stuck)",
            g.and_then(|g| g.lag),
            pending.total
        ),
    );

    fixed.store(true, Ordering::SeqCst);
    let replay = admin.replay_dead_letters(10).await?;
    step(
        "(bug fixed) admin.replay_dead_letters(10)",
        format!(
            "{} replayed as new entries, {} left (no payload to replay)",
            replay.replayed, replay.skipped
        ),
    );
    wait_for("the replayed order", || worker.metrics().handled == 8).await?;

    let report = worker.shutdown().await;
    step(
        "worker.shutdown().await",
        format!(
            "in flight at stop {}, abandoned {}, unacked {}; handled {} in total",
            report.in_flight_at_stop, report.abandoned, report.unacked, report.metrics.handled
        ),
    );
    let _: i64 = redis
        .client()
        .unlink(vec![
            keys.stream().to_string(),
            keys.dead_letter().to_string(),
        ])
        .await?;
    Ok(())
}
