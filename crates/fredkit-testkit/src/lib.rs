//! Real `redis-server` topologies for tests and benchmarks, with fault controls.
//!
//! `fredkit-testkit` starts `redis-server` child processes on free loopback ports — a
//! standalone [`RedisServer`], a [`RedisCluster`], a [`SentinelGroup`] (master, replica and
//! three sentinels) or [`IndependentServers`] for Redlock — waits until they are ready, and
//! lets a test fault them: [`RedisServer::kill`], [`RedisServer::restart`] on the same port,
//! [`RedisServer::pause`]/[`RedisServer::resume`] (SIGSTOP/SIGCONT),
//! [`RedisServer::client_pause`], [`SentinelGroup::failover`], and killing a cluster master
//! followed by [`RedisCluster::wait_healthy`].
//!
//! The crate is synchronous (`std::process`, `std::net`), so servers outlive any one tokio
//! runtime and can be shared across `#[tokio::test]`s: [`shared_url`] starts one deployment
//! per [`Topology`] per test process, and [`unique_prefix`] gives each test its own keys.
//!
//! ```no_run
//! use fredkit_testkit::{RedisServer, ServerOptions};
//!
//! # fn main() -> fredkit_testkit::Result<()> {
//! let mut server = RedisServer::start_with(ServerOptions::default().aof(true))?;
//! server.command(&["SET", "k", "v"])?;
//! server.kill()?; // SIGKILL: no graceful shutdown
//! server.restart()?; // same port, same dir: the AOF brings "k" back
//! let v = server.command(&["GET", "k"])?;
//! assert_eq!(v.as_str(), Some("v"));
//! println!("connect your client to {}", server.url());
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Ready means ready**: a start returns once the server answers `PING` with `PONG`
//!   (not `LOADING`) and reports our own pid; topologies return once formed (all slots
//!   covered, replicas in sync, sentinels aware of each other).
//! - **No orphans**: dropping a server kills it (SIGKILL, then reaped), also on panic. If
//!   the test process dies without dropping — `std::process::exit`, SIGKILL, a static — a
//!   guardian helper (one `/bin/sh` per test process, in its own process group, fed every
//!   server pid through a pipe) sees the pipe close and kills the servers, then removes
//!   their temp dirs.
//! - **No port races left unhandled**: ports are picked at random in 16000-22000 (cluster
//!   bus +10000), checked by binding, and a start that loses the race is retried on a new
//!   port. A port stays reserved for its server until drop, so restarts reuse it.
//! - **Errors say what to do**: a missing binary names the package to install; a server
//!   that does not come up reports the tail of its log.
//!
//! # Configuration
//!
//! `FREDKIT_REDIS_SERVER` names the `redis-server` binary (default: `redis-server` on
//! `PATH`); [`ServerOptions::binary`] overrides it per server. Every server runs with
//! `--bind 127.0.0.1 --save "" --appendonly yes|no --dir <tempdir> --daemonize no
//! --protected-mode no --repl-diskless-sync-delay 0`, its output going to a log file in
//! its temp dir.
//!
//! # Test doubles and contract suites
//!
//! [`memory`] holds in-memory doubles of every fredkit-core trait (cache store, lock, rate
//! limiter, revocation store, stream producer, pub/sub) for unit tests without a Redis, and
//! [`contract`] the suites each trait's implementations must pass: the same suite runs
//! against the doubles here and against the Redis implementations in each crate's
//! contract tests (`tests/it/contract.rs`), so a double behaves like production where the
//! trait says it must.
//!
//! # Captured logs
//!
//! [`capture::Logs`] (feature `capture`, default) captures the test process's tracing
//! output, fred's `log` records included, so that a test can assert on what was logged.

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
#[cfg(feature = "capture")]
pub mod capture;
mod child;
mod cluster;
pub mod contract;
mod error;
mod guardian;
mod independent;
mod lost_reply;
pub mod memory;
mod resp;
mod sentinel;
mod server;
mod shared;
mod tls;
mod wait;

pub use acl::{acl_denials, delete_acl_user, set_acl_user, url_as};
pub use child::libtest_name;
pub use cluster::{key_slot, ClusterOptions, RedisCluster, SLOT_COUNT};
pub use error::{Result, TestkitError};
pub use independent::IndependentServers;
pub use lost_reply::with_lost_reply;
pub use resp::Reply;
pub use sentinel::{SentinelGroup, SERVICE_NAME};
pub use server::{RedisServer, ServerOptions, REDIS_SERVER_ENV};
pub use shared::{
    connect, shared_redis, shared_tls_certs, shared_tls_redis, shared_tls_url, shared_url,
    unique_prefix, Topology, SHARED_URL_ENV,
};
pub use tls::{CertOptions, TlsCerts};
