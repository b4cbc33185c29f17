//! This project's wire mapping of an [`Envelope`]: fields in headers, the payload untouched
//! ([`Codec::Headers`](super::Codec::Headers), the default).
//!
//! | envelope field | on the wire |
//! |---|---|
//! | event id | message id |
//! | aggregate id | message key **and** header `eb-aggregate-id` |
//! | event type | header `eb-event-type` |
//! | event version (> 0) | header `eb-event-version`, decimal |
//! | occurred at | header `eb-occurred-at`, RFC 3339 UTC with nanoseconds |
//! | tenant / correlation / causation / trace id | headers `eb-tenant-id`, `eb-correlation-id`, `eb-causation-id`, `eb-trace-id` (optional) |
//! | metadata `name` | header `eb-meta-name` |
//! | payload | message payload, untouched |
//!
//! Header `eb-schema: 1` marks a message as an envelope. Brokers and tools can route and inspect
//! on headers alone, without decoding the payload.

use std::num::NonZeroU64;

use super::Envelope;
use crate::error::EnvelopeError;
use crate::message::{Headers, Key, Message};
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
    /// Tenant id.
    pub const TENANT_ID: &str = "eb-tenant-id";
    /// Prefix of metadata headers.
    pub const META_PREFIX: &str = "eb-meta-";
}

const SCHEMA_V1: &str = "1";

/// The message carrying `env` on `topic`.
pub(crate) fn encode(env: &Envelope, topic: String) -> Message {
    let mut msg = Message::from_parts(
        env.event_id.clone(),
        topic,
        Some(env.aggregate_id.clone()),
        Headers::default(),
        env.payload.clone(),
        env.occurred_at,
    );
    let h = msg.headers_mut();
    h.insert(header::SCHEMA, SCHEMA_V1);
    h.insert(header::AGGREGATE_ID, env.aggregate_id.as_str());
    h.insert(header::EVENT_TYPE, env.event_type.as_str());
    h.insert(header::EVENT_VERSION, env.event_version.to_string());
    h.insert(
        header::OCCURRED_AT,
        humantime::format_rfc3339_nanos(env.occurred_at).to_string(),
    );
    for (name, value) in [
        (header::CORRELATION_ID, &env.correlation_id),
        (header::CAUSATION_ID, &env.causation_id),
        (header::TRACE_ID, &env.trace_id),
        (header::TENANT_ID, &env.tenant_id),
    ] {
        if let Some(value) = value {
            h.insert(name, value.as_str());
        }
    }
    for (name, value) in &env.metadata {
        h.insert(format!("{}{name}", header::META_PREFIX), value.as_str());
    }
    msg
}

/// The envelope `msg` carries.
pub(crate) fn decode(msg: &Message) -> Result<Envelope, EnvelopeError> {
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
        event_id: msg.id().clone(),
        aggregate_id: msg.key().cloned().unwrap_or_else(|| aggregate.into()),
        event_type: event_type.to_owned(),
        event_version,
        occurred_at,
        tenant_id: optional(header::TENANT_ID),
        correlation_id: optional(header::CORRELATION_ID),
        causation_id: optional(header::CAUSATION_ID),
        trace_id: optional(header::TRACE_ID),
        metadata,
        payload: msg.payload().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::time::{Duration, SystemTime};

    fn sample() -> Envelope {
        Envelope::new("order-7", "OrderPlaced", 3, &b"{\"total\":12}"[..])
            .unwrap()
            .with_correlation_id("corr")
            .with_causation_id("cause")
            .with_trace_id("trace")
            .with_tenant_id("acme")
            .with_metadata("region", "eu")
            .with_occurred_at(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
    }

    #[test]
    fn roundtrip_keeps_every_field() {
        let env = sample();
        let msg = env.to_message("orders");
        assert_eq!(msg.key().unwrap().as_str(), "order-7");
        assert_eq!(msg.id(), &env.event_id);
        assert_eq!(msg.headers().get("eb-event-version"), Some("3"));
        assert_eq!(msg.headers().get("eb-tenant-id"), Some("acme"));
        assert_eq!(msg.headers().get("eb-meta-region"), Some("eu"));
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
