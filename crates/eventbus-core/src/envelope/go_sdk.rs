//! The Go SDK's wire format ([`Codec::GoSdk`](super::Codec::GoSdk)), so services on the Go SDK
//! this project replaces and services on this bus share topics.
//!
//! From `github.com/ChenBigdata421/jxt-core`, `sdk/pkg/eventbus/envelope.go` and the
//! `PublishEnvelope` of `kafka.go` and `nats.go`, tag v1.7.5 (read from its source: the Go
//! module proxy of this project's machines refuses the module, so the golden vectors in
//! `crates/eventbus-core/tests/golden/go-sdk/` were written from that source, not produced by
//! it). One JSON object is the message body, fields in this order:
//!
//! | JSON field | envelope field | notes |
//! |---|---|---|
//! | `event_id` | [`event_id`](Envelope::event_id) | required, not blank; also the message id |
//! | `aggregate_id` | [`aggregate_id`](Envelope::aggregate_id) | required: at most 256 of `A-Z a-z 0-9 : _ . / -`; also the message key |
//! | `event_type` | [`event_type`](Envelope::event_type) | required, not blank |
//! | `event_version` | [`event_version`](Envelope::event_version) | a JSON integer above 0, at most `i64::MAX` |
//! | `timestamp` | [`occurred_at`](Envelope::occurred_at) | RFC 3339 with up to 9 fraction digits (Go's `RFC3339Nano`: trailing zeros dropped); any offset read, UTC (`Z`) written |
//! | `trace_id`, `correlation_id` | [`trace_id`](Envelope::trace_id), [`correlation_id`](Envelope::correlation_id) | left out when empty |
//! | `tenant_id` | [`tenant_id`](Envelope::tenant_id) | a JSON integer in v1.7.5 (left out when 0), a string in the versions of 2025-10 to 2026-02: both read; written as an integer, so a tenant id that is not one fails to encode |
//! | `payload` | [`payload`](Envelope::payload) | raw JSON, required: a payload that is not JSON fails to encode |
//!
//! Strings are written as Go writes them (`<`, `>`, `&`, U+2028 and U+2029 escaped); the
//! payload is written as it is (Go compacts it and escapes those characters inside it too:
//! the same JSON, not always the same bytes).
//!
//! Headers: the Go SDK's Kafka producer mirrors the fields in `X-Event-ID`, `X-Aggregate-ID`,
//! `X-Event-Version`, `X-Event-Type` and, when set, `X-Trace-ID`, `X-Correlation-ID`,
//! `X-Tenant-ID`; this codec writes them on every transport (the Go SDK's NATS subscriber
//! reads the body only and ignores headers). Decoding reads the body alone, so both shapes,
//! with and without headers, decode. What the Go format has no field for, the causation id and
//! metadata, travels as this project's headers (`eb-causation-id`, `eb-meta-<name>`), which
//! Go ignores.

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Envelope, header};
use crate::error::{EnvelopeError, Error};
use crate::message::{Headers, Key, Message};

/// The `X-*` headers of the Go SDK's Kafka producer.
pub mod go_header {
    /// Event id.
    pub const EVENT_ID: &str = "X-Event-ID";
    /// Aggregate id.
    pub const AGGREGATE_ID: &str = "X-Aggregate-ID";
    /// Event version, decimal.
    pub const EVENT_VERSION: &str = "X-Event-Version";
    /// Event type.
    pub const EVENT_TYPE: &str = "X-Event-Type";
    /// Trace id, when set.
    pub const TRACE_ID: &str = "X-Trace-ID";
    /// Correlation id, when set.
    pub const CORRELATION_ID: &str = "X-Correlation-ID";
    /// Tenant id, decimal, when set.
    pub const TENANT_ID: &str = "X-Tenant-ID";
}

