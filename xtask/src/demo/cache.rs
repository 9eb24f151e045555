//! Demo section: fredkit-cache (not written yet).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "cache",
    title: "fredkit-cache: cache-aside, stampede protection, fail-safe, L1 + L2",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!();
        println!("  (not written yet)");
        Ok(())
    })
}
