//! Demo section: fredkit-revocation.

use super::{step, Demo, Section, SectionFuture};
use anyhow::Result;
use fred::prelude::*;
use fredkit_core::FailMode;
use fredkit_revocation::{RevocationOptions, Revocations, TokenClaims};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const SECTION: Section = Section {
    name: "revocation",
    title: "fredkit-revocation: JWT revocation by id, subject and organisation",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

async fn tour(demo: &Demo) -> Result<()> {
    let redis = &demo.redis;
    let run_id: u32 = rand_id();
    let prefix = format!("demo:revocation:{run_id:08x}");
    let store = Revocations::new(
        redis,
        RevocationOptions::builder(FailMode::Closed)
            .prefix(prefix.clone())
            .max_token_lifetime(Duration::from_secs(3600))
            .build()?,
    )
    .await?;
    step(
        "Revocations::new(&redis, RevocationOptions::builder(FailMode::Closed).max_token_lifetime(1 h).build()?)",
        "fail mode is required: Closed = while Redis is down, every token counts as revoked",
    );

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = |jti: &str, sub: &str, org: Option<&str>, iat: u64| TokenClaims {
        jti: jti.into(),
        sub: sub.into(),
        org: org.map(Into::into),
        iat,
        exp: iat + 900,
    };
    let phone = token("tok-phone", "alice", Some("acme"), now - 60);
    let laptop = token("tok-laptop", "alice", Some("acme"), now - 30);

    let outcome = store.revoke(&phone.jti, at(phone.exp)).await?;
    let key = format!("{prefix}:jti:tok-phone");
    let pexpiretime: i64 = redis.client().pexpire_time(&key).await?;
    step(
        "store.revoke(\"tok-phone\", exp)",
        format!(
            "{outcome:?}; SET {key} 1 PXAT {pexpiretime} (= exp * 1000: gone exactly when the token expires)"
        ),
    );
    step(
        "store.check(&phone) / store.check(&laptop)",
        format!(
            "{} / {}  (one round trip each: EXISTS + GET + GET, pipelined)",
            store.check(&phone).await?,
            store.check(&laptop).await?
        ),
    );
    let expired = store.revoke("tok-old", at(now - 10)).await?;
    step(
        "store.revoke(\"tok-old\", an exp already past)",
        format!("{expired:?}: nothing written (decided by the server's clock)"),
    );

    let cut = store.revoke_subject_now("alice").await?;
    let fresh = token("tok-new", "alice", Some("acme"), cut + 1);
    step(
        "store.revoke_subject_now(\"alice\")  // log out everywhere",
        format!(
            "cut-off {cut}: laptop (iat {}) revoked: {}; a token issued the next second: revoked: {}",
            laptop.iat,
            store.check(&laptop).await?,
            store.check(&fresh).await?
        ),
    );
    let bob = token("tok-bob", "bob", Some("acme"), now - 5);
    store.revoke_org("acme", at(now)).await?;
    step(
        "store.revoke_org(\"acme\", now)  // lock a tenant out, O(1)",
        format!("bob's token revoked: {}", store.check(&bob).await?),
    );

    for (i, secs) in [600u64, 1200, 60].iter().enumerate() {
        store
            .track(&token(&format!("sess-{i}"), "carol", None, now).with_exp(now + secs))
            .await?;
    }
    let live = store
        .track(&token("sess-dead", "carol", None, now - 100).with_exp(now - 1))
        .await?;
    let listed: Vec<String> = store
        .list_active("carol")
        .await?
        .into_iter()
        .map(|t| t.jti)
        .collect();
    step(
        "store.track(&claims) x 4 (one already expired) / store.list_active(\"carol\")",
        format!("{live} live, earliest expiry first: {listed:?}; the set trims itself and expires with its last token"),
    );

    let m = store.metrics();
    step(
        "store.metrics()",
        format!(
            "checks {}, revoked hits {}, fail-open {}, fail-closed {}, Redis reads {}",
            m.checks, m.revoked_hits, m.fail_open, m.fail_closed, m.redis_reads
        ),
    );
    step(
        "features",
        "local-cache: answers from memory, fed by pub/sub, flushed on gaps; tower: RevocationLayer -> 401 (503 when failing closed)",
    );

    // Tidy up the demo's keys.
    let keys: Vec<String> = ["jti:tok-phone", "sub:alice", "org:acme", "active:carol"]
        .iter()
        .map(|k| format!("{prefix}:{k}"))
        .collect();
    for k in keys {
        let _: i64 = redis.client().unlink(k).await?;
    }
    Ok(())
}

/// A random id so that repeated demos on one server do not meet.
fn rand_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

trait WithExp {
    fn with_exp(self, exp: u64) -> Self;
}

impl WithExp for TokenClaims {
    fn with_exp(mut self, exp: u64) -> Self {
        self.exp = exp;
        self
    }
}
