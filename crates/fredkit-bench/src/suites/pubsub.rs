//! `pubsub`: publish -> receive through fredkit-pubsub (one Publisher, one
//! Subscriber), against the same flow on raw fred (Client::publish +
//! SubscriberClient::message_rx), interleaved.

use super::Suite;
use crate::harness::{interleave_with, Measurement, Report, Runner};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fredkit_core::MsgPack;
use fredkit_pubsub::{Delivery, PubSubOptions, Publisher, Subscriber, Subscription};
use futures::future::BoxFuture;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The `pubsub` suite.
pub(crate) struct PubSub;

impl Suite for PubSub {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn about(&self) -> &'static str {
        "publish -> receive, one publisher and one subscriber, fredkit vs raw fred"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

/// Publishers in flight at once during the throughput runs.
const IN_FLIGHT: usize = 64;

fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Publishes `n` timestamps (`IN_FLIGHT` at once, or one at a time when
/// `sequential`) with `publish`, while `receive` collects them; returns the
/// measurement: messages received, elapsed first publish -> last receive,
/// and per-message publish -> receive latencies.
async fn e2e<P, PF, R, RF>(n: u64, sequential: bool, publish: P, receive: R) -> Result<Measurement>
where
    P: Fn(u64) -> PF + Send + Sync + 'static,
    PF: std::future::Future<Output = Result<()>> + Send,
    R: FnOnce(u64, Instant) -> RF,
    RF: std::future::Future<Output = Result<Vec<u64>>> + Send + 'static,
{
    let base = Instant::now();
    let receiver = tokio::spawn(receive(n, base));
    let publish = Arc::new(publish);
    let started = Instant::now();
    let workers = if sequential { 1 } else { IN_FLIGHT as u64 };
    let mut tasks = Vec::new();
    for w in 0..workers {
        let publish = Arc::clone(&publish);
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                publish(nanos_since(base)).await?;
                i += workers;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let latencies = receiver.await??;
    let elapsed = started.elapsed();
    if (latencies.len() as u64) < n {
        bail!("only {} of {n} messages arrived", latencies.len());
    }
    Ok(Measurement::new(n, elapsed, latencies))
}

async fn receive_fredkit(
    sub: Arc<Mutex<Subscription<u64>>>,
    n: u64,
    base: Instant,
) -> Result<Vec<u64>> {
    let mut sub = sub.lock().await;
    let mut lat = Vec::with_capacity(n as usize);
    while (lat.len() as u64) < n {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Delivery::Message(m))) => {
                let sent = m.payload?;
                lat.push(nanos_since(base).saturating_sub(sent));
            }
            Ok(Some(Delivery::Lagged(k))) => bail!("fredkit subscriber lagged by {k}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("subscription ended"),
            Err(_) => break,
        }
    }
    Ok(lat)
}

async fn receive_raw(
    rx: Arc<Mutex<tokio::sync::broadcast::Receiver<fred::types::Message>>>,
    n: u64,
    base: Instant,
) -> Result<Vec<u64>> {
    let mut rx = rx.lock().await;
    let mut lat = Vec::with_capacity(n as usize);
    while (lat.len() as u64) < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Ok(m)) => {
                let bytes = m.value.as_bytes().context("payload not bytes")?;
                let sent: u64 = rmp_serde::from_slice(bytes)?;
                lat.push(nanos_since(base).saturating_sub(sent));
            }
            Ok(Err(e)) => bail!("raw subscriber: {e}"),
            Err(_) => break,
        }
    }
    Ok(lat)
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let channel = "bench:pubsub";
    let raw_channel = "bench:pubsub:raw";

    let publisher = Publisher::new(&redis);
    // The same buffer as the raw side's fred event buffer (8 Ki), so neither
    // side is measured against a smaller queue.
    let subscriber = Subscriber::with_codec(
        &redis,
        MsgPack,
        PubSubOptions::default().receiver_capacity(1 << 13),
    )
    .await?;
    let sub = Arc::new(Mutex::new(subscriber.subscribe::<u64>(channel).await?));

    let raw_client = ctx.fred_client().await?;
    let raw_sub: SubscriberClient = Builder::from_config(Config::from_url(ctx.url())?)
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(1);
            p.broadcast_channel_capacity = 1 << 13;
        })
        .build_subscriber_client()?;
    raw_sub.init().await?;
    let raw_rx = Arc::new(Mutex::new(raw_sub.message_rx()));
    raw_sub.subscribe(raw_channel).await?;

    let n: u64 = if ctx.quick() { 20_000 } else { 100_000 };
    let lat_n: u64 = if ctx.quick() { 1_000 } else { 5_000 };

    let make_fredkit = |count: u64, sequential: bool| -> Runner<'_> {
        let publisher = publisher.clone();
        let sub = Arc::clone(&sub);
        Box::new(move || {
            let publisher = publisher.clone();
            let sub = Arc::clone(&sub);
            Box::pin(e2e(
                count,
                sequential,
                move |ts| {
                    let publisher = publisher.clone();
                    async move {
                        publisher.publish(channel, &ts).await?;
                        Ok(())
                    }
                },
                move |n, base| receive_fredkit(sub, n, base),
            ))
        })
    };
    let make_raw = |count: u64, sequential: bool| -> Runner<'_> {
        let client = raw_client.clone();
        let rx = Arc::clone(&raw_rx);
        Box::new(move || {
            let client = client.clone();
            let rx = Arc::clone(&rx);
            Box::pin(e2e(
                count,
                sequential,
                move |ts| {
                    let client = client.clone();
                    async move {
                        let payload = rmp_serde::to_vec_named(&ts)?;
                        let _: u64 = client.publish(raw_channel, payload).await?;
                        Ok(())
                    }
                },
                move |n, base| receive_raw(rx, n, base),
            ))
        })
    };

    let throughput = interleave_with(
        ctx.rounds(),
        vec![
            ("fredkit e2e".to_string(), make_fredkit(n, false)),
            ("raw fred e2e".to_string(), make_raw(n, false)),
        ],
    )
    .await?;
    report.ops(
        "e2e_msgs_per_s",
        throughput[0].ops_per_sec,
        format!("publish -> receive, {IN_FLIGHT} publishes in flight"),
    );
    report.ops(
        "raw_e2e_msgs_per_s",
        throughput[1].ops_per_sec,
        "same flow on raw fred",
    );
    report.ratio(
        "e2e_vs_raw",
        throughput[0].ratio_to(&throughput[1]),
        "fredkit-pubsub / raw fred",
    );

    let latency = interleave_with(
        ctx.rounds(),
        vec![
            ("fredkit latency".to_string(), make_fredkit(lat_n, true)),
            ("raw fred latency".to_string(), make_raw(lat_n, true)),
        ],
    )
    .await?;
    report.micros("latency_p50_us", latency[0].p50, "one publish at a time");
    report.micros("latency_p99_us", latency[0].p99, "one publish at a time");
    report.micros(
        "raw_latency_p50_us",
        latency[1].p50,
        "raw fred, one publish at a time",
    );
    report.micros(
        "raw_latency_p99_us",
        latency[1].p99,
        "raw fred, one publish at a time",
    );

    let _ = raw_sub.quit().await;
    Ok(())
}
