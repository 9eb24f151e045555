//! The revocation event every store publishes after a revocation.

use serde::{Deserialize, Serialize};

/// What is published on the event channel (`prefix:events`, MessagePack
/// through fredkit-pubsub) after every revocation, so that the stores with
/// the local cache on learn of it without a round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Event {
    /// `"jti"`, `"sub"` or `"org"`.
    pub(crate) kind: String,
    /// The token id, subject or organisation.
    pub(crate) id: String,
    /// For `sub`/`org` the cut-off in force (Unix seconds); 1 for `jti`.
    pub(crate) value: i64,
}
