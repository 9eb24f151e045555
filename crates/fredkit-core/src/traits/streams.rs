//! The stream producer trait: [`StreamProducer`] and its typed
//! [`StreamProducerExt`].

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use crate::{Codec, Result};

/// Appends entries to a durable stream (Redis Streams, `XADD`), for
/// consumer-group workers to process.
///
/// Each entry carries one encoded payload plus optional string headers
/// (trace context, message type, tenant). How they are laid out as stream
/// fields is the implementation's documented format; consumers of the same
/// implementation read it back.
///
/// # Contract
///
/// | method | promise | round trips (Redis implementations) |
/// |---|---|---|
/// | [`publish_bytes`](Self::publish_bytes) | appends one entry and returns its id; the stream is trimmed per the producer's policy in the same command | 1 |
///
/// Entry ids grow strictly within a stream. Once `Ok(id)` is returned the
/// entry is stored (with the server's persistence guarantees).
///
/// **Failure.** An error means the entry may or may not have been appended
/// (the reply may have been lost); consumers should be idempotent, or the
/// payload should carry an id to deduplicate on.
///
/// **Cancellation.** Same as failure: dropping the future halfway may or may
/// not have appended the entry, never twice.
#[async_trait]
pub trait StreamProducer: Send + Sync {
    /// Appends `payload` with `headers` to `stream` and returns the entry id
    /// (`"1700000000000-0"`).
    ///
    /// # Errors
    ///
    /// The store could not be reached, or `headers` uses a name the
    /// implementation reserves for its own fields
    /// ([`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)).
    async fn publish_bytes(
        &self,
        stream: &str,
        payload: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<String>;
}

/// Typed publishing on every [`StreamProducer`], through a [`Codec`].
#[async_trait]
pub trait StreamProducerExt: StreamProducer {
    /// Encodes `value` and appends it to `stream`. Same round trips and
    /// cancellation as [`StreamProducer::publish_bytes`].
    ///
    /// # Errors
    ///
    /// As [`StreamProducer::publish_bytes`], and
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) when `value` cannot be
    /// encoded (nothing is appended then).
    async fn publish<T, C>(
        &self,
        codec: &C,
        stream: &str,
        value: &T,
        headers: &[(&str, &str)],
    ) -> Result<String>
    where
        T: Serialize + Sync + ?Sized,
        C: Codec,
    {
        let payload = codec.encode(value)?;
        self.publish_bytes(stream, payload, headers).await
    }
}

impl<P: StreamProducer + ?Sized> StreamProducerExt for P {}
