//! Demo section: fredkit-pubsub.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{bail, Result};
use fred::prelude::*;
use fredkit_pubsub::{Delivery, Publisher, Subscriber};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub(crate) const SECTION: Section = Section {
    name: "pubsub",
    title: "fredkit-pubsub: typed channels, fan-out, gaps after reconnects",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

#[derive(Debug, Serialize, Deserialize)]
struct PriceChanged {
    sku: String,
    cents: u64,
}

async fn next<T: std::fmt::Debug>(
    sub: &mut fredkit_pubsub::Subscription<T>,
) -> Result<Delivery<T>> {
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => bail!("subscription ended"),
        Err(_) => bail!("nothing arrived within 5 s"),
    }
}

async fn tour(demo: &Demo) -> Result<()> {
    let redis = &demo.redis;
    let subscriber = Subscriber::new(redis).await?;
    let publisher = Publisher::new(redis);
    step(
        "Subscriber::new(&redis) / Publisher::new(&redis)",
        format!(
            "one subscriber connection; sharded pub/sub: {}",
            subscriber.is_sharded()
        ),
    );

    let mut a = subscriber.subscribe::<PriceChanged>("demo:prices").await?;
    let mut b = subscriber.subscribe::<PriceChanged>("demo:prices").await?;
    let receivers = publisher
        .publish(
            "demo:prices",
            &PriceChanged {
                sku: "tea-42".into(),
                cents: 499,
            },
        )
        .await?;
    step(
        "publisher.publish(\"demo:prices\", &PriceChanged { .. })",
        format!("received by {receivers} subscriber connection (fanned out to 2 local receivers)"),
    );
    for (name, sub) in [("a", &mut a), ("b", &mut b)] {
        if let Delivery::Message(m) = next(sub).await? {
            step(
                &format!("receiver {name}.next()"),
                format!("{} -> {:?}", m.channel, m.payload?),
            );
        }
    }

    publisher
        .publish_bytes("demo:prices", vec![0xc1_u8])
        .await?;
    if let Delivery::Message(m) = next(&mut a).await? {
        step(
            "a garbage payload arrives",
            format!(
                "one decode error, the stream goes on: {}",
                m.payload.err().map(|e| e.to_string()).unwrap_or_default()
            ),
        );
    }
    let _ = next(&mut b).await?;

    // Cut the subscriber connection: it resubscribes and reports the gap.
    let killed: i64 = redis
        .client()
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec!["KILL", "TYPE", "pubsub"],
        )
        .await
        .unwrap_or(0);
    step(
        "CLIENT KILL TYPE pubsub",
        format!("{killed} connection(s) cut"),
    );
    if killed > 0 {
        loop {
            match next(&mut a).await? {
                Delivery::Gap => break,
                other => println!("    (skipping {other:?})"),
            }
        }
        step(
            "a.next()",
            format!(
                "Delivery::Gap: resubscribed by itself; messages in between are lost (resubscribes: {})",
                subscriber.metrics().resubscribes
            ),
        );
        let mut delivered = false;
        for _ in 0..50 {
            publisher
                .publish(
                    "demo:prices",
                    &PriceChanged {
                        sku: "tea-42".into(),
                        cents: 450,
                    },
                )
                .await?;
            if let Ok(Some(Delivery::Message(m))) =
                tokio::time::timeout(Duration::from_millis(100), a.next()).await
            {
                step("after the gap, a.next()", format!("{:?}", m.payload?));
                delivered = true;
                break;
            }
        }
        if !delivered {
            bail!("no message after the gap");
        }
    }
    step(
        "subscriber.metrics()",
        format!("{:?}", subscriber.metrics()),
    );
    Ok(())
}
