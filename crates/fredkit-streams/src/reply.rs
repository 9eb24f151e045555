//! Defensive parsing of raw Redis replies (`XREADGROUP`, the claim script,
//! `XPENDING`, `XINFO GROUPS`, `XRANGE`). Anything unexpected is a
//! [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) error or a skipped
//! element, never a panic.

use bytes::Bytes;
use fred::bytes_utils::Str;
use fred::types::Value;
use fredkit_core::{Error, Result};

use crate::keys::StreamId;

/// One stream entry as read: its id and its fields in order.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) id: StreamId,
    pub(crate) fields: Vec<(Str, Bytes)>,
}

/// Text of a bulk string, integer or simple string.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// A field name, without copying when Redis sent valid UTF-8.
fn name(v: Value) -> Option<Str> {
    match v {
        Value::String(s) => Some(s),
        other => text(&other).map(Str::from),
    }
}

/// Bytes of a bulk string (or the text of an integer).
pub(crate) fn bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::String(s) => Some(s.inner().clone()),
        Value::Bytes(b) => Some(b),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        _ => None,
    }
}

/// An integer, from an integer or a numeric string.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
        Value::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

/// The elements of an array; `Null` is empty; a RESP3 map is flattened into
/// key, value, key, value.
pub(crate) fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => Ok(a),
        Value::Map(m) => Ok(m
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [Value::from(k), v])
            .collect()),
        other => Err(Error::protocol(format!(
            "expected an array, Redis sent {}",
            other.kind()
        ))),
    }
}

/// A `[k, v, k, v...]` array (or RESP3 map) as pairs with text keys.
pub(crate) fn pairs(v: Value) -> Result<Vec<(String, Value)>> {
    let items = array(v)?;
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(k) = text(&k) {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// `[id, [field, value, ...]]`. `Ok(None)` when the fields are nil (an entry
/// deleted while pending, as Redis 6.2 reports it).
pub(crate) fn entry(v: Value) -> Result<Option<RawEntry>> {
    let mut parts = array(v)?.into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| Error::protocol("stream entry without an id"))?;
    let fields = match parts.next() {
        None | Some(Value::Null) => return Ok(None),
        Some(f) => f,
    };
    let items = array(fields)?;
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let (Some(name), Some(value)) = (name(k), bytes(v)) else {
            continue;
        };
        out.push((name, value));
    }
    Ok(Some(RawEntry {
        id: StreamId::new(id),
        fields: out,
    }))
}

/// A list of entries (`XRANGE`, one stream of `XREADGROUP`); entries with
/// nil fields are skipped.
pub(crate) fn entries(v: Value) -> Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    for e in array(v)? {
        if let Some(e) = entry(e)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// The reply of `XREADGROUP ... STREAMS key >` for one key: RESP2
/// `[[key, entries]]`, RESP3 `{key: entries}`, or nil on timeout.
pub(crate) fn xread_one(v: Value) -> Result<Vec<RawEntry>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Map(m) => {
            let mut out = Vec::new();
            for (_, es) in m.inner() {
                out.extend(entries(es)?);
            }
            Ok(out)
        }
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                let mut kv = array(s)?.into_iter();
                let _key = kv.next();
                if let Some(es) = kv.next() {
                    out.extend(entries(es)?);
                }
            }
            Ok(out)
        }
        other => Err(Error::protocol(format!(
            "XREADGROUP: expected an array or nil, Redis sent {}",
            other.kind()
        ))),
    }
}

/// What the claim script returned.
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    pub(crate) cursor: String,
    pub(crate) entries: Vec<(RawEntry, u64)>,
    pub(crate) deleted: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) dead_letter_failures: u64,
    pub(crate) last_error: String,
    pub(crate) dead_letters_trimmed: u64,
    pub(crate) consumers_removed: u64,
}

/// `{cursor, {{id, fields, deliveries}...}, deleted, dead, dead_letter_failures, last_error}`.
pub(crate) fn claimed(v: Value) -> Result<Claimed> {
    let mut parts = array(v)?.into_iter();
    let cursor = parts
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| Error::protocol("claim script: no cursor in the reply"))?;
    let mut out = Claimed {
        cursor,
        ..Claimed::default()
    };
    if let Some(list) = parts.next() {
        for item in array(list)? {
            let mut it = array(item)?.into_iter();
            let (Some(id), Some(fields)) = (it.next(), it.next()) else {
                continue;
            };
            let deliveries = it.next().as_ref().and_then(int).unwrap_or(1).max(1) as u64;
            if let Some(e) = entry(Value::Array(vec![id, fields]))? {
                out.entries.push((e, deliveries));
            }
        }
    }
    out.deleted = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
    out.dead_lettered = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
    out.dead_letter_failures = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
    out.last_error = parts.next().as_ref().and_then(text).unwrap_or_default();
    out.dead_letters_trimmed = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
    out.consumers_removed = parts.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    #[test]
    fn xread_parses_resp2_and_nil() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("k"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("payload"), s("x")])]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
        ])]);
        let es = xread_one(reply).unwrap();
        assert_eq!(es.len(), 1);
        assert_eq!(es[0].id.as_str(), "1-0");
        assert_eq!(es[0].fields[0].0, "payload");
        assert!(xread_one(Value::Null).unwrap().is_empty());
    }

    #[test]
    fn garbage_replies_are_errors_not_panics() {
        assert!(xread_one(Value::Integer(3)).is_err());
        assert!(claimed(Value::Integer(3)).is_err());
        assert!(claimed(Value::Array(vec![])).is_err());
        // Odd-length field lists and non-array items are tolerated.
        let odd = Value::Array(vec![s("1-0"), Value::Array(vec![s("payload")])]);
        assert!(entry(odd).unwrap().unwrap().fields.is_empty());
        let weird = Value::Array(vec![
            s("0-0"),
            Value::Array(vec![Value::Array(vec![s("1-0")])]),
        ]);
        assert!(claimed(weird).unwrap().entries.is_empty());
    }

    #[test]
    fn claim_reply_parses_counts() {
        let reply = Value::Array(vec![
            s("5-0"),
            Value::Array(vec![Value::Array(vec![
                s("3-0"),
                Value::Array(vec![
                    s("payload"),
                    Value::Bytes(Bytes::from_static(b"\x01")),
                ]),
                Value::Integer(4),
            ])]),
            Value::Integer(2),
            Value::Integer(1),
            Value::Integer(1),
            s("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ]);
        let c = claimed(reply).unwrap();
        assert_eq!(c.dead_letter_failures, 1);
        assert!(c.last_error.starts_with("WRONGTYPE"));
        assert_eq!(c.cursor, "5-0");
        assert_eq!(c.entries[0].1, 4);
        assert_eq!(c.deleted, 2);
        assert_eq!(c.dead_lettered, 1);
    }
}
