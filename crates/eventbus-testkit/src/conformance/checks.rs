//! The checks, numbered as in `conformance.md`.
//!
//! Every check builds fresh buses from the harness, names its topics and groups with
//! [`unique`], waits only for what it observes (channels, counters, gates; broker state such as
//! lag is polled), each wait bounded by the harness timeout, closes everything it opened, and
//! fails by panicking with what it expected and what it got. Message sets are compared by the
//! suite's own ids (a header), listing missing, unexpected and duplicated ones.
//!
//! Handlers never assert: a panic in a handler is caught by the bus (and counted as a handler
//! panic), so handlers record what they saw and the check asserts afterwards.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use eventbus_core::envelope::header;
use eventbus_core::{
    BoxError, Envelope, EnvelopeError, Error, EventBus, Limits, Message, Permanent, RetryPolicy,
};
use tokio::task::JoinSet;

use super::support::{
    Counter, Gate, HandlerResult, ID_HEADER, OrderLog, Record, abbreviate, assert_all_received,
    assert_disjoint, assert_exactly_once, assert_increasing_per_key, assert_key_order, assert_lag,
    bounded, close_bus, close_subs, fast_retry, handler, id_of, ids, join_all, key_seq, keyed,
    message, publish_all, recorder, subscribe, user_headers,
};
use super::{Harness, unique};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set(ids: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    ids.into_iter().collect()
}

/// Options with the given retry policy.
fn with_retry(retry: RetryPolicy) -> eventbus_core::BusOptions {
    let mut o = Harness::default_options();
    o.retry = retry;
    o
}

/// Subscription options under which a message that failed for good goes back to the
/// transport as failed (no dead-letter topic), for checks of the transport's redelivery.
fn handed_back(retry: RetryPolicy) -> eventbus_core::SubscribeOptions {
    eventbus_core::SubscribeOptions::new()
        .retry(retry)
        .dead_letter(eventbus_core::DeadLetter::off())
}

