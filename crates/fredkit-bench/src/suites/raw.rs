//! `raw`: plain fred GET and SET on one multiplexed client. The floor every
//! other suite compares against.

use super::Suite;
use crate::harness::{interleave, op, Contender, Report};
use crate::Ctx;
use anyhow::Result;
use fred::bytes::Bytes;
use fred::prelude::*;
use futures::future::BoxFuture;

/// The `raw` suite.
pub(crate) struct Raw;

const GET_KEY: &str = "bench:raw:get";
/// Value size used for GET and SET.
const VALUE_SIZE: usize = 128;
/// SET spreads its writes over this many keys.
const SET_KEYS: u64 = 1024;

impl Suite for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn about(&self) -> &'static str {
        "fred GET/SET on one multiplexed client (the floor)"
    }

    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(run(ctx, report))
    }
}

async fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let client = ctx.fred_client().await?;
    let value = Bytes::from(vec![b'x'; VALUE_SIZE]);
    client
        .set::<(), _, _>(GET_KEY, value.clone(), None, None, false)
        .await?;

    // TCP_NODELAY is off in fred and fredkit-conn; this probe keeps the
    // choice resting on a ratio measured interleaved, not on folklore.
    let nodelay = ctx.fred_client_with(true).await?;
    let get_on = |c: &Client, name: &str, concurrency: usize| {
        let c = c.clone();
        Contender::new(
            name,
            concurrency,
            op(move |_| {
                let c = c.clone();
                async move {
                    let _: Option<Bytes> = c.get(GET_KEY).await?;
                    Ok(())
                }
            }),
        )
    };
    let get = |name: &str, concurrency: usize| get_on(&client, name, concurrency);
    let set = |name: &str, concurrency: usize| {
        let c = client.clone();
        let value = value.clone();
        Contender::new(
            name,
            concurrency,
            op(move |i| {
                let c = c.clone();
                let value = value.clone();
                async move {
                    let key = format!("bench:raw:set:{}", i % SET_KEYS);
                    c.set::<(), _, _>(key, value, None, None, false).await?;
                    Ok(())
                }
            }),
        )
    };

    let contenders = [
        get("get_c1", 1),
        get("get_c64", 64),
        get("get_c256", 256),
        set("set_c64", 64),
        get_on(&nodelay, "get_c1_nodelay", 1),
        get_on(&nodelay, "get_c64_nodelay", 64),
    ];
    let s = interleave(ctx.rounds(), ctx.load(), &contenders).await?;
    let [get_c1, get_c64, get_c256, set_c64, get_c1_nodelay, get_c64_nodelay] = s.as_slice() else {
        anyhow::bail!("expected 6 summaries, got {}", s.len());
    };

    let size = format!("{VALUE_SIZE} B value");
    report.summary("get_c1", get_c1, &format!("GET, 1 in flight, {size}"));
    report.summary("get_c64", get_c64, &format!("GET, 64 tasks, {size}"));
    report.summary("get_c256", get_c256, &format!("GET, 256 tasks, {size}"));
    report.summary("set_c64", set_c64, &format!("SET, 64 tasks, {size}"));
    report.ratio(
        "get_c64_vs_c1",
        get_c64.ratio_to(get_c1),
        "what pipelining on one connection buys",
    );
    report.ratio(
        "set_vs_get_c64",
        set_c64.ratio_to(get_c64),
        "SET ops/s / GET ops/s",
    );

    report.ratio(
        "get_c1_nodelay_vs_default",
        get_c1_nodelay.ratio_to(get_c1),
        "TCP_NODELAY on / off (the default), GET c1",
    );
    report.ratio(
        "get_c64_nodelay_vs_default",
        get_c64_nodelay.ratio_to(get_c64),
        "TCP_NODELAY on / off (the default), GET c64",
    );

    client.quit().await?;
    nodelay.quit().await?;
    Ok(())
}
