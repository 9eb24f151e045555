//! Script replies: an integer, or a report that a key holds something this
//! crate never writes.

use fred::types::Value;
use fredkit_core::{Error, Result};

/// Decodes the reply of a script that answers an integer or, when a key
/// holds something fredkit-lock never writes (a wrong type, a counter that
/// is not a number, a lock without expiry), `{'corrupt', key, problem, fix}`.
/// The scripts validate before they write, so such a reply means the script
/// wrote nothing; it becomes an
/// [`ErrorKind::Protocol`](fredkit_core::ErrorKind::Protocol) error naming
/// the key, the problem and what to do.
pub(crate) fn integer(script: &str, reply: Value) -> Result<i64> {
    match reply {
        Value::Integer(n) => Ok(n),
        Value::Array(items) => Err(corrupt(script, &items)),
        other => Err(Error::protocol(format!(
            "script '{script}' returned {}, not an integer",
            other.kind()
        ))),
    }
}

/// Decodes the reply of a script that answers `{kind, value}` (`kind` an
/// integer) or the corrupt-key report (see [`integer`]).
pub(crate) fn pair(script: &str, reply: Value) -> Result<(i64, Value)> {
    match reply {
        Value::Array(mut items) if items.len() == 2 => {
            if let Some(kind) = items.first().and_then(Value::as_i64) {
                if matches!(items.first(), Some(Value::Integer(_))) {
                    let value = items.pop().unwrap_or(Value::Null);
                    return Ok((kind, value));
                }
            }
            Err(corrupt(script, &items))
        }
        Value::Array(items) => Err(corrupt(script, &items)),
        other => Err(Error::protocol(format!(
            "script '{script}' returned {}, not a pair",
            other.kind()
        ))),
    }
}

fn corrupt(script: &str, items: &[Value]) -> Error {
    let text = |i: usize| {
        items
            .get(i)
            .and_then(Value::as_str)
            .map(|s| s.into_owned())
            .unwrap_or_default()
    };
    if text(0) != "corrupt" {
        return Error::protocol(format!(
            "script '{script}' returned an array of {} items, not an integer",
            items.len()
        ));
    }
    Error::protocol(format!(
        "key '{}' {}, which fredkit-lock never writes; script '{script}' wrote nothing. {}",
        text(1),
        text(2),
        text(3)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fredkit_core::ErrorKind;

    #[test]
    fn integers_pass_and_corrupt_reports_name_the_key() {
        assert_eq!(integer("s", Value::Integer(-5)).unwrap(), -5);
        let e = integer(
            "lock_acquire",
            Value::Array(vec![
                "corrupt".into(),
                "p:{r}:fence".into(),
                "holds \"x\", not a fencing counter".into(),
                "Delete it.".into(),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        let msg = e.to_string();
        assert!(msg.contains("'p:{r}:fence' holds \"x\""), "{msg}");
        assert!(
            msg.contains("lock_acquire") && msg.contains("Delete it."),
            "{msg}"
        );
        for other in [Value::Null, Value::Array(vec![Value::Integer(1)])] {
            assert_eq!(integer("s", other).unwrap_err().kind(), ErrorKind::Protocol);
        }
    }
}
