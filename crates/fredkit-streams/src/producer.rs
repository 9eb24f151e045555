//! [`Producer`]: typed, trimmed `XADD`s.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fred::interfaces::StreamsInterface;
use fred::types::streams::XCap;
use fred::types::{Key, Value};
use fredkit_conn::Redis;
use fredkit_core::traits::StreamProducer;
use fredkit_core::{Codec, Error, MsgPack, Result};
use serde::Serialize;
use tracing::Instrument;

use crate::fields::{check_header, PAYLOAD_FIELD, TRACE_ID_HEADER, TYPE_HEADER};
use crate::keys::{StreamId, StreamKeys};
use crate::metrics::{add, ProducerMetrics};

/// How a stream is kept bounded. Applied in the same `XADD` (no extra round
/// trip), approximately (`~`), which lets Redis trim whole macro nodes
/// cheaply: the stream may hold somewhat more than the bound.
///
/// Trimming does not care about consumer groups: an entry trimmed away while
/// still pending is lost to its group. Workers count those
/// ([`WorkerSnapshot::deleted_while_pending`](crate::WorkerSnapshot::deleted_while_pending));
/// size the bound well above the largest backlog you expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trim {
    /// Never trim (the stream grows until someone runs `XTRIM`).
    None,
    /// `MAXLEN ~ n`: keep about the newest `n` entries.
    MaxLen(u64),
    /// `MINID ~ <now - age>`: drop entries older than `age`. "Now" is the
    /// Redis server's clock: the id of the producer's latest entry (ids
    /// start with the server time in ms) plus the time elapsed on the
    /// producer's monotonic clock since that reply. The first publish of a
    /// producer does not trim, and wall clocks of producer machines never
    /// matter.
    MaxAge(Duration),
}

/// Options of a [`Producer`]. A `#[must_use]` builder: start from
/// [`ProducerConfig::builder`] (or `default()`).
///
/// | knob | default |
/// |---|---|
/// | [`trim`](ProducerConfigBuilder::trim) | `Trim::MaxLen(1_000_000)` |
/// | [`event_type`](ProducerConfigBuilder::event_type) | none (no `type` header unless given per publish) |
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    trim: Trim,
    event_type: Option<String>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            trim: Trim::MaxLen(1_000_000),
            event_type: None,
        }
    }
}

impl ProducerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ProducerConfigBuilder {
        ProducerConfigBuilder {
            config: ProducerConfig::default(),
        }
    }

    /// The trimming policy.
    pub fn trim(&self) -> Trim {
        self.trim
    }
}

/// Builder of [`ProducerConfig`].
#[must_use]
#[derive(Clone, Debug)]
pub struct ProducerConfigBuilder {
    config: ProducerConfig,
}

impl ProducerConfigBuilder {
    /// How the stream is bounded. Default `Trim::MaxLen(1_000_000)`.
    pub fn trim(mut self, trim: Trim) -> Self {
        self.config.trim = trim;
        self
    }

    /// A `type` header written on every entry (`"order.created"`), unless a
    /// publish gives its own. Default: none.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.config.event_type = Some(event_type.into());
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) for
    /// `Trim::MaxLen(0)` (would delete every entry as it is added) or
    /// `Trim::MaxAge(0)`, or an empty event type.
    pub fn build(self) -> Result<ProducerConfig> {
        match self.config.trim {
            Trim::MaxLen(0) => {
                return Err(Error::config(
                    "Trim::MaxLen(0) would trim every entry away as it is added; use Trim::None or a bound",
                ))
            }
            Trim::MaxAge(d) if d.as_millis() == 0 => {
                return Err(Error::config(
                    "Trim::MaxAge needs at least 1 ms; use Trim::None to keep everything",
                ))
            }
            _ => {}
        }
        if self.config.event_type.as_deref() == Some("") {
            return Err(Error::config(
                "event_type is empty; give a name or leave it unset",
            ));
        }
        Ok(self.config)
    }
}

