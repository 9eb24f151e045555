//! All of fredkit-conn's integration tests, in one test binary: one link instead of one
//! per file (CI builds and links every test binary; see docs/testing.md). Each module
//! was a `tests/<module>.rs` binary of its own; nextest names its tests
//! `<module>::<test>`, and .config/nextest.toml picks the fault tests out by those names.

mod auth;
mod cluster_failover;
mod cluster_faults;
mod config;
mod connect_errors;
mod connect_warning;
mod dedicated_cluster;
mod durations;
mod health_and_env;
mod secrets_in_logs;
mod sentinel_failover;
mod shutdown;
mod topologies;