/// Waits until `cond` holds on the bus's counters (which have no notification), polling.
async fn until_stats(
    h: &Harness,
    bus: &EventBus,
    what: &str,
    mut cond: impl FnMut(&eventbus_core::DispatcherStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + h.timeout();
    loop {
        let stats = bus.stats();
        if cond(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: timed out after {:?} waiting for {what}; stats: {stats:?}",
            h.name(),
            h.timeout()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Publishes `messages` as one batch; panics on error.
async fn publish_batch(h: &Harness, bus: &EventBus, messages: Vec<Message>) {
    if let Err(e) = h.within("publish_batch", bus.publish_batch(messages)).await {
        panic!("publish_batch: expected Ok, got {e:?}");
    }
}

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

// 4 ------------------------------------------------------------------------------------------

#[derive(Default)]
struct FailFirst {
    seen: Mutex<HashSet<String>>,
    failures: Counter,
    handled: Record,
}

/// Fails the first delivery of every message (by id, so a transport redelivery counts as a
/// later delivery), handles every later one.
async fn fail_first(st: Arc<FailFirst>, d: eventbus_core::Delivery) -> HandlerResult {
    let id = id_of(d.message());
    if lock(&st.seen).insert(id.clone()) {
        st.failures.add();
        return Err(format!("deliberate failure of the first delivery of {id}").into());
    }
    st.handled.push(&d);
    Ok(())
}

/// Check 4, `resend_on_error`: handlers that fail the first delivery of every message still handle
/// every message, exactly once. One group retries in place (the bus's retry policy); the other
/// never retries (`RetryPolicy::never()`) and has no dead-letter topic, so each failure goes
/// back to the transport as failed (nack) and the transport must deliver the message again.
pub async fn resend_on_error(h: &Harness) {
    let n = h.count(100);
    let topic = unique("resend-on-error");
    let (in_place, redelivered) = (unique("retry"), unique("redeliver"));
    let bus = h.bus_with(with_retry(fast_retry())).await;
    let a = Arc::new(FailFirst::default());
    let b = Arc::new(FailFirst::default());
    let sub_a = subscribe(&bus, &topic, &in_place, handler(&a, fail_first)).await;
    let sub_b = match bus
        .subscribe_with(
            &topic,
            &redelivered,
            handed_back(RetryPolicy::never()),
            handler(&b, fail_first),
        )
        .await
    {
        Ok(sub) => sub,
        Err(e) => panic!("subscribe_with: expected Ok, got {e:?}"),
    };

    let messages: Vec<Message> = (0..n)
        .map(|i| {
            keyed(
                &topic,
                &format!("roe-{i}"),
                &format!("k{}", i % 10),
                i as u64,
            )
        })
        .collect();
    let expected = ids(&messages);
    publish_all(h, &bus, messages).await;
    a.handled
        .wait_for(h, n, "every message handled after an in-place retry")
        .await;
    b.handled
        .wait_for(
            h,
            n,
            "every message handled after the transport redelivered it",
        )
        .await;
    close_subs(h, vec![sub_a, sub_b]).await;

    assert_exactly_once("retried in place", &expected, &a.handled.ids());
    assert_exactly_once("redelivered by the transport", &expected, &b.handled.ids());
    assert_eq!(a.failures.get(), n, "first deliveries failed in place");
    assert_eq!(
        b.failures.get(),
        n,
        "first deliveries failed to the transport"
    );
    let stats = bus.stats();
    assert_eq!(
        (stats.handled, stats.retried, stats.failed),
        (2 * n as u64, n as u64, n as u64),
        "(handled, retried, failed): every message handled by both groups, one in-place retry per message in one, one failure handed to the transport per message in the other; {stats:?}"
    );
    assert_lag(h, &bus, &topic, &in_place, 0).await;
    assert_lag(h, &bus, &topic, &redelivered, 0).await;
    close_bus(h, &bus).await;
}

// 5 ------------------------------------------------------------------------------------------

#[derive(Default)]
struct HoldKey {
    gate: Gate,
    held_entered: Counter,
    held_returned: AtomicBool,
    next_before_return: AtomicBool,
    held: Record,
    others: Record,
}

/// Check 5, `no_ack_holds_key`: while the handler of a key's message has not returned (the message
/// is unacked), the key's next message is not given to a handler, and the messages of every
/// other key (published after both) are all handled; where the transport reports lag, both
/// messages of the held key count as unacked meanwhile. Once the handler returns, the next
/// message follows.
pub async fn no_ack_holds_key(h: &Harness) {
    let others = h.count(50);
    let topic = unique("no-ack-holds-key");
    let group = unique("g");
    let bus = h.bus().await;
    let st = Arc::new(HoldKey::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&st, |st, d| async move {
            match id_of(d.message()).as_str() {
                "held-0" => {
                    st.held_entered.add();
                    st.gate.wait().await;
                    st.held_returned.store(true, SeqCst);
                    st.held.push(&d);
                }
                "held-1" => {
                    if !st.held_returned.load(SeqCst) {
                        st.next_before_return.store(true, SeqCst);
                    }
                    st.held.push(&d);
                }
                _ => {
                    st.others.push(&d);
                }
            }
            Ok(())
        }),
    )
    .await;

    let mut messages = vec![
        keyed(&topic, "held-0", "held", 0),
        keyed(&topic, "held-1", "held", 1),
    ];
    messages.extend(
        (0..others).map(|i| keyed(&topic, &format!("other-{i}"), &format!("other-{i}"), 0)),
    );
    let other_ids: BTreeSet<String> = ids(&messages[2..]);
    publish_all(h, &bus, messages).await;

    st.held_entered
        .wait_for(h, 1, "the held key's first message to reach its handler")
        .await;
    st.others
        .wait_for(
            h,
            others,
            "every other key's message while the held key's handler is blocked",
        )
        .await;
    let early = st.held.ids();
    assert!(
        early.is_empty(),
        "expected the held key's next message not delivered while its first is unacked, got deliveries {early:?}"
    );
    assert_lag(h, &bus, &topic, &group, 2).await;

    st.gate.open();
    st.held
        .wait_for(
            h,
            2,
            "both messages of the held key after its handler returned",
        )
        .await;
    close_subs(h, vec![sub]).await;

    assert_eq!(
        st.held.ids(),
        ["held-0", "held-1"],
        "the held key's messages, in handling order"
    );
    assert!(
        !st.next_before_return.load(SeqCst),
        "held-1 reached its handler before held-0's handler returned"
    );
    assert_exactly_once("other keys", &other_ids, &st.others.ids());
    assert_lag(h, &bus, &topic, &group, 0).await;
    close_bus(h, &bus).await;
}

// 6 ------------------------------------------------------------------------------------------

/// Check 6, `continue_after_subscription_close`: 5,000 messages are read by five successive
/// subscriptions of one group, each closed mid-way (while its handlers are running and more
/// messages are queued): none is lost and none handled twice; messages in flight at a close are
/// completed and acked, messages queued are left for the next subscription.
pub async fn continue_after_subscription_close(h: &Harness) {
    const ROUNDS: usize = 5;
    let total = h.count(5000);
    let topic = unique("continue-after-close");
    let group = unique("g");
    let bus = h.bus().await;
    let messages: Vec<Message> = (0..total)
        .map(|i| {
            keyed(
                &topic,
                &format!("cac-{i}"),
                &format!("k{}", i % 32),
                i as u64,
            )
        })
        .collect();
    let expected = ids(&messages);
    for chunk in messages.chunks(100) {
        publish_batch(h, &bus, chunk.to_vec()).await;
    }

    let done = Arc::new(Record::default());
    let mut per_round = Vec::new();
    for round in 1..=ROUNDS {
        let target = total * round / ROUNDS;
        let hold = round < ROUNDS;
        let sub = subscribe(
            &bus,
            &topic,
            &group,
            handler(&done, move |done, d| async move {
                // Past this round's share, handlers stay in flight until the subscription
                // closes, then finish their work.
                if hold && done.len() >= target {
                    d.cancellation().cancelled().await;
                }
                done.push(&d);
                Ok(())
            }),
        )
        .await;
        done.wait_for(
            h,
            target,
            &format!("subscription {round} to handle its share"),
        )
        .await;
        close_subs(h, vec![sub]).await;
        per_round.push(done.len());
        if round == 1 {
            assert!(
                done.len() < total,
                "expected the first subscription closed mid-way, but it handled all {total} messages"
            );
        }
    }
    assert_exactly_once(
        &format!("successive subscriptions (handled so far after each: {per_round:?})"),
        &expected,
        &done.ids(),
    );
    assert_lag(h, &bus, &topic, &group, 0).await;
    close_bus(h, &bus).await;
}

// 7 ------------------------------------------------------------------------------------------

/// Check 7, `concurrent_close`: ten tasks subscribe to one topic in one group and close at once (half
/// close their subscription on a shared bus, half close a bus of their own with the
/// subscription open); afterwards a fresh subscription in that group receives all 50 messages
/// published next, exactly once.
pub async fn concurrent_close(h: &Harness) {
    let n = h.count(50);
    let topic = unique("concurrent-close");
    let group = unique("g");
    let bus = h.bus().await;
    let early = Arc::new(Record::default());
    let mut tasks = JoinSet::new();
    for i in 0..10 {
        let (h, bus, topic, group, handler) = (
            h.clone(),
            bus.clone(),
            topic.clone(),
            group.clone(),
            recorder(&early),
        );
        tasks.spawn(async move {
            if i % 2 == 0 {
                let sub = subscribe(&bus, &topic, &group, handler).await;
                close_subs(&h, vec![sub]).await;
            } else {
                let own = h.bus().await;
                let sub = subscribe(&own, &topic, &group, handler).await;
                close_bus(&h, &own).await;
                assert!(
                    sub.is_finished(),
                    "expected a subscription finished once its bus closed, got it running"
                );
            }
        });
    }
    join_all(h, "ten concurrent subscribe-and-close tasks", tasks).await;

    let messages: Vec<Message> = (0..n)
        .map(|i| keyed(&topic, &format!("cc-{i}"), &format!("k{}", i % 5), i as u64))
        .collect();
    let expected = ids(&messages);
    publish_all(h, &bus, messages).await;
    let rec = Arc::new(Record::default());
    let sub = subscribe(&bus, &topic, &group, recorder(&rec)).await;
    rec.wait_for(h, n, "every message, by the fresh subscription")
        .await;
    close_subs(h, vec![sub]).await;

    assert_exactly_once("fresh subscription", &expected, &rec.ids());
    assert!(
        early.ids().is_empty(),
        "closed subscriptions got messages: {:?}",
        early.ids()
    );
    assert_lag(h, &bus, &topic, &group, 0).await;
    close_bus(h, &bus).await;
}

// 8 ------------------------------------------------------------------------------------------

/// Check 8, `continue_after_errors`: three subscriptions of one group in turn fail 100 deliveries
/// each and close: the first retries in place without limit, the second never retries (each
/// failure goes back to the transport, which redelivers: no dead-letter topic), the third gives
/// up after 3 attempts (then back to the transport). A final subscription in the group still receives all 50
/// messages and handles each exactly once.
pub async fn continue_after_errors(h: &Harness) {
    let n = h.count(50);
    let failures = h.count(100);
    let topic = unique("continue-after-errors");
    let group = unique("g");
    let bus = h.bus_with(with_retry(fast_retry())).await;
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            keyed(
                &topic,
                &format!("cae-{i}"),
                &format!("k{}", i % 5),
                i as u64,
            )
        })
        .collect();
    let expected = ids(&messages);
    publish_all(h, &bus, messages).await;

    let policies = [
        ("retrying in place", fast_retry().unlimited()),
        ("never retrying", RetryPolicy::never()),
        ("giving up after 3 attempts", fast_retry().max_attempts(3)),
    ];
    for (what, policy) in policies {
        let failed = Arc::new(Counter::default());
        let sub = match bus
            .subscribe_with(
                &topic,
                &group,
                handed_back(policy),
                handler(&failed, |failed, d| async move {
                    failed.add();
                    Err::<(), BoxError>(
                        format!("deliberate failure of {}", id_of(d.message())).into(),
                    )
                }),
            )
            .await
        {
            Ok(sub) => sub,
            Err(e) => panic!("subscribe_with: expected Ok, got {e:?}"),
        };
        failed
            .wait_for(
                h,
                failures,
                &format!("the subscription {what} to fail {failures} deliveries"),
            )
            .await;
        close_subs(h, vec![sub]).await;
    }

    let rec = Arc::new(Record::default());
    let sub = subscribe(&bus, &topic, &group, recorder(&rec)).await;
    rec.wait_for(h, n, "every message, by the final subscription")
        .await;
    close_subs(h, vec![sub]).await;

    assert_exactly_once("final subscription", &expected, &rec.ids());
    assert_eq!(bus.stats().handled, n as u64, "handled: {:?}", bus.stats());
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

// 10 -----------------------------------------------------------------------------------------

/// Check 10, `publisher_close`: 20 concurrent publishers send 10,000 messages through one bus, which
/// is closed as soon as the last publish returns; a subscriber on another bus (another process)
/// receives every message exactly once, and the closed bus refuses to publish
/// (`Error::Closed`).
pub async fn publisher_close(h: &Harness) {
    let publishers = h.count(20);
    let per_publisher = h.count(10_000) / publishers;
    let topic = unique("publisher-close");
    let group = unique("g");
    let consumer = h.bus().await;
    let rec = Arc::new(Record::default());
    let sub = subscribe(&consumer, &topic, &group, recorder(&rec)).await;

    let publisher = h.bus().await;
    let mut expected = BTreeSet::new();
    let mut publishing = JoinSet::new();
    for p in 0..publishers {
        let messages: Vec<Message> = (0..per_publisher)
            .map(|i| {
                keyed(
                    &topic,
                    &format!("pc-{p}-{i}"),
                    &format!("p{p}-k{}", i % 8),
                    i as u64,
                )
            })
            .collect();
        expected.extend(ids(&messages));
        let bus = publisher.clone();
        publishing.spawn(async move {
            for m in messages {
                let id = id_of(&m);
                if let Err(e) = bus.publish(m).await {
                    panic!("publishing {id}: expected Ok, got {e:?}");
                }
            }
        });
    }
    join_all(h, "20 concurrent publishers", publishing).await;
    close_bus(h, &publisher).await;
    match publisher.publish(message(&topic, "after-close")).await {
        Err(Error::Closed) => {}
        other => panic!("publishing on a closed bus: expected Err(Closed), got {other:?}"),
    }

    rec.wait_for(
        h,
        expected.len(),
        "every message published before the close",
    )
    .await;
    close_subs(h, vec![sub]).await;
    assert_exactly_once("publisher_close", &expected, &rec.ids());
    assert_lag(h, &consumer, &topic, &group, 0).await;
    close_bus(h, &consumer).await;
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

// 12 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Context {
    entered: Counter,
    cancelled_at_entry: AtomicBool,
    fired: Counter,
}

/// A handler that waits for its delivery's cancellation, then stops early with an error.
async fn wait_for_cancellation(st: Arc<Context>, d: eventbus_core::Delivery) -> HandlerResult {
    if d.cancellation().is_cancelled() {
        st.cancelled_at_entry.store(true, SeqCst);
    }
    st.entered.add();
    d.cancellation().cancelled().await;
    st.fired.add();
    Err("stopped early: the delivery was cancelled".into())
}

/// Check 12, `message_context`: a delivery's cancellation token is not cancelled while its
/// subscription runs, and fires, reaching the running handler, when the subscription closes
/// and (for another subscription) when the bus closes. The handler then stops early with an
/// error, which is not a failure: nothing is retried or failed.
pub async fn message_context(h: &Harness) {
    let topic = unique("message-context");
    let bus = h.bus_with(with_retry(fast_retry())).await;

    // Closing the subscription.
    let st = Arc::new(Context::default());
    let sub = subscribe(
        &bus,
        &topic,
        &unique("g"),
        handler(&st, wait_for_cancellation),
    )
    .await;
    publish_all(h, &bus, vec![keyed(&topic, "mc-1", "k", 0)]).await;
    st.entered.wait_for(h, 1, "the handler to start").await;
    assert!(
        !st.cancelled_at_entry.load(SeqCst),
        "expected the delivery's token not cancelled while the subscription runs, got cancelled"
    );
    close_subs(h, vec![sub]).await;
    assert_eq!(
        st.fired.get(),
        1,
        "expected the running handler's token to fire when its subscription closed"
    );

    // Closing the bus.
    let topic2 = unique("message-context");
    let st2 = Arc::new(Context::default());
    let sub2 = subscribe(
        &bus,
        &topic2,
        &unique("g"),
        handler(&st2, wait_for_cancellation),
    )
    .await;
    publish_all(h, &bus, vec![keyed(&topic2, "mc-2", "k", 0)]).await;
    st2.entered.wait_for(h, 1, "the handler to start").await;
    close_bus(h, &bus).await;
    assert_eq!(
        st2.fired.get(),
        1,
        "expected the running handler's token to fire when the bus closed"
    );
    assert!(
        sub2.is_finished(),
        "expected the subscription finished after bus close"
    );
    let stats = bus.stats();
    assert_eq!(
        (stats.failed, stats.retried, stats.handled),
        (0, 0, 0),
        "(failed, retried, handled) after handlers stopped early on cancellation: {stats:?}"
    );
}

// 13 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Cancel {
    closed: AtomicBool,
    late: Record,
    handled: Record,
}

/// Check 13, `subscribe_cancel`: closing a subscription stops its deliveries: its handler is never
/// called after `close` returned (nor for messages published after it), messages it had not
/// handled are left to its group, and a new subscription receives exactly those plus the newer
/// ones. Dropping a subscription handle cancels it the same way: messages published after the
/// drop go to the next subscription of the group, not to the dropped one.
pub async fn subscribe_cancel(h: &Harness) {
    let n = h.count(100);
    let half = n / 2;
    let topic = unique("subscribe-cancel");
    let group = unique("g");
    let bus = h.bus().await;
    let first: Vec<Message> = (0..n)
        .map(|i| {
            keyed(
                &topic,
                &format!("sc-a{i}"),
                &format!("k{}", i % 10),
                i as u64,
            )
        })
        .collect();
    let mut all = ids(&first);
    publish_all(h, &bus, first).await;

    let st = Arc::new(Cancel::default());
    let sub1 = subscribe(
        &bus,
        &topic,
        &group,
        handler(&st, move |st, d| async move {
            if st.closed.load(SeqCst) {
                st.late.push(&d);
            }
            if st.handled.len() >= half {
                d.cancellation().cancelled().await;
                return Err("stopped early: the subscription is closing".into());
            }
            st.handled.push(&d);
            Ok(())
        }),
    )
    .await;
    st.handled
        .wait_for(h, half, "the first subscription's share")
        .await;
    close_subs(h, vec![sub1]).await;
    st.closed.store(true, SeqCst);

    let second: Vec<Message> = (0..half)
        .map(|i| {
            keyed(
                &topic,
                &format!("sc-b{i}"),
                &format!("k{}", i % 10),
                (n + i) as u64,
            )
        })
        .collect();
    all.extend(ids(&second));
    publish_all(h, &bus, second).await;
    let handled1 = set(st.handled.ids());
    assert_eq!(
        handled1.len(),
        st.handled.len(),
        "first subscription handled a message twice"
    );
    let left: BTreeSet<String> = all.difference(&handled1).cloned().collect();
    let rec2 = Arc::new(Record::default());
    let sub2 = subscribe(&bus, &topic, &group, recorder(&rec2)).await;
    rec2.wait_for(h, left.len(), "the messages the closed subscription left")
        .await;
    close_subs(h, vec![sub2]).await;
    assert!(
        st.late.ids().is_empty(),
        "expected no call of a closed subscription's handler, got calls for {:?}",
        st.late.ids()
    );
    assert_exactly_once("the new subscription", &left, &rec2.ids());
    assert_lag(h, &bus, &topic, &group, 0).await;

    // Dropping the handle.
    let topic2 = unique("subscribe-cancel-drop");
    let dropped = Arc::new(Record::default());
    let sub3 = subscribe(&bus, &topic2, &group, recorder(&dropped)).await;
    let before: Vec<Message> = (0..10)
        .map(|i| keyed(&topic2, &format!("sc-c{i}"), "k", i))
        .collect();
    let want_before = ids(&before);
    publish_all(h, &bus, before).await;
    dropped
        .wait_for(h, 10, "the messages before the drop")
        .await;
    drop(sub3);
    let after: Vec<Message> = (0..10)
        .map(|i| keyed(&topic2, &format!("sc-d{i}"), "k", 10 + i))
        .collect();
    let want_after = ids(&after);
    publish_all(h, &bus, after).await;
    let rec4 = Arc::new(Record::default());
    let sub4 = subscribe(&bus, &topic2, &group, recorder(&rec4)).await;
    rec4.wait_for(h, 10, "the messages published after the drop")
        .await;
    close_subs(h, vec![sub4]).await;
    assert_exactly_once("the dropped subscription", &want_before, &dropped.ids());
    assert_exactly_once("the subscription after the drop", &want_after, &rec4.ids());
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

// 15 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Reconnect {
    distinct: Mutex<HashSet<String>>,
    new: Counter,
    order: Mutex<BTreeMap<String, Vec<u64>>>,
    all: Mutex<Vec<String>>,
}

/// Check 15, `reconnect`: the broker is restarted twice while 10,000 messages are published (a
/// publish that fails during a restart is retried with the same message id): every message is
/// delivered at least once, and per key the first deliveries come in publish order
/// (redeliveries of already handled messages are allowed, unless the harness says the
/// transport handles each message once across restarts: then each is handled exactly once).
/// A transport that does not declare `broker_restart` must answer a restart with
/// `Error::Unsupported`.
pub async fn reconnect(h: &Harness) {
    if !h.capabilities().broker_restart {
        match h.restart_broker().await {
            Err(Error::Unsupported { .. }) => return,
            other => panic!(
                "{}: broker_restart is not declared, so restarting the broker must fail with Error::Unsupported; got {other:?}",
                h.name()
            ),
        }
    }
    const KEYS: usize = 16;
    let n = h.count(10_000);
    let topic = unique("reconnect");
    let group = unique("g");
    let bus = h.bus().await;
    let st = Arc::new(Reconnect::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&st, |st, d| async move {
            let id = id_of(d.message());
            if let Some((key, seq)) = key_seq(d.message()) {
                lock(&st.order).entry(key).or_default().push(seq);
            }
            lock(&st.all).push(id.clone());
            if lock(&st.distinct).insert(id) {
                st.new.add();
            }
            Ok(())
        }),
    )
    .await;

    let messages: Vec<Message> = (0..n)
        .map(|i| {
            let key = format!("k{}", i % KEYS);
            keyed(&topic, &format!("rc-{i}"), &key, (i / KEYS) as u64)
        })
        .collect();
    let expected = ids(&messages);
    let published = Arc::new(Counter::default());
    let publish_errors = Arc::new(AtomicUsize::new(0));
    let mut publishing = JoinSet::new();
    {
        let (bus, published, errors, timeout) = (
            bus.clone(),
            Arc::clone(&published),
            Arc::clone(&publish_errors),
            h.timeout(),
        );
        publishing.spawn(async move {
            for m in messages {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    match bus.publish(m.clone()).await {
                        Ok(()) => break,
                        Err(e) if tokio::time::Instant::now() > deadline => panic!(
                            "publishing {}: still failing after {timeout:?} of retries: {e:?}",
                            id_of(&m)
                        ),
                        Err(_) => {
                            errors.fetch_add(1, SeqCst);
                            // Backoff between retries of a failed publish.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                published.add();
            }
        });
    }
    for (i, at) in [n / 3, 2 * n / 3].into_iter().enumerate() {
        published
            .wait_for(h, at, &format!("publishing to reach restart {}", i + 1))
            .await;
        if let Err(e) = h.within("the broker to restart", h.restart_broker()).await {
            panic!("restarting the broker: expected Ok, got {e:?}");
        }
    }
    join_all(h, "the publisher", publishing).await;
    st.new
        .wait_for(h, n, "every message delivered after two broker restarts")
        .await;
    close_subs(h, vec![sub]).await;
    close_bus(h, &bus).await;

    assert_all_received("reconnect", &expected, &lock(&st.all));
    let calls = lock(&st.all).len();
    eprintln!(
        "{}: reconnect: {n} messages, {calls} handler calls, {} publish retries",
        h.name(),
        publish_errors.load(SeqCst)
    );
    if h.once_across_restarts() {
        assert_exactly_once("reconnect", &expected, &lock(&st.all));
    }
    for (key, seqs) in lock(&st.order).iter() {
        let mut next = 0;
        for &seq in seqs {
            assert!(
                seq <= next,
                "key {key}: position {seq} was first delivered before position {next} (first deliveries out of publish order); positions in delivery order: {}",
                abbreviate(seqs)
            );
            if seq == next {
                next += 1;
            }
        }
    }
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

// 17 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Stall {
    gate: Gate,
    stalled_entered: Counter,
    stalled_returned: AtomicBool,
    stalled: Record,
    others: Record,
}

/// Check 17, `no_head_of_line_blocking`: on a bus with only 2 handler calls at once, one key's
/// handler stalls (blocked until the end of the check) while 12,000 messages of 1,000 other
/// keys, published after it and interleaved with more messages of the stalled key, all
/// complete; the stalled key's later messages wait meanwhile, and follow in order once it is
/// released. 12,000 is more than any transport holds by default (the memory broker's topic
/// log, the dispatcher's buffer, a broker client's prefetch), so a bound that counts the span
/// behind the stalled message, rather than what is really held, shows up as a stall here.
/// Correctness only: no rate is measured.
pub async fn no_head_of_line_blocking(h: &Harness) {
    const KEYS: usize = 1_000;
    let others = h.count(12_000);
    let topic = unique("no-hol-blocking");
    let group = unique("g");
    let bus = h.bus_with(bounded(2, 4096)).await;
    let st = Arc::new(Stall::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&st, |st, d| async move {
            let id = id_of(d.message());
            if id == "stalled-0" {
                st.stalled_entered.add();
                st.gate.wait().await;
                st.stalled_returned.store(true, SeqCst);
                st.stalled.push(&d);
            } else if id.starts_with("stalled-") {
                st.stalled.push(&d);
            } else {
                st.others.push(&d);
            }
            Ok(())
        }),
    )
    .await;

    let mut messages = vec![keyed(&topic, "stalled-0", "stalled", 0)];
    for i in 0..others {
        messages.push(keyed(
            &topic,
            &format!("other-{i}"),
            &format!("other-{}", i % KEYS),
            (i / KEYS) as u64,
        ));
        if i == others / 3 || i == 2 * others / 3 {
            let seq = if i == others / 3 { 1 } else { 2 };
            messages.push(keyed(&topic, &format!("stalled-{seq}"), "stalled", seq));
        }
    }
    let other_ids: BTreeSet<String> = set((0..others).map(|i| format!("other-{i}")));
    publish_all(h, &bus, messages).await;

    st.stalled_entered
        .wait_for(h, 1, "the stalled key's handler to start")
        .await;
    st.others
        .wait_for(
            h,
            others,
            "every other key's message while one key is stalled",
        )
        .await;
    let stalled_early = st.stalled.ids();
    assert!(
        !st.stalled_returned.load(SeqCst) && stalled_early.is_empty(),
        "expected the stalled key still blocked with its later messages waiting, got handled {stalled_early:?}"
    );
    st.gate.open();
    st.stalled
        .wait_for(h, 3, "the stalled key's messages after its release")
        .await;
    close_subs(h, vec![sub]).await;

    assert_exactly_once("other keys", &other_ids, &st.others.ids());
    assert_eq!(
        st.stalled.ids(),
        ["stalled-0", "stalled-1", "stalled-2"],
        "the stalled key's messages, in handling order"
    );
    close_bus(h, &bus).await;
}

// 18 -----------------------------------------------------------------------------------------

struct RetryOrder {
    wait: Duration,
    others_total: usize,
    log: Mutex<Vec<String>>,
    retried_done: Counter,
    flowed: AtomicBool,
    others: Record,
}

/// Check 18, `retry_keeps_key_order`: a key's first message fails its first two attempts (in-place
/// retries, short backoff without jitter) and succeeds on the third; the key's nine later
/// messages are not given to a handler until it succeeded, then follow in order. Other keys
/// flow meanwhile: the second failing attempt waits until every message of the other keys has
/// been handled, which can only happen if they are not blocked behind the retried key.
pub async fn retry_keeps_key_order(h: &Harness) {
    const LATER: u64 = 9;
    let others = h.count(200);
    let topic = unique("retry-order");
    let group = unique("g");
    let retry = RetryPolicy::default()
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .jitter(false);
    let bus = h.bus_with(with_retry(retry)).await;
    let st = Arc::new(RetryOrder {
        wait: h.timeout(),
        others_total: others,
        log: Mutex::default(),
        retried_done: Counter::default(),
        flowed: AtomicBool::new(false),
        others: Record::default(),
    });
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&st, |st, d| async move {
            let Some((key, seq)) = key_seq(d.message()) else {
                return Ok(());
            };
            if key != "retried" {
                st.others.push(&d);
                return Ok(());
            }
            lock(&st.log).push(format!("start {seq} attempt {}", d.attempt()));
            match (seq, d.attempt()) {
                (0, 1) => return Err("deliberate failure, attempt 1".into()),
                (0, 2) => {
                    let flowed =
                        tokio::time::timeout(st.wait, st.others.count.until(st.others_total))
                            .await
                            .is_ok();
                    st.flowed.store(flowed, SeqCst);
                    return Err("deliberate failure, attempt 2".into());
                }
                _ => {}
            }
            lock(&st.log).push(format!("done {seq}"));
            st.retried_done.add();
            Ok(())
        }),
    )
    .await;

    let mut messages = vec![keyed(&topic, "retried-0", "retried", 0)];
    for i in 0..others {
        messages.push(keyed(
            &topic,
            &format!("other-{i}"),
            &format!("other-{}", i % 20),
            i as u64,
        ));
    }
    // The retried key's later messages, interleaved with the others.
    let mut mixed = Vec::new();
    let mut later = 1..=LATER;
    for (i, m) in messages.into_iter().enumerate() {
        mixed.push(m);
        if i > 0 && i % (others / LATER as usize).max(1) == 0 {
            if let Some(seq) = later.next() {
                mixed.push(keyed(&topic, &format!("retried-{seq}"), "retried", seq));
            }
        }
    }
    for seq in later {
        mixed.push(keyed(&topic, &format!("retried-{seq}"), "retried", seq));
    }
    publish_all(h, &bus, mixed).await;

    st.retried_done
        .wait_for(h, 1 + LATER as usize, "every message of the retried key")
        .await;
    st.others
        .wait_for(h, others, "every message of the other keys")
        .await;
    close_subs(h, vec![sub]).await;

    let mut want = vec![
        "start 0 attempt 1".to_owned(),
        "start 0 attempt 2".to_owned(),
        "start 0 attempt 3".to_owned(),
        "done 0".to_owned(),
    ];
    for seq in 1..=LATER {
        want.push(format!("start {seq} attempt 1"));
        want.push(format!("done {seq}"));
    }
    assert_eq!(
        *lock(&st.log),
        want,
        "the retried key's handler calls (left: got, right: expected)"
    );
    assert!(
        st.flowed.load(SeqCst),
        "expected every other key's message handled while the key's first message was being retried; only {} of {others} were",
        st.others.len()
    );
    let stats = bus.stats();
    assert_eq!(stats.retried, 2, "retries scheduled: {stats:?}");
    assert_eq!(stats.failed, 0, "failed: {stats:?}");
    close_bus(h, &bus).await;
}

