//! Groups: subscriptions sharing a topic's messages: concurrent subscribers, consumer groups,
//! scale-out over buses (checks 2, 3, 16, 28).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use eventbus_core::{Error, Message};
use tokio::task::JoinSet;

use super::helpers::{publish_batch, set};
use crate::conformance::support::{
    Counter, Gate, OrderLog, Record, assert_disjoint, assert_exactly_once,
    assert_increasing_per_key, assert_key_order, assert_lag, bounded, close_bus, close_subs,
    handler, id_of, ids, join_all, keyed, publish_all, recorder, subscribe,
};
use crate::conformance::{Harness, unique};

// 2 ------------------------------------------------------------------------------------------

/// Check 2, `concurrent_subscribe`: 50 subscriptions of one group (subscribed concurrently) share
/// 5,000 messages sent by 50 concurrent publishers: the group handles every message exactly
/// once.
pub async fn concurrent_subscribe(h: &Harness) {
    let publishers = h.count(50);
    let subscribers = h.count(50);
    let per_publisher = h.count(5000) / publishers;
    let topic = unique("concurrent-subscribe");
    let group = unique("g");
    let bus = h.bus().await;
    let rec = Arc::new(Record::default());

    let mut subscribing = JoinSet::new();
    for _ in 0..subscribers {
        let (bus, topic, group, handler) =
            (bus.clone(), topic.clone(), group.clone(), recorder(&rec));
        subscribing.spawn(async move { subscribe(&bus, &topic, &group, handler).await });
    }
    let subs = join_all(h, "50 concurrent subscribes", subscribing).await;

    let mut expected = BTreeSet::new();
    let mut publishing = JoinSet::new();
    for p in 0..publishers {
        let messages: Vec<Message> = (0..per_publisher)
            .map(|i| {
                keyed(
                    &topic,
                    &format!("cs-{p}-{i}"),
                    &format!("p{p}-k{}", i % 4),
                    i as u64,
                )
            })
            .collect();
        expected.extend(ids(&messages));
        let bus = bus.clone();
        publishing.spawn(async move {
            for m in messages {
                let id = id_of(&m);
                if let Err(e) = bus.publish(m).await {
                    panic!("publishing {id}: expected Ok, got {e:?}");
                }
            }
        });
    }
    join_all(h, "50 concurrent publishers", publishing).await;
    rec.wait_for(h, expected.len(), "every message, handled by the group")
        .await;
    close_subs(h, subs).await;

    assert_exactly_once("concurrent_subscribe", &expected, &rec.ids());
    assert_lag(h, &bus, &topic, &group, 0).await;
    close_bus(h, &bus).await;
}

// 3 ------------------------------------------------------------------------------------------

/// Check 3, `concurrent_subscribe_multiple_topics`: 20 topics, each with its own subscription (all in
/// one group name) and its own concurrent publisher of 100 messages: each subscription receives
/// exactly its own topic's messages, each exactly once.
pub async fn concurrent_subscribe_multiple_topics(h: &Harness) {
    let topics = h.count(20);
    let per_topic = h.count(100);
    let base = unique("multi-topic");
    let group = unique("g");
    let bus = h.bus().await;

    let mut subs = Vec::new();
    let mut recs = Vec::new();
    let mut expected = Vec::new();
    let mut publishing = JoinSet::new();
    for t in 0..topics {
        let topic = format!("{base}.t{t}");
        let rec = Arc::new(Record::default());
        subs.push(subscribe(&bus, &topic, &group, recorder(&rec)).await);
        recs.push(rec);
        let messages: Vec<Message> = (0..per_topic)
            .map(|i| {
                keyed(
                    &topic,
                    &format!("t{t}-{i}"),
                    &format!("k{}", i % 5),
                    i as u64,
                )
            })
            .collect();
        expected.push((topic, ids(&messages)));
        let bus = bus.clone();
        publishing.spawn(async move {
            for m in messages {
                let id = id_of(&m);
                if let Err(e) = bus.publish(m).await {
                    panic!("publishing {id}: expected Ok, got {e:?}");
                }
            }
        });
    }
    join_all(h, "concurrent publishers", publishing).await;
    for ((topic, want), rec) in expected.iter().zip(&recs) {
        rec.wait_for(h, want.len(), &format!("every message of {topic}"))
            .await;
    }
    close_subs(h, subs).await;

    for ((topic, want), rec) in expected.iter().zip(&recs) {
        assert_exactly_once(&format!("topic {topic}"), want, &rec.ids());
        for m in rec.messages() {
            assert_eq!(
                m.topic(),
                topic,
                "{}: topic of a delivered message",
                id_of(&m)
            );
        }
    }
    close_bus(h, &bus).await;
}

