//! `streams`: Redis Streams through fredkit-streams (`Producer` + 4
//! `Worker`s) against the same flow hand-written on raw fred (XADD,
//! XREADGROUP COUNT 100 BLOCK on 4 dedicated connections, batched XACK on
//! the shared client), interleaved, and against the peer ruststream-fred 0.7
//! doing the same work (its publisher, an app of 4 subscriptions on one
//! consumer group, its runtime's acknowledgements; `e2e_vs_ruststream`).
//! Plus raw XADD throughput at concurrency 64, the ceiling of any producer.

use super::Suite;
use crate::harness::{
    interleave, interleave_with, op, Contender, Measurement, Report, Runner, Unit,
};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use fred::prelude::*;
use fredkit_core::KeySpace;
use fredkit_streams::{Message, Producer, StreamKeys, Worker, WorkerConfig};
use futures::future::BoxFuture;
use rs::{Broker, PublishExt, SubscriberSettings};
use ruststream_fred::stream::prelude as rs;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `streams` suite.
pub(crate) struct Streams;

impl Suite for Streams {
    fn name(&self) -> &'static str {
        "streams"
    }

    fn about(&self) -> &'static str {
        "publish -> handled -> acked: Producer + 4 Workers vs the same flow on raw fred and on ruststream-fred; raw XADD"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

/// Publishers in flight at once (XADD and e2e throughput).
const IN_FLIGHT: usize = 64;
/// Consumers on each side.
const CONSUMERS: usize = 4;
/// XREADGROUP COUNT on each side.
const COUNT: u64 = 100;
/// XREADGROUP BLOCK on each side.
const BLOCK_MS: u64 = 100;
/// Approximate MAXLEN on each side (fredkit's Producer default).
const MAXLEN: i64 = 1_000_000;
const GROUP: &str = "g";

fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Shared by the handlers of one side: messages handled, their latencies.
#[derive(Default)]
struct Sink {
    acked: AtomicU64,
    reads: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

impl Sink {
    fn record(&self, base: Instant, sent: u64) {
        let lat = nanos_since(base).saturating_sub(sent);
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lat);
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Publishes `n` timestamps with `publish` (`IN_FLIGHT` at once, or one at a
/// time), then waits until `acked()` has grown by `n`. Elapsed: first publish
/// to the last acknowledgement seen.
#[allow(clippy::too_many_arguments)] // a measurement's knobs, read at one call site each
async fn e2e<P, PF>(
    n: u64,
    sequential: bool,
    base: Instant,
    publish: P,
    acked: impl Fn() -> u64,
    diag: impl Fn() -> String,
    sink: &Sink,
    settled: Option<(&Client, &str)>,
) -> Result<Measurement>
where
    P: Fn(u64) -> PF + Send + Sync + 'static,
    PF: std::future::Future<Output = Result<()>> + Send,
{
    let before = acked();
    sink.take();
    let publish = Arc::new(publish);
    let started = Instant::now();
    let tasks_n = if sequential { 1 } else { IN_FLIGHT as u64 };
    let mut tasks = Vec::new();
    for t in 0..tasks_n {
        let publish = Arc::clone(&publish);
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                publish(nanos_since(base)).await?;
                i += tasks_n;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked() < before + n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} messages acknowledged ({})",
                acked() - before,
                diag()
            );
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    // A side that counts in its handler (before the acknowledgement) is
    // done once nothing of the group is pending any more.
    if let Some((client, key)) = settled {
        loop {
            let v: Value = client.xpending(key, GROUP, ()).await?;
            let pending = match &v {
                Value::Array(parts) => parts.first().and_then(|p| p.as_i64()).unwrap_or(-1),
                _ => -1,
            };
            if pending == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{pending} messages still pending ({})", diag());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    let elapsed = started.elapsed();
    Ok(Measurement::new(n, elapsed, sink.take()))
}

/// The raw side's publish: the payload encoded as the Producer encodes it,
/// `XADD key MAXLEN ~ MAXLEN * payload <msgpack>`.
async fn xadd_payload(client: &Client, key: String, value: u64) -> Result<()> {
    let payload = rmp_serde::to_vec_named(&value)?;
    let _: String = client
        .xadd(
            key,
            false,
            ("MAXLEN", "~", MAXLEN),
            "*",
            vec![("payload", payload)],
        )
        .await?;
    Ok(())
}

/// The hand-written consumer: read a batch, handle it, XACK it, repeat.
async fn raw_consumer(
    reader: Client,
    shared: Client,
    key: String,
    name: String,
    base: Instant,
    sink: Arc<Sink>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        // RESP2: nil, or [[key, [[id, [field, value, ...]], ...]]].
        let reply: Value = reader
            .xreadgroup(
                GROUP,
                name.as_str(),
                Some(COUNT),
                Some(BLOCK_MS),
                false,
                key.as_str(),
                ">",
            )
            .await?;
        let Value::Array(streams) = reply else {
            continue;
        };
        for stream in streams {
            let Value::Array(mut kv) = stream else {
                continue;
            };
            let Some(Value::Array(entries)) = kv.pop() else {
                continue;
            };
            let mut ids = Vec::with_capacity(entries.len());
            for entry in entries {
                let Value::Array(mut parts) = entry else {
                    continue;
                };
                let fields = parts.pop();
                let Some(id) = parts.pop().and_then(|v| v.as_string()) else {
                    continue;
                };
                if let Some(Value::Array(fields)) = fields {
                    if let Some(payload) = fields.get(1).and_then(|v| v.as_bytes()) {
                        let sent: u64 = rmp_serde::from_slice(payload)?;
                        sink.record(base, sent);
                    }
                }
                ids.push(id);
            }
            let n = ids.len() as u64;
            sink.reads.fetch_add(1, Ordering::Relaxed);
            let _: i64 = shared.xack(key.as_str(), GROUP, ids).await?;
            sink.acked.fetch_add(n, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let base = Instant::now();
    let redis = ctx.redis().await?;
    let shared = ctx.fred_client().await?;
    let space = KeySpace::new("bench:streams")?;
    // Fresh keys per run (a throwaway server normally, but REDIS_URL may not be).
    let run_id: u32 = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);

    // --- raw XADD at concurrency 64, and Producer::publish beside it.
    let xadd_key = format!("bench:streams:xadd:{run_id:08x}");
    let xadd = {
        let c = shared.clone();
        let key = xadd_key.clone();
        Contender::new(
            "raw xadd",
            IN_FLIGHT,
            op(move |i| {
                let c = c.clone();
                let key = key.clone();
                async move { xadd_payload(&c, key, i).await }
            }),
        )
    };
    let publish_keys = StreamKeys::new(&space, &format!("publish-{run_id:08x}"))?;
    let publisher = Producer::<u64>::new(&redis, publish_keys.clone());
    let publish = {
        let p = publisher.clone();
        Contender::new(
            "fredkit publish",
            IN_FLIGHT,
            op(move |i| {
                let p = p.clone();
                async move {
                    p.publish(&i).await?;
                    Ok(())
                }
            }),
        )
    };
    let s = interleave(ctx.rounds(), ctx.load(), &[xadd, publish]).await?;
    let [raw_xadd, fk_publish] = s.as_slice() else {
        bail!("expected 2 summaries");
    };

    // --- end to end.
    // fredkit: one Producer, 4 Workers on one stream for the whole suite.
    let e2e_keys = StreamKeys::new(&space, &format!("e2e-{run_id:08x}"))?;
    let producer = Producer::<u64>::new(&redis, e2e_keys.clone());
    let fk_sink = Arc::new(Sink::default());
    let mut workers = Vec::new();
    for _ in 0..CONSUMERS {
        let sink = Arc::clone(&fk_sink);
        let config = WorkerConfig::builder(GROUP)
            .count(COUNT as usize)
            .concurrency(4 * COUNT as usize)
            .block(Duration::from_millis(BLOCK_MS))
            .build()?;
        workers.push(
            Worker::start(&redis, e2e_keys.clone(), config, move |m: Message<u64>| {
                sink.record(base, m.payload);
                async { Ok::<(), Infallible>(()) }
            })
            .await?,
        );
    }
    let workers = Arc::new(workers);
    // raw: the same shape by hand.
    let raw_key = format!("bench:streams:raw-e2e:{run_id:08x}");
    let _: Value = shared
        .xgroup_create(raw_key.as_str(), GROUP, "0", true)
        .await
        .context("XGROUP CREATE")?;
    let raw_sink = Arc::new(Sink::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut raw_consumers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..CONSUMERS {
        let reader = ctx.fred_client().await?;
        readers.push(reader.clone());
        raw_consumers.push(tokio::spawn(raw_consumer(
            reader,
            shared.clone(),
            raw_key.clone(),
            format!("raw-{i}"),
            base,
            Arc::clone(&raw_sink),
            Arc::clone(&stop),
        )));
    }
    // ruststream-fred: an app with CONSUMERS subscriptions (one consumer
    // each, up to 4 x COUNT handlers at once like the fredkit side, BLOCK
    // like the others), and a publisher on a broker of its own.
    let _: i64 = shared.unlink(RS_STREAM).await?;
    let rs_sink = Arc::new(Sink::default());
    let rs_app = {
        let sink = Arc::clone(&rs_sink);
        let url = ctx.url().to_string();
        rs::RustStream::new(rs::AppInfo::new("fredkit-bench", "0.1.0")).with_broker(
            ruststream_fred::RedisBroker::standalone(url),
            move |b| {
                for i in 0..CONSUMERS {
                    b.include(
                        rs::subscriber(
                            rs::RedisStream::new(RS_STREAM)
                                .group(GROUP)
                                .consumer(format!("rs-{i}"))
                                .block(Duration::from_millis(BLOCK_MS)),
                            RsSink {
                                base,
                                sink: Arc::clone(&sink),
                            },
                        )
                        .workers(rs::nonzero!(400))
                        .build(),
                    );
                }
            },
        )
    };
    let rs_running = rs_app
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("ruststream app start: {e}"))?;
    let rs_broker = ruststream_fred::RedisBroker::standalone(ctx.url().to_string())
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("ruststream broker connect: {e}"))?;
    let rs_publisher = Arc::new(rs_broker.publisher());

    // Let the workers' dedicated connections come up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // About 2 s per round at ~100 k msgs/s, like the other suites' windows
    // (50 k messages, ~0.5 s, left the ratio at the mercy of single stalls).
    let n: u64 = ctx.pick(200_000, 10_000);
    let lat_n: u64 = ctx.pick(3_000, 1_000);
    let make_fk = |count: u64, sequential: bool| -> Runner<'_> {
        let producer = producer.clone();
        let workers = Arc::clone(&workers);
        let sink = Arc::clone(&fk_sink);
        Box::new(move || {
            let producer = producer.clone();
            let workers = Arc::clone(&workers);
            let sink = Arc::clone(&sink);
            Box::pin(async move {
                e2e(
                    count,
                    sequential,
                    base,
                    move |ts| {
                        let producer = producer.clone();
                        async move {
                            producer.publish(&ts).await?;
                            Ok(())
                        }
                    },
                    || workers.iter().map(|w| w.metrics().acked).sum(),
                    || {
                        format!(
                            "{:?}",
                            workers.iter().map(|w| w.metrics()).collect::<Vec<_>>()
                        )
                    },
                    &sink,
                    None,
                )
                .await
            })
        })
    };
    let make_raw = |count: u64, sequential: bool| -> Runner<'_> {
        let client = shared.clone();
        let key = raw_key.clone();
        let sink = Arc::clone(&raw_sink);
        Box::new(move || {
            let client = client.clone();
            let key = key.clone();
            let sink = Arc::clone(&sink);
            Box::pin(async move {
                let acked = Arc::clone(&sink);
                e2e(
                    count,
                    sequential,
                    base,
                    move |ts| {
                        let client = client.clone();
                        let key = key.clone();
                        async move { xadd_payload(&client, key, ts).await }
                    },
                    move || acked.acked.load(Ordering::Relaxed),
                    || String::from("raw consumers stalled"),
                    &sink,
                    None,
                )
                .await
            })
        })
    };
    let make_rs = |count: u64, sequential: bool| -> Runner<'_> {
        let publisher = Arc::clone(&rs_publisher);
        let sink = Arc::clone(&rs_sink);
        let client = shared.clone();
        Box::new(move || {
            let publisher = Arc::clone(&publisher);
            let sink = Arc::clone(&sink);
            let client = client.clone();
            Box::pin(async move {
                let handled = Arc::clone(&sink);
                e2e(
                    count,
                    sequential,
                    base,
                    move |ts| {
                        let publisher = Arc::clone(&publisher);
                        async move {
                            publisher
                                .message(&RsTs(ts))
                                .publish()
                                .await
                                .map_err(|e| anyhow::anyhow!("ruststream publish: {e}"))?;
                            Ok(())
                        }
                    },
                    move || handled.acked.load(Ordering::Relaxed),
                    || String::from("ruststream consumers stalled"),
                    &sink,
                    Some((&client, RS_STREAM)),
                )
                .await
            })
        })
    };
    let throughput = interleave_with(
        ctx.rounds(),
        vec![
            ("fredkit e2e".to_string(), make_fk(n, false)),
            ("raw fred e2e".to_string(), make_raw(n, false)),
            ("ruststream e2e".to_string(), make_rs(n, false)),
        ],
    )
    .await?;
    let latency = interleave_with(
        ctx.rounds(),
        vec![
            ("fredkit latency".to_string(), make_fk(lat_n, true)),
            ("raw fred latency".to_string(), make_raw(lat_n, true)),
            ("ruststream latency".to_string(), make_rs(lat_n, true)),
        ],
    )
    .await?;

