//! One connection layer for every fredkit crate.
//!
//! [`RedisConfig`] says where Redis is (standalone, cluster or sentinel) and
//! how to talk to it, with defaults that never hang: a 5 s connect timeout, a
//! 1 s command timeout, reconnect forever with capped exponential backoff and
//! jitter, lazy connect. [`Redis`] is the cheap-to-clone handle every fredkit
//! primitive takes, with raw fred access, [`Redis::dedicated`] connections
//! for blocking commands, [`Redis::subscriber`] connections, [`Redis::health`]
//! and [`Redis::shutdown`]. Secrets never reach `Debug`, `Display` or logs.
//!
//! # URLs
//!
//! ```text
//! redis[s]://[[user]:password@]host[:port][/db][?options]
//! redis[s]-cluster://[[user]:password@]host[:port][,host:port...][?node=host:port&...]
//! redis[s]-sentinel://[[user]:password@]host[:port][,host:port...][/db]?sentinelServiceName=NAME[&node=host:port...]
//! ```
//!
//! fred's own URL syntax (`?node=` for more nodes, `sentinelServiceName`,
//! `sentinelUsername`, `sentinelPassword`) is accepted as is; a comma-separated
//! host list is accepted too. Options: `connect_timeout`, `command_timeout`
//! (`500ms`, `2s`...), `pool_size`, `lazy`, and for TLS `ca_file`,
//! `client_cert_file`, `client_key_file`, `tls_server_name` (see [`TlsOptions`]). An unknown option,
//! a bad port, a bad database or an unknown scheme is an
//! [`ErrorKind::Config`] error naming the bad
//! part. `rediss://` needs the `tls` feature (rustls).
//!
//! ```
//! use fredkit_conn::RedisConfig;
//! let err = RedisConfig::from_url("redis://:secret@localhost:66000").unwrap_err();
//! assert_eq!(err.kind(), fredkit_core::ErrorKind::Config);
//! assert!(err.to_string().contains("port '66000'"));
//! assert!(!err.to_string().contains("secret"));
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod config;
mod confirmed;
mod conn_error;
mod credentials;
mod duration;
mod fred_config;
mod health;
pub mod liveness;
mod redis;
mod secret;
mod sentinel_follow;
mod tls;
mod url;
mod watchdog;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use config::{Node, ReconnectConfig, RedisConfig, RedisConfigBuilder, Topology};
pub use confirmed::Confirmed;
pub use credentials::{
    credentials_fn, CredentialProvider, Credentials, CredentialsFuture, FnCredentials,
};
pub use fred;
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use health::Health;
pub use redis::{Dedicated, Redis};
pub use secret::Secret;
pub use tls::TlsOptions;
