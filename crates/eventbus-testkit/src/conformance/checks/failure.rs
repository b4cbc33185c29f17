//! Failure: handlers that fail or panic: retries in place, redelivery by the transport, key
//! order under retries, dead letters, and carrying on afterwards (checks 4, 8, 18, 19, 20).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::{BoxError, Message, RetryPolicy};

use super::helpers::{lock, with_retry};
use crate::conformance::support::{
    Counter, Gate, HandlerResult, Record, assert_exactly_once, assert_lag, close_bus, close_subs,
    fast_retry, handler, id_of, ids, key_seq, keyed, publish_all, recorder, subscribe,
};
use crate::conformance::{Harness, unique};

/// Subscription options under which a message that failed for good goes back to the
/// transport as failed (no dead-letter topic), for checks of the transport's redelivery.
fn handed_back(retry: RetryPolicy) -> eventbus_core::SubscribeOptions {
    eventbus_core::SubscribeOptions::new()
        .retry(retry)
        .dead_letter(eventbus_core::DeadLetter::off())
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
        if i > 0
            && i % (others / LATER as usize).max(1) == 0
            && let Some(seq) = later.next()
        {
            mixed.push(keyed(&topic, &format!("retried-{seq}"), "retried", seq));
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
    assert_eq!(bus.dead_lettered(), 1, "dead-lettered: {stats:?}");
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
