//! Broker faults: the broker restarted while messages are published (check 15).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::Message;
use tokio::task::JoinSet;

use super::helpers::lock;
use crate::conformance::support::{
    Counter, abbreviate, assert_all_received, assert_exactly_once, close_bus, close_subs, handler,
    id_of, ids, join_all, key_seq, keyed, subscribe,
};
use crate::conformance::{Harness, unique};

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
/// A harness that cannot restart its broker (the memory transport has none) has nothing to
/// check here: the check says so and ends.
pub async fn reconnect(h: &Harness) {
    if !h.can_restart_broker() {
        eprintln!(
            "{}: reconnect: the harness has no broker to restart; nothing to check",
            h.name()
        );
        return;
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
