//! A Kafka record as the bus's message: the header this transport writes the message id in,
//! and the bus's message for a received record.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventbus_core::{Headers, Key, Message, MessageId};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

/// The header carrying the message id.
pub(crate) const HEADER_ID: &str = "eb-id";

/// The bus's message for a received record.
pub(crate) fn to_message(topic: &Arc<str>, m: &BorrowedMessage<'_>) -> Message {
    let mut id = None;
    let mut headers = Headers::default();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = text(header.value.unwrap_or_default());
            if header.key == HEADER_ID {
                id = Some(MessageId::from(value.as_ref()));
            } else {
                headers.insert(header.key, value);
            }
        }
    }
    let key = m.key().map(|k| Key::from(text(k).as_ref()));
    let timestamp = m
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    // A message from another client still gets a stable id: its place in the log.
    let id =
        id.unwrap_or_else(|| MessageId::from(format!("{topic}/{}/{}", m.partition(), m.offset())));
    Message::from_parts(
        id,
        Arc::clone(topic),
        key,
        headers,
        bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        timestamp,
    )
}

/// `bytes` as text: borrowed when they are UTF-8, as they are from any client of this bus
/// (`str::from_utf8` checks a word at a time; `from_utf8_lossy` goes byte by byte even then).
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use eventbus_core::{Error, HeaderError};

    /// The id header this transport writes is reserved in the core, so no user header can
    /// take its place.
    #[test]
    fn the_id_header_is_reserved() {
        assert!(matches!(
            eventbus_core::validate::validate_header(super::HEADER_ID, "x"),
            Err(Error::InvalidHeader {
                reason: HeaderError::Reserved { .. },
                ..
            })
        ));
    }

    /// Keys and header values from any client are read as text: UTF-8 as it is (borrowed),
    /// anything else with its invalid bytes replaced, never an error.
    #[test]
    fn received_bytes_are_read_as_text() {
        use std::borrow::Cow;
        assert!(matches!(super::text(b"order-7"), Cow::Borrowed("order-7")));
        assert!(matches!(
            super::text("zäh".as_bytes()),
            Cow::Borrowed("zäh")
        ));
        assert_eq!(super::text(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(super::text(b""), "");
    }
}
