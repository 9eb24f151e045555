//! Feature flags evaluated in-process from a snapshot, changed everywhere
//! within a second.
//!
//! - [`Flags`] holds every flag of a namespace and answers
//!   [`is_enabled`](Flags::is_enabled) / [`variant`](Flags::variant) with no
//!   round trip, no lock and no allocation. Changes arrive through pub/sub
//!   (fredkit-pubsub) and are applied at once; a gap or a version jump
//!   reloads the whole snapshot.
//! - [`FlagAdmin`] writes flags: validated ([`AdminError::Invalid`] names
//!   the field), compare-and-set on the revision ([`AdminError::Conflict`]),
//!   audited in a capped stream, published — one script, one round trip.
//! - Flags have on/off, allow and deny lists of users and groups, a
//!   percentage rollout by a stable hash of (flag, user), JSON values and
//!   weighted variants, and an optional expiry on the server's clock.
//! - The `fredkit-flags` command-line tool (feature `cli`) and an
//!   OpenFeature provider (feature `openfeature`).
//!
//! See the README for the guarantees, the round trips and the metrics.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod acl;
mod admin;
mod eval;
mod flags;
mod keys;
mod metrics;
mod model;
#[cfg(feature = "openfeature")]
#[cfg_attr(docsrs, doc(cfg(feature = "openfeature")))]
pub mod openfeature;

pub use acl::{acl_rule, ACL_COMMANDS};
pub use admin::{AdminError, AuditEntry, Expect, Expiry, FlagAdmin, Write, Written, MAX_EXPIRY};
pub use eval::{bucket, Context, Evaluation, Reason, Variant};
pub use flags::{Flags, FlagsOptions, Source};
/// The core types every fredkit crate shares, re-exported the same way from
/// each: `fredkit_<crate>::{Error, ErrorKind, Result, FailMode, KeySpace,
/// IntoKeySpace}` are `fredkit_core`'s.
pub use fredkit_core::{Error, ErrorKind, FailMode, IntoKeySpace, KeySpace, Result};
pub use metrics::FlagsMetrics;
pub use model::{
    validate_name, FlagDef, StoredFlag, WeightedVariant, BUCKETS, MAX_DEF_BYTES, MAX_ID_LEN,
    MAX_LIST_LEN, MAX_NAME_LEN,
};
