#![allow(missing_docs, clippy::unwrap_used)]
use fredkit_core::KeySpace;
use fredkit_streams::*;
use std::time::Duration;
#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter("fredkit_streams=warn")
        .init();
    let server = fredkit_testkit::RedisServer::start().unwrap();
    let redis = fredkit_testkit::connect(&server.url()).await.unwrap();
    let keys = StreamKeys::new(&KeySpace::new("bench:streams").unwrap(), "e2e-1").unwrap();
    let config = WorkerConfig::builder("g")
        .count(100)
        .concurrency(400)
        .block(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut ws = vec![];
    for _ in 0..4 {
        ws.push(
            Worker::start(
                &redis,
                keys.clone(),
                config.clone(),
                |m: Message<u64>| async move {
                    let _ = m;
                    Ok::<(), std::convert::Infallible>(())
                },
            )
            .await
            .unwrap(),
        );
    }
    let p = Producer::<u64>::new(&redis, keys.clone());
    let mut ts = vec![];
    for t in 0..64u64 {
        let p = p.clone();
        ts.push(tokio::spawn(async move {
            for i in 0..800u64 {
                p.publish(&(i * 64 + t)).await.unwrap();
            }
        }));
    }
    for t in ts {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for w in &ws {
        println!("{:?}", w.metrics());
    }
}
