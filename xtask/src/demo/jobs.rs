//! fredkit-jobs (being built: this section only says so for now).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "jobs",
    title: "fredkit-jobs",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!("  (fredkit-jobs is being built; its tour comes with it)");
        Ok(())
    })
}
