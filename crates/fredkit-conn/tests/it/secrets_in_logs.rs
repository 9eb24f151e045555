//! Passwords never reach logs, at any level, from fredkit or from fred (whose
//! `log` records are bridged into the same subscriber). Needs a process of
//! its own (nextest runs every test in one): it installs the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fred::prelude::*;
use fredkit_conn::{Redis, RedisConfig};
use fredkit_testkit::{RedisServer, ServerOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_logs_at_trace_level() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let server =
        RedisServer::start_with(ServerOptions::default().password("hunter2-secret")).unwrap();
    let redis = Redis::connect(RedisConfig::from_url(&server.url()).unwrap())
        .await
        .unwrap();
    redis.wait_connected().await.unwrap();
    let _: () = redis
        .client()
        .set("k", "v", None, None, false)
        .await
        .unwrap();
    tracing::info!(?redis, config = %redis.config(), "handle");
    // fred's own types, reachable through the raw handle: its Config's Debug
    // prints `password` — fredkit hands fred the secret through a
    // credential provider instead, so the field is empty (#24).
    let dedicated = redis.dedicated().unwrap();
    let subscriber = redis.subscriber().unwrap();
    let provider = fredkit_conn::credentials_fn(|| async {
        Ok(fredkit_conn::Credentials::new(
            "app",
            "token-s3cret-rotated",
        ))
    });
    let with_provider = Redis::connect(
        RedisConfig::builder()
            .url(server.url())
            .credentials(provider)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    // A sentinel topology with fixed passwords: fred keeps them in its Config (the
    // sentinels it discovers cannot be told apart from data nodes by a provider), so its
    // Debug must redact them itself (vendored fred, patch 4). Lazy: nothing listens there.
    let sentinel = Redis::connect(
        RedisConfig::from_url(
            "redis-sentinel://app:data-s3cret-pass@127.0.0.1:1\
             ?sentinelServiceName=mymaster&sentinelUsername=sen&sentinelPassword=sentinel-s3cret-pass",
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let fred_debug = [
        format!("{:?}", sentinel.client().client_config()),
        format!("{:?}", sentinel.config()),
        format!("{:?}", redis.client().client_config()),
        format!("{:?}", redis.client().connection_config()),
        format!("{:?}", dedicated.client().client_config()),
        format!("{:?}", subscriber.client().client_config()),
        format!("{:?}", with_provider.client().client_config()),
        format!("{:?}", with_provider.config()),
        format!("{with_provider:?}"),
        format!(
            "{:?}",
            fredkit_conn::Credentials::new("app", "token-s3cret-rotated")
        ),
    ];
    for text in &fred_debug {
        tracing::info!(%text, "fred config");
    }
    assert!(
        fred_debug[2].contains("password: None") && fred_debug[2].contains("credential_provider"),
        "the check reads fred's Config Debug: {}",
        fred_debug[2]
    );
    assert!(
        fred_debug[0].contains("service_name") && fred_debug[0].contains("password: Some(\"***\")"),
        "the check reads fred's sentinel Config Debug: {}",
        fred_debug[0]
    );
    sentinel.shutdown().await.unwrap();
    let _ = redis.health().await;
    // Force a reconnect, with its AUTH.
    server
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    let _: Option<String> = redis.client().get("k").await.unwrap();
    redis.shutdown().await.unwrap();

    // A wrong password: the failure is logged by fred.
    let wrong = RedisConfig::builder()
        .url(server.url())
        .password("wrong-s3cret-pass")
        .connect_timeout(Duration::from_millis(500))
        .lazy(false)
        .build()
        .unwrap();
    let err = Redis::connect(wrong).await.unwrap_err();
    tracing::error!(%err, ?err, "connect failed");

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).to_string();
    assert!(
        logs.len() > 200,
        "the subscriber captured fred's and our logs: {logs}"
    );
    for secret in [
        "hunter2-secret",
        "wrong-s3cret-pass",
        "token-s3cret-rotated",
        "data-s3cret-pass",
        "sentinel-s3cret-pass",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
    }
}