/// Appends typed entries to one stream.
///
/// Each entry is `payload` = the value encoded with the codec (MessagePack by
/// default), followed by the headers: `type` and `trace_id` when given, then
/// any others. Cheap to clone (clones share metrics).
///
/// ```no_run
/// use fredkit_core::KeySpace;
/// use fredkit_streams::{Producer, StreamKeys, TRACE_ID_HEADER};
///
/// # async fn run(redis: fredkit_conn::Redis) -> fredkit_core::Result<()> {
/// #[derive(serde::Serialize)]
/// struct Order { id: u64 }
///
/// let keys = StreamKeys::new(&KeySpace::new("shop")?, "orders")?;
/// let producer = Producer::<Order>::new(&redis, keys);
/// let id = producer.publish(&Order { id: 1 }).await?;
/// let id2 = producer
///     .publish_with(&Order { id: 2 }, &[(TRACE_ID_HEADER, "4bf92f3577b34da6")])
///     .await?;
/// assert!(id < id2);
/// # Ok(()) }
/// ```
///
/// # Round trips
///
/// | call | round trips |
/// |---|---|
/// | [`publish`](Self::publish), [`publish_with`](Self::publish_with) | 1 (`XADD` with trimming) |
/// | [`publish_batch`](Self::publish_batch), [`publish_batch_with`](Self::publish_batch_with) of N | 1 (a pipeline of N `XADD`s) |
///
/// # Failure and cancellation
///
/// An error (or dropping the future) means the entry may or may not have been
/// appended: the reply may have been lost. It is never appended twice by one
/// call. Workers are at-least-once anyway; put an id in the payload if
/// handlers must deduplicate.
pub struct Producer<T, C: Codec = MsgPack> {
    inner: Arc<Shared<C>>,
    _t: PhantomData<fn(&T)>,
}

/// What every clone of one producer shares (a clone is one reference count).
struct Shared<C> {
    redis: Redis,
    keys: StreamKeys,
    codec: C,
    config: ProducerConfig,
    last_id: Mutex<Option<(u64, Instant)>>,
    metrics: ProducerMetrics,
}

/// Cheap: one reference count. Clones share the counters and the trimming
/// state.
impl<T, C: Codec> Clone for Producer<T, C> {
    fn clone(&self) -> Self {
        Producer {
            inner: Arc::clone(&self.inner),
            _t: PhantomData,
        }
    }
}

impl<T, C: Codec> fmt::Debug for Producer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("keys", &self.inner.keys)
            .field("codec", &self.inner.codec.name())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<T: Serialize> Producer<T, MsgPack> {
    /// A producer with MessagePack and the default [`ProducerConfig`].
    pub fn new(redis: &Redis, keys: StreamKeys) -> Self {
        Producer::with_config(redis, keys, ProducerConfig::default(), MsgPack)
    }
}

impl<T: Serialize, C: Codec> Producer<T, C> {
    /// A producer with the given configuration and codec.
    pub fn with_config(redis: &Redis, keys: StreamKeys, config: ProducerConfig, codec: C) -> Self {
        Producer {
            inner: Arc::new(Shared {
                redis: redis.clone(),
                metrics: ProducerMetrics::new(keys.stream()),
                keys,
                codec,
                config,
                last_id: Mutex::new(None),
            }),
            _t: PhantomData,
        }
    }

    /// The stream's keys.
    pub fn keys(&self) -> &StreamKeys {
        &self.inner.keys
    }

    /// The counters.
    pub fn metrics(&self) -> &ProducerMetrics {
        &self.inner.metrics
    }

    /// Encodes `value` and appends it. One round trip.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](fredkit_core::ErrorKind::Codec) when the value
    /// cannot be encoded (nothing appended); connection and timeout errors as
    /// usual (the entry may or may not have been appended).
    pub async fn publish(&self, value: &T) -> Result<StreamId> {
        self.publish_with(value, &[]).await
    }

    /// Like [`publish`](Self::publish), with headers (`type`, `trace_id` or
    /// your own) stored as fields next to the payload.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish), and
    /// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput) for
    /// a reserved header name (`payload`, `dlq.*`); nothing is appended then.
    pub async fn publish_with(&self, value: &T, headers: &[(&str, &str)]) -> Result<StreamId> {
        let payload = self.inner.codec.encode(value)?;
        self.append(self.inner.keys.stream(), payload, headers)
            .await
    }

    /// Appends every value of `values` in one pipeline (one round trip) and
    /// returns one result per value, in order. Entries of one batch get
    /// increasing ids. An encoding error fails that value only.
    ///
    /// Cancellation and failure: as for [`publish`](Self::publish), per
    /// entry (an entry whose result is an error may or may not have been
    /// appended).
    pub async fn publish_batch(&self, values: &[T]) -> Vec<Result<StreamId>> {
        self.batch(values.iter().map(|v| (v, &[][..])), values.len())
            .await
    }