/// The body as written, fields in the Go struct's order.
#[derive(Serialize)]
struct Body<'a> {
    event_id: &'a str,
    aggregate_id: &'a str,
    event_type: &'a str,
    event_version: i64,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    correlation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<i64>,
    payload: &'a RawValue,
}

/// The body as read: unknown fields are ignored, as Go ignores them.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    aggregate_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_type: Option<Cow<'a, str>>,
    #[serde(default)]
    event_version: Option<i64>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tenant_id: Option<Tenant<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
}

/// A field that is there, `null` included (an `Option` alone reads `null` as absent).
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A tenant id as either shape of the Go SDK writes it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Tenant<'a> {
    Number(i64),
    Text(#[serde(borrow)] Cow<'a, str>),
}

/// Just the aggregate id, for keying a message that arrived without a key.
#[derive(Deserialize)]
struct AggregateOnly<'a> {
    #[serde(borrow)]
    aggregate_id: Cow<'a, str>,
}

/// The aggregate id of a Go SDK body, if it is one and the id is a valid key.
pub(crate) fn aggregate_id(payload: &[u8]) -> Option<Key> {
    let body: AggregateOnly<'_> = serde_json::from_slice(payload).ok()?;
    check_aggregate_id(&body.aggregate_id).ok()?;
    Some(Key::from(body.aggregate_id.as_ref()))
}

/// The Go SDK's rule for aggregate ids (`validateAggregateID`), after trimming.
fn check_aggregate_id(id: &str) -> Result<(), String> {
    let id = id.trim();
    if id.is_empty() {
        return Err("empty".into());
    }
    if id.len() > 256 {
        return Err("longer than 256 characters".into());
    }
    match id
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.' | '/')))
    {
        Some(c) => Err(format!("{c:?} is not one of A-Z a-z 0-9 : _ . / -")),
        None => Ok(()),
    }
}

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::InvalidField {
        field,
        value: value.chars().take(64).collect(),
        reason: reason.into(),
    }
}

/// Go's `RFC3339Nano` of a UTC time: the fraction without trailing zeros, none if zero.
fn go_timestamp(at: SystemTime) -> String {
    let nanos = humantime::format_rfc3339_nanos(at).to_string();
    // `2023-11-14T22:13:20.123456789Z`: trim the fraction's trailing zeros.
    let Some((whole, fraction)) = nanos.trim_end_matches('Z').split_once('.') else {
        return nanos;
    };
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{whole}Z")
    } else {
        format!("{whole}.{fraction}Z")
    }
}

