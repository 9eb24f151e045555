//! `REDIS_URL=redis://127.0.0.1:6379 cargo run -p fredkit-examples --bin quickstart`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis = fredkit::Redis::from_env().await?;
    let report = fredkit_examples::quickstart::run(&redis, "example:quickstart").await?;
    println!("{report:#?}");
    redis.shutdown().await?;
    Ok(())
}
