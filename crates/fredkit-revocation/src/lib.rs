//! JWT revocation on Redis: revoke a token by id until it expires, or every
//! token of a subject or organisation at once, and check a token in one
//! round trip.
//!
//! (Full crate docs are written below.)
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "local-cache")]
mod local;
mod metrics;
mod options;
mod store;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{RevocationLayer, RevocationService};
#[cfg(feature = "local-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "local-cache")))]
pub use local::LocalCacheOptions;
pub use metrics::RevocationMetrics;
pub use options::{RevocationOptions, RevocationOptionsBuilder, DEFAULT_PREFIX};
pub use store::{ActiveToken, Revocations, Revoked};

pub use fredkit_core::traits::{RevocationStore, TokenClaims};
pub use fredkit_core::FailMode;
