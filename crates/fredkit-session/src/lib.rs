//! # fredkit-session
//!
//! Web sessions in Redis that never lose a concurrent write. See the
//! README (below, for the whole story) and [`Sessions`] (keys, guarantees,
//! round trips), [`SessionLayer`] and [`Session`] (the tower layer and the
//! axum extractor), and `TowerSessionStore` (feature `tower-sessions`).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod id;
mod layer;
mod metrics;
mod options;
mod store;
#[cfg(feature = "tower-sessions")]
mod tower_store;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use cookie::{Key, SameSite};
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use id::SessionId;
pub use layer::{CookieConfig, CookieProtection, Session, SessionLayer, SessionService};
pub use options::SessionOptions;
pub use store::{Changes, SaveOutcome, SessionInfo, SessionRecord, Sessions};
#[cfg(feature = "tower-sessions")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-sessions")))]
pub use tower_store::TowerSessionStore;
