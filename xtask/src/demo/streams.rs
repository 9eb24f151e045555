//! Demo section: fredkit-streams (not written yet).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "streams",
    title: "fredkit-streams: at-least-once workers on Redis Streams",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!();
        println!("  (not written yet)");
        Ok(())
    })
}