// 19 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Poison {
    /// Attempts made on the poison message, over all deliveries.
    attempts: Counter,
    /// Once set, the poison message is handled (the cause was fixed): for the replay.
    fixed: AtomicBool,
    /// The poison key's messages handled, in order (seq).
    poison_key: Mutex<Vec<u64>>,
    poison_done: Counter,
    replayed: Record,
    others: Record,
}

/// Check 19, `poison_to_dead_letter`: a message that fails on every attempt is, after its last
/// (third) attempt, published to the dead-letter topic (`<topic>.dlq`) with the original key,
/// payload and headers plus failure metadata (error, attempts, original topic, group, original
/// id, first and last failure time), and acked on its own topic (lag 0, never delivered
/// again); its key moves on to its next messages, in order, and other keys are unaffected.
/// `replay_dead_letters` then sends the letter back to its topic, where the fixed handler
/// gets the original (key and payload intact, `eb-replayed-from` naming the original id).
pub async fn poison_to_dead_letter(h: &Harness) {
    use eventbus_core::dead_letter::header as dlq;
    const LATER: u64 = 5;
    let others = h.count(100);
    let topic = unique("poison");
    let group = unique("g");
    let dlq_topic = format!("{topic}.dlq");
    let bus = h.bus().await;
    let letters = Arc::new(Record::default());
    let hold = Arc::new(Gate::default());
    // The reader holds the letter (unacked) until the replay group exists: a transport that
    // drops a message once every group acked it (memory) still has it for the new group.
    let reader = handler(&letters, {
        let hold = Arc::clone(&hold);
        move |letters, d| {
            let hold = Arc::clone(&hold);
            async move {
                letters.push(&d);
                hold.wait().await;
                Ok(())
            }
        }
    });
    let letters_sub = subscribe(&bus, &dlq_topic, &unique("dlq-reader"), reader).await;

    let st = Arc::new(Poison::default());
    let options = eventbus_core::SubscribeOptions::new()
        .retry(fast_retry().max_attempts(3))
        .dead_letter(eventbus_core::DeadLetter::default());
    let handler = handler(&st, |st, d| async move {
        match key_seq(d.message()) {
            Some((key, 0)) if key == "poison" => {
                if d.message().headers().get(dlq::REPLAYED_FROM).is_some() {
                    if st.fixed.load(SeqCst) {
                        st.replayed.push(&d);
                        return Ok(());
                    }
                    return Err("replayed before the fix".into());
                }
                st.attempts.add();
                Err(format!("deliberate poison, attempt {}", d.attempt()).into())
            }
            Some((key, seq)) if key == "poison" => {
                lock(&st.poison_key).push(seq);
                st.poison_done.add();
                Ok(())
            }
            _ => {
                st.others.push(&d);
                Ok(())
            }
        }
    });
    let sub = match h
        .within(
            "subscribe_with",
            bus.subscribe_with(&topic, &group, options.clone(), handler.clone()),
        )
        .await
    {
        Ok(sub) => sub,
        Err(e) => panic!("subscribe_with dead letter: expected Ok, got {e:?}"),
    };

    let poison = keyed(&topic, "poison-0", "poison", 0);
    let poison_id = poison.id().clone();
    let mut messages = vec![poison];
    for seq in 1..=LATER {
        messages.push(keyed(&topic, &format!("poison-{seq}"), "poison", seq));
    }
    for i in 0..others {
        messages.push(keyed(
            &topic,
            &format!("other-{i}"),
            &format!("other-{}", i % 10),
            (i / 10) as u64,
        ));
    }
    let other_ids = ids(&messages[1 + LATER as usize..]);
    publish_all(h, &bus, messages).await;

    letters.wait_for(h, 1, "the dead letter").await;
    st.poison_done
        .wait_for(h, LATER as usize, "the poison key's later messages")
        .await;
    st.others
        .wait_for(h, others, "the other keys' messages")
        .await;
    assert_lag(h, &bus, &topic, &group, 0).await;
    assert_eq!(
        *lock(&st.poison_key),
        (1..=LATER).collect::<Vec<_>>(),
        "the poison key's later messages, in order, after the letter"
    );
    assert_exactly_once("other keys", &other_ids, &st.others.ids());

    let letter = letters.messages().remove(0);
    let got = |name: &str| letter.headers().get(name).map(str::to_owned);
    assert_eq!(letter.topic(), dlq_topic, "the letter's topic");
    assert_eq!(
        id_of(&letter),
        "poison-0",
        "the letter keeps the original headers"
    );
    assert_eq!(
        letter.key().map(|k| k.as_str()),
        Some("poison"),
        "the letter's key"
    );
    assert_eq!(&letter.payload()[..], b"poison-0", "the letter's payload");
    assert_eq!(got(dlq::ATTEMPTS).as_deref(), Some("3"), "attempts header");
    assert_eq!(
        got(dlq::TOPIC),
        Some(topic.clone()),
        "original topic header"
    );
    assert_eq!(got(dlq::GROUP), Some(group.clone()), "group header");
    assert_eq!(
        got(dlq::MESSAGE_ID).as_deref(),
        Some(poison_id.as_str()),
        "original id header"
    );
    let error = got(dlq::ERROR).unwrap_or_default();
    assert!(
        error.contains("deliberate poison, attempt 3"),
        "error header should hold the last error, got {error:?}"
    );
    for name in [dlq::FIRST_FAILURE, dlq::LAST_FAILURE] {
        let at = got(name).unwrap_or_default();
        assert!(
            humantime::parse_rfc3339(&at).is_ok(),
            "{name} should be an RFC 3339 time, got {at:?}"
        );
    }
    let stats = bus.stats();
    assert_eq!(stats.dead_lettered, 1, "dead-lettered: {stats:?}");
    assert_eq!(stats.failed, 1, "failed for good: {stats:?}");
    assert_eq!(st.attempts.get(), 3, "attempts on the poison message");

    // Replay once the cause is fixed: the original comes back to the handler.
    st.fixed.store(true, SeqCst);
    let replay_group = unique("replayer");
    let replay = match h
        .within(
            "replay_dead_letters",
            bus.replay_dead_letters(&dlq_topic, &replay_group),
        )
        .await
    {
        Ok(sub) => sub,
        Err(e) => panic!("replay_dead_letters: expected Ok, got {e:?}"),
    };
    hold.open();
    st.replayed.wait_for(h, 1, "the replayed message").await;
    assert_lag(h, &bus, &dlq_topic, &replay_group, 0).await;
    let back = st.replayed.messages().remove(0);
    assert_eq!(
        back.key().map(|k| k.as_str()),
        Some("poison"),
        "replayed key"
    );
    assert_eq!(&back.payload()[..], b"poison-0", "replayed payload");
    assert_eq!(
        back.headers().get(dlq::REPLAYED_FROM),
        Some(poison_id.as_str()),
        "replayed-from header"
    );
    assert!(
        back.headers()
            .iter()
            .all(|(n, _)| !n.starts_with(dlq::PREFIX)),
        "a replayed message carries no dead-letter headers: {:?}",
        back.headers()
    );
    assert_eq!(st.attempts.get(), 3, "the original was not delivered again");
    close_subs(h, vec![sub, replay, letters_sub]).await;
    close_bus(h, &bus).await;
}

