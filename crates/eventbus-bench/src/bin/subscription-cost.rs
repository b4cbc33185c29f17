//! What subscriptions cost in OS threads and broker connections on Kafka: 1, 10 and 100
//! subscriptions (over half as many topics, two groups per topic once there are two), each
//! consuming one message, then `lag` asked for each, then closed.
//!
//! `cargo run --release -p eventbus-bench --bin subscription-cost`
//! (the shared broker: `cargo xtask brokers up kafka`; `EVENTBUS_KAFKA_BROKERS` to point
//! elsewhere).
//!
//! Prints, per count: the process's threads and TCP sockets before the bus, with every
//! subscription consuming, at their peak, and after `close` (which must be back to the first).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
use eventbus_kafka::{KafkaConfig, KafkaTransport, TopicOptions};

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// TCP sockets of this process (the broker connections: nothing else here opens one).
fn sockets() -> usize {
    let inodes: std::collections::HashSet<String> = ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .filter(|inode| inodes.contains(inode))
                .count()
        })
        .unwrap_or(0)
}

struct Row {
    subscriptions: usize,
    before: (usize, usize),
    consuming: (usize, usize),
    peak_threads: usize,
    after: (usize, usize),
}

async fn run(subscriptions: usize, brokers: &str) -> Row {
    let before = (threads(), sockets());
    let topics = subscriptions.div_ceil(2);
    let run_id = std::process::id();
    let names: Vec<String> = (0..topics)
        .map(|t| format!("cost-{run_id}-{subscriptions}-{t}"))
        .collect();
    let mut config = KafkaConfig::new(brokers);
    for name in &names {
        config = config.topic(name, TopicOptions::default().partitions(1));
    }
    let bus = EventBus::new(KafkaTransport::connect(config).await.expect("connect"));
    let handled = Arc::new(AtomicUsize::new(0));
    let mut subs = Vec::new();
    let mut peak_threads = threads();
    for i in 0..subscriptions {
        let handled = Arc::clone(&handled);
        let sub = bus
            .subscribe(
                &names[i % topics],
                &format!("g{}", i / topics),
                handler_fn(move |_d: Delivery| {
                    handled.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, BoxError>(()) }
                }),
            )
            .await
            .expect("subscribe");
        subs.push(sub);
        peak_threads = peak_threads.max(threads());
    }
    for name in &names {
        bus.publish(Message::new(name, "x").with_key("k"))
            .await
            .expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled.load(Ordering::SeqCst) < subscriptions {
        assert!(Instant::now() < deadline, "not every subscription consumed");
        peak_threads = peak_threads.max(threads());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..subscriptions {
        bus.lag(&names[i % topics], &format!("g{}", i / topics))
            .await
            .expect("lag");
    }
    let consuming = (threads(), sockets());
    peak_threads = peak_threads.max(consuming.0);
    for sub in subs {
        sub.close().await;
    }
    bus.close().await.expect("close");
    let after = (threads(), sockets());
    Row {
        subscriptions,
        before,
        consuming,
        peak_threads,
        after,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let brokers = eventbus_testkit::brokers::shared::kafka_brokers();
    println!(
        "{:>13} | {:>14} | {:>22} | {:>12} | {:>13}",
        "subscriptions", "before", "consuming (threads/tcp)", "peak threads", "after close"
    );
    for n in [1, 10, 100] {
        let r = run(n, &brokers).await;
        println!(
            "{:>13} | {:>6} / {:>5} | {:>13} / {:>6} | {:>12} | {:>5} / {:>5}",
            r.subscriptions,
            r.before.0,
            r.before.1,
            r.consuming.0,
            r.consuming.1,
            r.peak_threads,
            r.after.0,
            r.after.1
        );
    }
}
