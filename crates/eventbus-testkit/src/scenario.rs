//! Load scenarios: many aggregates over several topics, versions published in order per
//! aggregate, checked for loss and order, timed to the last receipt; and the raw
//! `tokio::sync::mpsc` baseline doing the same work with nothing of ours in between.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use eventbus_core::{BoxError, Delivery, DispatcherStats, Envelope, EventBus, Message, handler_fn};
use tokio::sync::{Notify, mpsc};

use crate::leak::Usage;
use crate::order::VersionTracker;

/// What each message looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A raw keyed message: payload = version (u64 LE) + aggregate (u32 LE) + padding.
    Raw,
    /// A domain-event envelope (headers carry aggregate id and version).
    Envelope,
}

/// A load: `aggregates` named `aggregate-i`, aggregate `i` on topic `i % topics`, each
/// publishing versions `1..=versions` in order.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Topics.
    pub topics: usize,
    /// Aggregates (keys), over all topics.
    pub aggregates: usize,
    /// Versions per aggregate.
    pub versions: u64,
    /// Payload bytes per message (at least 12).
    pub payload: usize,
    /// Message shape.
    pub shape: Shape,
    /// Give up waiting for receipts after this long.
    pub deadline: Duration,
}

impl Load {
    /// Messages in the load.
    pub fn messages(&self) -> u64 {
        self.aggregates as u64 * self.versions
    }
    fn topic(&self, t: usize) -> String {
        format!("load-{}-{t}", std::process::id())
    }
    fn message(&self, topic: &str, aggregate: usize, version: u64) -> Message {
        let key = format!("aggregate-{aggregate}");
        match self.shape {
            Shape::Raw => {
                let mut b = BytesMut::with_capacity(self.payload.max(12));
                b.put_u64_le(version);
                b.put_u32_le(aggregate as u32);
                b.resize(self.payload.max(12), 0);
                Message::new(topic, b.freeze()).with_key(key)
            }
            Shape::Envelope => {
                let payload = Bytes::from(vec![b'x'; self.payload]);
                Envelope::new(key, "Tick", version, payload)
                    .map(|e| e.to_message(topic))
                    .unwrap_or_else(|e| panic!("load builds valid envelopes: {e}"))
            }
        }
    }
}

/// Decodes (aggregate index, version) the way a handler of `shape` would.
fn decode(shape: Shape, message: &Message) -> Result<(usize, u64), BoxError> {
    match shape {
        Shape::Raw => {
            let mut p = message.payload().clone();
            if p.len() < 12 {
                return Err("short payload".into());
            }
            let version = p.get_u64_le();
            Ok((p.get_u32_le() as usize, version))
        }
        Shape::Envelope => {
            let env = Envelope::from_message(message)?;
            let index = env
                .aggregate_id
                .as_str()
                .strip_prefix("aggregate-")
                .and_then(|i| i.parse().ok())
                .ok_or("unexpected aggregate id")?;
            Ok((index, env.event_version.get()))
        }
    }
}

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// What ran.
    pub label: String,
    /// Messages published.
    pub published: u64,
    /// Deliveries received (duplicates included).
    pub received: u64,
    /// Messages never received.
    pub lost: u64,
    /// Deliveries out of order or duplicated.
    pub order_violations: u64,
    /// First publish to last receipt.
    pub elapsed: Duration,
    /// Median and 99th percentile publish latency.
    pub publish_latency: (Duration, Duration),
    /// Tasks, threads, fds and heap at start, peak and after close.
    pub usage: Usage,
    /// Dispatcher counters at the end (bus runs only).
    pub dispatcher: Option<DispatcherStats>,
}

