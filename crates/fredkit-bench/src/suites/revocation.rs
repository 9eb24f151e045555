//! `revocation`: fredkit-revocation's read path against the raw fred
//! commands it stands on, interleaved, 64 tasks on one connection each:
//! `is_revoked` vs `EXISTS`, `check` vs the same `EXISTS` + `GET` + `GET`
//! pipelined by hand, and `check` answered by the local cache.

use super::Suite;
use crate::harness::{interleave, op, Contender, Report};
use crate::Ctx;
use anyhow::{bail, Result};
use fred::prelude::*;
use fredkit_core::FailMode;
use fredkit_revocation::{LocalCacheOptions, RevocationOptions, Revocations, TokenClaims};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `revocation` suite.
pub(crate) struct Revocation;

impl Suite for Revocation {
    fn name(&self) -> &'static str {
        "revocation"
    }

    fn about(&self) -> &'static str {
        "is_revoked / check vs raw EXISTS / hand-made pipeline; check from the local cache"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

const PREFIX: &str = "bench:revocation";
/// Distinct tokens the operations cycle through.
const TOKENS: usize = 1024;
/// Every n-th token is revoked by id.
const REVOKED_EVERY: usize = 10;
const CONCURRENCY: usize = 64;

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let raw = ctx.fred_client().await?;
    let options = |local: bool| {
        let b = RevocationOptions::builder(FailMode::Open)
            .prefix(PREFIX)
            .max_token_lifetime(Duration::from_secs(3600));
        if local {
            b.local_cache(LocalCacheOptions::default().ttl(Duration::from_secs(600)))
        } else {
            b
        }
    };
    let store = Revocations::new(&redis, options(false).build()?).await?;
    let local = Revocations::new(&redis, options(true).build()?).await?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims: Arc<Vec<TokenClaims>> = Arc::new(
        (0..TOKENS)
            .map(|i| TokenClaims {
                jti: format!("tok-{i}"),
                sub: format!("user-{}", i % 128),
                org: Some(format!("org-{}", i % 8)),
                iat: now,
                exp: now + 1800,
            })
            .collect(),
    );
    for c in claims.iter().step_by(REVOKED_EVERY) {
        store
            .revoke(&c.jti, UNIX_EPOCH + Duration::from_secs(c.exp))
            .await?;
    }
    // One subject revoked in the past: its cut-off exists but covers nobody.
    store
        .revoke_subject("user-0", UNIX_EPOCH + Duration::from_secs(now - 10))
        .await?;
    // The raw side reads the very same keys.
    let keys = store.options().keys().clone();
    let raw_keys: Arc<Vec<[String; 3]>> = Arc::new(
        claims
            .iter()
            .map(|c| {
                [
                    keys.key(["jti", c.jti.as_str()]),
                    keys.key(["sub", c.sub.as_str()]),
                    keys.key(["org", c.org.as_deref().unwrap_or_default()]),
                ]
            })
            .collect(),
    );

    // Each contender moves one Arc into its operations (one clone per op,
    // the same on every side).
    let fk_is_revoked = {
        let shared = Arc::new((store.clone(), Arc::clone(&claims)));
        Contender::new(
            "fredkit is_revoked",
            CONCURRENCY,
            op(move |i| {
                let shared = Arc::clone(&shared);
                async move {
                    let (store, claims) = &*shared;
                    let c = &claims[i as usize % TOKENS];
                    let revoked = store.is_revoked(&c.jti).await?;
                    if revoked != (i as usize % TOKENS % REVOKED_EVERY == 0) {
                        bail!("is_revoked gave a wrong answer for {}", c.jti);
                    }
                    Ok(())
                }
            }),
        )
    };
    let raw_exists = {
        let shared = Arc::new((raw.clone(), Arc::clone(&raw_keys)));
        Contender::new(
            "raw EXISTS",
            CONCURRENCY,
            op(move |i| {
                let shared = Arc::clone(&shared);
                async move {
                    let (raw, raw_keys) = &*shared;
                    let key = raw_keys[i as usize % TOKENS][0].clone();
                    let _: i64 = raw.exists(key).await?;
                    Ok(())
                }
            }),
        )
    };
    let fk_check = |name: &str, store: &Revocations| {
        let shared = Arc::new((store.clone(), Arc::clone(&claims)));
        Contender::new(
            name,
            CONCURRENCY,
            op(move |i| {
                let shared = Arc::clone(&shared);
                async move {
                    let (store, claims) = &*shared;
                    let c = &claims[i as usize % TOKENS];
                    let revoked = store.check(c).await?;
                    if revoked != (i as usize % TOKENS % REVOKED_EVERY == 0) {
                        bail!("check gave a wrong answer for {}", c.jti);
                    }
                    Ok(())
                }
            }),
        )
    };
    let raw_pipeline = {
        let shared = Arc::new((raw.clone(), Arc::clone(&raw_keys)));
        Contender::new(
            "raw EXISTS+GET+GET pipeline",
            CONCURRENCY,
            op(move |i| {
                let shared = Arc::clone(&shared);
                async move {
                    let (raw, raw_keys) = &*shared;
                    let [jti, sub, org] = raw_keys[i as usize % TOKENS].clone();
                    let pipe = raw.pipeline();
                    let () = pipe.exists(jti).await?;
                    let () = pipe.get(sub).await?;
                    let () = pipe.get(org).await?;
                    let _: (i64, Option<i64>, Option<i64>) = pipe.all().await?;
                    Ok(())
                }
            }),
        )
    };

    let conn_exists = {
        let shared = Arc::new((redis.client().clone(), Arc::clone(&raw_keys)));
        Contender::new(
            "raw EXISTS on the fredkit-conn client",
            CONCURRENCY,
            op(move |i| {
                let shared = Arc::clone(&shared);
                async move {
                    let (raw, raw_keys) = &*shared;
                    let key = raw_keys[i as usize % TOKENS][0].clone();
                    let _: i64 = raw.exists(key).await?;
                    Ok(())
                }
            }),
        )
    };
    let s = interleave(
        ctx.rounds(),
        ctx.load(),
        &[
            conn_exists,
            fk_is_revoked,
            raw_exists,
            fk_check("fredkit check", &store),
            raw_pipeline,
        ],
    )
    .await?;
    let [conn_exists, is_revoked, exists, check, pipeline] = s.as_slice() else {
        bail!("expected 5 summaries, got {}", s.len());
    };

    // Warm the local cache: every token read once (then answered locally).
    for c in claims.iter() {
        local.check(c).await?;
    }
    let reads_before = local.metrics().redis_reads;
    let l = interleave(
        ctx.rounds(),
        ctx.load(),
        &[fk_check("fredkit check, local cache", &local)],
    )
    .await?;
    let [local_check] = l.as_slice() else {
        bail!("expected 1 summary, got {}", l.len());
    };
    let extra_reads = local.metrics().redis_reads - reads_before;
    if extra_reads != 0 {
        bail!("the local cache sent {extra_reads} reads to Redis during the measurement");
    }

    let note = format!("{CONCURRENCY} tasks, {TOKENS} tokens, 1 in {REVOKED_EVERY} revoked");
    report.summary("is_revoked", is_revoked, &note);
    report.summary("raw_exists", exists, &note);
    report.ratio(
        "is_revoked_vs_raw_exists",
        is_revoked.ratio_to(exists),
        "is_revoked ops/s / raw EXISTS ops/s (goal >= 0.90)",
    );
    report.ratio(
        "is_revoked_vs_conn_exists",
        is_revoked.ratio_to(conn_exists),
        "is_revoked / raw EXISTS on the same fredkit-conn client (the store's own overhead)",
    );
    report.summary("check", check, &format!("{note}, token with sub and org"));
    report.summary("raw_pipeline", pipeline, &note);
    report.ratio(
        "check_vs_raw_pipeline",
        check.ratio_to(pipeline),
        "check ops/s / raw EXISTS+GET+GET pipeline ops/s (goal >= 0.90)",
    );
    report.ops(
        "local_check_ops",
        local_check.ops_per_sec,
        format!("check answered by the local cache, {CONCURRENCY} tasks (0 round trips)"),
    );

    raw.quit().await?;
    Ok(())
}
