//! One slow key on the memory bus at its defaults: how long 20,000 messages of 1,000 other
//! keys take, from 8 publishers, while the first key's handler sleeps 500 ms per message (10
//! messages, published first), against the same run without the stall.
//!
//! `cargo run --release -p eventbus-bench --bin slow-key [-- --rounds N]`
//!
//! Prints, per round and as medians, the time until every other key's message was handled,
//! and the longest single publish call. A stalled key should hold back only itself: the
//! ratio stays near 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
use eventbus_memory::MemoryTransport;
use tokio::sync::Notify;

const SLOW: &str = "k0";
const SLOW_MESSAGES: usize = 10;
const SLOW_FOR: Duration = Duration::from_millis(500);
const KEYS: usize = 1_000;
const OTHERS: usize = 20_000;
const PUBLISHERS: usize = 8;

/// (time until the other keys were all handled, longest publish call).
async fn run(stall: bool) -> (Duration, Duration) {
    let bus = EventBus::new(MemoryTransport::new());
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let sub = {
        let (handled, done) = (Arc::clone(&handled), Arc::clone(&done));
        bus.subscribe(
            "orders",
            "billing",
            handler_fn(move |d: Delivery| {
                let (handled, done) = (Arc::clone(&handled), Arc::clone(&done));
                async move {
                    if d.message().key().map(|k| k.as_str()) == Some(SLOW) {
                        tokio::time::sleep(SLOW_FOR).await;
                    } else if handled.fetch_add(1, Ordering::SeqCst) + 1 == OTHERS {
                        done.notify_one();
                    }
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .expect("subscribe")
    };
    if stall {
        for i in 0..SLOW_MESSAGES {
            bus.publish(Message::new("orders", format!("slow-{i}")).with_key(SLOW))
                .await
                .expect("publish");
        }
    }
    let started = Instant::now();
    let finished = done.notified();
    tokio::pin!(finished);
    finished.as_mut().enable();
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let bus = bus.clone();
        publishers.spawn(async move {
            let mut longest = Duration::ZERO;
            for i in (p..OTHERS).step_by(PUBLISHERS) {
                let m =
                    Message::new("orders", format!("m{i}")).with_key(format!("k{}", 1 + i % KEYS));
                let call = Instant::now();
                bus.publish(m).await.expect("publish");
                longest = longest.max(call.elapsed());
            }
            longest
        });
    }
    let mut longest = Duration::ZERO;
    while let Some(publisher) = publishers.join_next().await {
        longest = longest.max(publisher.expect("publisher"));
    }
    finished.await;
    let took = started.elapsed();
    sub.close().await;
    bus.close().await.expect("close");
    (took, longest)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut publish_without, mut publish_with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, pa) = runtime.block_on(run(false));
        let (b, pb) = runtime.block_on(run(true));
        println!(
            "round {round}: other keys done in {a:.1?} without the stall, {b:.1?} with it; longest publish {pa:.1?} / {pb:.1?}"
        );
        without.push(a);
        with.push(b);
        publish_without.push(pa);
        publish_with.push(pb);
    }
    let (a, b) = (median(without), median(with));
    println!(
        "memory bus, defaults, {OTHERS} messages of {KEYS} other keys from {PUBLISHERS} publishers, key {SLOW} sleeping {SLOW_FOR:?} x {SLOW_MESSAGES}:\n  other keys done in {a:.1?} without the stall, {b:.1?} with it (median of {rounds}): {:.2}x\n  longest publish call {:.1?} without, {:.1?} with",
        b.as_secs_f64() / a.as_secs_f64(),
        median(publish_without),
        median(publish_with),
    );
}
