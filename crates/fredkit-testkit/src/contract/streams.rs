//! The [`StreamProducer`] contract.

use async_trait::async_trait;
use bytes::Bytes;
use fredkit_core::traits::StreamProducer;
use fredkit_core::{Error, ErrorKind, Result};

use super::{assert_kind, together};
use crate::memory::{MemoryStreamProducer, StreamEntry};

/// Reads back what a [`StreamProducer`] stored, for [`stream_producer`]: every entry of a
/// stream, oldest first, with its payload and the headers as published (without the
/// implementation's own fields).
#[async_trait]
pub trait StreamReader: Send + Sync {
    /// The entries of the logical stream `stream` (the name given to `publish_bytes`).
    ///
    /// # Errors
    ///
    /// The store could not be read, or an entry is not in the producer's format.
    async fn read_all(&self, stream: &str) -> Result<Vec<StreamEntry>>;
}

#[async_trait]
impl StreamReader for MemoryStreamProducer {
    async fn read_all(&self, stream: &str) -> Result<Vec<StreamEntry>> {
        Ok(self.entries(stream))
    }
}

/// An entry id `"<ms>-<seq>"` as a comparable pair.
fn parse_id(id: &str) -> Result<(u64, u64)> {
    let parsed = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)));
    parsed
        .ok_or_else(|| Error::protocol(format!("contract: entry id {id:?} is not \"<ms>-<seq>\"")))
}

fn assert_growing(ids: &[String], what: &str) -> Result<()> {
    let parsed = ids
        .iter()
        .map(|i| parse_id(i))
        .collect::<Result<Vec<_>>>()?;
    for (i, w) in parsed.windows(2).enumerate() {
        assert!(
            w[0] < w[1],
            "{what}: entry ids must grow strictly: {} then {}",
            ids[i],
            ids[i + 1]
        );
    }
    Ok(())
}

/// Checks [`StreamProducer`]'s contract on `producer`, reading back through `reader`, on
/// streams named under `ns`. `reserved` is a header name the implementation reserves for
/// its own fields (`"payload"` for fredkit-streams and the memory double).
///
/// Asserts: every `Ok(id)` entry is stored, in order, exactly once, with its payload
/// (plain, empty, every byte value) and its headers (none, several, in order); ids are
/// `"<ms>-<seq>"` and grow strictly within a stream, also for 64 concurrent publishes
/// (all stored, each once, in id order); streams are apart; a reserved header name is
/// `InvalidInput` and appends nothing.
///
/// # Errors
///
/// An unexpected error of the implementation (the suite panics on a broken promise).
pub async fn stream_producer<P, R>(producer: &P, reader: &R, ns: &str, reserved: &str) -> Result<()>
where
    P: StreamProducer + ?Sized,
    R: StreamReader + ?Sized,
{
    let s1 = format!("{ns}-s1");
    let all_bytes: Bytes = (0..=255u8).collect::<Vec<u8>>().into();
    let published: Vec<(Bytes, Vec<(&str, &str)>)> = vec![
        (Bytes::from_static(b"first"), vec![]),
        (
            Bytes::new(),
            vec![("type", "order.created"), ("tenant", "t-1")],
        ),
        (all_bytes, vec![("trace_id", "abc123")]),
    ];
    let mut ids = Vec::new();
    for (payload, headers) in &published {
        ids.push(
            producer
                .publish_bytes(&s1, payload.clone(), headers)
                .await?,
        );
    }
    assert_growing(&ids, "sequential publishes")?;
    let stored = reader.read_all(&s1).await?;
    let expected: Vec<StreamEntry> = ids
        .iter()
        .zip(&published)
        .map(|(id, (payload, headers))| StreamEntry {
            id: id.clone(),
            payload: payload.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .collect();
    assert_eq!(
        stored, expected,
        "every published entry must be stored as published, in order"
    );

    // Reserved header: refused, nothing appended.
    assert_kind(
        producer
            .publish_bytes(
                &s1,
                Bytes::from_static(b"x"),
                &[("ok", "1"), (reserved, "mine")],
            )
            .await,
        ErrorKind::InvalidInput,
        "a reserved header name",
    );
    assert_eq!(
        reader.read_all(&s1).await?.len(),
        published.len(),
        "a refused publish must append nothing"
    );

    // Concurrent publishes: all stored once, ids growing in stream order.
    let s2 = format!("{ns}-s2");
    let payloads: Vec<Bytes> = (0..64u32).map(|i| Bytes::from(format!("m{i}"))).collect();
    let sends = payloads
        .iter()
        .map(|p| producer.publish_bytes(&s2, p.clone(), &[]));
    let ids = together(sends)
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let stored = reader.read_all(&s2).await?;
    assert_eq!(
        stored.len(),
        payloads.len(),
        "every concurrent publish must be stored once"
    );
    let stored_ids: Vec<String> = stored.iter().map(|e| e.id.clone()).collect();
    assert_growing(&stored_ids, "concurrent publishes")?;
    for (id, p) in ids.iter().zip(&payloads) {
        let found: Vec<_> = stored.iter().filter(|e| &e.id == id).collect();
        assert_eq!(found.len(), 1, "entry {id} must be stored exactly once");
        assert_eq!(&found[0].payload, p, "entry {id} must hold its own payload");
    }

    // Streams apart.
    let s3 = format!("{ns}-s3");
    let id = producer
        .publish_bytes(&s3, Bytes::from_static(b"alone"), &[])
        .await?;
    let stored = reader.read_all(&s3).await?;
    assert_eq!(stored.len(), 1, "a stream must hold only its own entries");
    assert_eq!(
        stored[0].id, id,
        "the entry must carry the id publish_bytes returned"
    );
    assert_eq!(
        reader.read_all(&s1).await?.len(),
        published.len(),
        "publishing elsewhere must not touch this stream"
    );
    Ok(())
}
