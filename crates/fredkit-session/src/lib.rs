//! # fredkit-session
//!
//! Web sessions in Redis with per-field atomic writes (work in progress).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
