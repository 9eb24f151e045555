//! `cargo xtask tour [SECTION]...`: a readable tour of fredkit, crate by crate.
//!
//! Runs against `$REDIS_URL` when it is set, otherwise against a throwaway
//! `redis-server` started with the testkit (installed first if needed).
//!
//! Each crate contributes one section: a file in this directory exporting a
//! `SECTION`, listed in [`SECTIONS`] in the order of the tour. A section gets
//! a [`Demo`] with a connected [`Redis`] handle and prints what it does.

mod cache;
mod collections;
mod conn;
mod core;
mod flags;
mod jobs;
mod lock;
mod pubsub;
mod ratelimit;
mod revocation;
mod session;
mod streams;

use crate::redis_setup;
use anyhow::{bail, Context, Result};
use fredkit_conn::{Redis, RedisConfig};
use std::future::Future;
use std::pin::Pin;

/// What a section gets to work with.
pub(crate) struct Demo {
    /// The server's URL (as given: may hold a password, never print it).
    pub(crate) url: String,
    /// A connected handle, shared by all sections.
    pub(crate) redis: Redis,
}

/// The future a section's `run` returns.
pub(crate) type SectionFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// One stop of the tour.
pub(crate) struct Section {
    /// Short name, used to select sections on the command line.
    pub(crate) name: &'static str,
    /// The heading printed above the section.
    pub(crate) title: &'static str,
    /// Runs the section.
    pub(crate) run: for<'a> fn(&'a Demo) -> SectionFuture<'a>,
}

/// The tour, in order. A new crate adds its section here.
const SECTIONS: &[Section] = &[
    conn::SECTION,
    core::SECTION,
    pubsub::SECTION,
    cache::SECTION,
    lock::SECTION,
    ratelimit::SECTION,
    streams::SECTION,
    revocation::SECTION,
    collections::SECTION,
    jobs::SECTION,
    session::SECTION,
    flags::SECTION,
];

/// Prints a section heading.
pub(crate) fn heading(title: &str) {
    println!();
    println!("{title}");
    println!("{}", "=".repeat(title.chars().count()));
}

/// Prints one step of a section: what the code does, then what came out.
pub(crate) fn step(code: &str, result: impl std::fmt::Display) {
    println!();
    println!("  > {code}");
    for line in result.to_string().lines() {
        println!("    {line}");
    }
}

/// Runs `cargo xtask tour`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--list") {
        for s in SECTIONS {
            println!("{:<8} {}", s.name, s.title);
        }
        return Ok(());
    }
    let selected: Vec<&Section> = if args.is_empty() {
        SECTIONS.iter().collect()
    } else {
        let mut selected = Vec::new();
        for arg in args {
            match SECTIONS.iter().find(|s| s.name == arg) {
                Some(s) => selected.push(s),
                None => bail!(
                    "unknown demo section `{arg}` (sections: {})",
                    SECTIONS
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        selected
    };

    // The testkit is synchronous: the server is started before, and dropped
    // after, the runtime.
    let (url, server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let shown = RedisConfig::from_url(&url)
                .map(|c| c.to_string())
                .unwrap_or_else(|e| format!("(unparsable: {e})"));
            println!("==> REDIS_URL is set: touring {shown}");
            (url, None)
        }
        _ => {
            redis_setup::ensure_redis()?;
            let server = fredkit_testkit::RedisServer::start()
                .context("could not start a throwaway redis-server")?;
            println!(
                "==> started a throwaway redis-server at {} (it goes away when the demo ends)",
                server.url()
            );
            (server.url(), Some(server))
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not build a tokio runtime")?;
    let outcome = runtime.block_on(tour(url, &selected));
    drop(runtime);
    drop(server);
    outcome
}

async fn tour(url: String, sections: &[&Section]) -> Result<()> {
    let config = RedisConfig::from_url(&url).context("REDIS_URL is not a valid Redis URL")?;
    let redis = Redis::connect(config).await?;
    redis
        .wait_connected()
        .await
        .context("could not connect to the demo server")?;
    let demo = Demo { url, redis };
    for section in sections {
        heading(section.title);
        (section.run)(&demo)
            .await
            .with_context(|| format!("demo section `{}` failed", section.name))?;
    }
    demo.redis.shutdown().await?;
    println!();
    println!("That was the tour. `cargo xtask servers cluster` + REDIS_URL runs it on a cluster.");
    Ok(())
}
