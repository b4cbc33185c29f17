//! Delivery: what is published arrives intact, exactly once and in key order: publish and
//! subscribe, per-key order, topic isolation, messages kept for later groups, publish confirms,
//! envelopes (checks 1, 9, 11, 14, 26, 27).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use eventbus_core::{Envelope, Error, Message};
use tokio::task::JoinSet;

use super::helpers::{lock, set};
use crate::conformance::support::{
    Counter, ID_HEADER, OrderLog, Record, assert_exactly_once, assert_key_order, assert_lag,
    close_bus, close_subs, handler, id_of, ids, join_all, key_seq, keyed, message, publish_all,
    recorder, subscribe, user_headers,
};
use crate::conformance::{Harness, unique};

// 1 ------------------------------------------------------------------------------------------

/// Check 1, `publish_subscribe`: a subscriber receives each of 100 published messages exactly once,
/// with its message id, topic, key (or no key), payload (arbitrary bytes, NUL and 0xFF
/// included) and headers (names and values exactly as sent) intact.
pub async fn publish_subscribe(h: &Harness) {
    let n = h.count(100);
    let topic = unique("publish-subscribe");
    let group = unique("g");
    let bus = h.bus().await;
    let rec = Arc::new(Record::default());
    let sub = subscribe(&bus, &topic, &group, recorder(&rec)).await;

    let mut sent = BTreeMap::new();
    let mut batch = Vec::new();
    for i in 0..n {
        let id = format!("ps-{i}");
        let mut payload = format!("payload {i}: ").into_bytes();
        payload.extend_from_slice(&[0, 1, 0xfe, 0xff, b'\n', b'\r']);
        let mut m = Message::new(topic.as_str(), payload)
            .with_header(ID_HEADER, id.as_str())
            .with_header("x-seq", i.to_string())
            .with_header(
                "x-text",
                format!("a value with spaces, colons: and = signs #{i}"),
            );
        if i % 10 != 0 {
            m = m.with_key(format!("key-{}", i % 7));
        }
        sent.insert(id, m.clone());
        batch.push(m);
    }
    publish_all(h, &bus, batch).await;
    rec.wait_for(h, n, "every published message").await;
    close_subs(h, vec![sub]).await;

    let expected = set(sent.keys().cloned());
    assert_exactly_once("publish_subscribe", &expected, &rec.ids());
    for got in rec.messages() {
        let id = id_of(&got);
        let want = &sent[&id];
        assert_eq!(
            got.id(),
            want.id(),
            "{id}: message id (left: got, right: sent)"
        );
        assert_eq!(
            got.topic(),
            want.topic(),
            "{id}: topic (left: got, right: sent)"
        );
        assert_eq!(got.key(), want.key(), "{id}: key (left: got, right: sent)");
        assert_eq!(
            got.payload(),
            want.payload(),
            "{id}: payload (left: got, right: sent)"
        );
        assert_eq!(
            user_headers(&got),
            user_headers(want),
            "{id}: headers but trace context (left: got, right: sent)"
        );
    }
    assert_lag(h, &bus, &topic, &group, 0).await;
    close_bus(h, &bus).await;
}

// 9 ------------------------------------------------------------------------------------------

