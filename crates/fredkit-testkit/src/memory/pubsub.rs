//! [`MemoryPubSub`]: [`Publisher`] and [`Subscriber`] on tokio broadcast channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use fredkit_core::traits::{Message, Publisher, Subscriber};
use fredkit_core::{Error, Result};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;

use super::lock;

/// A pub/sub bus in process memory: a [`Publisher`] and a [`Subscriber`] in one, for unit
/// tests of code that publishes or listens.
///
/// Keeps the traits' contract: `subscribe_bytes` returns once the subscription is active,
/// and every message published after that reaches the stream, in publish order; messages
/// published before are not stored (at most once); every receiver of a channel gets every
/// message; dropping a stream ends that receiver only, and the channel goes with its last
/// receiver. A receiver that falls more than [`capacity`](Self::with_capacity) messages
/// behind loses the oldest ones rather than slowing the publisher or other receivers; the
/// loss is logged (WARN) and counted in [`dropped`](Self::dropped).
/// `publish_bytes` returns the number of receivers (streams) the message reached. An empty
/// channel name is [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput).
///
/// Clones share the bus. Nothing is lost to a disconnect, since there is none (see the
/// [module docs](crate::memory)); no pattern subscriptions.
///
/// ```
/// use bytes::Bytes;
/// use futures::StreamExt;
/// use fredkit_core::traits::{Publisher, Subscriber};
/// use fredkit_testkit::memory::MemoryPubSub;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fredkit_core::Result<()> {
/// let bus = MemoryPubSub::new();
/// let mut messages = bus.subscribe_bytes("news").await?;
/// assert_eq!(bus.publish_bytes("news", Bytes::from_static(b"hi")).await?, 1);
/// let m = messages.next().await.unwrap();
/// assert_eq!((m.channel.as_str(), &m.payload[..]), ("news", &b"hi"[..]));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryPubSub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<Bytes>>>>,
    capacity: usize,
    dropped: Arc<AtomicU64>,
}

impl Default for MemoryPubSub {
    fn default() -> Self {
        MemoryPubSub::with_capacity(1024)
    }
}

fn non_empty(channel: &str) -> Result<()> {
    if channel.is_empty() {
        return Err(Error::invalid_input(
            "pub/sub channel name is empty: name the channel, e.g. \"app:events\"",
        ));
    }
    Ok(())
}

impl MemoryPubSub {
    /// A bus whose receivers may each fall 1,024 messages behind before losing some.
    pub fn new() -> MemoryPubSub {
        MemoryPubSub::default()
    }

    /// A bus whose receivers may each fall `capacity` messages behind (at least 1) before
    /// losing the oldest.
    pub fn with_capacity(capacity: usize) -> MemoryPubSub {
        MemoryPubSub {
            channels: Arc::default(),
            capacity: capacity.max(1),
            dropped: Arc::default(),
        }
    }

    /// How many messages receivers lost by falling behind, over all channels.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many receivers `channel` has now.
    pub fn receivers(&self, channel: &str) -> usize {
        lock(&self.channels)
            .get(channel)
            .map_or(0, broadcast::Sender::receiver_count)
    }
}

#[async_trait]
impl Publisher for MemoryPubSub {
    async fn publish_bytes(&self, channel: &str, payload: Bytes) -> Result<u64> {
        non_empty(channel)?;
        let mut channels = lock(&self.channels);
        let Some(sender) = channels.get(channel) else {
            return Ok(0);
        };
        match sender.send(payload) {
            Ok(n) => Ok(u64::try_from(n).unwrap_or(u64::MAX)),
            Err(_) => {
                // No receiver left: the channel is unsubscribed.
                channels.remove(channel);
                Ok(0)
            }
        }
    }
}

#[async_trait]
impl Subscriber for MemoryPubSub {
    async fn subscribe_bytes(&self, channel: &str) -> Result<BoxStream<'static, Message<Bytes>>> {
        non_empty(channel)?;
        let receiver = lock(&self.channels)
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        let channel = channel.to_string();
        let dropped = Arc::clone(&self.dropped);
        Ok(futures::stream::unfold(receiver, move |mut rx| {
            let channel = channel.clone();
            let dropped = Arc::clone(&dropped);
            async move {
                loop {
                    match rx.recv().await {
                        Ok(payload) => return Some((Message { channel, payload }, rx)),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            dropped.fetch_add(n, Ordering::Relaxed);
                            tracing::warn!(
                                channel = %channel,
                                lost = n,
                                "fredkit-testkit memory pub/sub: a receiver fell behind and lost messages"
                            );
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed())
    }
}
