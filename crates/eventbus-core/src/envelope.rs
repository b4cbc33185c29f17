//! Domain-event envelopes and their one wire mapping onto message headers + payload.
//!
//! | envelope field | on the wire |
//! |---|---|
//! | aggregate id | message key **and** header `eb-aggregate-id` |
//! | event type | header `eb-event-type` |
//! | event version (> 0) | header `eb-event-version`, decimal |
//! | occurred at | header `eb-occurred-at`, RFC 3339 UTC with nanoseconds |
//! | correlation / causation / trace id | headers `eb-correlation-id`, `eb-causation-id`, `eb-trace-id` (optional) |
//! | metadata `name` | header `eb-meta-name` |
//! | payload | message payload, untouched |
//!
//! Header `eb-schema: 1` marks a message as an envelope. Brokers and tools can route and inspect
//! on headers alone, without decoding the payload.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::{EnvelopeError, Error};
use crate::message::{Key, Message};
use crate::validate::validate_key;

/// Header names of the wire mapping.
pub mod header {
    /// Envelope schema version; its presence marks an envelope.
    pub const SCHEMA: &str = "eb-schema";
    /// Aggregate id.
    pub const AGGREGATE_ID: &str = "eb-aggregate-id";
    /// Event type.
    pub const EVENT_TYPE: &str = "eb-event-type";
    /// Event version.
    pub const EVENT_VERSION: &str = "eb-event-version";
    /// When the event occurred.
    pub const OCCURRED_AT: &str = "eb-occurred-at";
    /// Correlation id.
    pub const CORRELATION_ID: &str = "eb-correlation-id";
    /// Causation id.
    pub const CAUSATION_ID: &str = "eb-causation-id";
    /// Trace id.
    pub const TRACE_ID: &str = "eb-trace-id";
    /// Prefix of metadata headers.
    pub const META_PREFIX: &str = "eb-meta-";
}

const SCHEMA_V1: &str = "1";

/// A domain event: what happened to which aggregate, in which order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The aggregate the event belongs to; also the message key, so its events stay in order.
    pub aggregate_id: Key,
    /// The event's type name, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Position of the event in its aggregate's history, from 1.
    pub event_version: NonZeroU64,
    /// When the event happened.
    pub occurred_at: SystemTime,
    /// Ties together every message of one business operation.
    pub correlation_id: Option<String>,
    /// Id of the message that caused this one.
    pub causation_id: Option<String>,
    /// Trace id, for logs.
    pub trace_id: Option<String>,
    /// Free-form metadata, carried as headers.
    pub metadata: BTreeMap<String, String>,
    /// The event body.
    pub payload: Bytes,
}

impl Envelope {
    /// A new envelope occurring now. Fails on an invalid aggregate id or a version of 0.
    pub fn new(
        aggregate_id: impl Into<Key>,
        event_type: impl Into<String>,
        event_version: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Self, Error> {
        let aggregate_id = aggregate_id.into();
        validate_key(aggregate_id.as_str())?;
        let event_version = NonZeroU64::new(event_version).ok_or(EnvelopeError::InvalidHeader {
            header: header::EVENT_VERSION,
            value: "0".into(),
            reason: "event versions start at 1".into(),
        })?;
        Ok(Envelope {
            aggregate_id,
            event_type: event_type.into(),
            event_version,
            occurred_at: SystemTime::now(),
            correlation_id: None,
            causation_id: None,
            trace_id: None,
            metadata: BTreeMap::new(),
            payload: payload.into(),
        })
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }
    /// Sets the trace id.
    pub fn with_trace_id(mut self, id: impl Into<String>) -> Self {
        self.trace_id = Some(id.into());
        self
    }
    /// Adds a metadata entry.
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }
    /// Sets when the event occurred.
    pub fn with_occurred_at(mut self, at: SystemTime) -> Self {
        self.occurred_at = at;
        self
    }

    /// Encodes the envelope as a message on `topic`.
    pub fn to_message(&self, topic: impl Into<String>) -> Message {
        let mut msg = Message::new(topic, self.payload.clone())
            .with_key(self.aggregate_id.clone())
            .with_timestamp(self.occurred_at);
        let h = msg.headers_mut();
        h.insert(header::SCHEMA, SCHEMA_V1);
        h.insert(header::AGGREGATE_ID, self.aggregate_id.as_str());
        h.insert(header::EVENT_TYPE, self.event_type.as_str());
        h.insert(header::EVENT_VERSION, self.event_version.to_string());
        h.insert(
            header::OCCURRED_AT,
            humantime::format_rfc3339_nanos(self.occurred_at).to_string(),
        );
        for (name, value) in [
            (header::CORRELATION_ID, &self.correlation_id),
            (header::CAUSATION_ID, &self.causation_id),
            (header::TRACE_ID, &self.trace_id),
        ] {
            if let Some(value) = value {
                h.insert(name, value.as_str());
            }
        }
        for (name, value) in &self.metadata {
            h.insert(format!("{}{name}", header::META_PREFIX), value.as_str());
        }
        msg
    }

    /// Decodes an envelope from a message. Every failure is a typed [`EnvelopeError`].
    pub fn from_message(msg: &Message) -> Result<Self, EnvelopeError> {
        let h = msg.headers();
        let required = |name: &'static str| h.get(name).ok_or(EnvelopeError::MissingHeader(name));
        let invalid =
            |header: &'static str, value: &str, reason: String| EnvelopeError::InvalidHeader {
                header,
                value: value.chars().take(64).collect(),
                reason,
            };

