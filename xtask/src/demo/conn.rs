//! fredkit-conn: configuration, connecting, health, raw fred access.

use super::{step, Demo, Section, SectionFuture};
use anyhow::Result;
use fred::prelude::*;
use fredkit_conn::{Redis, RedisConfig};

pub(crate) const SECTION: Section = Section {
    name: "conn",
    title: "fredkit-conn: one connection layer",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

async fn tour(demo: &Demo) -> Result<()> {
    // Configuration: URLs, with secrets kept out of Debug and Display.
    let with_password = "redis://app:s3cr3t-passw0rd@cache.internal:6380/2";
    let config = RedisConfig::from_url(with_password)?;
    step(
        &format!("RedisConfig::from_url({with_password:?})  // then {{:?}}"),
        format!("{config:?}"),
    );
    step("format!(\"{config}\")", &config);
    step(
        "format!(\"{config:?} {config}\").contains(\"s3cr3t\")",
        format!("{config:?} {config}").contains("s3cr3t"),
    );
    for url in [
        "redis-cluster://10.0.0.1:7000,10.0.0.2:7000",
        "redis-sentinel://10.0.0.1:26379,10.0.0.2:26379?sentinelServiceName=mymaster",
    ] {
        match RedisConfig::from_url(url) {
            Ok(c) => step(&format!("RedisConfig::from_url({url:?})"), c),
            Err(e) => step(
                &format!("RedisConfig::from_url({url:?})"),
                format!("error: {e}"),
            ),
        }
    }
    match RedisConfig::from_url("http://example.com") {
        Ok(c) => step("RedisConfig::from_url(\"http://example.com\")", c),
        Err(e) => step(
            "RedisConfig::from_url(\"http://example.com\")",
            format!("error: {e}"),
        ),
    }

    // Connecting: lazy by default, so start-up does not fail when Redis is late.
    let redis = Redis::connect(RedisConfig::from_url(&demo.url)?).await?;
    step(
        "let redis = Redis::connect(config).await?;  // lazy: returns at once",
        format!("{redis:?}"),
    );
    redis.wait_connected().await?;
    step("redis.wait_connected().await?", "connected");
    let health = redis.health().await;
    step("redis.health().await", &health);
    step("{health:#?}", format!("{health:#?}"));

    // Raw fred stays available as an escape hatch.
    let key = "demo:conn:greeting";
    redis
        .client()
        .set::<(), _, _>(
            key,
            "hello from fred",
            Some(Expiration::EX(60)),
            None,
            false,
        )
        .await?;
    step(
        &format!("redis.client().set({key:?}, \"hello from fred\", EX 60)"),
        "OK",
    );
    let value: Option<String> = redis.client().get(key).await?;
    step(
        &format!("redis.client().get({key:?})"),
        format!("{value:?}"),
    );

    redis.shutdown().await?;
    step(
        "redis.shutdown().await?",
        "closed after in-flight commands finished",
    );
    Ok(())
}
