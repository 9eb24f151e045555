//! Demo section: fredkit-lock (not written yet).

use super::{Demo, Section, SectionFuture};

pub(crate) const SECTION: Section = Section {
    name: "lock",
    title: "fredkit-lock: locks with fencing tokens, watchdog, Redlock, semaphores",
    run,
};

fn run(_demo: &Demo) -> SectionFuture<'_> {
    Box::pin(async {
        println!();
        println!("  (not written yet)");
        Ok(())
    })
}
