//! Placeholder.
pub use fredkit_core as _core;
