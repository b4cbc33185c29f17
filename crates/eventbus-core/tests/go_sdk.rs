//! `Codec::GoSdk` against the golden vectors of the Go SDK's wire format
//! (`tests/golden/go-sdk/`, whose README says where each comes from): what the Go SDK writes
//! decodes with every field intact, what this codec writes is byte for byte what the Go SDK
//! writes, and what the Go SDK refuses is refused with a typed error.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use eventbus_core::envelope::go_sdk::go_header;
use eventbus_core::{Codec, Envelope, EnvelopeError, Error, Message};

fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/go-sdk")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body of a message as a Go SDK NATS publisher sends it: no key, no headers.
fn from_nats(name: &str) -> Message {
    Message::new("orders", golden(name))
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

/// 2026-03-01T10:00:00Z.
const MARCH_1: u64 = 1_772_359_200;

fn full() -> Envelope {
    Envelope::new(
        "order:7",
        "OrderPlaced",
        3,
        &br#"{"total_cents":1200,"items":["a","b"]}"#[..],
    )
    .unwrap()
    .with_event_id("0193a5b2-7c1e-7d3a-9f00-1a2b3c4d5e6f")
    .with_occurred_at(at(MARCH_1, 123_456_789))
    .with_trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
    .with_correlation_id("checkout-42")
    .with_tenant_id("17")
}

#[test]
fn every_field_of_a_go_sdk_envelope_is_read() {
    let env = Codec::GoSdk.decode(&from_nats("full.json")).unwrap();
    assert_eq!(env, full());
    assert_eq!(env.event_version, NonZeroU64::new(3).unwrap());

    let minimal = Codec::GoSdk.decode(&from_nats("minimal.json")).unwrap();
    assert_eq!(minimal.event_id.as_str(), "evt-1");
    assert_eq!(minimal.aggregate_id.as_str(), "account/42");
    assert_eq!(minimal.occurred_at, at(MARCH_1, 0));
    assert_eq!(
        (minimal.tenant_id, minimal.trace_id, minimal.correlation_id),
        (None, None, None)
    );
    assert_eq!(&minimal.payload[..], b"{}");
}

#[test]
fn a_tenant_id_is_read_as_a_number_or_as_a_string() {
    let env = Codec::GoSdk
        .decode(&from_nats("tenant-string.json"))
        .unwrap();
    assert_eq!(env.tenant_id.as_deref(), Some("acme"));
    assert_eq!(env.event_version.get(), 12);
    // A tenant id of 0 is the Go SDK's "none".
    let env = Codec::GoSdk
        .decode(&from_nats("offset-timestamp.json"))
        .unwrap();
    assert_eq!(env.tenant_id, None);
}

#[test]
fn a_time_with_an_offset_is_the_same_instant() {
    let env = Codec::GoSdk
        .decode(&from_nats("offset-timestamp.json"))
        .unwrap();
    // 18:00:00.25+08:00 is 10:00:00.25Z.
    assert_eq!(env.occurred_at, at(MARCH_1, 250_000_000));
    assert_eq!(&env.payload[..], b"[1,2,3]");
}

#[test]
fn what_this_codec_writes_is_what_the_go_sdk_writes() {
    let message = Codec::GoSdk.encode(&full(), "orders").unwrap();
    assert_eq!(
        std::str::from_utf8(message.payload()).unwrap(),
        std::str::from_utf8(&golden("full.json")).unwrap()
    );
    // The Kafka record: key and headers as the Go SDK's producer writes them.
    let record = String::from_utf8(golden("full.kafka-record.txt")).unwrap();
    let mut lines = record.lines();
    assert_eq!(
        lines.next().and_then(|l| l.strip_prefix("key: ")),
        message.key().map(|k| k.as_str())
    );
    for line in lines {
        let (name, value) = line.split_once(": ").unwrap();
        assert_eq!(message.headers().get(name), Some(value), "{name}");
    }
    assert_eq!(
        message.id().as_str(),
        "0193a5b2-7c1e-7d3a-9f00-1a2b3c4d5e6f"
    );

    for name in ["minimal.json", "html-escaped.json"] {
        let env = Codec::GoSdk.decode(&from_nats(name)).unwrap();
        let again = Codec::GoSdk.encode(&env, "orders").unwrap();
        assert_eq!(
            std::str::from_utf8(again.payload()).unwrap(),
            std::str::from_utf8(&golden(name)).unwrap(),
            "{name}"
        );
    }
    let escaped = Codec::GoSdk
        .decode(&from_nats("html-escaped.json"))
        .unwrap();
    assert_eq!(escaped.event_type, "Order<Placed>&Co");
    assert_eq!(escaped.correlation_id.as_deref(), Some("a&b"));
}

#[test]
fn what_this_codec_writes_reads_back_with_every_field() {
    let env = full()
        .with_causation_id("cmd-9")
        .with_metadata("schema-version", "2");
    let message = Codec::GoSdk.encode(&env, "orders").unwrap();
    // What the Go format has no field for travels as this project's headers.
    assert_eq!(message.headers().get("eb-causation-id"), Some("cmd-9"));
    assert_eq!(Codec::GoSdk.decode(&message).unwrap(), env);
    assert_eq!(message.headers().get(go_header::TENANT_ID), Some("17"));
}

#[test]
fn the_key_of_a_message_without_one_is_the_bodys_aggregate_id() {
    let message = from_nats("full.json");
    assert_eq!(
        Codec::GoSdk.key_of(&message).map(|k| k.as_str().to_owned()),
        Some("order:7".to_owned())
    );
    assert_eq!(Codec::Headers.key_of(&message), None);
    assert_eq!(
        Codec::GoSdk.key_of(&from_nats("invalid/aggregate-id-with-space.json")),
        None
    );
    assert_eq!(
        Codec::GoSdk.key_of(&from_nats("invalid/not-json.txt")),
        None
    );
    // A key that differs from the body's aggregate id is refused.
    let mismatched = from_nats("full.json").with_key("order:8");
    assert!(matches!(
        Codec::GoSdk.decode(&mismatched),
        Err(EnvelopeError::KeyMismatch { .. })
    ));
}

#[test]
fn what_the_go_sdk_refuses_is_refused_with_a_typed_error() {
    let decode = |name| Codec::GoSdk.decode(&from_nats(name));
    assert!(matches!(
        decode("invalid/version-zero.json"),
        Err(EnvelopeError::InvalidField {
            field: "event_version",
            ..
        })
    ));
    assert!(matches!(
        decode("invalid/aggregate-id-with-space.json"),
        Err(EnvelopeError::InvalidField {
            field: "aggregate_id",
            ..
        })
    ));
    assert!(matches!(
        decode("invalid/blank-event-id.json"),
        Err(EnvelopeError::InvalidField {
            field: "event_id",
            ..
        })
    ));
    assert_eq!(
        decode("invalid/no-payload.json"),
        Err(EnvelopeError::MissingField("payload"))
    );
    assert!(matches!(
        decode("invalid/version-as-string.json"),
        Err(EnvelopeError::MalformedBody(_))
    ));
    assert!(matches!(
        decode("invalid/not-json.txt"),
        Err(EnvelopeError::MalformedBody(_))
    ));
}

#[test]
fn a_null_payload_is_a_payload_as_the_go_sdk_takes_it() {
    // The Go SDK checks the raw payload's length: `null` passes, a missing one does not.
    let body = r#"{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-03-01T10:00:00Z","payload":null}"#;
    let env = Codec::GoSdk.decode(&Message::new("orders", body)).unwrap();
    assert_eq!(&env.payload[..], b"null");
}

#[test]
fn an_envelope_the_go_format_cannot_hold_fails_to_encode() {
    let not_json = Envelope::new("order:7", "T", 1, &b"plain text"[..]).unwrap();
    let tenant_name = full().with_tenant_id("acme");
    for env in [not_json, tenant_name] {
        let err = Codec::GoSdk.encode(&env, "orders").unwrap_err();
        assert!(
            matches!(
                err,
                Error::MalformedEnvelope(EnvelopeError::InvalidField { .. })
            ),
            "{err}"
        );
    }
}