// 20 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Panics {
    seen: Mutex<HashSet<String>>,
    handled: Record,
}

/// Panics on the first delivery of messages marked with `marker` (by id, so a transport
/// redelivery is a later delivery).
async fn panic_once(st: Arc<Panics>, d: eventbus_core::Delivery, marker: &str) -> HandlerResult {
    let id = id_of(d.message());
    if d.message().headers().get(marker).is_some() && lock(&st.seen).insert(id.clone()) {
        panic!("conformance: deliberate panic in a handler ({id})");
    }
    st.handled.push(&d);
    Ok(())
}

/// Check 20, `handler_panic`: handlers panic on the first delivery of some messages: in a group
/// retrying in place, the message is retried; in a group that never retries, it is handed back
/// to the transport as failed and redelivered. Nothing is lost (each group handles every
/// message exactly once), every panic is counted (`stats().panicked`), and the same
/// subscriptions, the bus and a new subscription keep working afterwards.
pub async fn handler_panic(h: &Harness) {
    let n = h.count(60);
    let topic = unique("handler-panic");
    let (in_place, redelivered) = (unique("retry"), unique("redeliver"));
    let bus = h.bus_with(with_retry(fast_retry())).await;
    let a = Arc::new(Panics::default());
    let b = Arc::new(Panics::default());
    let sub_a = subscribe(
        &bus,
        &topic,
        &in_place,
        handler(&a, |st, d| panic_once(st, d, "panic-a")),
    )
    .await;
    let sub_b = match bus
        .subscribe_with(
            &topic,
            &redelivered,
            handed_back(RetryPolicy::never()),
            handler(&b, |st, d| panic_once(st, d, "panic-b")),
        )
        .await
    {
        Ok(sub) => sub,
        Err(e) => panic!("subscribe_with: expected Ok, got {e:?}"),
    };

    let (mut panics_a, mut panics_b) = (0, 0);
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            let mut m = keyed(&topic, &format!("hp-{i}"), &format!("k{}", i % 4), i as u64);
            if i % 3 == 0 {
                m = m.with_header("panic-a", "1");
                panics_a += 1;
            }
            if i % 10 == 0 {
                m = m.with_header("panic-b", "1");
                panics_b += 1;
            }
            m
        })
        .collect();
    let mut expected = ids(&messages);
    publish_all(h, &bus, messages).await;
    a.handled
        .wait_for(h, n, "every message, retried in place after panics")
        .await;
    b.handled
        .wait_for(
            h,
            n,
            "every message, redelivered by the transport after panics",
        )
        .await;
    let stats = bus.stats();
    assert_eq!(
        (stats.panicked, stats.failed),
        (panics_a + panics_b, panics_b),
        "(panicked, failed): every panic counted, the never-retrying group's panics failed to the transport; {stats:?}"
    );

    // Everything keeps working: the same subscriptions, and a new one (on a topic of its own).
    let more: Vec<Message> = (0..10)
        .map(|i| {
            keyed(
                &topic,
                &format!("after-{i}"),
                &format!("k{}", i % 4),
                (n + i) as u64,
            )
        })
        .collect();
    expected.extend(ids(&more));
    publish_all(h, &bus, more).await;
    let fresh_topic = unique("handler-panic-after");
    let rec = Arc::new(Record::default());
    let sub_c = subscribe(&bus, &fresh_topic, &unique("after"), recorder(&rec)).await;
    let fresh: Vec<Message> = (0..10)
        .map(|i| {
            keyed(
                &fresh_topic,
                &format!("fresh-{i}"),
                &format!("k{}", i % 4),
                i as u64,
            )
        })
        .collect();
    let want_fresh = ids(&fresh);
    publish_all(h, &bus, fresh).await;
    a.handled
        .wait_for(h, n + 10, "messages after the panics")
        .await;
    b.handled
        .wait_for(h, n + 10, "messages after the panics")
        .await;
    rec.wait_for(h, 10, "messages in a new subscription").await;
    close_subs(h, vec![sub_a, sub_b, sub_c]).await;

    assert_exactly_once("group retrying in place", &expected, &a.handled.ids());
    assert_exactly_once("group never retrying", &expected, &b.handled.ids());
    assert_exactly_once("new subscription", &want_fresh, &rec.ids());
    assert_lag(h, &bus, &topic, &in_place, 0).await;
    assert_lag(h, &bus, &topic, &redelivered, 0).await;
    close_bus(h, &bus).await;
}

