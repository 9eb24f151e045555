//! The benchmark suites. Each lives in one file and is listed in [`all`].
//!
//! A suite measures its fredkit operation *and* the raw fred commands it
//! stands on, in the same run and interleaved (see
//! [`interleave`](crate::harness::interleave)), and reports ratios such as
//! `cache.l2_hit_vs_raw_get` next to the absolute figures. Figure names are
//! prefixed with the suite name by the [`Report`].
//!
//! Adding a suite: write `src/suites/<name>.rs` with a unit struct
//! implementing [`Suite`], add `mod <name>;` below and push it in [`all`].

mod cache;
mod collections;
mod conn;
mod flags;
mod jobs;
mod lock;
mod pubsub;
mod ratelimit;
mod raw;
mod revocation;
mod session;
mod streams;
mod tls;

use crate::harness::Report;
use crate::Ctx;
use anyhow::Result;
use futures::future::BoxFuture;

/// One benchmark suite.
pub(crate) trait Suite: Send + Sync {
    /// The name (figure prefix and command-line selector).
    fn name(&self) -> &'static str;
    /// One line about what it measures.
    fn about(&self) -> &'static str;
    /// Runs it, adding figures to `report`.
    fn run<'a>(&'a self, ctx: &'a Ctx, report: &'a mut Report) -> BoxFuture<'a, Result<()>>;
}

/// Every suite, in the order a full run runs them.
pub(crate) fn all() -> Vec<Box<dyn Suite>> {
    vec![
        Box::new(raw::Raw),
        Box::new(conn::Conn),
        Box::new(pubsub::PubSub),
        Box::new(cache::Cache),
        Box::new(lock::Lock),
        Box::new(ratelimit::Ratelimit),
        Box::new(streams::Streams),
        Box::new(revocation::Revocation),
        Box::new(tls::Tls),
        Box::new(collections::Collections),
        Box::new(jobs::Jobs),
        Box::new(session::SessionSuite),
        Box::new(flags::Flags),
    ]
}
