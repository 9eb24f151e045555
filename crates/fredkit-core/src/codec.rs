//! How values become bytes in Redis and back: the [`Codec`] trait, the
//! default [`MsgPack`] codec and, behind the `json` feature, [`Json`].

use std::fmt;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{Error, Result};

/// Turns values into bytes and back.
///
/// Every fredkit primitive that stores or sends a value (cache entries, stream
/// payloads, pub/sub messages) takes a codec, so one service can choose one
/// wire format for everything. [`MsgPack`] is the default.
///
/// # Promises
///
/// - `decode(encode(v)) == v` for every value the codec can encode.
/// - `decode` never panics, whatever the bytes: anything read from Redis may be
///   garbage (truncated, written by another version, written by another
///   program). It returns [`ErrorKind::Codec`](crate::ErrorKind::Codec) instead.
/// - Errors are [`Error::Codec`] with `op` set to `"encode"` or `"decode"` and
///   `codec` set to [`Codec::name`].
///
/// The trait has generic methods and is therefore not object-safe: hold a
/// concrete codec (they are small `Copy` values) or make your type generic
/// over `C: Codec`.
///
/// # Example
///
/// ```
/// use fredkit_core::{Codec, MsgPack};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct User {
///     id: u64,
///     name: String,
/// }
///
/// let user = User { id: 42, name: "Ada".into() };
/// let bytes = MsgPack.encode(&user)?;
/// let back: User = MsgPack.decode(&bytes)?;
/// assert_eq!(back, user);
/// # Ok::<(), fredkit_core::Error>(())
/// ```
pub trait Codec: fmt::Debug + Send + Sync + 'static {
    /// A short, stable name for messages and metrics (`"msgpack"`, `"json"`).
    fn name(&self) -> &'static str;

    /// Encodes a value.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] when the value cannot be represented (for example a map
    /// with non-string keys in JSON, or a failing `Serialize` impl).
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes>;

    /// Decodes a value.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] when the bytes are not a valid encoding of `T`. Never
    /// panics.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
}

/// MessagePack with named fields (rmp-serde), the default codec.
///
/// Structs are written as maps keyed by field name, not as positional arrays.
/// That costs a few bytes per field but lets a struct evolve: a field added
/// later with `#[serde(default)]` decodes from entries written before it
/// existed, and a field removed later is ignored when old entries are read.
/// Positional arrays written by other MessagePack producers still decode.
///
/// Decoding refuses input nested deeper than 128 levels (like serde_json), so
/// hostile bytes cannot overflow the stack.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsgPack;

/// Nesting limit of [`MsgPack`] decoding.
const MSGPACK_MAX_DEPTH: usize = 128;

impl Codec for MsgPack {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes> {
        rmp_serde::to_vec_named(value)
            .map(Bytes::from)
            .map_err(|e| codec_error("encode", self.name(), e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        // rmp-serde's default (1024) overflows a 2 MiB thread stack (tokio's
        // worker default) on hostile input; serde_json stops at 128 too.
        de.set_max_depth(MSGPACK_MAX_DEPTH);
        T::deserialize(&mut de).map_err(|e| codec_error("decode", self.name(), e))
    }
}

/// JSON (serde_json): readable in `redis-cli`, larger and slower than
/// [`MsgPack`].
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Json;

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
impl Codec for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| codec_error("encode", self.name(), e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| codec_error("decode", self.name(), e))
    }
}