    /// [`publish_batch`](Self::publish_batch) with headers per value (a
    /// trace id each, an event type...), one pipeline. A reserved header name
    /// fails that value only.
    ///
    /// ```no_run
    /// # async fn run(producer: fredkit_streams::Producer<u64>) {
    /// use fredkit_streams::TRACE_ID_HEADER;
    /// let results = producer
    ///     .publish_batch_with(&[
    ///         (&1, &[(TRACE_ID_HEADER, "t-1")][..]),
    ///         (&2, &[(TRACE_ID_HEADER, "t-2"), ("tenant", "a")][..]),
    ///     ])
    ///     .await;
    /// assert_eq!(results.len(), 2);
    /// # }
    /// ```
    pub async fn publish_batch_with(
        &self,
        items: &[(&T, &[(&str, &str)])],
    ) -> Vec<Result<StreamId>> {
        self.batch(items.iter().map(|(v, h)| (*v, *h)), items.len())
            .await
    }

    async fn batch<'a, I>(&self, items: I, len: usize) -> Vec<Result<StreamId>>
    where
        I: Iterator<Item = (&'a T, &'a [(&'a str, &'a str)])>,
        T: 'a,
    {
        let span = tracing::debug_span!(
            "fredkit.streams.publish_batch",
            stream = %self.inner.keys.name(),
            count = len,
            failed = tracing::field::Empty
        );
        async move {
            let mut results: Vec<Option<Result<StreamId>>> = Vec::with_capacity(len);
            let mut queued = Vec::with_capacity(len);
            let client = self.inner.redis.client();
            let pipeline = client.pipeline();
            let cap = self.cap();
            for (i, (v, headers)) in items.enumerate() {
                let fields = match self
                    .inner
                    .codec
                    .encode(v)
                    .and_then(|p| self.fields(p, headers))
                {
                    Ok(f) => f,
                    Err(e) => {
                        results.push(Some(Err(e)));
                        continue;
                    }
                };
                let cap = match &cap {
                    Ok(c) => c.clone(),
                    Err(e) => {
                        results.push(Some(Err(clone_error(e))));
                        continue;
                    }
                };
                match pipeline
                    .xadd::<(), _, _, _, _>(self.inner.keys.stream(), false, cap, "*", fields)
                    .await
                {
                    Ok(()) => {
                        results.push(None);
                        queued.push(i);
                    }
                    Err(e) => results.push(Some(Err(e.into()))),
                }
            }
            if !queued.is_empty() {
                let replies = pipeline.try_all::<Value>().await;
                if replies.len() == queued.len() {
                    for (i, r) in queued.into_iter().zip(replies) {
                        results[i] = Some(self.id_of(r.map_err(Error::from)));
                    }
                } else {
                    let err = replies
                        .into_iter()
                        .find_map(|r| r.err())
                        .map(Error::from)
                        .unwrap_or_else(|| {
                            Error::protocol("XADD pipeline: wrong number of replies")
                        });
                    for i in queued {
                        results[i] = Some(Err(clone_error(&err)));
                    }
                }
            }
            let out: Vec<Result<StreamId>> = results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(Error::protocol("XADD pipeline: no reply"))))
                .collect();
            let failed = out.iter().filter(|r| r.is_err()).count() as u64;
            add(&self.inner.metrics.published, out.len() as u64 - failed);
            add(&self.inner.metrics.publish_errors, failed);
            tracing::Span::current().record("failed", failed);
            out
        }
        .instrument(span)
        .await
    }

    async fn append(
        &self,
        key: &str,
        payload: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<StreamId> {
        let trace_id = headers
            .iter()
            .find(|(k, _)| *k == TRACE_ID_HEADER)
            .map(|(_, v)| *v)
            .unwrap_or("");
        let span = tracing::debug_span!(
            "fredkit.streams.publish",
            stream = %self.inner.keys.name(),
            trace_id = %trace_id,
            id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            elapsed_us = tracing::field::Empty
        );
        async move {
            let started = Instant::now();
            let result = async {
                let fields = self.fields(payload, headers)?;
                let cap = self.cap()?;
                let reply = self
                    .inner
                    .redis
                    .client()
                    .xadd::<Value, _, _, _, _>(key, false, cap, "*", fields)
                    .await
                    .map_err(|e| Error::from(e).naming("XADD", self.inner.keys.stream()));
                self.id_of(reply)
            }
            .await;
            let span = tracing::Span::current();
            span.record("elapsed_us", started.elapsed().as_micros() as u64);
            match &result {
                Ok(id) => {
                    add(&self.inner.metrics.published, 1);
                    span.record("id", id.as_str());
                    span.record("outcome", "ok");
                }
                Err(e) => {
                    add(&self.inner.metrics.publish_errors, 1);
                    span.record("outcome", tracing::field::debug(e.kind()));
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    fn fields(&self, payload: Bytes, headers: &[(&str, &str)]) -> Result<Vec<(Key, Value)>> {
        let mut fields = Vec::with_capacity(2 + headers.len());
        fields.push((Key::from_static_str(PAYLOAD_FIELD), Value::Bytes(payload)));
        if let Some(t) = &self.inner.config.event_type {
            if !headers.iter().any(|(k, _)| *k == TYPE_HEADER) {
                fields.push((Key::from_static_str(TYPE_HEADER), Value::from(t.as_str())));
            }
        }
        for (k, v) in headers {
            check_header(k)?;
            fields.push((Key::from(*k), Value::from(*v)));
        }
        Ok(fields)
    }

    fn cap(&self) -> Result<XCap> {
        let cap = match self.inner.config.trim {
            Trim::None => return Ok(XCap::from(None::<()>)),
            Trim::MaxLen(n) => {
                XCap::try_from(("MAXLEN", "~", i64::try_from(n).unwrap_or(i64::MAX)))
            }
            Trim::MaxAge(age) => {
                let last = *self.inner.last_id.lock().unwrap_or_else(|p| p.into_inner());
                let Some((ms, at)) = last else {
                    return Ok(XCap::from(None::<()>));
                };
                let elapsed = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                let now = ms.saturating_add(elapsed);
                let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                if now <= age {
                    return Ok(XCap::from(None::<()>));
                }
                let min = i64::try_from(now - age).unwrap_or(i64::MAX);
                XCap::try_from(("MINID", "~", min))
            }
        };
        cap.map_err(Error::from)
    }

    fn id_of(&self, reply: Result<Value>) -> Result<StreamId> {
        let v = reply?;
        let id = crate::reply::text(&v).ok_or_else(|| {
            Error::protocol(format!("XADD answered {} instead of an entry id", v.kind()))
        })?;
        let id = StreamId::new(id);
        if !matches!(self.inner.config.trim, Trim::MaxAge(_)) {
            return Ok(id);
        }
        if let Some(ms) = id.millis() {
            let mut last = self.inner.last_id.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|(prev, _)| ms >= prev) {
                *last = Some((ms, Instant::now()));
            }
        }
        Ok(id)
    }
}

fn clone_error(e: &Error) -> Error {
    match e.kind() {
        fredkit_core::ErrorKind::Timeout => Error::timeout(e.to_string()),
        fredkit_core::ErrorKind::Connection => Error::connection(e.to_string()),
        _ => Error::protocol(e.to_string()),
    }
}

/// The object-safe producer of `fredkit-core`. `stream` is a logical stream
/// name in the same [`KeySpace`](fredkit_core::KeySpace) as this producer's
/// own stream (so `publish_bytes(producer.keys().name(), ..)` appends to the
/// producer's stream); the producer's trimming applies. The payload is stored
/// as is in the `payload` field; headers as fields next to it (`payload` and
/// `dlq.*` are reserved).
#[async_trait]
impl<T, C> StreamProducer for Producer<T, C>
where
    T: Serialize + Send + Sync,
    C: Codec,
{
    async fn publish_bytes(
        &self,
        stream: &str,
        payload: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<String> {
        let key = if stream == self.inner.keys.name() {
            self.inner.keys.stream().to_string()
        } else {
            StreamKeys::new(self.inner.keys.space(), stream)?
                .stream()
                .to_string()
        };
        self.append(&key, payload, headers).await.map(String::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_trims_are_config_errors() {
        assert!(ProducerConfig::builder()
            .trim(Trim::MaxLen(0))
            .build()
            .is_err());
        assert!(ProducerConfig::builder()
            .trim(Trim::MaxAge(Duration::ZERO))
            .build()
            .is_err());
        assert!(ProducerConfig::builder().event_type("").build().is_err());
        let c = ProducerConfig::builder().trim(Trim::None).build().unwrap();
        assert_eq!(c.trim(), Trim::None);
        assert_eq!(ProducerConfig::default().trim(), Trim::MaxLen(1_000_000));
    }
}
