//! All of fredkit-streams's integration tests, in one test binary: one link instead of one
//! per file (CI builds and links every test binary; see docs/testing.md). Each module
//! was a `tests/<module>.rs` binary of its own; nextest names its tests
//! `<module>::<test>`, and .config/nextest.toml picks the fault tests out by those names.

mod close;
mod common;
mod contract;
mod fault_client_kill_lost_reply;
mod faults;
mod streams;
