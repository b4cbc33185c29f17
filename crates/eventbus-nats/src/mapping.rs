//! The bus's message ↔ NATS headers: the names this transport writes for itself (publishing
//! sets them), and the bus's message for a received stream message, with which stream message
//! it is (for copy recognition).

use std::sync::Arc;
use std::time::SystemTime;

use async_nats::HeaderMap;
use eventbus_core::{Headers, Key, Message, MessageId};

use crate::held::{CopyKey, identity_hash};

pub(crate) const HEADER_ID: &str = "Nats-Msg-Id";
pub(crate) const HEADER_KEY: &str = "eb-key";

/// The bus's message for a stream message, and which stream message it is.
pub(crate) fn message(
    topic: &Arc<str>,
    nats_headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
    timestamp: Option<SystemTime>,
    stream_seq: Option<u64>,
) -> (Message, Option<CopyKey>) {
    let mut id = None;
    let mut key = None;
    let mut headers = Headers::default();
    if let Some(h) = nats_headers {
        for (name, values) in h.iter() {
            let Some(value) = values.first() else {
                continue;
            };
            match name.as_ref() {
                HEADER_ID => id = Some(MessageId::from(value.as_str())),
                HEADER_KEY => key = Some(Key::from(value.as_str())),
                // JetStream's own (`Nats-Expected-*`, `Nats-Rollup`, ...): acted on when the
                // message was published, and acted on again if it were republished (a dead
                // letter, a replay). Not user headers: the bus refuses them as reserved.
                name if is_nats_header(name) => {}
                name => {
                    headers.insert(name, value.as_str());
                }
            }
        }
    }
    let seq = stream_seq.map(|seq| {
        let id = id.as_ref().map(MessageId::as_str);
        (seq, identity_hash(id, timestamp))
    });
    // A message published without our headers (by another client) still gets an id: the
    // stream sequence would be stabler, but reading it means parsing the reply subject.
    let message = Message::from_parts(
        id.unwrap_or_default(),
        Arc::clone(topic),
        key,
        headers,
        payload,
        timestamp.unwrap_or_else(SystemTime::now),
    );
    (message, seq)
}

/// JetStream's own headers: the core's reserved prefix (`Nats-`).
fn is_nats_header(name: &str) -> bool {
    eventbus_core::validate::reserved_prefix(name).is_some()
}

#[cfg(test)]
mod wire_tests {
    use eventbus_core::{Error, HeaderError};

    /// The headers this transport writes for itself are reserved in the core, so no user
    /// header can take their place.
    #[test]
    fn the_wire_headers_are_reserved() {
        for name in [super::HEADER_ID, super::HEADER_KEY] {
            assert!(
                matches!(
                    eventbus_core::validate::validate_header(name, "x"),
                    Err(Error::InvalidHeader {
                        reason: HeaderError::Reserved { .. },
                        ..
                    })
                ),
                "{name}"
            );
        }
        assert!(super::is_nats_header("Nats-Expected-Stream"));
        assert!(!super::is_nats_header("eb-key"));
    }
}
