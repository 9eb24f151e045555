//! `REDIS_URL=redis://127.0.0.1:6379 cargo run -p fredkit-examples --bin service`, then
//! `curl -H 'x-client: me' -H 'x-user: 42' -H 'x-token: t1' localhost:3000/products/7`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis = fredkit::Redis::from_env().await?;
    let (app, _state) = fredkit_examples::service::router(&redis, "example:service", 600).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    redis.shutdown().await?;
    Ok(())
}