    // Average entries per XREADGROUP over the whole suite, each side.
    let fk_batch = {
        let (d, r) = workers.iter().fold((0, 0), |(d, r), w| {
            let m = w.metrics();
            (d + m.delivered, r + m.reads)
        });
        d as f64 / r.max(1) as f64
    };
    let raw_batch = raw_sink.acked.load(Ordering::Relaxed) as f64
        / raw_sink.reads.load(Ordering::Relaxed).max(1) as f64;

    // Tear down (not measured).
    stop.store(true, Ordering::Relaxed);
    for c in raw_consumers {
        c.await??;
    }
    for r in readers {
        let _ = r.quit().await;
    }
    if let Err(e) = rs_running.shutdown().await {
        println!("   ruststream app shutdown: {e}");
    }
    drop(rs_publisher);
    let _: i64 = shared.unlink(RS_STREAM).await?;
    if let Ok(workers) = Arc::try_unwrap(workers) {
        for w in workers {
            w.shutdown().await;
        }
    }
    let _: i64 = shared
        .unlink(vec![
            xadd_key,
            raw_key,
            publish_keys.stream().to_string(),
            e2e_keys.stream().to_string(),
            e2e_keys.dead_letter().to_string(),
        ])
        .await?;

    report.summary(
        "raw_xadd",
        raw_xadd,
        &format!("XADD MAXLEN ~, {IN_FLIGHT} tasks"),
    );
    report.ops(
        "publish_ops",
        fk_publish.ops_per_sec,
        format!("Producer::publish, {IN_FLIGHT} in flight"),
    );
    report.ratio(
        "publish_vs_raw_xadd",
        fk_publish.ratio_to(raw_xadd),
        "Producer::publish / raw XADD",
    );
    let (fk, raw) = (&throughput[0], &throughput[1]);
    report.ops(
        "e2e_msgs_per_s",
        fk.ops_per_sec,
        format!("publish -> handled -> acked, Producer + {CONSUMERS} Workers, {IN_FLIGHT} publishes in flight"),
    );
    report.ops(
        "raw_e2e_msgs_per_s",
        raw.ops_per_sec,
        format!("same flow on raw fred: XADD, XREADGROUP COUNT {COUNT} x{CONSUMERS}, batched XACK"),
    );
    report.ratio(
        "e2e_vs_raw_e2e",
        fk.ratio_to(raw),
        "fredkit-streams e2e / raw fred e2e (goal >= 0.90)",
    );
    let rs = &throughput[2];
    report.ops(
        "ruststream_e2e_msgs_per_s",
        rs.ops_per_sec,
        format!("same flow on ruststream-fred 0.7: its publisher, an app with {CONSUMERS} subscriptions (400 handlers each), acknowledged by its runtime"),
    );
    report.ratio(
        "e2e_vs_ruststream",
        fk.ratio_to(rs),
        "fredkit-streams e2e / ruststream-fred e2e (goal >= 1.1)",
    );
    report.micros(
        "ruststream_latency_p50_us",
        latency[2].p50,
        "ruststream-fred, one publish at a time",
    );
    report.micros(
        "ruststream_latency_p99_us",
        latency[2].p99,
        "ruststream-fred, one publish at a time",
    );
    report.ratio(
        "e2e_vs_raw_xadd",
        fk.ratio_to(raw_xadd),
        "fredkit-streams e2e / raw XADD alone (goal >= 0.40)",
    );
    report.add(
        "e2e_read_batch",
        fk_batch,
        Unit::Count,
        "fredkit: average entries per XREADGROUP",
    );
    report.add(
        "raw_e2e_read_batch",
        raw_batch,
        Unit::Count,
        "raw: average entries per XREADGROUP",
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    report.add(
        "latency_p99_ms",
        ms(latency[0].p99),
        Unit::Millis,
        "publish -> handler, one publish at a time",
    );
    report.micros(
        "latency_p99_us",
        latency[0].p99,
        "publish -> handler, one publish at a time",
    );
    report.micros(
        "latency_p50_us",
        latency[0].p50,
        "publish -> handler, one publish at a time",
    );
    report.micros(
        "raw_latency_p99_us",
        latency[1].p99,
        "raw fred, one publish at a time",
    );
    report.add(
        "e2e_latency_p99_ms",
        ms(fk.p99),
        Unit::Millis,
        "publish -> handler under the throughput load, ms",
    );
    let _ = shared.quit().await;
    Ok(())
}

// ---- The peer: ruststream-fred 0.7 (its own broker, pool and read
// connections, fred 10), driven by the framework's runtime: an app with one
// subscription per consumer, a handler type (the manual path of the
// framework; no macros), acknowledgement by the runtime after the handler.

/// The stream the peer reads: a fixed name (the framework's
/// `OutgoingDestination` is a constant), emptied before and after the run.
const RS_STREAM: &str = "bench:streams:ruststream-e2e";

/// The publish timestamp, MessagePack-encoded as the other sides encode it.
struct RsTs(u64);

impl rs::Deserialized for RsTs {
    type Output<'a> = RsTs;
    type Error = rmp_serde::decode::Error;

