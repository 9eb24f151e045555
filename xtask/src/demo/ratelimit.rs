//! Demo section: fredkit-ratelimit (not written yet).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "ratelimit",
    title: "fredkit-ratelimit: exact limits in one round trip",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!();
        println!("  (not written yet)");
        Ok(())
    })
}
