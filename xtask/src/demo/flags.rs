//! fredkit-flags (being built: this section only says so for now).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "flags",
    title: "fredkit-flags",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!("  (fredkit-flags is being built; its tour comes with it)");
        Ok(())
    })
}