        let schema = required(header::SCHEMA)?;
        if schema != SCHEMA_V1 {
            return Err(EnvelopeError::UnsupportedSchema(
                schema.chars().take(64).collect(),
            ));
        }
        let aggregate = required(header::AGGREGATE_ID)?;
        if let Err(e) = validate_key(aggregate) {
            return Err(invalid(header::AGGREGATE_ID, aggregate, e.to_string()));
        }
        if msg.key().map(Key::as_str) != Some(aggregate) {
            return Err(EnvelopeError::KeyMismatch {
                key: msg.key().map(|k| k.as_str().chars().take(64).collect()),
                aggregate_id: aggregate.to_owned(),
            });
        }
        let event_type = required(header::EVENT_TYPE)?;
        if event_type.is_empty() {
            return Err(invalid(header::EVENT_TYPE, event_type, "empty".into()));
        }
        let version = required(header::EVENT_VERSION)?;
        let event_version = version
            .parse::<NonZeroU64>()
            .map_err(|e| invalid(header::EVENT_VERSION, version, e.to_string()))?;
        let occurred = required(header::OCCURRED_AT)?;
        let occurred_at = humantime::parse_rfc3339(occurred)
            .map_err(|e| invalid(header::OCCURRED_AT, occurred, e.to_string()))?;
        let optional = |name| h.get(name).map(str::to_owned);
        let metadata = h
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(header::META_PREFIX)
                    .map(|k| (k.to_owned(), v.to_owned()))
            })
            .collect();

        Ok(Envelope {
            aggregate_id: msg.key().cloned().unwrap_or_else(|| aggregate.into()),
            event_type: event_type.to_owned(),
            event_version,
            occurred_at,
            correlation_id: optional(header::CORRELATION_ID),
            causation_id: optional(header::CAUSATION_ID),
            trace_id: optional(header::TRACE_ID),
            metadata,
            payload: msg.payload().clone(),
        })
    }
}

impl TryFrom<&Message> for Envelope {
    type Error = EnvelopeError;
    fn try_from(msg: &Message) -> Result<Self, EnvelopeError> {
        Envelope::from_message(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn sample() -> Envelope {
        Envelope::new("order-7", "OrderPlaced", 3, &b"{\"total\":12}"[..])
            .unwrap()
            .with_correlation_id("corr")
            .with_causation_id("cause")
            .with_trace_id("trace")
            .with_metadata("tenant", "acme")
            .with_occurred_at(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
    }

    #[test]
    fn roundtrip_keeps_every_field() {
        let env = sample();
        let msg = env.to_message("orders");
        assert_eq!(msg.key().unwrap().as_str(), "order-7");
        assert_eq!(msg.headers().get("eb-event-version"), Some("3"));
        assert_eq!(
            msg.headers().get("eb-occurred-at"),
            Some("2023-11-14T22:13:20.123456789Z")
        );
        assert_eq!(Envelope::from_message(&msg).unwrap(), env);
    }

    #[test]
    fn version_zero_and_bad_ids_are_rejected() {
        assert!(matches!(
            Envelope::new("a", "T", 0, Bytes::new()),
            Err(Error::MalformedEnvelope(
                EnvelopeError::InvalidHeader { .. }
            ))
        ));
        assert!(matches!(
            Envelope::new("a b", "T", 1, Bytes::new()),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn typed_decoding_errors() {
        let plain = Message::new("t", "x");
        assert_eq!(
            Envelope::from_message(&plain),
            Err(EnvelopeError::MissingHeader(header::SCHEMA))
        );
        let mut msg = sample().to_message("t");
        msg.headers_mut().insert(header::EVENT_VERSION, "-1");
        assert!(matches!(
            Envelope::from_message(&msg),
            Err(EnvelopeError::InvalidHeader {
                header: "eb-event-version",
                ..
            })
        ));
        let msg = sample().to_message("t").with_key("other");
        assert!(matches!(
            Envelope::from_message(&msg),
            Err(EnvelopeError::KeyMismatch { .. })
        ));
        let mut msg = sample().to_message("t");
        msg.headers_mut().insert(header::SCHEMA, "2");
        assert!(matches!(
            Envelope::from_message(&msg),
            Err(EnvelopeError::UnsupportedSchema(_))
        ));
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(header::SCHEMA.to_owned()),
            Just(header::AGGREGATE_ID.to_owned()),
            Just(header::EVENT_TYPE.to_owned()),
            Just(header::EVENT_VERSION.to_owned()),
            Just(header::OCCURRED_AT.to_owned()),
            "eb-meta-[a-z]{0,4}",
            "\\PC{0,8}",
        ]
    }

    proptest! {
        // Arbitrary headers, key and payload: decoding returns Ok or a typed error, never panics;
        // whatever decodes re-encodes to the same envelope.
        #[test]
        fn decoding_arbitrary_input_never_panics(
            headers in proptest::collection::vec((header_name(), "\\PC{0,40}"), 0..10),
            key in proptest::option::of("\\PC{0,20}"),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut msg = Message::new("t", payload);
            if let Some(k) = key { msg = msg.with_key(k); }
            for (k, v) in headers { msg.headers_mut().insert(k, v); }
            if let Ok(env) = Envelope::from_message(&msg) {
                prop_assert_eq!(Envelope::from_message(&env.to_message("t")).unwrap(), env);
            }
        }

        // A valid envelope with one corrupted field gives a typed error.
        #[test]
        fn corrupted_valid_envelope(field in header_name(), value in "\\PC{0,20}") {
            let mut msg = sample().to_message("t");
            msg.headers_mut().insert(field, value);
            let _ = Envelope::from_message(&msg);
        }
    }
}
