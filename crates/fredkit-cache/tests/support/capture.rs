//! The shared log capture of fredkit-testkit (`fredkit_testkit::capture`): this file
//! only re-exports it, so that `#[path = "support/capture.rs"] mod capture;` keeps
//! working.

pub(crate) use fredkit_testkit::capture::*;
