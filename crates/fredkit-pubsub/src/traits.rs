//! fredkit-core's object-safe pub/sub traits, for code that only consumes a
//! publisher or subscriber and wants to stay independent of this crate.

use crate::{Delivery, Publisher, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use fredkit_core::traits;
use fredkit_core::{Codec, Result};
use futures::stream::{BoxStream, StreamExt};

#[async_trait]
impl<C: Codec + Clone> traits::Publisher for Publisher<C> {
    async fn publish_bytes(&self, channel: &str, payload: Bytes) -> Result<u64> {
        Publisher::publish_bytes(self, channel, payload).await
    }
}

/// The trait's stream carries messages only: lag notices and gaps are
/// counted in [`Subscriber::metrics`] and visible through
/// [`Subscriber::gaps`], not in the stream.
#[async_trait]
impl<C: Codec + Clone> traits::Subscriber for Subscriber<C> {
    async fn subscribe_bytes(
        &self,
        channel: &str,
    ) -> Result<BoxStream<'static, traits::Message<Bytes>>> {
        let sub = Subscriber::subscribe_bytes(self, channel).await?;
        Ok(sub
            .filter_map(|d| async move {
                match d {
                    Delivery::Message(m) => m.payload.ok().map(|payload| traits::Message {
                        channel: m.channel,
                        payload,
                    }),
                    _ => None,
                }
            })
            .boxed())
    }
}
