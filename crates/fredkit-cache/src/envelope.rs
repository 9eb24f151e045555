//! The versioned binary envelope every entry is stored in.
//!
//! ```text
//! offset size  field
//! 0      2     magic "FK"
//! 2      1     version (1)
//! 3      1     flags: bit 0 = payload is LZ4 (block, u32 LE size first),
//!                     bit 1 = negative entry (cached absence, no payload);
//!                     bit 2 = tagged: a tag section follows the header;
//!                     bit 3 = the factory's duration follows the header;
//!                     any other bit set = not ours (garbage)
//! 4      8     created, ms since the Unix epoch (writer's clock), u64 LE
//! 12     8     fresh until (logical expiry), ms since the Unix epoch, u64 LE
//! 20     4     factory duration in ms, u32 LE, when bit 3 is set (what
//!              the value took to compute: XFetch's delta)
//! ..     ..    tag section, when bit 2 is set: u16 LE count, then per tag
//!              u16 LE length, the tag's UTF-8 bytes, u64 LE version (the
//!              tag's version when the entry was written; see `tags.rs`)
//! ..     ..    codec payload (absent for a negative entry)
//! ```
//!
//! The physical TTL (`PX` of the `SET`) is the logical TTL plus the fail-safe
//! window; between the two the entry is *stale*: served only when the source
//! fails or Redis is unreachable. Anything that does not parse is a miss.

use bytes::Bytes;
use fredkit_core::Codec;
use serde::{de::DeserializeOwned, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: [u8; 2] = *b"FK";
const VERSION: u8 = 1;
const FLAG_LZ4: u8 = 0b01;
const FLAG_NONE: u8 = 0b10;
const FLAG_TAGS: u8 = 0b100;
const FLAG_DELTA: u8 = 0b1000;
pub(crate) const HEADER_LEN: usize = 20;

/// An entry read back from Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored<V> {
    /// `None` for a cached absence (negative caching).
    pub(crate) value: Option<V>,
    pub(crate) created_ms: u64,
    pub(crate) fresh_until_ms: u64,
    /// The value's encoded size before compression (0 for an absence):
    /// the L1 weight when L1 is bounded by bytes.
    pub(crate) size: usize,
    /// The tags the entry was written under, with each tag's version then
    /// (empty for an untagged entry).
    pub(crate) tags: Tags,
    /// How long the factory took to compute the value, in ms (0: unknown,
    /// e.g. written by `set`). XFetch's delta.
    pub(crate) delta_ms: u32,
}

/// Tags with the versions an entry was written under; `None` = untagged
/// (no allocation, nothing to check).
pub(crate) type Tags = Option<std::sync::Arc<[(String, u64)]>>;

impl<V> Stored<V> {
    pub(crate) fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms
    }
}

/// Why bytes under a key are not a usable entry.
#[derive(Debug)]
pub(crate) struct Garbage(pub(crate) String);

/// Milliseconds since the Unix epoch on this machine's wall clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Encodes `value` (or a negative entry for `None`) into an envelope.
/// The payload size before compression of an envelope made by [`encode`].
pub(crate) fn plain_size(envelope: &[u8]) -> usize {
    let mut body = envelope.get(HEADER_LEN..).unwrap_or_default();
    if envelope.get(3).is_some_and(|f| f & FLAG_DELTA != 0) {
        body = body.get(4..).unwrap_or_default();
    }
    let body = match envelope.get(3) {
        Some(flags) if flags & FLAG_TAGS != 0 => match read_tags(body) {
            Ok((_, rest)) => rest,
            Err(_) => body,
        },
        _ => body,
    };
    match (envelope.get(3), body.get(0..4)) {
        (Some(flags), Some(s)) if flags & FLAG_LZ4 != 0 => {
            u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize
        }
        _ => body.len(),
    }
}

