//! Input: invalid topics, keys, groups, sizes and envelopes refused with typed errors, and
//! malformed envelopes on the wire (check 25). Reserved headers (check 31) and arbitrary input
//! are checked in the `headers` and `arbitrary` modules of `conformance`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use eventbus_core::envelope::header;
use eventbus_core::{Envelope, EnvelopeError, Error, Limits, Message};

use super::helpers::lock;
use crate::conformance::support::{
    ID_HEADER, Record, assert_exactly_once, assert_lag, close_bus, close_subs, handler, id_of, ids,
    message, publish_all, recorder, subscribe,
};
use crate::conformance::{Harness, unique};

// 25 -----------------------------------------------------------------------------------------

type Decoded = Mutex<BTreeMap<String, Result<Envelope, EnvelopeError>>>;

/// Check 25, `bad_input`: invalid topic names, keys and group names, oversized messages (payload or
/// headers) and batches holding one invalid message all fail with their typed error before
/// anything reaches the broker; so do invalid envelopes at construction. Malformed envelopes on
/// the wire (an `eb-schema` header with a bad version, an unknown schema, missing headers, a key
/// that is not the aggregate id) are delivered as messages, and `Delivery::envelope()` gives the
/// typed `EnvelopeError` for each. Valid messages published afterwards are delivered: the
/// subscriber receives exactly the valid messages, each once. (A broker that is down is not
/// simulated here: the harness can only restart it, see `reconnect`.)
pub async fn bad_input(h: &Harness) {
    let topic = unique("bad-input");
    let group = unique("g");
    let mut opts = Harness::default_options();
    opts.limits = Limits::default().max_message_bytes(1024);
    let bus = h.bus_with(opts).await;
    let decoded: Arc<Decoded> = Arc::default();
    let rec = Arc::new(Record::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&rec, {
            let decoded = Arc::clone(&decoded);
            move |rec, d| {
                let decoded = Arc::clone(&decoded);
                async move {
                    lock(&decoded).insert(id_of(d.message()), d.envelope());
                    rec.push(&d);
                    Ok(())
                }
            }
        }),
    )
    .await;

    let long_topic = "t".repeat(250);
    for bad in [
        "",
        "a b",
        "a..b",
        ".a",
        "a.",
        "orders.*",
        "orders.>",
        "ä",
        "a/b",
        &long_topic,
    ] {
        match bus.publish(message(bad, "x").with_key("k")).await {
            Err(Error::InvalidTopic { topic: t, .. }) if t == bad => {}
            other => {
                panic!("publishing to topic {bad:?}: expected Err(InvalidTopic), got {other:?}")
            }
        }
        match bus.subscribe(bad, &group, recorder(&rec)).await {
            Err(Error::InvalidTopic { topic: t, .. }) if t == bad => {}
            other => {
                panic!("subscribing to topic {bad:?}: expected Err(InvalidTopic), got {other:?}")
            }
        }
    }
    let long_key = "k".repeat(257);
    for bad in ["", "a b", "ä", "k*", &long_key] {
        match bus.publish(message(&topic, "x").with_key(bad)).await {
            Err(Error::InvalidKey { key, .. }) if key == bad => {}
            other => panic!("publishing with key {bad:?}: expected Err(InvalidKey), got {other:?}"),
        }
        match Envelope::new(bad, "Happened", 1, "{}") {
            Err(Error::InvalidKey { .. }) => {}
            other => panic!(
                "an envelope with aggregate id {bad:?}: expected Err(InvalidKey), got {other:?}"
            ),
        }
    }
    let long_group = "g".repeat(129);
    for bad in ["", "bad.group", "a b", "g*", &long_group] {
        match bus.subscribe(&topic, bad, recorder(&rec)).await {
            Err(Error::InvalidGroup { group: g, .. }) if g == bad => {}
            other => {
                panic!("subscribing as group {bad:?}: expected Err(InvalidGroup), got {other:?}")
            }
        }
        match bus.lag(&topic, bad).await {
            Err(Error::InvalidGroup { .. }) => {}
            other => panic!("lag of group {bad:?}: expected Err(InvalidGroup), got {other:?}"),
        }
    }
    match Envelope::new("agg-1", "Happened", 0, "{}") {
        Err(Error::MalformedEnvelope(EnvelopeError::InvalidHeader {
            header: "eb-event-version",
            ..
        })) => {}
        other => panic!(
            "an envelope of version 0: expected Err(MalformedEnvelope(InvalidHeader)), got {other:?}"
        ),
    }
    let big = message(&topic, "big").with_key("k");
    let big = Message::from_parts(
        big.id().clone(),
        big.topic(),
        big.key().cloned(),
        big.headers().clone(),
        vec![0u8; 2000],
        big.timestamp(),
    );
    let size = big.encoded_len();
    match bus.publish(big).await {
        Err(Error::PayloadTooLarge {
            size: s,
            limit: 1024,
        }) if s == size => {}
        other => panic!(
            "a {size}-byte message over a 1024-byte limit: expected Err(PayloadTooLarge), got {other:?}"
        ),
    }
    let heavy = message(&topic, "heavy")
        .with_key("k")
        .with_header("h", "v".repeat(1024));
    match bus.publish(heavy).await {
        Err(Error::PayloadTooLarge { .. }) => {}
        other => {
            panic!("a message with 1 KiB of headers: expected Err(PayloadTooLarge), got {other:?}")
        }
    }
    let batch = vec![
        message(&topic, "batch-ok-1").with_key("k"),
        message(&topic, "batch-bad").with_key("bad key"),
        message(&topic, "batch-ok-2").with_key("k"),
    ];
    match bus.publish_batch(batch).await {
        Err(Error::InvalidKey { .. }) => {}
        other => panic!("a batch holding an invalid key: expected Err(InvalidKey), got {other:?}"),
    }

    // Malformed envelopes on the wire.
    let valid = Envelope::new("agg-1", "Happened", 3, r#"{"n":1}"#).expect("a valid envelope");
    // Each message its own event (an envelope's event id is its message id).
    let corrupt = |id: &str, change: fn(&mut Message)| {
        let mut m = valid
            .clone()
            .with_event_id(id)
            .to_message(topic.as_str())
            .with_header(ID_HEADER, id);
        change(&mut m);
        m
    };
    let wire = vec![
        corrupt("bad-version", |m| {
            m.headers_mut().insert(header::EVENT_VERSION, "three");
        }),
        corrupt("unknown-schema", |m| {
            m.headers_mut().insert(header::SCHEMA, "2");
        }),
        corrupt("missing-type", |m| {
            m.headers_mut().remove(header::EVENT_TYPE);
        }),
        corrupt("key-mismatch", |m| {
            *m = m.clone().with_key("agg-2");
        }),
        valid
            .clone()
            .with_event_id("valid-envelope")
            .to_message(topic.as_str())
            .with_header(ID_HEADER, "valid-envelope"),
        message(&topic, "valid-plain").with_key("k"),
    ];
    let expected = ids(&wire);
    publish_all(h, &bus, wire).await;
    rec.wait_for(h, expected.len(), "the valid messages").await;
    close_subs(h, vec![sub]).await;
    assert_exactly_once(
        "bad_input: only valid messages arrive",
        &expected,
        &rec.ids(),
    );

    {
        let decoded = lock(&decoded);
        let check = |id: &str, ok: bool, what: &str| {
            assert!(
                ok,
                "{id}: Delivery::envelope() expected {what}, got {:?}",
                decoded.get(id)
            );
        };
        check(
            "bad-version",
            matches!(
                decoded.get("bad-version"),
                Some(Err(EnvelopeError::InvalidHeader {
                    header: "eb-event-version",
                    ..
                }))
            ),
            "Err(InvalidHeader { header: \"eb-event-version\", .. })",
        );
        check(
            "unknown-schema",
            matches!(decoded.get("unknown-schema"), Some(Err(EnvelopeError::UnsupportedSchema(s))) if s == "2"),
            "Err(UnsupportedSchema(\"2\"))",
        );
        check(
            "missing-type",
            matches!(
                decoded.get("missing-type"),
                Some(Err(EnvelopeError::MissingHeader("eb-event-type")))
            ),
            "Err(MissingHeader(\"eb-event-type\"))",
        );
        check(
            "key-mismatch",
            matches!(
                decoded.get("key-mismatch"),
                Some(Err(EnvelopeError::KeyMismatch { .. }))
            ),
            "Err(KeyMismatch { .. })",
        );
        check(
            "valid-envelope",
            matches!(decoded.get("valid-envelope"), Some(Ok(e)) if *e == valid.clone().with_event_id("valid-envelope")),
            "Ok(the envelope sent)",
        );
        check(
            "valid-plain",
            matches!(
                decoded.get("valid-plain"),
                Some(Err(EnvelopeError::MissingHeader("eb-schema")))
            ),
            "Err(MissingHeader(\"eb-schema\")) for a plain message",
        );
    }
    assert_lag(h, &bus, &topic, &group, 0).await;
    close_bus(h, &bus).await;
}
