//! Demo section: fredkit-revocation (not written yet).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "revocation",
    title: "fredkit-revocation: JWT revocation",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!();
        println!("  (not written yet)");
        Ok(())
    })
}
