//! [`Message`]: what a handler receives.

use crate::fields::{REPLAYED_FROM, TRACE_ID_HEADER, TYPE_HEADER};
use crate::keys::StreamId;

/// One delivery of a stream entry to a [`Worker`](crate::Worker) handler.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Message<T> {
    /// The entry id in the stream.
    pub id: StreamId,
    /// The decoded payload.
    pub payload: T,
    /// Which delivery this is to the consumer group, counted by Redis: 1 for
    /// the first, more for retries and for entries reclaimed from a crashed
    /// consumer. A handler can use it to tell a retry from a first attempt.
    pub deliveries: u64,
    /// Every field of the entry except the payload (`type`, `trace_id`, your
    /// own headers; `dlq.replayed_from` and `dlq.replay_group` for a replayed
    /// dead letter).
    pub headers: Vec<(String, String)>,
}

impl<T> Message<T> {
    /// A first delivery of `payload` as entry `id`, without headers: for
    /// testing a handler without Redis (set `deliveries` or push `headers`
    /// on the returned value as needed).
    ///
    /// ```
    /// use fredkit_streams::{Message, StreamId};
    ///
    /// let mut m = Message::new(StreamId::new("1-0"), 42u64);
    /// m.deliveries = 3; // a retry
    /// m.headers.push(("trace_id".into(), "abc".into()));
    /// assert_eq!(m.trace_id(), Some("abc"));
    /// ```
    pub fn new(id: StreamId, payload: T) -> Message<T> {
        Message {
            id,
            payload,
            deliveries: 1,
            headers: Vec::new(),
        }
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `type` header.
    pub fn event_type(&self) -> Option<&str> {
        self.header(TYPE_HEADER)
    }

    /// The `trace_id` header.
    pub fn trace_id(&self) -> Option<&str> {
        self.header(TRACE_ID_HEADER)
    }

    /// The original entry id when this entry is a replayed dead letter.
    pub fn replayed_from(&self) -> Option<&str> {
        self.header(REPLAYED_FROM)
    }

    /// The payload, consuming the message.
    pub fn into_payload(self) -> T {
        self.payload
    }
}