// 21 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Slow {
    gate: Gate,
    entered: Counter,
    done: Record,
}

/// Samples `bus.stats()` until `stop` is set; returns the largest (buffered, buffered_bytes).
fn sample_stats(bus: &EventBus, stop: &Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let (bus, stop) = (bus.clone(), Arc::clone(stop));
    tokio::spawn(async move {
        let mut max = (0, 0);
        while !stop.load(SeqCst) {
            let s = bus.stats();
            max = (max.0.max(s.buffered), max.1.max(s.buffered_bytes));
            // Sampling interval (nothing waits on this).
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        max
    })
}

/// Check 21, `backpressure`: a stalled handler bounds what the bus holds. With `max_in_flight` 4 and
/// `max_buffered` 16, publishing 1,000 messages still succeeds (the transport keeps them, up to
/// its own bound), exactly 4 handler calls start, the bus fills to 16 messages and takes no
/// more (`stats().buffered` never exceeds 16, nothing is acked meanwhile); with
/// `max_buffered_bytes` set, buffered bytes stay under it plus one message. Once the handler is
/// released, every message is delivered exactly once. (Heap flatness is measured by
/// `zero_leaks`.)
pub async fn backpressure(h: &Harness) {
    // Bounded by count.
    let n = h.count(1000);
    let topic = unique("backpressure");
    let group = unique("g");
    let opts = bounded(4, 16);
    let bus = h.bus_with(opts).await;
    let st = Arc::new(Slow::default());
    let slow = |st: Arc<Slow>, d: eventbus_core::Delivery| async move {
        st.entered.add();
        st.gate.wait().await;
        st.done.push(&d);
        Ok(())
    };
    let sub = subscribe(&bus, &topic, &group, handler(&st, slow)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_stats(&bus, &stop);
    let messages: Vec<Message> = (0..n)
        .map(|i| keyed(&topic, &format!("bp-{i}"), &format!("k{i}"), 0))
        .collect();
    let expected = ids(&messages);
    publish_all(h, &bus, messages).await;
    until_stats(h, &bus, "the bus to fill up to max_buffered (16)", |s| {
        s.buffered >= 16
    })
    .await;
    st.entered
        .wait_for(h, 4, "max_in_flight (4) handler calls")
        .await;
    let stats = bus.stats();
    assert_eq!(
        (st.entered.get(), stats.in_flight, stats.buffered),
        (4, 4, 16),
        "(handler calls started, in flight, buffered) with every handler stalled: {stats:?}"
    );
    assert_lag(h, &bus, &topic, &group, n as u64).await;
    st.gate.open();
    st.done
        .wait_for(h, n, "every message after the handler was released")
        .await;
    close_subs(h, vec![sub]).await;
    stop.store(true, SeqCst);
    let (max_buffered, _) = h
        .within("the sampler", sampler)
        .await
        .expect("sampler task");
    assert!(
        max_buffered <= 16,
        "expected stats().buffered at most max_buffered (16), got {max_buffered}"
    );
    let stats = bus.stats();
    assert!(
        stats.peak_in_flight <= 4,
        "expected at most max_in_flight (4) handler calls at once, got {}",
        stats.peak_in_flight
    );
    assert_exactly_once("backpressure (count bound)", &expected, &st.done.ids());
    close_bus(h, &bus).await;

    // Bounded by bytes.
    let n = h.count(200);
    let topic = unique("backpressure-bytes");
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            let mut m = keyed(&topic, &format!("bb-{i}"), &format!("k{i}"), 0);
            m = Message::from_parts(
                m.id().clone(),
                m.topic(),
                m.key().cloned(),
                m.headers().clone(),
                vec![b'x'; 1024],
                m.timestamp(),
            );
            m
        })
        .collect();
    let largest = messages.iter().map(Message::encoded_len).max().unwrap_or(0);
    let max_bytes = 8 * largest;
    let mut opts = bounded(2, 1000);
    opts.dispatcher.max_buffered_bytes = max_bytes;
    let bus = h.bus_with(opts).await;
    let st = Arc::new(Slow::default());
    let sub = subscribe(&bus, &topic, &group, handler(&st, slow)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_stats(&bus, &stop);
    let expected = ids(&messages);
    publish_all(h, &bus, messages).await;
    until_stats(h, &bus, "the bus to fill up to max_buffered_bytes", |s| {
        s.buffered_bytes >= max_bytes
    })
    .await;
    assert_lag(h, &bus, &topic, &group, n as u64).await;
    st.gate.open();
    st.done
        .wait_for(h, n, "every message after the handler was released")
        .await;
    close_subs(h, vec![sub]).await;
    stop.store(true, SeqCst);
    let (_, max_seen) = h
        .within("the sampler", sampler)
        .await
        .expect("sampler task");
    assert!(
        max_seen <= max_bytes + largest,
        "expected buffered bytes at most max_buffered_bytes ({max_bytes}) plus one message ({largest}), got {max_seen}"
    );
    assert_exactly_once("backpressure (byte bound)", &expected, &st.done.ids());
    close_bus(h, &bus).await;
}

// 22 -----------------------------------------------------------------------------------------

#[derive(Default)]
struct Drain {
    slow_entered: Counter,
    slow_finished: AtomicBool,
    done: Record,
}

/// Check 22, `graceful_close_drains`: a bus is closed under load. A handler mid-work when the close
/// starts (it sees its delivery cancelled, then finishes its work anyway) completes and its
/// message is acked; every other running handler completes too; the queued messages are left
/// unacked. A second bus (another process) in the same group then receives exactly the
/// messages the first did not complete: nothing acked unhandled, nothing lost, nothing handled
/// twice.
pub async fn graceful_close_drains(h: &Harness) {
    let n = h.count(2000);
    let share = n / 4;
    let topic = unique("graceful-close");
    let group = unique("g");
    let first = h.bus_with(bounded(16, 64)).await;
    let st = Arc::new(Drain::default());
    let sub = subscribe(
        &first,
        &topic,
        &group,
        handler(&st, move |st, d| async move {
            if id_of(d.message()) == "slow" {
                st.slow_entered.add();
                d.cancellation().cancelled().await;
                // Work after the close started.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                st.slow_finished.store(true, SeqCst);
            } else if st.done.len() >= share {
                d.cancellation().cancelled().await;
            }
            tokio::task::yield_now().await;
            st.done.push(&d);
            Ok(())
        }),
    )
    .await;
    let mut messages = vec![keyed(&topic, "slow", "slow", 0)];
    messages.extend((0..n - 1).map(|i| {
        keyed(
            &topic,
            &format!("gc-{i}"),
            &format!("k{}", i % 50),
            i as u64,
        )
    }));
    let all = ids(&messages);
    publish_all(h, &first, messages).await;
    st.slow_entered
        .wait_for(h, 1, "the slow handler to start")
        .await;
    st.done
        .wait_for(h, share, "a quarter of the messages")
        .await;
    close_bus(h, &first).await;
    assert!(
        sub.is_finished(),
        "expected the subscription finished once the bus closed"
    );
    drop(sub);

    assert!(
        st.slow_finished.load(SeqCst),
        "expected the handler running when close started to finish its work"
    );
    let completed = st.done.ids();
    let completed_set = set(completed.clone());
    assert_eq!(
        completed_set.len(),
        completed.len(),
        "the first bus handled a message twice"
    );
    assert!(
        completed_set.contains("slow"),
        "the slow message was not completed"
    );
    let stats = first.stats();
    assert_eq!(stats.failed, 0, "closing is not failure: {stats:?}");
    assert_eq!(stats.handled, completed.len() as u64, "handled: {stats:?}");
    let left: BTreeSet<String> = all.difference(&completed_set).cloned().collect();
    assert!(
        !left.is_empty(),
        "the first bus handled everything before closing: nothing tested"
    );

    let second = h.bus().await;
    assert_lag(h, &second, &topic, &group, left.len() as u64).await;
    let rec = Arc::new(Record::default());
    let sub2 = subscribe(&second, &topic, &group, recorder(&rec)).await;
    rec.wait_for(h, left.len(), "the messages the first bus did not complete")
        .await;
    close_subs(h, vec![sub2]).await;
    assert_exactly_once("second bus: exactly what the first left", &left, &rec.ids());
    assert_lag(h, &second, &topic, &group, 0).await;
    close_bus(h, &second).await;
}

// 23 -----------------------------------------------------------------------------------------

/// Check 23, `shutdown_is_not_failure`: a bus (retrying in place) is closed while handlers run; they
/// see their delivery cancelled and stop early by returning an error, a `Permanent` error, or
/// panicking. None of that is a failure: after the close `stats().failed == 0` and
/// `stats().retried == 0`, nothing is acked (committed) for them, and a later bus in the group
/// receives exactly the messages the first did not complete.
pub async fn shutdown_is_not_failure(h: &Harness) {
    let n = h.count(500);
    let share = n / 5;
    let topic = unique("shutdown-not-failure");
    let group = unique("g");
    let mut opts = bounded(8, 32);
    opts.retry = fast_retry();
    let first = h.bus_with(opts).await;
    let done = Arc::new(Record::default());
    let waiting = Arc::new(Counter::default());
    let stopped = Arc::new(Counter::default());
    let sub = subscribe(
        &first,
        &topic,
        &group,
        handler(&done, {
            let (waiting, stopped) = (Arc::clone(&waiting), Arc::clone(&stopped));
            move |done, d| {
                let (waiting, stopped) = (Arc::clone(&waiting), Arc::clone(&stopped));
                async move {
                    if done.len() < share {
                        done.push(&d);
                        return Ok(());
                    }
                    waiting.add();
                    d.cancellation().cancelled().await;
                    let k = stopped.add();
                    match k % 3 {
                        0 => Err("stopped early: shutting down".into()),
                        1 => Err(Permanent::new("stopped early: shutting down (permanent)").into()),
                        _ => panic!("conformance: deliberate panic while shutting down"),
                    }
                }
            }
        }),
    )
    .await;
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            keyed(
                &topic,
                &format!("sf-{i}"),
                &format!("k{}", i % 40),
                i as u64,
            )
        })
        .collect();
    let all = ids(&messages);
    publish_all(h, &first, messages).await;
    done.wait_for(h, share, "the handled share").await;
    waiting
        .wait_for(h, 1, "a handler to be running when the close starts")
        .await;
    close_bus(h, &first).await;
    drop(sub);

    let stats = first.stats();
    assert_eq!(
        (stats.failed, stats.retried),
        (0, 0),
        "(failed, retried) after a close that stopped handlers early: {stats:?}"
    );
    assert!(
        stats.cancelled > 0,
        "expected cancelled messages, got {stats:?}"
    );
    assert!(
        stopped.get() > 0,
        "no handler was stopped by the close: nothing tested"
    );
    let completed = set(done.ids());
    let left: BTreeSet<String> = all.difference(&completed).cloned().collect();

    let second = h.bus().await;
    assert_lag(h, &second, &topic, &group, left.len() as u64).await;
    let rec = Arc::new(Record::default());
    let sub2 = subscribe(&second, &topic, &group, recorder(&rec)).await;
    rec.wait_for(h, left.len(), "the cancelled and unhandled messages")
        .await;
    close_subs(h, vec![sub2]).await;
    assert_exactly_once("later bus", &left, &rec.ids());
    close_bus(h, &second).await;
}