/// Check 9, `publish_subscribe_in_order`: 1,000 messages over 16 keys, published by 4 concurrent
/// publishers (each owning 4 keys, alternating single publishes and batches), consumed by 4
/// groups at once, each through a subscription whose handler calls run concurrently across
/// keys (and yield a varying number of times): every group handles each key's messages in
/// publish order, one at a time, exactly once. Where the transport declares key affinity, each
/// group has 3 members on 3 buses and the order must hold across them; without it, per-key
/// order is promised within one subscription only, so each group has one.
pub async fn publish_subscribe_in_order(h: &Harness) {
    const KEYS: usize = 16;
    const GROUPS: usize = 4;
    let per_key = h.count(1000).div_ceil(KEYS);
    let members = if h.capabilities().key_affinity { 3 } else { 1 };
    let topic = unique("in-order");
    let bus = h.bus().await;
    let mut buses = vec![bus.clone()];
    for _ in 1..members {
        buses.push(h.bus().await);
    }

    let mut logs = Vec::new();
    let mut subs = Vec::new();
    for g in 0..GROUPS {
        let group = unique(&format!("g{g}"));
        let log = Arc::new(OrderLog::default());
        for (m, member_bus) in buses.iter().enumerate() {
            let sub = subscribe(
                member_bus,
                &topic,
                &group,
                handler(&log, move |log, d| async move {
                    let start = log.tick();
                    let spins = key_seq(d.message()).map_or(0, |(_, seq)| seq % 4);
                    for _ in 0..spins {
                        tokio::task::yield_now().await;
                    }
                    log.finish(m, &d, start);
                    Ok(())
                }),
            )
            .await;
            subs.push(sub);
        }
        logs.push((group, log));
    }

    let mut publishing = JoinSet::new();
    for p in 0..KEYS / 4 {
        let (bus, topic) = (bus.clone(), topic.clone());
        publishing.spawn(async move {
            for seq in 0..per_key as u64 {
                let batch: Vec<Message> = (0..4)
                    .map(|k| {
                        let key = format!("key-{}", p * 4 + k);
                        keyed(&topic, &format!("{key}-{seq}"), &key, seq)
                    })
                    .collect();
                let result = if seq % 2 == 0 {
                    bus.publish_batch(batch).await
                } else {
                    let mut result = Ok(());
                    for m in batch {
                        result = result.and(bus.publish(m).await);
                    }
                    result
                };
                if let Err(e) = result {
                    panic!("publishing position {seq} of publisher {p}: expected Ok, got {e:?}");
                }
            }
        });
    }
    join_all(h, "4 concurrent publishers", publishing).await;
    let total = KEYS * per_key;
    for (group, log) in &logs {
        log.count
            .wait_for(h, total, &format!("every message in group {group}"))
            .await;
    }
    close_subs(h, subs).await;

    let per_key_counts: BTreeMap<String, u64> = (0..KEYS)
        .map(|k| (format!("key-{k}"), per_key as u64))
        .collect();
    for (group, log) in &logs {
        assert_key_order(&format!("group {group}"), &per_key_counts, &log.calls());
    }
    for b in &buses {
        close_bus(h, b).await;
    }
}

// 11 -----------------------------------------------------------------------------------------

/// Check 11, `topic_isolation`: two topics whose names overlap (`t` and `t.inner`: one is a prefix of
/// the other in a dotted hierarchy), each subscribed by a group of the same name, with messages
/// published interleaved: each subscription receives exactly its own topic's messages.
pub async fn topic_isolation(h: &Harness) {
    let n = h.count(100);
    let outer = unique("topic-isolation");
    let inner = format!("{outer}.inner");
    let group = unique("g");
    let bus = h.bus().await;
    let rec_outer = Arc::new(Record::default());
    let rec_inner = Arc::new(Record::default());
    let subs = vec![
        subscribe(&bus, &outer, &group, recorder(&rec_outer)).await,
        subscribe(&bus, &inner, &group, recorder(&rec_inner)).await,
    ];
    let mut messages = Vec::new();
    for i in 0..n {
        messages.push(keyed(&outer, &format!("outer-{i}"), "k", i as u64));
        messages.push(keyed(&inner, &format!("inner-{i}"), "k", i as u64));
    }
    let want_outer = set((0..n).map(|i| format!("outer-{i}")));
    let want_inner = set((0..n).map(|i| format!("inner-{i}")));
    publish_all(h, &bus, messages).await;
    rec_outer
        .wait_for(h, n, "every message of the outer topic")
        .await;
    rec_inner
        .wait_for(h, n, "every message of the inner topic")
        .await;
    close_subs(h, subs).await;

    assert_exactly_once(&format!("topic {outer}"), &want_outer, &rec_outer.ids());
    assert_exactly_once(&format!("topic {inner}"), &want_inner, &rec_inner.ids());
    close_bus(h, &bus).await;
}

// 14 -----------------------------------------------------------------------------------------

