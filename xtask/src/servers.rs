//! `cargo xtask servers standalone|cluster|sentinel`: starts a throwaway
//! topology with the testkit, prints how to reach it and keeps it up until
//! Ctrl-C. The servers die with this process.

use crate::redis_setup;
use anyhow::{bail, Context, Result};
use fredkit_testkit::{ClusterOptions, RedisCluster, RedisServer, SentinelGroup};

enum Running {
    Standalone(RedisServer),
    Cluster(RedisCluster),
    Sentinel(SentinelGroup),
}

impl Running {
    fn url(&self) -> String {
        match self {
            Running::Standalone(s) => s.url(),
            Running::Cluster(c) => c.url(),
            Running::Sentinel(s) => s.url(),
        }
    }
}

/// Runs `cargo xtask servers`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let topology = match args {
        [t] => t.as_str(),
        _ => bail!("usage: cargo xtask servers standalone|cluster|sentinel"),
    };
    if !matches!(topology, "standalone" | "cluster" | "sentinel") {
        bail!("unknown topology `{topology}` (standalone, cluster or sentinel)");
    }
    redis_setup::ensure_redis()?;
    println!("==> starting a throwaway {topology} ...");
    // The testkit is synchronous: start (and later drop) the servers outside
    // the runtime that waits for Ctrl-C.
    let running = match topology {
        "standalone" => Running::Standalone(RedisServer::start()?),
        "cluster" => Running::Cluster(RedisCluster::start(ClusterOptions::default())?),
        _ => Running::Sentinel(SentinelGroup::start()?),
    };
    let url = running.url();
    println!();
    println!("    {topology} is up: {url}");
    println!();
    println!("    export REDIS_URL='{url}'");
    println!("    cargo xtask demo            # runs the tour against it");
    println!();
    println!("    Ctrl-C stops the servers.");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not build a tokio runtime")?;
    runtime
        .block_on(tokio::signal::ctrl_c())
        .context("could not wait for Ctrl-C")?;
    drop(runtime);
    println!("\n==> Ctrl-C: stopping the {topology}");
    drop(running);
    Ok(())
}
