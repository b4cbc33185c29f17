//! Key affinity in a consumer group: members join and leave (one of them with a handler stuck
//! on a message) while keyed messages flow; each key's messages are handled one at a time,
//! in publish order, across all members, and every message is handled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::{BoxError, Delivery, EventBus, Message, Subscription, handler_fn};
use eventbus_memory::{MemoryConfig, MemoryTransport};
use tokio::sync::{Notify, watch};

/// How long to wait for something before failing with a message; no assertion is on time.
const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "affinity";
const GROUP: &str = "workers";
const KEYS: u64 = 32;
const PER_KEY: u64 = 50;
const TOTAL: usize = (KEYS * PER_KEY) as usize;

#[derive(Default)]
struct Calls {
    /// (member, key, seq) in the order handlers finished.
    handled: Vec<(usize, String, u64)>,
    distinct: BTreeSet<(String, u64)>,
    /// Handlers of each key running now.
    running: BTreeMap<String, usize>,
    /// Handler calls that started while another of their key was running.
    overlaps: Vec<String>,
    /// Set to a member: its next handler call never finishes.
    stall: Option<usize>,
    stuck: Option<(String, u64)>,
}

struct State {
    calls: Mutex<Calls>,
    /// Distinct messages handled.
    progress: watch::Sender<usize>,
    stuck: Notify,
}

/// Counts a running handler of `key` until dropped, also when the call is dropped unfinished.
struct Running<'a>(&'a State, String);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self
            .0
            .calls
            .lock()
            .unwrap()
            .running
            .get_mut(&self.1)
            .unwrap() -= 1;
    }
}

impl State {
    async fn handle(&self, member: usize, d: Delivery) {
        let key = d.message().key().expect("keyed").to_string();
        let seq: u64 = std::str::from_utf8(d.payload()).unwrap().parse().unwrap();
        let stall = {
            let mut calls = self.calls.lock().unwrap();
            let running = calls.running.entry(key.clone()).or_default();
            *running += 1;
            if *running > 1 {
                calls
                    .overlaps
                    .push(format!("{key}:{seq} at member {member}"));
            }
            let stall = calls.stall == Some(member);
            if stall {
                calls.stall = None;
                calls.stuck = Some((key.clone(), seq));
            }
            stall
        };
        let _running = Running(self, key.clone());
        if stall {
            self.stuck.notify_one();
            std::future::pending::<()>().await;
        }
        // Slow and uneven, so members hold several keys' messages when they join or leave.
        for _ in 0..=(seq % 5) {
            tokio::task::yield_now().await;
        }
        let mut calls = self.calls.lock().unwrap();
        calls.handled.push((member, key.clone(), seq));
        calls.distinct.insert((key, seq));
        let n = calls.distinct.len();
        self.progress.send_replace(n);
    }

    async fn wait_handled(&self, n: usize) {
        let mut progress = self.progress.subscribe();
        let reached = tokio::time::timeout(WAIT, progress.wait_for(|&got| got >= n))
            .await
            .is_ok();
        assert!(
            reached,
            "expected {n} messages handled within {WAIT:?}, got {}",
            *progress.borrow()
        );
    }
}

fn member_bus(broker: &MemoryTransport) -> EventBus {
    // A short drain, so a member closing with a stuck handler drops it and its message goes
    // back to the broker unsettled.
    EventBus::builder(broker.connect())
        .max_buffered(8)
        .drain_timeout(Duration::from_millis(50))
        .build()
}

async fn join(bus: &EventBus, st: &Arc<State>, member: usize) -> Subscription {
    let st = Arc::clone(st);
    bus.subscribe(
        TOPIC,
        GROUP,
        handler_fn(move |d: Delivery| {
            let st = Arc::clone(&st);
            async move {
                st.handle(member, d).await;
                Ok::<_, BoxError>(())
            }
        }),
    )
    .await
    .expect("subscribe")
}

/// Members 0 and 1 start; 2 joins; 1 leaves; 2 gets stuck on a message; 3 joins while it is
/// stuck; 2's bus closes, dropping the stuck call. Publishing goes on throughout, held back by
/// a small topic capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_in_order_across_members_joining_and_leaving() {
    let broker = MemoryTransport::with_config(MemoryConfig::default().topic_capacity(64));
    let st = Arc::new(State {
        calls: Mutex::default(),
        progress: watch::channel(0).0,
        stuck: Notify::new(),
    });
    let buses: Vec<EventBus> = (0..4).map(|_| member_bus(&broker)).collect();
    let mut subs: Vec<Option<Subscription>> = vec![
        Some(join(&buses[0], &st, 0).await),
        Some(join(&buses[1], &st, 1).await),
        None,
        None,
    ];

    let publisher = EventBus::new(broker.connect());
    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            for seq in 0..PER_KEY {
                for k in 0..KEYS {
                    let m = Message::new(TOPIC, seq.to_string()).with_key(format!("k{k}"));
                    publisher.publish(m).await.expect("publish");
                }
            }
        }
    });

    st.wait_handled(TOTAL / 5).await;
    subs[2] = Some(join(&buses[2], &st, 2).await);
    st.wait_handled(2 * TOTAL / 5).await;
    subs[1].take().unwrap().close().await;
    st.wait_handled(3 * TOTAL / 5).await;
    let stuck = st.stuck.notified();
    st.calls.lock().unwrap().stall = Some(2);
    assert!(
        tokio::time::timeout(WAIT, stuck).await.is_ok(),
        "member 2 took no message within {WAIT:?}"
    );
    subs[3] = Some(join(&buses[3], &st, 3).await);
    // Closing the bus ends its subscription: the stuck call is dropped after the drain.
    buses[2].close().await.expect("close member 2's bus");
    drop(subs[2].take());
    st.wait_handled(TOTAL).await;
    publishing.await.expect("publisher");

    for sub in subs.into_iter().flatten() {
        sub.close().await;
    }
    for bus in buses.iter().chain([&publisher]) {
        bus.close().await.expect("close");
    }
    assert_eq!(broker.pending(TOPIC, GROUP), Some(0), "all settled");

    let calls = st.calls.lock().unwrap();
    assert_eq!(
        calls.overlaps,
        Vec::<String>::new(),
        "keys handled twice at once"
    );
    assert_eq!(calls.distinct.len(), TOTAL, "every message handled");
    let mut per_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, key, seq) in &calls.handled {
        per_key.entry(key).or_default().push(*seq);
    }
    for (key, seqs) in &per_key {
        // At least once: a message handled but not settled when its member left is handled
        // again, right after, so a key's handled positions never go back.
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "{key} handled out of order: {seqs:?}"
        );
    }
    let (key, seq) = calls.stuck.clone().expect("a stuck call");
    let handled_by: Vec<usize> = calls
        .handled
        .iter()
        .filter(|(_, k, s)| *k == key && *s == seq)
        .map(|&(m, _, _)| m)
        .collect();
    assert!(
        !handled_by.is_empty() && !handled_by.contains(&2),
        "{key}:{seq}, stuck at member 2, handled by {handled_by:?}: expected another member"
    );
    let members: BTreeSet<usize> = calls.handled.iter().map(|&(m, _, _)| m).collect();
    assert_eq!(
        members,
        BTreeSet::from([0, 1, 2, 3]),
        "members that handled messages"
    );
    eprintln!(
        "{} calls for {TOTAL} messages ({} handled again)",
        calls.handled.len(),
        calls.handled.len() - TOTAL
    );
}
