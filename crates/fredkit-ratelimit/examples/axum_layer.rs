//! Runnable: `cargo run -p fredkit-ratelimit --features axum --example axum_layer`
//!
//! Uses `REDIS_URL` if set, otherwise starts a throwaway redis-server with
//! fredkit-testkit. An axum app limited to 3 requests per 10 s per client
//! IP (behind a trusted proxy at 10.0.0.1) answers 200s with RateLimit
//! headers, then 429 with Retry-After; a client forging X-Forwarded-For
//! from outside gets no extra quota.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use axum::{body::Body, extract::ConnectInfo, routing::get, Router};
use fredkit_conn::Redis;
use fredkit_core::FailMode;
use fredkit_ratelimit::{
    tower::{ClientIp, RateLimitLayer},
    Limit, Limiter,
};
use http::Request;
use tower::ServiceExt;

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
    let limiter = Limiter::builder(&redis, "example:rl")
        .limit(Limit::sliding_log(3, Duration::from_secs(10)))
        .fail_mode(FailMode::Open)
        .build()?;
    limiter.reset("203.0.113.7").await?;
    let app = Router::new().route("/", get(|| async { "hello" })).layer(
        RateLimitLayer::new(limiter, ClientIp::new().trust_proxies(["10.0.0.1"])?)
            .x_ratelimit_headers(true),
    );

    // Requests as the proxy forwards them: peer 10.0.0.1, client in XFF.
    let via_proxy = |xff: &str| {
        Request::builder()
            .uri("/")
            .header("x-forwarded-for", xff)
            .extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 443))))
            .body(Body::empty())
            .unwrap()
    };
    for (i, xff) in [
        "203.0.113.7",
        "203.0.113.7",
        "203.0.113.7",
        "203.0.113.7",
        "1.2.3.4, 203.0.113.7", // forged entry on the left: ignored
    ]
    .into_iter()
    .enumerate()
    {
        let res = app.clone().oneshot(via_proxy(xff)).await?;
        let h = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "request {}: {} | RateLimit-Policy: {} | RateLimit: {} | Retry-After: {} | X-RateLimit-Remaining: {}",
            i + 1,
            res.status(),
            h("ratelimit-policy"),
            h("ratelimit"),
            h("retry-after"),
            h("x-ratelimit-remaining"),
        );
    }
    redis.shutdown().await?;
    Ok(())
}