pub(crate) fn encode<V: Serialize, C: Codec>(
    codec: &C,
    value: Option<&V>,
    created_ms: u64,
    fresh_until_ms: u64,
    compress_above: Option<usize>,
    tags: &[(String, u64)],
    delta_ms: u32,
) -> fredkit_core::Result<Bytes> {
    let mut flags = 0u8;
    let payload = match value {
        None => {
            flags |= FLAG_NONE;
            Bytes::new()
        }
        Some(v) => codec.encode(v)?,
    };
    let compressed = match compress_above {
        Some(threshold) if value.is_some() && payload.len() > threshold => {
            let c = lz4_flex::block::compress(&payload);
            // Only keep the compressed form when it is smaller.
            (c.len() + 4 < payload.len()).then_some(c)
        }
        _ => None,
    };
    let body_len = compressed.as_ref().map_or(payload.len(), |c| c.len() + 4);
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    if compressed.is_some() {
        flags |= FLAG_LZ4;
    }
    if !tags.is_empty() {
        flags |= FLAG_TAGS;
    }
    if delta_ms > 0 {
        flags |= FLAG_DELTA;
    }
    out.push(flags);
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(&fresh_until_ms.to_le_bytes());
    if delta_ms > 0 {
        out.extend_from_slice(&delta_ms.to_le_bytes());
    }
    if !tags.is_empty() {
        let too_many = || {
            fredkit_core::Error::invalid_input(
                "cache entry tags: at most 65535 tags of at most 65535 bytes each",
            )
        };
        out.extend_from_slice(
            &u16::try_from(tags.len())
                .map_err(|_| too_many())?
                .to_le_bytes(),
        );
        for (tag, version) in tags {
            let len = u16::try_from(tag.len()).map_err(|_| too_many())?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(tag.as_bytes());
            out.extend_from_slice(&version.to_le_bytes());
        }
    }
    match compressed {
        Some(c) => {
            let size = u32::try_from(payload.len()).map_err(|_| {
                fredkit_core::Error::invalid_input(
                    "cache value larger than 4 GiB cannot be stored; cache a reference instead",
                )
            })?;
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&c);
        }
        None => out.extend_from_slice(&payload),
    }
    Ok(Bytes::from(out))
}

/// Decodes an envelope. Never panics, whatever the bytes.
pub(crate) fn decode<V: DeserializeOwned, C: Codec>(
    codec: &C,
    bytes: &[u8],
    max_decompressed: usize,
) -> Result<Stored<V>, Garbage> {
    if bytes.len() < HEADER_LEN {
        return Err(Garbage(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte envelope header",
            bytes.len()
        )));
    }
    if bytes[0..2] != MAGIC {
        return Err(Garbage("no fredkit-cache envelope (bad magic)".into()));
    }
    if bytes[2] != VERSION {
        return Err(Garbage(format!("unknown envelope version {}", bytes[2])));
    }
    let flags = bytes[3];
    if flags & !(FLAG_LZ4 | FLAG_NONE | FLAG_TAGS | FLAG_DELTA) != 0 {
        return Err(Garbage(format!("unknown envelope flags {flags:#04x}")));
    }
    let created_ms = read_u64(&bytes[4..12]);
    let fresh_until_ms = read_u64(&bytes[12..20]);
    let mut body = &bytes[HEADER_LEN..];
    let mut delta_ms = 0;
    if flags & FLAG_DELTA != 0 {
        let (d, rest) = body
            .split_at_checked(4)
            .ok_or_else(|| Garbage("truncated factory duration".into()))?;
        delta_ms = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        body = rest;
    }
    let mut tags: Tags = None;
    if flags & FLAG_TAGS != 0 {
        let (t, rest) = read_tags(body)?;
        tags = Some(t.into());
        body = rest;
    }
    if flags & FLAG_NONE != 0 {
        if flags & FLAG_LZ4 != 0 || !body.is_empty() {
            return Err(Garbage("negative entry with a payload".into()));
        }
        return Ok(Stored {
            value: None,
            created_ms,
            fresh_until_ms,
            size: 0,
            tags,
            delta_ms,
        });
    }
    let mut plain_size = body.len();
    let value = if flags & FLAG_LZ4 != 0 {
        if body.len() < 4 {
            return Err(Garbage("compressed payload without its size".into()));
        }
        let size = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if size > max_decompressed {
            return Err(Garbage(format!(
                "compressed payload claims {size} bytes, over the {max_decompressed}-byte limit"
            )));
        }
        // LZ4 cannot expand a block more than ~255x (a match's length is
        // extended 255 bytes per input byte): a larger claim is forged, and is
        // refused before its buffer is allocated.
        let packed = body.len() - 4;
        if size > packed.saturating_mul(255).saturating_add(64) {
            return Err(Garbage(format!(
                "compressed payload of {packed} bytes cannot expand to the {size} bytes it claims"
            )));
        }
        plain_size = size;
        let mut plain = vec![0u8; size];
        match lz4_flex::block::decompress_into(&body[4..], &mut plain) {
            Ok(n) if n == size => {}
            Ok(n) => {
                return Err(Garbage(format!(
                    "compressed payload is {n} bytes, header says {size}"
                )))
            }
            Err(e) => return Err(Garbage(format!("bad LZ4 payload: {e}"))),
        }
        codec.decode(&plain)
    } else {
        codec.decode(body)
    }
    .map_err(|e| Garbage(e.to_string()))?;
    Ok(Stored {
        value: Some(value),
        created_ms,
        fresh_until_ms,
        size: plain_size,
        tags,
        delta_ms,
    })
}