// 16 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Members {
    started: [Counter; 2],
    both: Gate,
    got: [Record; 2],
    total: Counter,
}

/// Check 16, `consumer_groups`: with consumer groups, two groups each receive every message exactly
/// once, and the two members of one group (on two buses with `max_buffered` 1) share the
/// group's messages: each gets some, together they get each message exactly once. A member's
/// handler waits until the other member has a message too, so sharing is observed, not hoped
/// for: the first wave is only 3 messages, since a member may hold at most what its bus
/// admits (1) plus one prefetch of at most that (`SubscribeRequest::max_buffered`), so the
/// third must reach the other member (with key affinity, sharing follows the key assignment,
/// so every message is in the first wave). Without consumer groups, subscribing a second group
/// to a topic must fail with `Error::Unsupported`.
pub async fn consumer_groups(h: &Harness) {
    let topic = unique("consumer-groups");
    let (solo, shared) = (unique("solo"), unique("shared"));
    let bus = h.bus().await;
    let rec = Arc::new(Record::default());
    let sub = subscribe(&bus, &topic, &solo, recorder(&rec)).await;
    if !h.capabilities().consumer_groups {
        let second = bus.subscribe(&topic, &shared, recorder(&rec)).await;
        let unsupported = matches!(second, Err(Error::Unsupported { .. }));
        let got = format!("{second:?}");
        drop(second);
        close_subs(h, vec![sub]).await;
        close_bus(h, &bus).await;
        assert!(
            unsupported,
            "{}: consumer_groups is not declared, so subscribing a second group must fail with Error::Unsupported; got {got}",
            h.name()
        );
        return;
    }

    let n = h.count(200);
    let st = Arc::new(Members::default());
    let member_buses = vec![
        h.bus_with(bounded(1, 1)).await,
        h.bus_with(bounded(1, 1)).await,
    ];
    let mut subs = vec![sub];
    for (m, member_bus) in member_buses.iter().enumerate() {
        subs.push(
            subscribe(
                member_bus,
                &topic,
                &shared,
                handler(&st, move |st, d| async move {
                    st.started[m].add();
                    if st.started[0].get() > 0 && st.started[1].get() > 0 {
                        st.both.open();
                    }
                    st.both.wait().await;
                    st.got[m].push(&d);
                    st.total.add();
                    Ok(())
                }),
            )
            .await,
        );
    }
    let mut messages: Vec<Message> = (0..n)
        .map(|i| keyed(&topic, &format!("cg-{i}"), &format!("k{i}"), 0))
        .collect();
    let expected = ids(&messages);
    let wave = if h.capabilities().key_affinity { n } else { 3 };
    let rest = messages.split_off(wave.min(n));
    // One batch, so the whole wave is there when a member first looks.
    publish_batch(h, &bus, messages).await;
    h.within(
        &format!(
            "both members of the shared group to hold a message at once, after {wave} messages (a member whose bus admits 1 message may hold at most 2: members of a group share its messages)"
        ),
        st.both.wait(),
    )
    .await;
    publish_all(h, &bus, rest).await;
    rec.wait_for(h, n, "every message in the solo group").await;
    st.total
        .wait_for(h, n, "every message in the shared group")
        .await;
    close_subs(h, subs).await;

    assert_exactly_once(&format!("group {solo}"), &expected, &rec.ids());
    let (a, b) = (st.got[0].ids(), st.got[1].ids());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "expected both members of the shared group to get messages, got {} and {}",
        a.len(),
        b.len()
    );
    assert_disjoint(
        "both members of the shared group",
        &set(a.clone()),
        &set(b.clone()),
    );
    let union: Vec<String> = a.into_iter().chain(b).collect();
    assert_exactly_once(&format!("group {shared} (both members)"), &expected, &union);
    assert_lag(h, &bus, &topic, &solo, 0).await;
    assert_lag(h, &bus, &topic, &shared, 0).await;
    close_bus(h, &bus).await;
    for b in &member_buses {
        close_bus(h, b).await;
    }
}

