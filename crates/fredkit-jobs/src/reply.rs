//! Reading script replies without trusting them.

use bytes::Bytes;
use fred::types::Value;
use fredkit_core::{Error, Result};

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Double(d) if d.is_finite() => Some(*d as i64),
        _ => None,
    }
}

pub(crate) fn bytes(v: Value) -> Bytes {
    match v {
        Value::Bytes(b) => b,
        Value::String(s) => Bytes::from(s.to_string()),
        Value::Integer(i) => Bytes::from(i.to_string()),
        _ => Bytes::new(),
    }
}

pub(crate) fn string(v: Value) -> String {
    String::from_utf8_lossy(&bytes(v)).into_owned()
}

pub(crate) fn array(v: Value, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(Vec::new()),
        other => Err(Error::protocol(format!(
            "{what}: expected an array, got {:?}",
            other.kind()
        ))),
    }
}

/// Epoch milliseconds to a `SystemTime` (negative or absurd values: the epoch).
pub(crate) fn time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
