//! How an entry is laid out as stream fields.

use fredkit_core::{Error, Result};

/// The field holding the encoded payload.
pub const PAYLOAD_FIELD: &str = "payload";
/// The header naming the event type (`"order.created"`), optional.
pub const TYPE_HEADER: &str = "type";
/// The header carrying a trace id from producer to handler, optional.
pub const TRACE_ID_HEADER: &str = "trace_id";
/// Field names starting with this prefix are reserved for dead-letter
/// history (`dlq.id`, `dlq.error`, ...).
pub const RESERVED_PREFIX: &str = "dlq.";

/// Header of a replayed dead letter: its original entry id.
pub(crate) const REPLAYED_FROM: &str = "dlq.replayed_from";
/// Header of a replayed dead letter: the consumer group that dead-lettered
/// it, the only group whose workers handle the replay.
pub(crate) const REPLAY_GROUP: &str = "dlq.replay_group";

/// Rejects header names fredkit reserves for its own fields.
pub(crate) fn check_header(name: &str) -> Result<()> {
    if name == PAYLOAD_FIELD || name.starts_with(RESERVED_PREFIX) {
        return Err(Error::invalid_input(format!(
            "header name {name:?} is reserved by fredkit-streams ('{PAYLOAD_FIELD}' and names \
             starting with '{RESERVED_PREFIX}'); rename the header"
        )));
    }
    if name.is_empty() {
        return Err(Error::invalid_input("header name is empty; give it a name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_header_names_are_rejected() {
        assert!(check_header("payload").is_err());
        assert!(check_header("dlq.error").is_err());
        assert!(check_header("").is_err());
        assert!(check_header("type").is_ok());
        assert!(check_header("tenant").is_ok());
    }
}
