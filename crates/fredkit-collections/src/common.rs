//! Helpers shared by the structures: error mapping, TTL checks, metrics.

use std::time::{Duration, Instant};

use fredkit_core::{
    metrics::{Counter, Histogram, Labels},
    Error, ErrorKind, Result,
};

/// Maps an error of one of our scripts: `CORRUPT …` (garbage under a key)
/// becomes [`ErrorKind::Protocol`], `MERGING …` (a frozen map) becomes
/// [`ErrorKind::Busy`]; both keep the script's message, which names the key.
pub(crate) fn script_error(e: Error) -> Error {
    if e.kind() != ErrorKind::Script {
        return e;
    }
    let text = e.to_string();
    if let Some(i) = text.find("CORRUPT ") {
        let msg = text.get(i + "CORRUPT ".len()..).unwrap_or(&text);
        return Error::protocol(format!("fredkit-collections found garbage: {msg}"));
    }
    if let Some(i) = text.find("MERGING ") {
        let msg = text.get(i + "MERGING ".len()..).unwrap_or(&text);
        return Error::Busy(msg.to_string());
    }
    e
}

/// Maps an error of a plain read of `key` (a `WRONGTYPE` reply means
/// garbage under the key).
pub(crate) fn read_error(key: &str, what: &str, e: fred::error::Error) -> Error {
    let e = Error::from(e);
    if e.kind() == ErrorKind::Protocol && e.to_string().contains("WRONGTYPE") {
        return Error::protocol(format!(
            "fredkit-collections found garbage: {key} is not a {what}; delete it"
        ));
    }
    e
}

/// A codec failure on a value read from `key`, naming the key and where.
pub(crate) fn decode_error(key: &str, place: &str, e: Error) -> Error {
    match e {
        Error::Codec { op, codec, message } => Error::Codec {
            op,
            codec,
            message: format!("{place} of {key}: {message}; overwrite or remove it"),
        },
        other => other,
    }
}

/// A TTL in whole milliseconds, at least 1 ms.
pub(crate) fn ttl_ms(what: &str, ttl: Duration) -> Result<u64> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 || ms > i64::MAX as u64 / 2 {
        return Err(Error::invalid_input(format!(
            "{what}: the TTL must be between 1 ms and about 146 million years, got {ttl:?}"
        )));
    }
    Ok(ms)
}

/// Counters and a latency histogram of one structure, registered once.
#[derive(Clone, Debug)]
pub(crate) struct OpMetrics {
    ok: Counter,
    error: Counter,
    latency: Histogram,
}

impl OpMetrics {
    pub(crate) fn new(structure: &'static str, prefix: &str) -> OpMetrics {
        let labels = Labels::new()
            .with("structure", structure)
            .with("prefix", prefix);
        OpMetrics {
            ok: Counter::new(
                "fredkit_collections_ops_total",
                &labels.clone().with("outcome", "ok"),
            ),
            error: Counter::new(
                "fredkit_collections_ops_total",
                &labels.clone().with("outcome", "error"),
            ),
            latency: Histogram::new("fredkit_collections_op_seconds", &labels),
        }
    }

    pub(crate) fn record<T>(&self, started: Instant, r: &Result<T>) {
        self.latency.record_since(started);
        match r {
            Ok(_) => self.ok.increment(1),
            Err(_) => self.error.increment(1),
        }
    }
}
