//! The pub/sub traits: [`Publisher`], [`Subscriber`] and their typed
//! extensions.

use async_trait::async_trait;
use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};

use crate::{Codec, Result};

/// A message received on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message<T> {
    /// The channel it was published on.
    pub channel: String,
    /// The payload: bytes from [`Subscriber`], a decoded value from
    /// [`SubscriberExt`].
    pub payload: T,
}

/// Publishes messages on channels.
///
/// Pub/sub is fire-and-forget: a message reaches the subscribers connected
/// at that moment, at most once, and is not stored.
///
/// # Contract
///
/// | method | promise | round trips (Redis implementations) |
/// |---|---|---|
/// | [`publish_bytes`](Self::publish_bytes) | delivers `payload` to the current subscribers of `channel` | 1 |
///
/// **Failure.** An error means the message may or may not have been
/// delivered; pub/sub offers no way to know. Use streams when every message
/// must arrive.
///
/// **Cancellation.** Dropping the future halfway may or may not have
/// published the message.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `payload` on `channel` and returns how many subscribers
    /// received it (on a cluster with classic pub/sub: those of the node that
    /// took the command).
    ///
    /// # Errors
    ///
    /// The store could not be reached.
    async fn publish_bytes(&self, channel: &str, payload: Bytes) -> Result<u64>;
}

/// Typed publishing on every [`Publisher`], through a [`Codec`].
#[async_trait]
pub trait PublisherExt: Publisher {
    /// Encodes `value` and publishes it. Same round trips and cancellation as
    /// [`Publisher::publish_bytes`].
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish_bytes`], and
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) when `value` cannot be
    /// encoded (nothing is published then).
    async fn publish<T, C>(&self, codec: &C, channel: &str, value: &T) -> Result<u64>
    where
        T: Serialize + Sync + ?Sized,
        C: Codec,
    {
        let payload = codec.encode(value)?;
        self.publish_bytes(channel, payload).await
    }
}

impl<P: Publisher + ?Sized> PublisherExt for P {}

/// Subscribes to channels.
///
/// # Contract
///
/// | method | promise | round trips (Redis implementations) |
/// |---|---|---|
/// | [`subscribe_bytes`](Self::subscribe_bytes) | returns once the subscription is active: every message published after that is delivered | 1 (or 0 when the channel is already subscribed locally) |
///
/// - The stream yields messages in publish order and survives reconnects:
///   the implementation resubscribes by itself. Messages published while the
///   connection was down are lost (pub/sub is at-most-once).
/// - A stream that falls behind loses messages rather than blocking other
///   receivers; implementations log and count such drops.
/// - Dropping the stream ends the subscription for that receiver; the channel
///   is unsubscribed when its last receiver is gone.
///
/// **Failure.** `subscribe_bytes` fails when the subscription cannot be
/// established; afterwards outages are invisible to the stream except as a gap.
///
/// **Cancellation.** Dropping the `subscribe_bytes` future halfway may leave
/// the channel subscribed without a receiver until the next unsubscribe.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Subscribes to `channel` and returns its messages.
    ///
    /// # Errors
    ///
    /// The subscription could not be established.
    async fn subscribe_bytes(&self, channel: &str) -> Result<BoxStream<'static, Message<Bytes>>>;
}

/// Typed subscriptions on every [`Subscriber`], through a [`Codec`].
#[async_trait]
pub trait SubscriberExt: Subscriber {
    /// Subscribes to `channel` and decodes each message with `codec`.
    ///
    /// A message that does not decode is yielded as an
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) item and the stream goes
    /// on: one bad publisher cannot stop a subscriber.
    ///
    /// # Errors
    ///
    /// As [`Subscriber::subscribe_bytes`].
    async fn subscribe<T, C>(
        &self,
        codec: C,
        channel: &str,
    ) -> Result<BoxStream<'static, Result<Message<T>>>>
    where
        T: DeserializeOwned + Send + 'static,
        C: Codec,
    {
        let messages = self.subscribe_bytes(channel).await?;
        Ok(messages
            .map(move |m| {
                let payload = codec.decode(&m.payload)?;
                Ok(Message {
                    channel: m.channel,
                    payload,
                })
            })
            .boxed())
    }
}

impl<S: Subscriber + ?Sized> SubscriberExt for S {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, MsgPack};
    use std::sync::Mutex;

    /// Replays fixed payloads and records what was published.
    #[derive(Default)]
    struct Fake {
        published: Mutex<Vec<(String, Bytes)>>,
        replay: Vec<Bytes>,
    }

    #[async_trait]
    impl Publisher for Fake {
        async fn publish_bytes(&self, channel: &str, payload: Bytes) -> Result<u64> {
            self.published
                .lock()
                .unwrap()
                .push((channel.to_string(), payload));
            Ok(1)
        }
    }

    #[async_trait]
    impl Subscriber for Fake {
        async fn subscribe_bytes(
            &self,
            channel: &str,
        ) -> Result<BoxStream<'static, Message<Bytes>>> {
            let channel = channel.to_string();
            let items: Vec<_> = self
                .replay
                .iter()
                .map(|p| Message {
                    channel: channel.clone(),
                    payload: p.clone(),
                })
                .collect();
            Ok(futures::stream::iter(items).boxed())
        }
    }

    #[tokio::test]
    async fn typed_publish_encodes_with_the_codec() {
        let fake = Fake::default();
        let dyn_publisher: &dyn Publisher = &fake;
        assert_eq!(
            dyn_publisher.publish(&MsgPack, "ch", &42u32).await.unwrap(),
            1
        );
        let published = fake.published.lock().unwrap().clone();
        assert_eq!(
            published,
            vec![("ch".to_string(), MsgPack.encode(&42u32).unwrap())]
        );
    }

    #[tokio::test]
    async fn undecodable_message_is_an_error_item_and_the_stream_goes_on() {
        let fake = Fake {
            replay: vec![
                MsgPack.encode(&1u32).unwrap(),
                Bytes::from_static(b"\xc1garbage"),
                MsgPack.encode(&3u32).unwrap(),
            ],
            ..Fake::default()
        };
        let items: Vec<Result<Message<u32>>> =
            fake.subscribe(MsgPack, "ch").await.unwrap().collect().await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().payload, 1);
        assert_eq!(items[1].as_ref().unwrap_err().kind(), ErrorKind::Codec);
        assert_eq!(items[2].as_ref().unwrap().payload, 3);
        assert_eq!(items[2].as_ref().unwrap().channel, "ch");
    }
}
