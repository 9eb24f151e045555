//! `conn`: fredkit-conn's shared client against a plain fred client (1 s
//! command timeout and a reconnect policy, nothing else), EXISTS at
//! concurrency 64, interleaved. Every fredkit crate runs its commands on
//! fredkit-conn's client, so this ratio is a floor under all of them. A
//! third contender is a plain client with fred's own unresponsive-connection
//! check on, the setting fredkit-conn replaced with its PING watchdog
//! because of what it costs per command.

use super::Suite;
use crate::harness::{interleave, op, Contender, Report};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use futures::future::BoxFuture;
use std::time::Duration;

/// The `conn` suite.
pub(crate) struct Conn;

impl Suite for Conn {
    fn name(&self) -> &'static str {
        "conn"
    }

    fn about(&self) -> &'static str {
        "EXISTS on fredkit-conn's client vs a plain fred client (and one with fred's unresponsive check)"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

/// Keys the operations cycle through (none exists: EXISTS answers 0).
const KEYS: u64 = 1024;
const CONCURRENCY: usize = 64;

fn exists(name: &str, c: Client) -> Contender {
    Contender::new(
        name,
        CONCURRENCY,
        op(move |i| {
            let c = c.clone();
            async move {
                let _: i64 = c.exists(format!("bench:conn:{}", i % KEYS)).await?;
                Ok(())
            }
        }),
    )
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let redis = ctx.redis().await?;
    let plain = ctx.fred_client().await?;
    // The plain client plus fred's unresponsive check as fredkit-conn used
    // to configure it.
    let unresponsive = Builder::from_config(Config::from_url(ctx.url()).context("bad Redis URL")?)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(1))
        .with_connection_config(|c| {
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(3)),
                interval: Duration::from_millis(500),
            }
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    unresponsive.init().await.context("could not connect")?;

    let s = interleave(
        ctx.rounds(),
        ctx.load(),
        &[
            exists("plain fred", plain.clone()),
            exists("fredkit-conn", redis.client().clone()),
            exists("fred unresponsive", unresponsive.clone()),
        ],
    )
    .await?;
    let [plain_s, conn_s, unresponsive_s] = s.as_slice() else {
        bail!("expected 3 summaries, got {}", s.len());
    };
    let note = format!("EXISTS, {CONCURRENCY} tasks");
    report.summary("plain_exists", plain_s, &note);
    report.summary("conn_exists", conn_s, &note);
    report.ratio(
        "conn_vs_plain",
        conn_s.ratio_to(plain_s),
        "EXISTS on fredkit-conn's client / on a plain fred client",
    );
    report.ratio(
        "fred_unresponsive_vs_plain",
        unresponsive_s.ratio_to(plain_s),
        "EXISTS with fred's unresponsive check on / off (why fredkit-conn uses a PING watchdog)",
    );
    let _ = unresponsive.quit().await;
    let _ = plain.quit().await;
    Ok(())
}
