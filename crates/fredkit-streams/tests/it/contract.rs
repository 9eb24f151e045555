//! `Producer` passes fredkit-core's `StreamProducer` contract suite
//! (fredkit_testkit::contract::stream_producer), the same suite the in-memory double
//! passes, on standalone and cluster; entries are read back with `XRANGE` in the
//! producer's documented layout (`payload`, then the headers as fields).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use bytes::Bytes;
use fred::interfaces::StreamsInterface;
use fred::types::Value;
use fredkit_conn::Redis;
use fredkit_core::{Error, KeySpace, Result};
use fredkit_streams::{Producer, StreamKeys, PAYLOAD_FIELD};
use fredkit_testkit::contract::{self, StreamReader};
use fredkit_testkit::memory::StreamEntry;
use fredkit_testkit::{connect, shared_url, unique_prefix, Topology};
use rstest::rstest;

/// Reads a logical stream of `space` back with XRANGE.
struct XRange {
    redis: Redis,
    space: KeySpace,
}

fn text(v: &Value) -> Result<String> {
    v.as_string()
        .ok_or_else(|| Error::protocol(format!("XRANGE: expected text, got {v:?}")))
}

#[async_trait]
impl StreamReader for XRange {
    async fn read_all(&self, stream: &str) -> Result<Vec<StreamEntry>> {
        let key = StreamKeys::new(&self.space, stream)?.stream().to_string();
        let reply: Value = self.redis.client().xrange(key, "-", "+", None).await?;
        let mut entries = Vec::new();
        for entry in reply.into_array() {
            let mut parts = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                return Err(Error::protocol("XRANGE: an entry without id and fields"));
            };
            let fields = fields.into_array();
            let mut payload = None;
            let mut headers = Vec::new();
            for pair in fields.chunks(2) {
                let [name, value] = pair else {
                    return Err(Error::protocol("XRANGE: odd field list"));
                };
                let name = text(name)?;
                if name == PAYLOAD_FIELD {
                    payload = Some(Bytes::copy_from_slice(value.as_bytes().unwrap_or_default()));
                } else {
                    headers.push((name, text(value)?));
                }
            }
            entries.push(StreamEntry {
                id: text(&id)?,
                payload: payload
                    .ok_or_else(|| Error::protocol("XRANGE: an entry without payload"))?,
                headers,
            });
        }
        Ok(entries)
    }
}

#[rstest]
#[case::standalone(Topology::Standalone)]
#[case::cluster(Topology::Cluster)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_keeps_the_stream_producer_contract(#[case] topology: Topology) {
    let url = shared_url(topology).unwrap();
    let redis = connect(&url).await.unwrap();
    let prefix = unique_prefix("streams_contract");
    let space = KeySpace::new(prefix.trim_end_matches(':')).unwrap();
    let producer: Producer<()> = Producer::new(&redis, StreamKeys::new(&space, "own").unwrap());
    let reader = XRange {
        redis: redis.clone(),
        space,
    };
    contract::stream_producer(&producer, &reader, "s", PAYLOAD_FIELD)
        .await
        .unwrap();
    contract::stream_producer(&producer, &reader, "d", "dlq.error")
        .await
        .unwrap();
}
