//! fredkit-session (being built: this section only says so for now).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "session",
    title: "fredkit-session",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!("  (fredkit-session is being built; its tour comes with it)");
        Ok(())
    })
}
