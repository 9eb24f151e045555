//! Runnable: `cargo run -p fredkit-pubsub --example fanout`
//!
//! Uses `REDIS_URL` if set, otherwise starts a throwaway redis-server with
//! fredkit-testkit. Two local receivers share one subscriber connection; a
//! cut connection is noticed (Gap) and healed without user action.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fred::interfaces::ClientLike;
use fredkit_conn::Redis;
use fredkit_pubsub::{Delivery, Publisher, Subscriber};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
struct CacheInvalidated {
    key: String,
    version: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _server;
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            let server = fredkit_testkit::RedisServer::start()?;
            let url = server.url();
            _server = server;
            url
        }
    };
    let redis = Redis::from_url(&url).await?;
    let subscriber = Subscriber::new(&redis).await?;
    let publisher = Publisher::new(&redis);

    let mut first = subscriber
        .subscribe::<CacheInvalidated>("invalidations")
        .await?;
    let mut second = subscriber
        .subscribe::<CacheInvalidated>("invalidations")
        .await?;

    for version in 1..=3 {
        let msg = CacheInvalidated {
            key: "user:42".into(),
            version,
        };
        publisher.publish("invalidations", &msg).await?;
    }
    for (name, sub) in [("first", &mut first), ("second", &mut second)] {
        for _ in 0..3 {
            if let Some(Delivery::Message(m)) = sub.next().await {
                println!("{name}: {:?}", m.payload?);
            }
        }
    }

    // Cut the subscriber connection: the subscriber resubscribes by itself
    // and every receiver is told that messages may have been lost.
    let _: i64 = redis
        .client()
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec!["KILL", "TYPE", "pubsub"],
        )
        .await?;
    while !matches!(
        tokio::time::timeout(Duration::from_secs(10), first.next()).await?,
        Some(Delivery::Gap)
    ) {}
    println!("first: gap reported (an L1 cache would flush here)");
    Ok(())
}
