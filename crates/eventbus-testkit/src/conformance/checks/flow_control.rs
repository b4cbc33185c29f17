//! Flow control: a held or stalled handler holds up only its own key, and a bus holds no more
//! than its bounds (checks 5, 17, 21).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use eventbus_core::{EventBus, Message};

use super::helpers::set;
use crate::conformance::support::{
    Counter, Gate, Record, assert_exactly_once, assert_lag, bounded, close_bus, close_subs,
    handler, id_of, ids, keyed, publish_all, subscribe,
};
use crate::conformance::{Harness, unique};

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
