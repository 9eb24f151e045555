//! # fredkit-flags
//!
//! Feature flags evaluated locally, synced from Redis (work in progress).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