/// Tags with versions, and the bytes after them.
type TagSection<'a> = (Vec<(String, u64)>, &'a [u8]);

/// The tag section at the start of `body`, and what follows it.
fn read_tags(body: &[u8]) -> Result<TagSection<'_>, Garbage> {
    let cut = || Garbage("truncated tag section".into());
    let (count, mut rest) = body.split_at_checked(2).ok_or_else(cut)?;
    let count = u16::from_le_bytes([count[0], count[1]]);
    if count == 0 {
        return Err(Garbage("tag section with no tag".into()));
    }
    let mut tags = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let (len, r) = rest.split_at_checked(2).ok_or_else(cut)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let (tag, r) = r.split_at_checked(len).ok_or_else(cut)?;
        let (version, r) = r.split_at_checked(8).ok_or_else(cut)?;
        let tag = std::str::from_utf8(tag)
            .map_err(|_| Garbage("tag is not UTF-8".into()))?
            .to_string();
        tags.push((tag, read_u64(version)));
        rest = r;
    }
    Ok((tags, rest))
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fredkit_core::MsgPack;

    #[test]
    fn sizes_are_the_uncompressed_payload_size_on_write_and_read() {
        let v = "ab".repeat(5000);
        let plain = MsgPack.encode(&v).unwrap().len();
        for compress in [None, Some(64)] {
            let b = encode(&MsgPack, Some(&v), 5, 10, compress, &[], 0).unwrap();
            assert_eq!(plain_size(&b), plain);
            let s: Stored<String> = decode(&MsgPack, &b, 1 << 20).unwrap();
            assert_eq!(s.size, plain);
        }
        assert!(
            encode(&MsgPack, Some(&v), 5, 10, Some(64), &[], 0)
                .unwrap()
                .len()
                < plain
        );
    }

    #[test]
    fn values_round_trip_with_their_times() {
        let b = encode(&MsgPack, Some(&"hello".to_string()), 5, 10, None, &[], 0).unwrap();
        let s: Stored<String> = decode(&MsgPack, &b, 1 << 20).unwrap();
        assert_eq!(s.value.as_deref(), Some("hello"));
        assert_eq!((s.created_ms, s.fresh_until_ms), (5, 10));
        assert!(s.is_fresh(9) && !s.is_fresh(10));
    }

    #[test]
    fn tags_round_trip_with_their_versions_and_truncations_are_garbage() {
        let tags = vec![("product:42".to_string(), 7), ("category:7".to_string(), 0)];
        for (value, compress) in [(Some("v".repeat(3000)), Some(64)), (None, None)] {
            let b = encode(&MsgPack, value.as_ref(), 5, 10, compress, &tags, 0).unwrap();
            let s: Stored<String> = decode(&MsgPack, &b, 1 << 20).unwrap();
            assert_eq!(s.value, value);
            assert_eq!(s.tags.as_deref(), Some(&tags[..]));
            if let Some(v) = &value {
                assert_eq!(s.size, MsgPack.encode(v).unwrap().len());
                assert_eq!(plain_size(&b), s.size);
            }
            for end in HEADER_LEN..b.len() {
                assert!(decode::<String, _>(&MsgPack, &b[..end], 1 << 20).is_err());
            }
        }
        let untagged = encode(&MsgPack, Some(&1u64), 5, 10, None, &[], 0).unwrap();
        let timed = encode(&MsgPack, Some(&"x".repeat(100)), 5, 10, Some(8), &tags, 250).unwrap();
        let t: Stored<String> = decode(&MsgPack, &timed, 1 << 20).unwrap();
        assert_eq!((t.delta_ms, t.tags.as_deref()), (250, Some(&tags[..])));
        assert_eq!(t.value.as_deref(), Some(&*"x".repeat(100)));
        assert_eq!(plain_size(&timed), t.size);
        for end in HEADER_LEN..timed.len() {
            assert!(decode::<String, _>(&MsgPack, &timed[..end], 1 << 20).is_err());
        }
        assert_eq!(
            decode::<u64, _>(&MsgPack, &untagged, 1 << 20).unwrap().tags,
            None
        );
    }

    #[test]
    fn negative_entries_round_trip_as_none() {
        let b = encode::<String, _>(&MsgPack, None, 1, 2, Some(0), &[], 0).unwrap();
        assert_eq!(b.len(), HEADER_LEN);
        let s: Stored<String> = decode(&MsgPack, &b, 1 << 20).unwrap();
        assert_eq!(s.value, None);
    }

    #[test]
    fn large_values_are_compressed_and_round_trip() {
        let big = "x".repeat(10_000);
        let b = encode(&MsgPack, Some(&big), 1, 2, Some(1024), &[], 0).unwrap();
        assert!(b.len() < 1_000, "compressed to {}", b.len());
        assert_eq!(b[3] & FLAG_LZ4, FLAG_LZ4);
        let s: Stored<String> = decode(&MsgPack, &b, 1 << 20).unwrap();
        assert_eq!(s.value.unwrap(), big);
        // A lower decompression limit refuses it instead of allocating.
        assert!(decode::<String, _>(&MsgPack, &b, 100).is_err());
    }

    #[test]
    fn a_forged_decompressed_size_is_refused_before_allocating_it() {
        let mut forged = encode(&MsgPack, Some(&"z".repeat(5_000)), 1, 2, Some(10), &[], 0)
            .unwrap()
            .to_vec();
        assert_eq!(forged[3] & FLAG_LZ4, FLAG_LZ4);
        // Claim 60 MB (under the 64 MiB limit) for a few dozen bytes.
        forged[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&60_000_000u32.to_le_bytes());
        let err = decode::<String, _>(&MsgPack, &forged, 64 << 20).unwrap_err();
        assert!(err.0.contains("cannot expand"), "{}", err.0);
        // The densest real payloads still decode.
        let zeros = vec![0u8; 8 << 20];
        let b = encode(&MsgPack, Some(&zeros.clone()), 1, 2, Some(10), &[], 0).unwrap();
        let s: Stored<Vec<u8>> = decode(&MsgPack, &b, 64 << 20).unwrap();
        assert_eq!(s.value.unwrap(), zeros);
    }

    #[test]
    fn every_truncation_and_foreign_bytes_are_garbage_not_panics() {
        let big = "y".repeat(5_000);
        for b in [
            encode(&MsgPack, Some(&big), 1, 2, Some(100), &[], 0).unwrap(),
            encode(&MsgPack, Some(&big), 1, 2, None, &[], 0).unwrap(),
        ] {
            for end in 0..b.len() {
                assert!(decode::<String, _>(&MsgPack, &b[..end], 1 << 20).is_err());
            }
        }
        for junk in [
            &b"plain text value"[..],
            b"FK\x01\xff",
            b"FK\x02\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ] {
            assert!(decode::<String, _>(&MsgPack, junk, 1 << 20).is_err());
        }
        // Right envelope, wrong type.
        let b = encode(&MsgPack, Some(&"text".to_string()), 1, 2, None, &[], 0).unwrap();
        assert!(decode::<u64, _>(&MsgPack, &b, 1 << 20).is_err());
    }
}
