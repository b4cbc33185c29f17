//! Lifecycle: closing and dropping subscriptions and buses: what is left to the group,
//! cancellation, draining, shutdown that is not failure, nothing leaked (checks 6, 7, 10, 12,
//! 13, 22, 23, 24).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use eventbus_core::{Error, Message, Permanent};
use tokio::task::JoinSet;

use super::helpers::{publish_batch, set, with_retry};
use crate::conformance::support::{
    Counter, HandlerResult, Record, assert_exactly_once, assert_lag, bounded, close_bus,
    close_subs, fast_retry, handler, id_of, ids, join_all, keyed, message, publish_all, recorder,
    subscribe,
};
use crate::conformance::{Harness, unique};

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
