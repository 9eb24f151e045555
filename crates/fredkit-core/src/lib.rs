//! The shared vocabulary of fredkit.
//!
//! Every fredkit crate speaks in these types: one [`Error`] with a matchable
//! [`ErrorKind`], the value [`Codec`]s, [`KeySpace`] for cluster-safe key names,
//! [`Script`] for Lua with EVALSHA/NOSCRIPT handling, [`Backoff`],
//! [`CircuitBreaker`], [`FailMode`], and the object-safe traits of each
//! primitive (in [`traits`]). This crate opens no connection of its own.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;

pub use error::{Error, ErrorKind, Result};
