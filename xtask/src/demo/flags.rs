//! fredkit-flags: flags evaluated in-process, changed everywhere at once.

use super::{step, Demo, Section, SectionFuture};
use anyhow::{ensure, Result};
use fredkit_conn::Redis;
use fredkit_flags::{AdminError, Context, Expect, FlagAdmin, FlagDef, Flags, FlagsOptions, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) const SECTION: Section = Section {
    name: "flags",
    title: "fredkit-flags: feature flags evaluated locally, changed everywhere within a second",
    run,
};

fn run(demo: &Demo) -> SectionFuture<'_> {
    Box::pin(tour(demo))
}

/// How many of 10,000 users have `flag` on in `flags`.
fn share(flags: &Flags, flag: &str) -> usize {
    (0..10_000)
        .filter(|i| flags.is_enabled(flag, &Context::user(&format!("user-{i}"))))
        .count()
}

async fn tour(demo: &Demo) -> Result<()> {
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("demo:flags:{run_id}");
    let admin = FlagAdmin::new(&demo.redis, prefix.as_str())?;

    // Two service instances, each on its own connection.
    let b = Flags::with_options(
        &Redis::from_url(&demo.url).await?,
        prefix.as_str(),
        FlagsOptions::default().default_enabled("new-checkout", false),
    )
    .await?;
    let c = Flags::new(&Redis::from_url(&demo.url).await?, prefix.as_str()).await?;
    step(
        "Flags::with_options(&redis, prefix, FlagsOptions::default().default_enabled(\"new-checkout\", false))",
        format!(
            "new-checkout for user-42 before any write: {} (the default from code, reason {:?})",
            b.is_enabled("new-checkout", &Context::user("user-42")),
            b.evaluate("new-checkout", &Context::user("user-42")).reason
        ),
    );

    // A change through the admin API reaches both instances.
    let started = Instant::now();
    let w = admin
        .set(
            "new-checkout",
            &FlagDef::on().percent(20.0),
            &Write::by("demo"),
        )
        .await?;
    ensure!(
        b.wait_for_version(w.version, Duration::from_secs(5)).await,
        "b did not apply the change"
    );
    ensure!(
        c.wait_for_version(w.version, Duration::from_secs(5)).await,
        "c did not apply the change"
    );
    let trips = b.metrics().round_trips;
    let at20 = share(&b, "new-checkout");
    let trips = b.metrics().round_trips - trips;
    step(
        "admin.set(\"new-checkout\", &FlagDef::on().percent(20.0), &Write::by(\"demo\"))",
        format!(
            "applied by both instances after {:?} (from the change message, no round trip);\n{at20} of 10000 users are in; b made {trips} round trips for those 10000 evaluations",
            started.elapsed(),
        ),
    );
    ensure!(trips == 0, "evaluations made {trips} round trips");

    // Raising the rollout keeps everyone who was in.
    let was_in: Vec<String> = (0..10_000)
        .map(|i| format!("user-{i}"))
        .filter(|u| b.is_enabled("new-checkout", &Context::user(u)))
        .collect();
    let w = admin
        .set(
            "new-checkout",
            &FlagDef::on().percent(30.0).allow_user("vip-1"),
            &Write::by("demo").expect(Expect::Rev(w.rev)),
        )
        .await?;
    ensure!(
        b.wait_for_version(w.version, Duration::from_secs(5)).await,
        "b did not apply the change"
    );
    let kept = was_in
        .iter()
        .filter(|u| b.is_enabled("new-checkout", &Context::user(u)))
        .count();
    step(
        "admin.set(..., &FlagDef::on().percent(30.0).allow_user(\"vip-1\"), &Write::by(\"demo\").expect(Expect::Rev(rev)))",
        format!(
            "{} of 10000 users in; {kept} of the {} who were in at 20 % still are; vip-1: {}",
            share(&b, "new-checkout"),
            was_in.len(),
            b.is_enabled("new-checkout", &Context::user("vip-1"))
        ),
    );
    ensure!(kept == was_in.len(), "raising the rollout dropped users");

    // A stale writer gets a typed conflict, not a lost update.
    let stale = admin
        .set(
            "new-checkout",
            &FlagDef::off(),
            &Write::by("someone").expect(Expect::Rev(w.rev - 1)),
        )
        .await;
    step(
        "admin.set(..., &Write::by(\"someone\").expect(Expect::Rev(old_rev)))",
        match &stale {
            Err(e @ AdminError::Conflict { .. }) => format!("Err(Conflict): {e}"),
            other => format!("{other:?}"),
        },
    );
    ensure!(
        matches!(stale, Err(AdminError::Conflict { .. })),
        "no conflict"
    );
    let invalid = admin
        .set(
            "new-checkout",
            &FlagDef::on().percent(150.0),
            &Write::by("demo"),
        )
        .await;
    step(
        "admin.set(..., &FlagDef::on().percent(150.0), ...)",
        match &invalid {
            Err(e) => format!("Err: {e}"),
            Ok(w) => format!("Ok({w:?})"),
        },
    );

    // Expiry on the server's clock: both instances revert together.
    let w = admin
        .set(
            "promo-banner",
            &FlagDef::on(),
            &Write::by("demo").expire_in(Duration::from_millis(1500)),
        )
        .await?;
    ensure!(
        c.wait_for_version(w.version, Duration::from_secs(5)).await,
        "c did not apply the change"
    );
    let before = c.is_enabled("promo-banner", &Context::anonymous());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    step(
        "admin.set(\"promo-banner\", &FlagDef::on(), &Write::by(\"demo\").expire_in(1.5 s)); sleep 1.7 s",
        format!(
            "on before: {before}; after: b {:?}, c {:?}",
            b.evaluate("promo-banner", &Context::anonymous()),
            c.evaluate("promo-banner", &Context::anonymous())
        ),
    );

    let audit = admin.audit(10).await?;
    step(
        "admin.audit(10)",
        audit
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} by {} (version {})",
                    e.id, e.op, e.flag, e.by, e.version
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    step(
        "the same from a shell",
        format!("REDIS_URL=... fredkit-flags --prefix {prefix} list | enable new-checkout --percent 50 | allow new-checkout user:42 | expire new-checkout 7d | --json get new-checkout"),
    );
    b.close().await;
    c.close().await;
    Ok(())
}
