//! # fredkit
//!
//! Redis patterns for Rust services, built on [`fred`](https://docs.rs/fred) and tokio.
//! This facade re-exports the fredkit crates; depend on it, or on the single
//! crates you need.
//!
//! | module | crate | status |
//! |---|---|---|
//! | [`core`] | `fredkit-core` | errors, codecs, keys, scripts, backoff, circuit breaker, traits |
//! | [`conn`] | `fredkit-conn` | configuration, the shared `Redis` handle, health |
//!
//! ## Features
//! - `tls`: `rediss://` URLs through rustls.
//! - `json`: the JSON codec next to the default MessagePack one.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use fredkit_conn as conn;
pub use fredkit_core as core;

pub use fredkit_core::{Error, ErrorKind, Result};