/// Writes strings as Go's `encoding/json` does: `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> std::io::Result<()>
    where
        W: ?Sized + std::io::Write,
    {
        let mut rest = fragment;
        while let Some(i) = rest.find(['<', '>', '&', '\u{2028}', '\u{2029}']) {
            writer.write_all(&rest.as_bytes()[..i])?;
            let c = rest[i..].chars().next().expect("found a char");
            write!(writer, "\\u{:04x}", c as u32)?;
            rest = &rest[i + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

/// The message carrying `env` on `topic` in the Go SDK's format.
pub(crate) fn encode(env: &Envelope, topic: &str) -> Result<Message, Error> {
    let payload_text =
        std::str::from_utf8(&env.payload).map_err(|e| EnvelopeError::InvalidField {
            field: "payload",
            value: String::new(),
            reason: format!("the Go SDK's payload is JSON: {e}"),
        })?;
    let payload: &RawValue = serde_json::from_str(payload_text).map_err(|e| {
        invalid(
            "payload",
            payload_text,
            format!("the Go SDK's payload is JSON: {e}"),
        )
    })?;
    let event_version = i64::try_from(env.event_version.get()).map_err(|_| {
        invalid(
            "event_version",
            &env.event_version.to_string(),
            "above the Go SDK's int64",
        )
    })?;
    let tenant_id = env
        .tenant_id
        .as_deref()
        .map(|t| {
            t.parse::<i64>()
                .map_err(|_| invalid("tenant_id", t, "the Go SDK's tenant id is an integer"))
        })
        .transpose()?;
    let timestamp = go_timestamp(env.occurred_at);
    let body = Body {
        event_id: env.event_id.as_str(),
        aggregate_id: env.aggregate_id.as_str(),
        event_type: &env.event_type,
        event_version,
        timestamp: &timestamp,
        trace_id: env.trace_id.as_deref().unwrap_or_default(),
        correlation_id: env.correlation_id.as_deref().unwrap_or_default(),
        tenant_id,
        payload,
    };
    let mut json = Vec::with_capacity(env.payload.len() + 256);
    body.serialize(&mut serde_json::Serializer::with_formatter(
        &mut json,
        GoFormatter,
    ))
    .map_err(|e| invalid("payload", "", e.to_string()))?;

    let mut msg = Message::from_parts(
        env.event_id.clone(),
        topic,
        Some(env.aggregate_id.clone()),
        Headers::default(),
        json,
        env.occurred_at,
    );
    let h = msg.headers_mut();
    h.insert(go_header::EVENT_ID, env.event_id.as_str());
    h.insert(go_header::AGGREGATE_ID, env.aggregate_id.as_str());
    h.insert(go_header::EVENT_VERSION, event_version.to_string());
    h.insert(go_header::EVENT_TYPE, env.event_type.as_str());
    for (name, value) in [
        (go_header::TRACE_ID, &env.trace_id),
        (go_header::CORRELATION_ID, &env.correlation_id),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            h.insert(name, value);
        }
    }
    if let Some(tenant) = tenant_id.filter(|&t| t != 0) {
        h.insert(go_header::TENANT_ID, tenant.to_string());
    }
    if let Some(cause) = &env.causation_id {
        h.insert(header::CAUSATION_ID, cause.as_str());
    }
    for (name, value) in &env.metadata {
        h.insert(format!("{}{name}", header::META_PREFIX), value.as_str());
    }
    Ok(msg)
}

/// The envelope a Go SDK body carries, checked as the Go SDK's `Validate` checks it.
pub(crate) fn decode(msg: &Message) -> Result<Envelope, EnvelopeError> {
    let body: Incoming<'_> = serde_json::from_slice(msg.payload())
        .map_err(|e| EnvelopeError::MalformedBody(e.to_string()))?;
    let required = |field: &'static str, value: Option<Cow<'_, str>>| {
        let value = value.ok_or(EnvelopeError::MissingField(field))?;
        if value.trim().is_empty() {
            return Err(invalid(field, &value, "blank"));
        }
        Ok(value.into_owned())
    };
    let event_id = required("event_id", body.event_id)?;
    let aggregate_id = required("aggregate_id", body.aggregate_id)?;
    check_aggregate_id(&aggregate_id).map_err(|e| invalid("aggregate_id", &aggregate_id, e))?;
    let aggregate_id = aggregate_id.trim();
    if let Some(key) = msg.key()
        && key.as_str() != aggregate_id
    {
        return Err(EnvelopeError::KeyMismatch {
            key: Some(key.as_str().chars().take(64).collect()),
            aggregate_id: aggregate_id.to_owned(),
        });
    }
    let event_type = required("event_type", body.event_type)?;
    let version = body
        .event_version
        .ok_or(EnvelopeError::MissingField("event_version"))?;
    let event_version = u64::try_from(version)
        .ok()
        .and_then(NonZeroU64::new)
        .ok_or_else(|| invalid("event_version", &version.to_string(), "must be positive"))?;
    let timestamp = body
        .timestamp
        .ok_or(EnvelopeError::MissingField("timestamp"))?;
    let occurred_at = parse_timestamp(&timestamp)?;
    // Present is enough, `null` included: the Go SDK's check is on the raw bytes' length.
    let payload = body.payload.ok_or(EnvelopeError::MissingField("payload"))?;
    let optional =
        |value: Option<Cow<'_, str>>| value.filter(|v| !v.is_empty()).map(|v| v.into_owned());
    let tenant_id = match body.tenant_id {
        Some(Tenant::Number(0)) | None => None,
        Some(Tenant::Number(n)) => Some(n.to_string()),
        Some(Tenant::Text(t)) => optional(Some(t)),
    };
    let h = msg.headers();
    Ok(Envelope {
        event_id: event_id.into(),
        aggregate_id: Key::from(aggregate_id),
        event_type,
        event_version,
        occurred_at,
        tenant_id,
        correlation_id: optional(body.correlation_id),
        causation_id: h.get(header::CAUSATION_ID).map(str::to_owned),
        trace_id: optional(body.trace_id),
        metadata: h
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(header::META_PREFIX)
                    .map(|k| (k.to_owned(), v.to_owned()))
            })
            .collect(),
        payload: bytes::Bytes::copy_from_slice(payload.get().as_bytes()),
    })
}