fn codec_error(op: &'static str, codec: &'static str, e: impl fmt::Display) -> Error {
    Error::Codec {
        op,
        codec,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use rstest::rstest;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        id: u64,
        name: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        id: u64,
        name: String,
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        visits: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Nested {
        tags: Vec<String>,
        scores: BTreeMap<String, f64>,
        inner: Option<Box<V1>>,
        raw: Vec<u8>,
    }

    fn sample() -> Nested {
        Nested {
            tags: vec!["a".into(), "".into(), "ü{}:".into()],
            scores: [("x".to_string(), 1.5), ("y".to_string(), -0.25)].into(),
            inner: Some(Box::new(V1 {
                id: u64::MAX,
                name: "n".into(),
            })),
            raw: vec![0, 255, 7],
        }
    }

    #[test]
    fn msgpack_round_trips_nested_values() {
        let bytes = MsgPack.encode(&sample()).unwrap();
        let back: Nested = MsgPack.decode(&bytes).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn msgpack_writes_field_names_so_structs_can_evolve() {
        let bytes = MsgPack
            .encode(&V1 {
                id: 1,
                name: "x".into(),
            })
            .unwrap();
        assert!(
            bytes.windows(4).any(|w| w == b"name"),
            "named fields expected in {bytes:?}"
        );
    }

    #[test]
    fn old_msgpack_entries_decode_into_struct_with_new_default_fields() {
        let old = MsgPack
            .encode(&V1 {
                id: 7,
                name: "Ada".into(),
            })
            .unwrap();
        let new: V2 = MsgPack.decode(&old).unwrap();
        assert_eq!(
            new,
            V2 {
                id: 7,
                name: "Ada".into(),
                email: None,
                visits: 0
            }
        );
    }

    #[test]
    fn new_msgpack_entries_decode_into_old_struct_ignoring_unknown_fields() {
        let new = V2 {
            id: 7,
            name: "Ada".into(),
            email: Some("a@example.com".into()),
            visits: 3,
        };
        let old: V1 = MsgPack.decode(&MsgPack.encode(&new).unwrap()).unwrap();
        assert_eq!(
            old,
            V1 {
                id: 7,
                name: "Ada".into()
            }
        );
    }

    #[rstest]
    #[case::empty(&[])]
    #[case::nil(&[0xc0])]
    #[case::reserved_marker(&[0xc1])]
    #[case::str_length_past_end(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'])]
    #[case::array_length_past_end(&[0xdd, 0xff, 0xff, 0xff, 0xff])]
    #[case::map_length_past_end(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'x'])]
    #[case::text(b"hello world, this is not msgpack")]
    #[case::json(br#"{"id":1,"name":"x"}"#)]
    fn garbage_msgpack_is_a_codec_error_not_a_panic(#[case] bytes: &[u8]) {
        let err = MsgPack.decode::<V1>(bytes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Codec);
        assert!(err.to_string().contains("decode"), "{err}");
        assert!(err.to_string().contains("msgpack"), "{err}");
    }

    #[test]
    fn every_truncation_of_a_msgpack_entry_is_a_codec_error() {
        let bytes = MsgPack.encode(&sample()).unwrap();
        for end in 0..bytes.len() {
            let err = MsgPack.decode::<Nested>(&bytes[..end]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Codec, "prefix of {end} bytes");
        }
    }

    #[test]
    fn deeply_nested_msgpack_is_a_codec_error_not_a_stack_overflow() {
        // 100k nested one-element arrays.
        let mut bytes = vec![0x91u8; 100_000];
        bytes.push(0xc0);
        let err = MsgPack
            .decode::<serde::de::IgnoredAny>(&bytes)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Codec);
    }

    #[test]
    fn msgpack_decodes_nesting_up_to_the_limit() {
        let mut bytes = vec![0x91u8; MSGPACK_MAX_DEPTH - 1];
        bytes.push(0xc0);
        MsgPack.decode::<serde::de::IgnoredAny>(&bytes).unwrap();
    }

    #[test]
    fn codec_names_are_stable() {
        assert_eq!(MsgPack.name(), "msgpack");
        #[cfg(feature = "json")]
        assert_eq!(Json.name(), "json");
    }

    #[cfg(feature = "json")]
    mod json {
        use super::*;

        #[test]
        fn json_round_trips_nested_values() {
            let bytes = Json.encode(&sample()).unwrap();
            let back: Nested = Json.decode(&bytes).unwrap();
            assert_eq!(back, sample());
        }

        #[test]
        fn old_json_entries_decode_into_struct_with_new_default_fields() {
            let old = Json
                .encode(&V1 {
                    id: 7,
                    name: "Ada".into(),
                })
                .unwrap();
            let new: V2 = Json.decode(&old).unwrap();
            assert_eq!(new.email, None);
            assert_eq!(new.visits, 0);
        }

        #[rstest]
        #[case::empty(b"")]
        #[case::truncated(br#"{"id":1,"na"#)]
        #[case::msgpack(&[0x82, 0xa2, b'i', b'd', 0x01])]
        #[case::wrong_type(br#"{"id":"one","name":"x"}"#)]
        fn garbage_json_is_a_codec_error_not_a_panic(#[case] bytes: &[u8]) {
            let err = Json.decode::<V1>(bytes).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Codec);
            assert!(err.to_string().contains("json"), "{err}");
        }

        #[test]
        fn json_maps_with_non_string_keys_fail_to_encode_with_a_codec_error() {
            let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
            let err = Json.encode(&map).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Codec);
            assert!(err.to_string().contains("encode"), "{err}");
        }
    }
}