// 24 -----------------------------------------------------------------------------------------

/// One load for `zero_leaks`: three subscriptions (one closed explicitly, one detached, one
/// left to the bus close), retries, a few thousand messages; everything it allocated is dropped
/// when it returns.
async fn leak_load(h: &Harness, topics: &[String], group: &str, usage: &mut crate::leak::Usage) {
    let n = h.count(2000);
    let bus = h.bus_with(with_retry(fast_retry())).await;
    let done = Arc::new(Counter::default());
    let mut subs = Vec::new();
    for topic in topics {
        subs.push(
            subscribe(
                &bus,
                topic,
                group,
                handler(&done, |done, d| async move {
                    if d.attempt() == 1
                        && d.message().key().is_some_and(|k| k.as_str().ends_with('0'))
                    {
                        return Err("deliberate failure".into());
                    }
                    tokio::task::yield_now().await;
                    done.add();
                    Ok(())
                }),
            )
            .await,
        );
    }
    usage.sample();
    for (t, topic) in topics.iter().enumerate() {
        let batch: Vec<Message> = (0..n / topics.len())
            .map(|i| {
                keyed(
                    topic,
                    &format!("zl-{t}-{i}"),
                    &format!("k{}", i % 100),
                    i as u64,
                )
            })
            .collect();
        if let Err(e) = bus.publish_batch(batch).await {
            panic!("publish_batch: expected Ok, got {e:?}");
        }
    }
    usage.sample();
    let total = n / topics.len() * topics.len();
    done.wait_for(h, total, "every message of the load").await;
    usage.sample();
    let mut subs = subs.into_iter();
    if let Some(first) = subs.next() {
        close_subs(h, vec![first]).await;
    }
    if let Some(second) = subs.next() {
        second.detach();
    }
    let rest: Vec<_> = subs.collect();
    close_bus(h, &bus).await;
    assert!(
        rest.iter().all(eventbus_core::Subscription::is_finished),
        "expected every subscription finished once the bus closed"
    );
}

