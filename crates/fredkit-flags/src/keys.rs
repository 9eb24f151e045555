//! The keys and the channel of a namespace: all under one hash tag.

use fredkit_conn::{Redis, Topology};
use fredkit_core::{KeySpace, Result};

/// `prefix:{prefix}:flags` (hash), `…:version` (string), `…:audit`
/// (stream) and the channel `…:changes`: one hash tag, so the write script
/// touches one slot and may `SPUBLISH` on the channel from inside.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) space: KeySpace,
    pub(crate) flags: String,
    pub(crate) version: String,
    pub(crate) audit: String,
    pub(crate) channel: String,
    /// `SPUBLISH`/`SSUBSCRIBE` (a cluster) rather than `PUBLISH`/`SUBSCRIBE`:
    /// the same choice as fredkit-pubsub's default `Mode::Auto`.
    pub(crate) sharded: bool,
}

impl Keys {
    pub(crate) fn new(redis: &Redis, space: KeySpace) -> Result<Keys> {
        let tag = space.prefix().to_string();
        Ok(Keys {
            flags: space.tagged(&tag, ["flags"])?,
            version: space.tagged(&tag, ["version"])?,
            audit: space.tagged(&tag, ["audit"])?,
            channel: space.tagged(&tag, ["changes"])?,
            sharded: matches!(redis.config().topology(), Topology::Cluster(_)),
            space,
        })
    }
}