/// Check 14, `new_subscriber_receives_old_messages`: messages published before any group subscribed
/// are kept by the broker: a new group, subscribing on a new bus (another process) after the
/// publishing bus closed, reads all of them from the start, exactly once. On persistent
/// transports, another group created after the first acked everything still reads them all from
/// the start (a transport without persistence keeps messages only until every group that
/// exists has acked them).
pub async fn new_subscriber_receives_old_messages(h: &Harness) {
    let n = h.count(100);
    let topic = unique("old-messages");
    let publisher = h.bus().await;
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            keyed(
                &topic,
                &format!("old-{i}"),
                &format!("k{}", i % 10),
                i as u64,
            )
        })
        .collect();
    let expected = ids(&messages);
    publish_all(h, &publisher, messages).await;
    close_bus(h, &publisher).await;

    let mut groups = vec![unique("first")];
    if h.capabilities().persistent {
        groups.push(unique("later"));
    }
    let bus = h.bus().await;
    for (i, group) in groups.iter().enumerate() {
        let rec = Arc::new(Record::default());
        let sub = subscribe(&bus, &topic, group, recorder(&rec)).await;
        let what = if i == 0 {
            "every old message in the first group"
        } else {
            "every old message in a group created after the first acked them all"
        };
        rec.wait_for(h, n, what).await;
        close_subs(h, vec![sub]).await;
        assert_exactly_once(&format!("group {group}"), &expected, &rec.ids());
        assert_lag(h, &bus, &topic, group, 0).await;
    }
    close_bus(h, &bus).await;
}

// 26 -----------------------------------------------------------------------------------------

/// Check 26, `publish_confirms`: a publish (single, batch or envelope) returns only once the broker
/// has the message: the publishing bus is closed right after the last publish returns, and a
/// new group on another bus then receives every confirmed message, exactly once. A publish that
/// fails is an error to the caller and nothing of it reaches the broker: on the closed bus,
/// `publish`, `publish_batch`, `publish_envelope` and `subscribe` return `Error::Closed`, and
/// those messages are never delivered.
pub async fn publish_confirms(h: &Harness) {
    let n = h.count(100);
    let topic = unique("publish-confirms");
    let publisher = h.bus().await;
    let singles: Vec<Message> = (0..n / 2)
        .map(|i| {
            keyed(
                &topic,
                &format!("pcf-{i}"),
                &format!("k{}", i % 5),
                i as u64,
            )
        })
        .collect();
    let batch: Vec<Message> = (n / 2..n)
        .map(|i| {
            keyed(
                &topic,
                &format!("pcf-{i}"),
                &format!("k{}", i % 5),
                i as u64,
            )
        })
        .collect();
    let envelope = Envelope::new("agg-1", "Confirmed", 1, "{}").expect("a valid envelope");
    let mut expected = ids(&singles);
    expected.extend(ids(&batch));
    expected.insert("envelope agg-1/1".to_owned());
    publish_all(h, &publisher, singles).await;
    if let Err(e) = h
        .within("publish_batch", publisher.publish_batch(batch))
        .await
    {
        panic!("publish_batch: expected Ok, got {e:?}");
    }
    if let Err(e) = h
        .within(
            "publish_envelope",
            publisher.publish_envelope(&topic, &envelope),
        )
        .await
    {
        panic!("publish_envelope: expected Ok, got {e:?}");
    }
    close_bus(h, &publisher).await;

    match publisher.publish(message(&topic, "refused-single")).await {
        Err(Error::Closed) => {}
        other => panic!("publish on a closed bus: expected Err(Closed), got {other:?}"),
    }
    match publisher
        .publish_batch(vec![message(&topic, "refused-batch")])
        .await
    {
        Err(Error::Closed) => {}
        other => panic!("publish_batch on a closed bus: expected Err(Closed), got {other:?}"),
    }
    let refused = Envelope::new("agg-1", "Refused", 2, "{}").expect("a valid envelope");
    match publisher.publish_envelope(&topic, &refused).await {
        Err(Error::Closed) => {}
        other => panic!("publish_envelope on a closed bus: expected Err(Closed), got {other:?}"),
    }
    let rec = Arc::new(Record::default());
    match publisher
        .subscribe(&topic, &unique("g"), recorder(&rec))
        .await
    {
        Err(Error::Closed) => {}
        other => panic!("subscribe on a closed bus: expected Err(Closed), got {other:?}"),
    }

    let consumer = h.bus().await;
    let group = unique("g");
    let sub = subscribe(&consumer, &topic, &group, recorder(&rec)).await;
    rec.wait_for(h, expected.len(), "every confirmed message")
        .await;
    close_subs(h, vec![sub]).await;
    let got: Vec<String> = rec
        .messages()
        .iter()
        .map(|m| match Envelope::from_message(m) {
            Ok(e) if m.headers().get(ID_HEADER).is_none() => {
                format!("envelope {}/{}", e.aggregate_id, e.event_version)
            }
            _ => id_of(m),
        })
        .collect();
    assert_exactly_once("publish_confirms", &expected, &got);
    assert_lag(h, &consumer, &topic, &group, 0).await;
    close_bus(h, &consumer).await;
}

