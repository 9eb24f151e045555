//! Demo section: fredkit-ratelimit.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{bail, Result};
use fred::prelude::*;
use fredkit_core::FailMode;
use fredkit_ratelimit::{Algorithm, Decision, Limit, Limiter, LoginThrottle};
use std::time::Duration;

pub(crate) const SECTION: Section = Section {
    name: "ratelimit",
    title: "fredkit-ratelimit: exact limits in one round trip",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

fn show(d: &Decision) -> String {
    match d.retry_after {
        None => format!("allowed, remaining {}", d.remaining),
        Some(wait) => format!("denied,  retry after {wait:?}"),
    }
}

async fn tour(demo: &Demo) -> Result<()> {
    let redis = &demo.redis;

    // GCRA: 5 per second, bursts of 5.
    let gcra = Limiter::builder(redis, "demo:rl")
        .limit(Limit::gcra(5, Duration::from_secs(1)))
        .fail_mode(FailMode::Open)
        .build()?;
    gcra.reset("alice").await?;
    let mut lines = Vec::new();
    let mut last = None;
    for i in 1..=7 {
        let d = gcra.check("alice", 1).await?;
        lines.push(format!("check {i}: {}", show(&d)));
        last = Some(d);
    }
    step(
        "Limit::gcra(5, 1 s): 7 checks in a row (one round trip each)",
        lines.join("\n"),
    );
    let Some(wait) = last.and_then(|d| d.retry_after) else {
        bail!("the 7th check should have been denied");
    };
    tokio::time::sleep(wait).await;
    step(
        &format!("sleep(retry_after = {wait:?}); check again"),
        show(&gcra.check("alice", 1).await?),
    );

    // Two limits on one identity, checked together.
    let multi = Limiter::builder(redis, "demo:rl")
        .limit(Limit::fixed_window(3, Duration::from_secs(10)).name("burst"))
        .limit(Limit::fixed_window(100, Duration::from_secs(3600)).name("hourly"))
        .fail_mode(FailMode::Closed)
        .build()?;
    multi.reset("bob").await?;
    let mut lines = Vec::new();
    for i in 1..=5 {
        let o = multi.check_all("bob", 1).await?;
        let [burst, hourly] = o.per_limit() else {
            bail!("two limits, two decisions");
        };
        lines.push(format!(
            "check {i}: {:<8} burst remaining {}, hourly remaining {}",
            if o.allowed() { "allowed" } else { "denied" },
            burst.remaining,
            hourly.remaining
        ));
    }
    step(
        "3 per 10 s AND 100 per hour for \"bob\", 5 checks",
        format!(
            "{}\n(denied checks consumed nothing: hourly stays at 97)\nkeys: {:?}",
            lines.join("\n"),
            multi.keys("bob")?
        ),
    );

    // Memory per algorithm: 100 requests on one identity.
    let mut lines = Vec::new();
    for (algorithm, limit) in [
        (
            Algorithm::FixedWindow,
            Limit::fixed_window(100, Duration::from_secs(60)),
        ),
        (
            Algorithm::SlidingLog,
            Limit::sliding_log(100, Duration::from_secs(60)),
        ),
        (
            Algorithm::SlidingCounter,
            Limit::sliding_counter(100, Duration::from_secs(60)),
        ),
        (Algorithm::Gcra, Limit::gcra(100, Duration::from_secs(60))),
    ] {
        let limiter = Limiter::builder(redis, "demo:rl:mem")
            .limit(limit)
            .fail_mode(FailMode::Open)
            .build()?;
        limiter.reset("carol").await?;
        for _ in 0..100 {
            limiter.check("carol", 1).await?;
        }
        let d = limiter.check("carol", 0).await?;
        let mut bytes = 0u64;
        let mut ttl = 0i64;
        for key in limiter.keys("carol")? {
            bytes += redis
                .client()
                .memory_usage::<Option<u64>, _>(&key, Some(0))
                .await?
                .unwrap_or(0);
            ttl = redis.client().pttl(&key).await?;
        }
        lines.push(format!(
            "{:<16} remaining {:>3}, {:>5} bytes, TTL {:>5} ms",
            algorithm.name(),
            d.remaining,
            bytes,
            ttl
        ));
        limiter.reset("carol").await?;
    }
    step(
        "100 requests at 100 per minute, per algorithm (MEMORY USAGE, PTTL)",
        lines.join("\n"),
    );

    // Login throttling.
    let login = LoginThrottle::builder(redis, "demo:auth:failed")
        .max_failures(3)
        .lockout(Duration::from_secs(60))
        .fail_mode(FailMode::Closed)
        .build()?;
    login.unlock("dave").await?;
    let mut lines = Vec::new();
    for i in 1..=4 {
        let s = login.record_failure("dave").await?;
        lines.push(format!(
            "failure {i}: locked {}, attempts left {}, lockout {:?}",
            s.locked, s.remaining_attempts, s.retry_after
        ));
    }
    login.unlock("dave").await?;
    lines.push(format!(
        "unlock: locked {}",
        login.status("dave").await?.locked
    ));
    step(
        "LoginThrottle: 3 failures lock out for 60 s",
        lines.join("\n"),
    );

    step("gcra.metrics()", format!("{:?}", gcra.metrics()));
    gcra.reset("alice").await?;
    multi.reset("bob").await?;
    Ok(())
}
