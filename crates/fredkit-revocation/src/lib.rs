//! `fredkit-revocation` — **not implemented yet.**
//!
//! This crate is a placeholder so the workspace layout is complete. It exports
//! nothing and promises nothing; see the project README for the status of
//! each crate.
#![forbid(unsafe_code)]
