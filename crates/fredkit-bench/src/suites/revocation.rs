//! `revocation`: fredkit-revocation's read path against the raw fred
//! commands it stands on, interleaved, 64 tasks on one connection each:
//! `is_revoked` vs `EXISTS`, `check` vs the same `EXISTS` + `GET` + `GET`
//! pipelined by hand, and `check` answered by the local cache.
//!
//! The peer: **tokenkit** 1.0 (`revocation-redis`: `RedisRevocationStore`,
//! one `EXISTS` per check on a redis-rs 0.25 multiplexed connection of its
//! own), doing the same work as our `is_revoked`: the same 1,024 token ids,
//! one in ten revoked, every answer verified. `is_revoked`, raw `EXISTS` and
//! tokenkit run back to back in every round at concurrency 64 and 1;
//! `is_revoked_vs_tokenkit.c64` / `.c1` (goal >= 1.1) are medians of
//! per-round ratios.

use super::Suite;
use crate::harness::{interleave, median, op, Contender, Report, Summary};
use crate::Ctx;
use anyhow::{bail, Result};
use fred::prelude::*;
use fredkit_core::FailMode;
use fredkit_revocation::{LocalCacheOptions, RevocationOptions, Revocations, TokenClaims};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokenkit::revocation::{RedisRevocationStore, TokenRevocationStore};

/// The `revocation` suite.
pub(crate) struct Revocation;

impl Suite for Revocation {
    fn name(&self) -> &'static str {
        "revocation"
    }

    fn about(&self) -> &'static str {
        "is_revoked / check vs raw EXISTS / hand-made pipeline and vs tokenkit 1.0 (redis-rs 0.25), c1 and c64; check from the local cache"
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
    let fk_is_revoked = |c: usize| {
        let shared = Arc::new((store.clone(), Arc::clone(&claims)));
        Contender::new(
            format!("fredkit is_revoked c{c}"),
            c,
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
    let raw_exists = |c: usize| {
        let shared = Arc::new((raw.clone(), Arc::clone(&raw_keys)));
        Contender::new(
            format!("raw EXISTS c{c}"),
            c,
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
    // The peer: tokenkit's Redis store (its keys are the bare ids, so they
    // get a prefix of their own), the same tokens revoked.
    let peer = Arc::new(
        RedisRevocationStore::new(ctx.url(), 3600)
            .map_err(|e| anyhow::anyhow!("tokenkit store: {e}"))?,
    );
    let peer_ids: Arc<Vec<String>> = Arc::new(
        (0..TOKENS)
            .map(|i| format!("{PREFIX}:tokenkit:tok-{i}"))
            .collect(),
    );
    for id in peer_ids.iter().step_by(REVOKED_EVERY) {
        peer.revoke(id)
            .await
            .map_err(|e| anyhow::anyhow!("tokenkit revoke: {e}"))?;
    }
    let tokenkit = |c: usize| {
        let shared = Arc::new((Arc::clone(&peer), Arc::clone(&peer_ids)));
        Contender::new(
            format!("tokenkit is_revoked c{c}"),
            c,
            op(move |i| {
                let shared = Arc::clone(&shared);
                async move {
                    let (peer, ids) = &*shared;
                    let id = &ids[i as usize % TOKENS];
                    let revoked = peer
                        .is_revoked(id)
                        .await
                        .map_err(|e| anyhow::anyhow!("tokenkit is_revoked: {e}"))?;
                    if revoked != (i as usize % TOKENS % REVOKED_EVERY == 0) {
                        bail!("tokenkit gave a wrong answer for {id}");
                    }
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

    let conn_exists = |c: usize| {
        let shared = Arc::new((redis.client().clone(), Arc::clone(&raw_keys)));
        Contender::new(
            format!("raw EXISTS on the fredkit-conn client c{c}"),
            c,
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
            conn_exists(CONCURRENCY),
            fk_is_revoked(CONCURRENCY),
            raw_exists(CONCURRENCY),
            tokenkit(CONCURRENCY),
            fk_check("fredkit check", &store),
            raw_pipeline,
            conn_exists(1),
            fk_is_revoked(1),
            raw_exists(1),
            tokenkit(1),
        ],
    )
    .await?;
    let [conn_exists, is_revoked, exists, peer64, check, pipeline, conn_exists1, is_revoked1, exists1, peer1] =
        s.as_slice()
    else {
        bail!("expected 10 summaries, got {}", s.len());
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
        paired_ratio(is_revoked, exists),
        "is_revoked ops/s / raw EXISTS ops/s, median of per-round ratios (goal >= 0.90)",
    );
    report.ratio(
        "is_revoked_vs_conn_exists",
        paired_ratio(is_revoked, conn_exists),
        "is_revoked / raw EXISTS on the same fredkit-conn client, median of per-round ratios (the store's own overhead)",
    );
    report.summary(
        "tokenkit_is_revoked",
        peer64,
        &format!("tokenkit 1.0 RedisRevocationStore::is_revoked (redis-rs 0.25 EXISTS), {note}"),
    );
    report.ratio(
        "is_revoked_vs_tokenkit.c64",
        paired_ratio(is_revoked, peer64),
        "is_revoked / tokenkit is_revoked, same tokens, 64 tasks, median of per-round ratios (goal >= 1.1)",
    );
    report.summary("is_revoked_c1", is_revoked1, "1 task");
    report.summary("tokenkit_is_revoked_c1", peer1, "1 task");
    report.ratio(
        "is_revoked_vs_tokenkit.c1",
        paired_ratio(is_revoked1, peer1),
        "the same at concurrency 1 (goal >= 1.1)",
    );
    report.ratio(
        "is_revoked_vs_conn_exists.c1",
        paired_ratio(is_revoked1, conn_exists1),
        "is_revoked / raw EXISTS on the same fredkit-conn client at concurrency 1, median of per-round ratios",
    );
    report.ratio(
        "is_revoked_vs_raw_exists.c1",
        paired_ratio(is_revoked1, exists1),
        "is_revoked / raw EXISTS at concurrency 1, median of per-round ratios",
    );
    report.summary("check", check, &format!("{note}, token with sub and org"));
    report.summary("raw_pipeline", pipeline, &note);
    report.ratio(
        "check_vs_raw_pipeline",
        paired_ratio(check, pipeline),
        "check ops/s / raw EXISTS+GET+GET pipeline ops/s, median of per-round ratios (goal >= 0.90)",
    );
    report.ops(
        "local_check_ops",
        local_check.ops_per_sec,
        format!("check answered by the local cache, {CONCURRENCY} tasks (0 round trips)"),
    );

    raw.quit().await?;
    Ok(())
}

/// The median over rounds of `a`'s ops/s divided by `b`'s in the same
/// round (they ran back to back).
fn paired_ratio(a: &Summary, b: &Summary) -> f64 {
    let ratios: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(x, y)| x.ops_per_sec() / y.ops_per_sec())
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        a.ratio_to(b)
    } else {
        median(&ratios)
    }
}