/// Check 24, `zero_leaks`: after a warm-up run, a run of the same load (three topics, retries, a
/// subscription closed, one detached, one left open until the bus closes) leaves nothing once
/// the bus is closed: tokio tasks back to the starting count (for the warm-up run too), no more
/// threads or file descriptors than at the start (process-wide figures: run it alone in its
/// process), and, when the binary installed the heap counter, heap growth under 100 KB.
pub async fn zero_leaks(h: &Harness) {
    let topics: Vec<String> = (0..3).map(|_| unique("zero-leaks")).collect();
    let group = unique("g");

    let mut warm_up = crate::leak::Usage::begin();
    leak_load(h, &topics, &group, &mut warm_up).await;
    warm_up.finish().await;
    assert_eq!(
        warm_up.leaked_tasks(),
        0,
        "warm-up run: tasks left after close (start {}, peak {}, after close {})",
        warm_up.start.tasks,
        warm_up.peak.tasks,
        warm_up.after_close.tasks
    );

    let mut usage = crate::leak::Usage::begin();
    leak_load(h, &topics, &group, &mut usage).await;
    usage.finish().await;
    let (start, peak, after) = (usage.start, usage.peak, usage.after_close);
    assert!(
        peak.tasks > start.tasks,
        "the load ran no task (start {}, peak {}): nothing measured",
        start.tasks,
        peak.tasks
    );
    assert_eq!(
        usage.leaked_tasks(),
        0,
        "tasks left after close: start {}, peak {}, after close {}",
        start.tasks,
        peak.tasks,
        after.tasks
    );
    assert!(
        usage.leaked_threads() <= 0,
        "threads left after close: start {}, peak {}, after close {}",
        start.threads,
        peak.threads,
        after.threads
    );
    assert!(
        usage.leaked_fds() <= 0,
        "file descriptors left after close: start {}, peak {}, after close {}",
        start.fds,
        peak.fds,
        after.fds
    );
    if after.heap_counted {
        assert!(
            usage.heap_growth() < 100_000,
            "heap grew by {} over a run after warm-up (start {}, peak {}, after close {}); expected under 100 KB",
            crate::leak::Bytes(usage.heap_growth()),
            crate::leak::Bytes(start.heap_bytes as isize),
            crate::leak::Bytes(peak.heap_bytes as isize),
            crate::leak::Bytes(after.heap_bytes as isize),
        );
    }
}

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
    opts.limits = Limits {
        max_message_bytes: 1024,
    };
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
    let corrupt = |id: &str, change: fn(&mut Message)| {
        let mut m = valid.to_message(topic.as_str()).with_header(ID_HEADER, id);
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
            matches!(decoded.get("valid-envelope"), Some(Ok(e)) if *e == valid),
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
/// both buses. Without it, order across instances is not promised; what is promised, and
/// tested, is that the messages of a key that one bus handles are handled by it in publish
/// order, one at a time.
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

// 29 -----------------------------------------------------------------------------------------

/// Check 29, `health_reports` (beyond the shared list: operations that depend on the broker):
/// `bus.health()` shows the transport connected and ready, each open subscription running
/// with its lag as the broker reports it (3 while its handler holds 3 messages, 0 once they are
/// handled; `None` only for a transport without lag), drops a closed subscription, and is not
/// ready once the bus closed.
pub async fn health_reports(h: &Harness) {
    let topic = unique("health");
    let group = unique("g");
    let bus = h.bus().await;
    let gate = Arc::new(Gate::default());
    let handled = Arc::new(Record::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&handled, {
            let gate = Arc::clone(&gate);
            move |handled, d| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.wait().await;
                    handled.push(&d);
                    Ok(())
                }
            }
        }),
    )
    .await;
    publish_all(
        h,
        &bus,
        (0..3).map(|i| message(&topic, &format!("h-{i}"))).collect(),
    )
    .await;
    let lag_supported = !matches!(
        bus.lag(&topic, &group).await,
        Err(Error::Unsupported { .. })
    );
    let expect = |lag: u64| if lag_supported { Some(lag) } else { None };
    let health = until_health(h, &bus, "lag 3 while held", |health| {
        health.subscriptions.len() == 1 && health.subscriptions[0].lag == expect(3)
    })
    .await;
    assert!(health.is_ready(), "expected ready: {health:?}");
    assert_eq!(health.transport, h.name());
    assert_eq!(
        health.connection.state,
        eventbus_core::ConnectionState::Connected
    );
    let s = &health.subscriptions[0];
    assert_eq!(
        (s.topic.as_str(), s.group.as_str()),
        (topic.as_str(), group.as_str())
    );
    assert!(s.running, "{s:?}");

    gate.open();
    handled.wait_for(h, 3, "the held messages").await;
    until_health(h, &bus, "lag 0 once handled", |health| {
        health.subscriptions.first().map(|s| s.lag) == Some(expect(0))
    })
    .await;
    close_subs(h, vec![sub]).await;
    let health = h.within("health", bus.health()).await;
    assert!(
        health.subscriptions.is_empty(),
        "a closed subscription is not reported: {health:?}"
    );
    close_bus(h, &bus).await;
    let health = h.within("health", bus.health()).await;
    assert!(
        health.closed && !health.is_ready(),
        "after close: {health:?}"
    );
}

