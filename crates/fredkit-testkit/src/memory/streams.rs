//! [`MemoryStreamProducer`]: a [`StreamProducer`] appending to vectors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use fredkit_core::traits::StreamProducer;
use fredkit_core::{Clock, Error, Result};

use super::{lock, Timebase};

/// One entry as stored by a [`MemoryStreamProducer`] (and as the contract suite reads
/// entries back from any implementation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, `"<ms>-<seq>"`.
    pub id: String,
    /// The payload, as published.
    pub payload: Bytes,
    /// The headers, in the order published.
    pub headers: Vec<(String, String)>,
}

/// A [`StreamProducer`] in process memory: every stream a vector of entries the test can
/// read back with [`entries`](Self::entries).
///
/// Keeps the trait's contract: each `Ok(id)` entry is stored; ids are `"<ms>-<seq>"`, the
/// wall time in milliseconds and a sequence, strictly growing within a stream (as Redis
/// makes them: a clock that stands still or goes back bumps the sequence); trimming is
/// the producer's policy ([`max_len`](Self::max_len), exact; default none). Like
/// fredkit-streams' `Producer` it refuses the header names it reserves (`payload`, names
/// starting with `dlq.`, and the empty name) and an empty stream name with
/// [`ErrorKind::InvalidInput`](fredkit_core::ErrorKind::InvalidInput), appending nothing.
///
/// Clones share the streams. There are no consumer groups or workers: read what was
/// published with [`entries`](Self::entries) (see the [module docs](crate::memory)).
///
/// ```
/// use bytes::Bytes;
/// use fredkit_core::traits::StreamProducer;
/// use fredkit_testkit::memory::MemoryStreamProducer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> fredkit_core::Result<()> {
/// let producer = MemoryStreamProducer::new();
/// let id = producer.publish_bytes("orders", Bytes::from_static(b"o-1"), &[("type", "created")]).await?;
/// let entries = producer.entries("orders");
/// assert_eq!(entries[0].id, id);
/// assert_eq!(entries[0].headers, vec![("type".to_string(), "created".to_string())]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStreamProducer {
    streams: Arc<Mutex<HashMap<String, Stream>>>,
    time: Timebase,
    max_len: Option<usize>,
}

#[derive(Debug, Default)]
struct Stream {
    /// The last id handed out (ms, seq), also after trimming.
    last: Option<(u64, u64)>,
    entries: Vec<StreamEntry>,
}

/// The header names fredkit-streams reserves.
fn check_header(name: &str) -> Result<()> {
    if name == "payload" || name.starts_with("dlq.") {
        return Err(Error::invalid_input(format!(
            "header name {name:?} is reserved ('payload' and names starting with 'dlq.'); rename the header"
        )));
    }
    if name.is_empty() {
        return Err(Error::invalid_input("header name is empty; give it a name"));
    }
    Ok(())
}

impl MemoryStreamProducer {
    /// No stream yet, on the system clock, no trimming.
    pub fn new() -> MemoryStreamProducer {
        MemoryStreamProducer::default()
    }

    /// The same producer taking ids' milliseconds from `clock` (see the
    /// [module docs](crate::memory) on wall time). Call it before publishing.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MemoryStreamProducer {
        self.time = Timebase::new(clock);
        self
    }

    /// Keeps at most `len` entries per stream (the oldest go first), like a
    /// `MAXLEN` trim, but exact.
    #[must_use]
    pub fn max_len(mut self, len: usize) -> MemoryStreamProducer {
        self.max_len = Some(len);
        self
    }

    /// The entries of `stream`, oldest first (empty for an unknown stream).
    pub fn entries(&self, stream: &str) -> Vec<StreamEntry> {
        lock(&self.streams)
            .get(stream)
            .map(|s| s.entries.clone())
            .unwrap_or_default()
    }

    /// How many entries `stream` holds.
    pub fn len(&self, stream: &str) -> usize {
        lock(&self.streams)
            .get(stream)
            .map_or(0, |s| s.entries.len())
    }

    /// The names of the streams published to.
    pub fn streams(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.streams).keys().cloned().collect();
        names.sort();
        names
    }
}

#[async_trait]
impl StreamProducer for MemoryStreamProducer {
    async fn publish_bytes(
        &self,
        stream: &str,
        payload: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<String> {
        if stream.is_empty() {
            return Err(Error::invalid_input(
                "stream name is empty: name the stream, e.g. \"orders\"",
            ));
        }
        for (name, _) in headers {
            check_header(name)?;
        }
        let ms = self.time.unix_millis();
        let mut streams = lock(&self.streams);
        let s = streams.entry(stream.to_string()).or_default();
        let (ms, seq) = match s.last {
            Some((last_ms, last_seq)) if ms <= last_ms => match last_seq.checked_add(1) {
                Some(seq) => (last_ms, seq),
                None => {
                    return Err(Error::protocol(format!(
                        "stream {stream:?}: the id sequence of millisecond {last_ms} is exhausted"
                    )))
                }
            },
            _ => (ms, 0),
        };
        s.last = Some((ms, seq));
        let id = format!("{ms}-{seq}");
        s.entries.push(StreamEntry {
            id: id.clone(),
            payload,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        if let Some(max) = self.max_len {
            let excess = s.entries.len().saturating_sub(max);
            s.entries.drain(..excess);
        }
        Ok(id)
    }
}