// 28 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct ScaleOut {
    started: [Counter; 2],
    both: Gate,
    log: OrderLog,
}

/// Check 28, `scale_out`: two buses (two processes on one broker) subscribe to one topic in one
/// group and share its 2,000 messages: each bus handles some, together they handle each
/// exactly once. Sharing is observed, not hoped for: a bus's handler waits until the other bus
/// has a message too, and the first wave is 17 messages, since a bus with `max_buffered` 8 may
/// hold at most 8 admitted plus one prefetch of at most 8 (`SubscribeRequest::max_buffered`),
/// so the 17th must reach the other bus (with key affinity, sharing follows the key
/// assignment, so every message is in the first wave).
///
/// The order promise tested depends on the transport: with key affinity (all messages of a key
/// go to one member), each key's messages are handled in publish order, one at a time, across
/// both buses; memory, NATS (keyed groups, its default) and Kafka promise it. Without it (NATS
/// `Sharing::Any`), order across instances is not promised; what is promised, and tested, is
/// that the messages of a key that one bus handles are handled by it in publish order, one at a
/// time.
pub async fn scale_out(h: &Harness) {
    const KEYS: usize = 20;
    let per_key = h.count(2000) / KEYS;
    let topic = unique("scale-out");
    let group = unique("g");
    let buses = [
        h.bus_with(bounded(4, 8)).await,
        h.bus_with(bounded(4, 8)).await,
    ];
    let st = Arc::new(ScaleOut::default());
    let mut subs = Vec::new();
    for (i, bus) in buses.iter().enumerate() {
        subs.push(
            subscribe(
                bus,
                &topic,
                &group,
                handler(&st, move |st, d| async move {
                    let start = st.log.tick();
                    st.started[i].add();
                    if st.started[0].get() > 0 && st.started[1].get() > 0 {
                        st.both.open();
                    }
                    st.both.wait().await;
                    tokio::task::yield_now().await;
                    st.log.finish(i, &d, start);
                    Ok(())
                }),
            )
            .await,
        );
    }
    let mut messages = Vec::new();
    for seq in 0..per_key as u64 {
        for k in 0..KEYS {
            messages.push(keyed(
                &topic,
                &format!("so-{k}-{seq}"),
                &format!("key-{k}"),
                seq,
            ));
        }
    }
    let expected = ids(&messages);
    let wave = if h.capabilities().key_affinity {
        messages.len()
    } else {
        17
    };
    let rest = messages.split_off(wave.min(messages.len()));
    // One batch, so the whole wave is there when a bus first looks.
    publish_batch(h, &buses[0], messages).await;
    h.within(
        &format!(
            "both buses to hold a message at once, after {wave} messages (a bus admitting 8 may hold at most 16: instances of a group share its messages)"
        ),
        st.both.wait(),
    )
    .await;
    publish_all(h, &buses[0], rest).await;
    st.log
        .count
        .wait_for(h, expected.len(), "every message, over both buses")
        .await;
    close_subs(h, subs).await;

    let calls = st.log.calls();
    let all: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
    assert_exactly_once("scale_out (both buses)", &expected, &all);
    let per_bus: Vec<usize> = (0..2)
        .map(|i| calls.iter().filter(|c| c.tag == i).count())
        .collect();
    assert!(
        per_bus.iter().all(|&n| n > 0),
        "expected both buses to handle messages, got {per_bus:?}"
    );
    if h.capabilities().key_affinity {
        let per_key_counts: BTreeMap<String, u64> = (0..KEYS)
            .map(|k| (format!("key-{k}"), per_key as u64))
            .collect();
        assert_key_order(
            "scale_out (key affinity: across buses)",
            &per_key_counts,
            &calls,
        );
    } else {
        for i in 0..2 {
            let own: Vec<_> = calls.iter().filter(|c| c.tag == i).cloned().collect();
            assert_increasing_per_key(&format!("scale_out (within bus {i})"), &own);
        }
    }
    assert_lag(h, &buses[0], &topic, &group, 0).await;
    for bus in &buses {
        close_bus(h, bus).await;
    }
}