impl Report {
    /// Received messages per second.
    pub fn throughput(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Progress {
    tracker: VersionTracker,
    expected: u64,
    done: Notify,
    finished_at: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    fn observe(&self, aggregate: usize, version: u64) {
        if self.tracker.observe(aggregate, version) == self.expected {
            *self.finished_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.done.notify_one();
        }
    }

    /// Waits for the last receipt (or the deadline), sampling usage meanwhile.
    async fn wait(&self, usage: &mut Usage, deadline: Duration) -> Option<Instant> {
        let give_up = tokio::time::sleep(deadline);
        tokio::pin!(give_up);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                () = self.done.notified() => break,
                () = &mut give_up => break,
                _ = tick.tick() => usage.sample(),
            }
        }
        usage.sample();
        *self.finished_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// Runs `load` through a bus built by `build` (usage is measured from before it is built to
/// after it is closed). One subscription per topic, one publishing task per topic.
pub async fn run_bus(label: &str, load: Load, build: impl FnOnce() -> EventBus) -> Report {
    let mut usage = Usage::begin();
    let bus = build();
    let progress = Arc::new(Progress {
        tracker: VersionTracker::new(load.aggregates),
        expected: load.messages(),
        done: Notify::new(),
        finished_at: Default::default(),
    });
    let mut subs = Vec::new();
    for t in 0..load.topics {
        let progress = Arc::clone(&progress);
        let handler = handler_fn(move |d: Delivery| {
            let decoded = decode(load.shape, d.message());
            let progress = Arc::clone(&progress);
            async move {
                let (aggregate, version) = decoded?;
                progress.observe(aggregate, version);
                Ok::<_, BoxError>(())
            }
        });
        match bus.subscribe(&load.topic(t), "load", handler).await {
            Ok(sub) => subs.push(sub),
            Err(e) => panic!("subscribe failed: {e}"),
        }
    }
    usage.sample();

    let started = Instant::now();
    let publishers: Vec<_> = (0..load.topics)
        .map(|t| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let topic = load.topic(t);
                let mut latencies =
                    Vec::with_capacity((load.messages() / load.topics as u64) as usize);
                for version in 1..=load.versions {
                    for aggregate in (t..load.aggregates).step_by(load.topics) {
                        let message = load.message(&topic, aggregate, version);
                        let sent = Instant::now();
                        if let Err(e) = bus.publish(message).await {
                            panic!("publish failed: {e}");
                        }
                        latencies.push(sent.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let finished = progress.wait(&mut usage, load.deadline).await;
    let mut latencies = Vec::new();
    for p in publishers {
        latencies.extend(p.await.unwrap_or_default());
    }
    let published = latencies.len() as u64;
    let publish_latency = percentiles(latencies);
    let dispatcher = bus.stats();
    for sub in subs {
        sub.close().await;
    }
    if let Err(e) = bus.close().await {
        panic!("close failed: {e}");
    }
    drop(bus);
    usage.finish().await;

    Report {
        label: label.to_owned(),
        published,
        received: progress.tracker.received(),
        lost: progress.tracker.lost(load.versions),
        order_violations: progress.tracker.violations(),
        elapsed: finished.unwrap_or_else(Instant::now) - started,
        publish_latency,
        usage,
        dispatcher: Some(dispatcher),
    }
}

/// The baseline: the same messages and handler work through one bounded `tokio::sync::mpsc`
/// (capacity 1024) per topic, each drained by one task calling the handler in a loop.
pub async fn run_raw_mpsc(label: &str, load: Load) -> Report {
    let mut usage = Usage::begin();
    let progress = Arc::new(Progress {
        tracker: VersionTracker::new(load.aggregates),
        expected: load.messages(),
        done: Notify::new(),
        finished_at: Default::default(),
    });
    let mut consumers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..load.topics {
        let (tx, mut rx) = mpsc::channel::<Arc<Message>>(1024);
        senders.push(tx);
        let progress = Arc::clone(&progress);
        consumers.push(tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let handler = async {
                    let (aggregate, version) = decode(load.shape, &message)?;
                    progress.observe(aggregate, version);
                    Ok::<_, BoxError>(())
                };
                if let Err(e) = handler.await {
                    panic!("raw handler failed: {e}");
                }
            }
        }));
    }
    let started = Instant::now();
    let publishers: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(t, tx)| {
            tokio::spawn(async move {
                let topic = load.topic(t);
                let mut latencies = Vec::new();
                for version in 1..=load.versions {
                    for aggregate in (t..load.aggregates).step_by(load.topics) {
                        let message = Arc::new(load.message(&topic, aggregate, version));
                        let sent = Instant::now();
                        if tx.send(message).await.is_err() {
                            panic!("raw consumer gone");
                        }
                        latencies.push(sent.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let finished = progress.wait(&mut usage, load.deadline).await;
    let mut latencies = Vec::new();
    for p in publishers {
        latencies.extend(p.await.unwrap_or_default());
    }
    for c in consumers {
        let _ = c.await;
    }
    let published = latencies.len() as u64;
    let publish_latency = percentiles(latencies);
    usage.finish().await;
    Report {
        label: label.to_owned(),
        published,
        received: progress.tracker.received(),
        lost: progress.tracker.lost(load.versions),
        order_violations: progress.tracker.violations(),
        elapsed: finished.unwrap_or_else(Instant::now) - started,
        publish_latency,
        usage,
        dispatcher: None,
    }
}