/// An RFC 3339 time with any offset, as Go writes `time.Time` (`2026-03-01T10:00:00.5+08:00`).
fn parse_timestamp(text: &str) -> Result<SystemTime, EnvelopeError> {
    let bad = |reason: String| invalid("timestamp", text, reason);
    // humantime reads UTC (`Z`) only: move an offset into the time itself.
    let (local, offset_secs) = match text.len().checked_sub(6).map(|i| text.split_at(i)) {
        Some((local, offset))
            if (offset.starts_with('+') || offset.starts_with('-'))
                && offset.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: i64 = offset[1..3].parse().map_err(|_| bad("bad offset".into()))?;
            let minutes: i64 = offset[4..6].parse().map_err(|_| bad("bad offset".into()))?;
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (local, sign * (hours * 3600 + minutes * 60))
        }
        _ => (text.strip_suffix('Z').unwrap_or(text), 0),
    };
    let utc = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|e| bad(e.to_string()))?;
    let shift = std::time::Duration::from_secs(offset_secs.unsigned_abs());
    let at = if offset_secs >= 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    };
    at.ok_or_else(|| bad("out of range".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_written_as_go_writes_utc_times() {
        let at = |s, n| SystemTime::UNIX_EPOCH + Duration::new(s, n);
        assert_eq!(
            go_timestamp(at(1_700_000_000, 123_456_789)),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            go_timestamp(at(1_700_000_000, 500_000_000)),
            "2023-11-14T22:13:20.5Z"
        );
        assert_eq!(go_timestamp(at(1_700_000_000, 0)), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn timestamps_with_an_offset_are_read_as_the_same_instant() {
        let utc = parse_timestamp("2023-11-14T22:13:20.5Z").unwrap();
        assert_eq!(parse_timestamp("2023-11-15T06:13:20.5+08:00").unwrap(), utc);
        assert_eq!(parse_timestamp("2023-11-14T17:13:20.5-05:00").unwrap(), utc);
        assert!(matches!(
            parse_timestamp("yesterday"),
            Err(EnvelopeError::InvalidField {
                field: "timestamp",
                ..
            })
        ));
    }

    #[test]
    fn strings_escape_what_go_escapes() {
        let mut out = Vec::new();
        "a<b>&\u{2028}é"
            .serialize(&mut serde_json::Serializer::with_formatter(
                &mut out,
                GoFormatter,
            ))
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\u003cb\\u003e\\u0026\\u2028é\""
        );
    }

    #[test]
    fn aggregate_ids_follow_the_go_sdks_rule() {
        assert!(check_aggregate_id("order:7/a_b-c.d").is_ok());
        assert!(check_aggregate_id(&"a".repeat(256)).is_ok());
        assert!(check_aggregate_id(&"a".repeat(257)).is_err());
        assert!(check_aggregate_id("a b").is_err());
        assert!(check_aggregate_id("  ").is_err());
    }
}