/// Polls `bus.health()` until `cond` holds (lag is broker state: no notification).
async fn until_health(
    h: &Harness,
    bus: &EventBus,
    what: &str,
    mut cond: impl FnMut(&eventbus_core::Health) -> bool,
) -> eventbus_core::Health {
    let deadline = tokio::time::Instant::now() + h.timeout();
    loop {
        let health = h.within("health", bus.health()).await;
        if cond(&health) {
            return health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: timed out after {:?} waiting for health with {what}; last: {health:?}",
            h.name(),
            h.timeout()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// 30 -----------------------------------------------------------------------------------------

/// Installs, once per process, a global tracing subscriber bridged to OpenTelemetry and the W3C
/// propagator (handlers run on the runtime's worker threads, so a thread-local one would not
/// see them).
fn install_otel() -> OtelOn {
    install_global_subscriber(None);
    OTEL.store(true, SeqCst);
    OtelOn
}

/// The OpenTelemetry bridge is on while this lives (check 30), off again when it is dropped,
/// also when the check fails: checks run after it see no trace headers appear.
struct OtelOn;

impl Drop for OtelOn {
    fn drop(&mut self) {
        OTEL.store(false, SeqCst);
    }
}

/// Whether the OpenTelemetry bridge is on: only while check 30 runs, since it adds trace
/// headers to every message published in a span (which other checks compare).
static OTEL: AtomicBool = AtomicBool::new(false);

/// The process's global subscriber, installed once: OpenTelemetry's bridge (on for check 30)
/// and, given a filter, events to the test output (`crate::log_to_test_output`).
pub(crate) fn install_global_subscriber(log: Option<String>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use opentelemetry::trace::TracerProvider;
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let output = log.map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        let subscriber = tracing_subscriber::registry().with(output).with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("conformance"))
                .with_filter(tracing_subscriber::filter::filter_fn(|_| OTEL.load(SeqCst))),
        );
        // A runner that installed its own subscriber keeps it; the check then says so.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Check 30, `trace_propagation` (beyond the shared list): a message published inside a traced
/// span carries a W3C `traceparent` through the broker, and the handler's span is in the
/// producer's trace (the `tracing-opentelemetry` bridge links them with no glue code).
pub async fn trace_propagation(h: &Harness) {
    use opentelemetry::trace::TraceContextExt;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let _otel = install_otel();
    let topic = unique("traced");
    let group = unique("g");
    let bus = h.bus().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Counter::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&seen, {
            let got = Arc::clone(&got);
            move |seen, d| {
                let got = Arc::clone(&got);
                async move {
                    let trace = tracing::Span::current()
                        .context()
                        .span()
                        .span_context()
                        .trace_id();
                    let header = d.message().headers().get("traceparent").map(str::to_owned);
                    lock(&seen).push((trace, header));
                    got.add();
                    Ok(())
                }
            }
        }),
    )
    .await;
    let producer = tracing::info_span!("conformance.producer");
    let trace = producer.context().span().span_context().trace_id();
    assert_ne!(
        trace,
        opentelemetry::trace::TraceId::INVALID,
        "the producer span has no trace: another global tracing subscriber is installed"
    );
    let m = message(&topic, "traced-0");
    h.within("publish", bus.publish(m).instrument(producer))
        .await
        .unwrap_or_else(|e| panic!("publish: expected Ok, got {e:?}"));
    got.wait_for(h, 1, "the traced message").await;
    let (consumer_trace, header) = lock(&seen)[0].clone();
    let header = header.unwrap_or_else(|| panic!("{}: no traceparent header arrived", h.name()));
    assert!(
        header.contains(&trace.to_string()),
        "traceparent {header:?} should name trace {trace}"
    );
    assert_eq!(
        consumer_trace, trace,
        "the handler's span should be in the producer's trace"
    );
    close_subs(h, vec![sub]).await;
    close_bus(h, &bus).await;
}
