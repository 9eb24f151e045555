//! `tls` (figures under `conn.`): what TLS costs a fredkit-conn client
//! (issue #24). GET of a 128 B value from 64 tasks on one fredkit-conn handle
//! with its defaults, over TLS (rustls with ring, TLS 1.3, the server's
//! certificate verified against a throwaway CA, the testkit's client
//! certificate presented) against the same over plain TCP, interleaved round
//! after round. Both servers are started here by fredkit-testkit with the
//! same options (one TLS-only, one plain), so the figure does not depend on
//! `--url`.
//!
//! Figures: `conn.tls_get_c64_*` and `conn.plain_get_c64_*` (ops/s, p50,
//! p99) and `conn.tls_get_vs_plain.c64` (TLS ops/s / plain ops/s, median of
//! the per-round ratios).

use super::Suite;
use crate::harness::{interleave, median, op, Contender, Report, Summary};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use fred::bytes::Bytes;
use fred::prelude::*;
use fredkit_testkit::{RedisServer, ServerOptions, TlsCerts};
use futures::future::BoxFuture;

/// The `tls` suite: its figures go under `conn.` (they are the connection's).
pub(crate) struct Tls;

impl Suite for Tls {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn about(&self) -> &'static str {
        "GET at c64 over TLS vs plain TCP, fredkit-conn, interleaved (figures conn.tls_*)"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            report.begin_suite("conn");
            tls_get_vs_plain(ctx, report).await
        })
    }
}

const KEY: &str = "bench:tls:get";
const VALUE_SIZE: usize = 128;
const CONCURRENCY: usize = 64;

/// Connects a fredkit-conn handle with its defaults to `url` and writes the value.
async fn connect(url: &str) -> Result<fredkit_conn::Redis> {
    let redis = fredkit_conn::Redis::connect(fredkit_conn::RedisConfig::from_url(url)?).await?;
    redis.wait_connected().await?;
    let value = Bytes::from(vec![b'x'; VALUE_SIZE]);
    let _: () = redis.client().set(KEY, value, None, None, false).await?;
    Ok(redis)
}

fn get(name: &str, redis: &fredkit_conn::Redis) -> Contender {
    let redis = redis.clone();
    Contender::new(
        name,
        CONCURRENCY,
        op(move |_| {
            let redis = redis.clone();
            async move {
                let v: Option<Bytes> = redis.client().get(KEY).await?;
                if v.map(|b| b.len()) != Some(VALUE_SIZE) {
                    bail!("GET {KEY} did not return the {VALUE_SIZE} B value");
                }
                Ok(())
            }
        }),
    )
}

/// The median over rounds of `a`'s ops/s divided by `b`'s in the same round.
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

/// Measures GET at c64 over TLS and over plain TCP, interleaved, and adds
/// the figures to `report` (under the current suite's prefix, `conn`).
pub(crate) async fn tls_get_vs_plain(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let (tls_server, plain_server) = tokio::task::spawn_blocking(|| {
        let certs = TlsCerts::generate()?;
        let tls = RedisServer::start_with(ServerOptions::default().tls(certs))?;
        let plain = RedisServer::start()?;
        Ok::<_, fredkit_testkit::TestkitError>((tls, plain))
    })
    .await?
    .context("starting the TLS and plain servers")?;
    let tls = connect(&tls_server.url()).await.context("TLS server")?;
    let plain = connect(&plain_server.url()).await.context("plain server")?;

    let s = interleave(
        ctx.rounds(),
        ctx.load(),
        &[get("GET over TLS", &tls), get("GET plain", &plain)],
    )
    .await?;
    let [over_tls, over_plain] = s.as_slice() else {
        bail!("expected 2 summaries, got {}", s.len());
    };
    let note = format!("fredkit-conn GET {VALUE_SIZE} B, {CONCURRENCY} tasks, one connection");
    report.summary(
        "tls_get_c64",
        over_tls,
        &format!("{note}, TLS 1.3 (rustls, ring)"),
    );
    report.summary("plain_get_c64", over_plain, &format!("{note}, plain TCP"));
    report.ratio(
        "tls_get_vs_plain.c64",
        paired_ratio(over_tls, over_plain),
        "GET over TLS ops/s / over plain TCP, same run, interleaved, median of per-round ratios",
    );
    tls.shutdown().await?;
    plain.shutdown().await?;
    Ok(())
}
