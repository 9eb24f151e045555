//! Where a stream lives: [`StreamKeys`], and stream entry ids: [`StreamId`].

use fredkit_core::IntoKeySpace;
use std::fmt;

use fredkit_core::{KeySpace, Result};

/// The Redis keys of one logical stream: the stream itself and its
/// dead-letter stream, built from a [`KeySpace`] with the stream's name as
/// the hash tag, so both land in one cluster slot and one script can move an
/// entry from one to the other.
///
/// | key | holds |
/// |---|---|
/// | `prefix:{name}:stream` | the entries (payload + headers) |
/// | `prefix:{name}:dead` | dead letters (original fields + `dlq.*` history) |
///
/// Neither key has a TTL: a stream is bounded by trimming
/// ([`Trim`](crate::Trim), applied on every publish), the dead-letter stream
/// by an approximate `MAXLEN` ([`WorkerConfigBuilder::dead_letter_max_len`](crate::WorkerConfigBuilder::dead_letter_max_len)).
/// Consumer groups live inside the stream key.
///
/// ```
/// use fredkit_core::KeySpace;
/// use fredkit_streams::StreamKeys;
///
/// let keys = StreamKeys::new(&KeySpace::new("shop:events")?, "orders")?;
/// assert_eq!(keys.stream(), "shop:events:{orders}:stream");
/// assert_eq!(keys.dead_letter(), "shop:events:{orders}:dead");
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StreamKeys {
    space: KeySpace,
    name: String,
    stream: String,
    dead: String,
}

impl StreamKeys {
    /// The keys of the stream called `name` under `space` (a `&KeySpace`,
    /// `KeySpace`, `&str` or `String` prefix). `name` is escaped like every
    /// [`KeySpace`] part, so any text is safe.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput)
    /// when `name` is empty or `space` is not a valid prefix.
    pub fn new(space: impl IntoKeySpace, name: &str) -> Result<StreamKeys> {
        let space = space.into_key_space()?;
        Ok(StreamKeys {
            name: name.to_string(),
            stream: space.tagged(name, ["stream"])?,
            dead: space.tagged(name, ["dead"])?,
            space,
        })
    }

    /// The stream's logical name (the hash tag).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key space the keys were built in.
    pub fn space(&self) -> &KeySpace {
        &self.space
    }

    /// The stream key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The dead-letter stream key.
    pub fn dead_letter(&self) -> &str {
        &self.dead
    }
}

impl fmt::Debug for StreamKeys {
    /// Key names may hold user data; `Debug` shows the logical name only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamKeys")
            .field("space", &self.space)
            .field("name", &self.name)
            .finish()
    }
}

/// A stream entry id as Redis returns it (`"1700000000000-0"`: server time in
/// milliseconds, then a sequence number).
///
/// Ids order like Redis orders them: by milliseconds, then by sequence,
/// numerically (`"5-10"` > `"5-9"`). Ids without the `ms-seq` shape sort
/// after well-formed ones, by text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StreamId(String);

impl StreamId {
    fn parts(&self) -> Option<(u64, u64)> {
        let (ms, seq) = self.0.split_once('-')?;
        Some((ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl Ord for StreamId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.parts(), other.parts()) {
            (Some(a), Some(b)) => a.cmp(&b).then_with(|| self.0.cmp(&other.0)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => self.0.cmp(&other.0),
        }
    }
}

impl PartialOrd for StreamId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl StreamId {
    /// Wraps an id string as Redis returned it.
    pub fn new(id: impl Into<String>) -> StreamId {
        StreamId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The milliseconds part (the Redis server's clock when the entry was
    /// added with an automatic id), if the id has the usual `ms-seq` shape.
    pub fn millis(&self) -> Option<u64> {
        self.0.split('-').next().and_then(|ms| ms.parse().ok())
    }

    /// The sequence part, if the id has the usual `ms-seq` shape.
    pub fn seq(&self) -> Option<u64> {
        self.0.split_once('-').and_then(|(_, s)| s.parse().ok())
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::util::redis_keyslot;

    #[test]
    fn stream_and_dead_letter_share_a_slot_whatever_the_name() {
        let space = KeySpace::new("app").unwrap();
        for name in ["orders", "a:b", "{x}", "ü", "%"] {
            let k = StreamKeys::new(&space, name).unwrap();
            assert_ne!(k.stream(), k.dead_letter());
            assert_eq!(
                redis_keyslot(k.stream().as_bytes()),
                redis_keyslot(k.dead_letter().as_bytes()),
                "{name}"
            );
        }
    }

    #[test]
    fn empty_stream_name_is_rejected() {
        let space = KeySpace::new("app").unwrap();
        assert!(StreamKeys::new(&space, "").is_err());
    }

    #[test]
    fn stream_ids_order_numerically_like_redis() {
        let id = StreamId::new;
        assert!(id("5-9") < id("5-10"));
        assert!(id("9-0") < id("10-0"));
        assert!(id("10-0") > id("9-99"));
        assert_eq!(id("7-1").cmp(&id("7-1")), std::cmp::Ordering::Equal);
        assert!(id("7-1") < id("garbage"));
    }

    #[test]
    fn stream_id_parts_parse_and_garbage_does_not_panic() {
        let id = StreamId::new("1700000000000-7");
        assert_eq!(id.millis(), Some(1_700_000_000_000));
        assert_eq!(id.seq(), Some(7));
        let bad = StreamId::new("nope");
        assert_eq!(bad.millis(), None);
        assert_eq!(bad.seq(), None);
    }
}
