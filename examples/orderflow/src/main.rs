//! `cargo run -p orderflow`: serves OrderFlow on `ADDR` (default
//! 127.0.0.1:3000) against `REDIS_URL` (default redis://127.0.0.1:6379).

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use orderflow::{Config, OrderFlow};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("could not install the Prometheus recorder")?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = fredkit::Redis::connect(fredkit::RedisConfig::from_url(&url)?).await?;
    let app = OrderFlow::new(
        &redis,
        Config {
            metrics: Some(metrics),
            ..Config::default()
        },
    )
    .await?;
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("could not listen on {addr}"))?;
    tracing::info!("OrderFlow on http://{addr} (GET /products/1, /health, /metrics)");
    axum::serve(listener, app.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    redis.shutdown().await?;
    Ok(())
}