// 27 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Envelopes {
    got: Mutex<Vec<Result<Envelope, String>>>,
    count: Counter,
}

/// Check 27, `envelope_roundtrip`: envelopes of 20 aggregates × 10 versions, published with
/// `publish_envelope`, arrive with every field intact (aggregate id, also as the message key;
/// event type; version; occurrence time to the nanosecond; correlation, causation and trace
/// ids; metadata, including values with spaces, punctuation, non-ASCII text and empty values;
/// payload), minimal envelopes (no optional field, empty payload) too, and each aggregate's
/// versions arrive in order, exactly once.
pub async fn envelope_roundtrip(h: &Harness) {
    let aggregates = h.count(20);
    let versions = 10u64;
    let topic = unique("envelopes");
    let group = unique("g");
    let bus = h.bus().await;
    let st = Arc::new(Envelopes::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&st, |st, d| async move {
            let got = d
                .envelope()
                .map_err(|e| format!("{}: {e}", d.message().id()));
            let got = got.and_then(|e| {
                if d.message().key() == Some(&e.aggregate_id) {
                    Ok(e)
                } else {
                    Err(format!(
                        "message key {:?} is not the aggregate id {:?}",
                        d.message().key(),
                        e.aggregate_id
                    ))
                }
            });
            lock(&st.got).push(got);
            st.count.add();
            Ok(())
        }),
    )
    .await;

    let mut sent = BTreeMap::new();
    for v in 1..=versions {
        for a in 0..aggregates {
            let id = format!("order-{a}");
            let payload = if a % 3 == 2 {
                String::new()
            } else {
                format!(r#"{{"aggregate":{a},"version":{v},"text":"naïve ☕"}}"#)
            };
            let mut env = Envelope::new(id.as_str(), format!("Step{v}Happened"), v, payload)
                .expect("a valid envelope")
                .with_occurred_at(
                    UNIX_EPOCH
                        + Duration::new(1_700_000_000 + a as u64 * 100 + v, 123_456_789 + v as u32),
                );
            if a % 3 != 2 {
                env = env
                    .with_correlation_id(format!("corr-{a}"))
                    .with_causation_id(format!("cause-{a}-{}", v - 1))
                    .with_trace_id(format!("trace-{a}-{v}"))
                    .with_metadata("tenant", "acme")
                    .with_metadata("note", "a value with spaces: and = signs, \"quotes\"")
                    .with_metadata("unicode", "café ☕")
                    .with_metadata("empty", "");
            }
            if let Err(e) = h
                .within("publish_envelope", bus.publish_envelope(&topic, &env))
                .await
            {
                panic!("publish_envelope {id} v{v}: expected Ok, got {e:?}");
            }
            sent.insert((id, v), env);
        }
    }
    st.count.wait_for(h, sent.len(), "every envelope").await;
    close_subs(h, vec![sub]).await;

    let got = lock(&st.got).clone();
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for g in &got {
        let env = match g {
            Ok(env) => env,
            Err(e) => panic!("an envelope did not survive: {e}"),
        };
        let key = (
            env.aggregate_id.as_str().to_owned(),
            env.event_version.get(),
        );
        match sent.get(&key) {
            Some(want) => assert_eq!(env, want, "envelope {key:?} (left: got, right: sent)"),
            None => panic!("unexpected envelope {key:?}: {env:?}"),
        }
        order.entry(key.0).or_default().push(key.1);
    }
    let want: Vec<u64> = (1..=versions).collect();
    for a in 0..aggregates {
        let id = format!("order-{a}");
        let seen = order.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            seen, want,
            "{id}: versions in arrival order (left: got, right: expected)"
        );
    }
    assert_eq!(got.len(), sent.len(), "envelopes delivered");
    assert_lag(h, &bus, &topic, &group, 0).await;
    close_bus(h, &bus).await;
}
