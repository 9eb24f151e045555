//! All of fredkit-collections's integration tests, in one test binary: one link instead of one
//! per file (CI builds and links every test binary; see docs/testing.md). Each module
//! was a `tests/<module>.rs` binary of its own; nextest names its tests
//! `<module>::<test>`, and .config/nextest.toml picks the fault tests out by those names.

mod feed;
mod leaderboard_bloom;
mod presence;
mod ttlmap;