    fn from_payload(payload: &[u8]) -> std::result::Result<RsTs, Self::Error> {
        rmp_serde::from_slice(payload).map(RsTs)
    }
}

impl rs::Input for RsTs {
    type Axis = rs::SoloDeserialized<RsTs>;
}

impl rs::Serialized for RsTs {
    type Error = rmp_serde::encode::Error;

    fn wire_bytes(
        &self,
        buf: &mut rs::BytesMut,
    ) -> std::result::Result<rs::WireBytes<'_>, Self::Error> {
        let bytes = rmp_serde::to_vec(&self.0)?;
        buf.extend_from_slice(&bytes);
        Ok(rs::WireBytes::InBuffer)
    }
}

impl rs::MessageWire for RsTs {
    type Wire = rs::SerializedWire;
}

impl rs::OutgoingDestination for RsTs {
    type Form = rs::FixedName;
    const DESTINATION: &'static str = RS_STREAM;
}

impl rs::MessageHeaders for RsTs {
    type Contract = rs::NoHeaders;
}

/// The peer's handler: records the latency and counts.
struct RsSink {
    base: Instant,
    sink: Arc<Sink>,
}

impl rs::Handle<RsTs> for RsSink {
    fn handle(
        &self,
        ts: &RsTs,
        _outs: &(),
        _ctx: &mut rs::Context<'_>,
    ) -> impl std::future::Future<Output = std::result::Result<(), rs::HandlerOutcome>> {
        self.sink.record(self.base, ts.0);
        self.sink.acked.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(()))
    }
}
