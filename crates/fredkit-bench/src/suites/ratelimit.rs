//! `ratelimit`: not written yet (stub registered so the suite list is complete).

use super::Suite;
use crate::harness::Report;
use crate::Ctx;
use anyhow::Result;
use futures::future::BoxFuture;

/// The `ratelimit` suite.
pub(crate) struct Ratelimit;

impl Suite for Ratelimit {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn about(&self) -> &'static str {
        "not written yet"
    }

    fn run<'a>(&'a self, _ctx: &'a Ctx, _report: &'a mut Report) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
