//! The throughput workloads: the dispatcher alone and the memory bus end to end, each with the
//! raw loop it is compared with.
//!
//! Every run is timed from the first send to the last handler call. The messages are built
//! before the clock starts (only a reference count or a move per message is left inside), so
//! what is timed is the hand-off and the handler call. The handler does no work
//! (`black_box` of the payload length), so the figures are the machinery alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventbus_core::{
    BoxError, Delivery, Dispatch, Dispatcher, DispatcherConfig, EventBus, Key, Message,
    RetryPolicy, Route,
};
use eventbus_memory::{MemoryConfig, MemoryTransport};
use tokio::sync::{Notify, mpsc};
use tower::{Service, ServiceExt};

/// Payload bytes of every message (the size the project's baselines use).
pub const PAYLOAD_LEN: usize = 108;
static PAYLOAD: [u8; PAYLOAD_LEN] = [b'x'; PAYLOAD_LEN];

/// Capacity of the raw baseline's channel (the baselines' bounded 1024).
pub const RAW_CAPACITY: usize = 1024;

/// `messages` messages on `topic`, keyed round robin over `keys` keys (`key-0` …).
pub fn messages(topic: &str, keys: usize, messages: usize) -> Vec<Message> {
    let keys: Vec<Key> = (0..keys.max(1))
        .map(|k| Key::from(format!("key-{k}")))
        .collect();
    (0..messages)
        .map(|i| {
            Message::new(topic, Bytes::from_static(&PAYLOAD)).with_key(keys[i % keys.len()].clone())
        })
        .collect()
}

/// The topic of subscription (or route) `t` of a spread workload ([`spread`]).
pub fn spread_topic(t: usize) -> String {
    format!("bench-{t}")
}

/// `messages` messages keyed round robin over `keys` keys, each with the index of its topic:
/// key `k` lives on topic `k mod topics` ([`spread_topic`]), so consecutive messages go round
/// robin over the topics and every key stays on one topic. Were a message's topic chosen
/// apart from its key, `topics` topics would also multiply the (topic, key) pairs each
/// subscription sees, and the subscriptions axis of a growth table would measure keys too.
pub fn spread(keys: usize, topics: usize, messages: usize) -> Vec<(usize, Arc<Message>)> {
    let topics = topics.max(1);
    let names: Vec<String> = (0..topics).map(spread_topic).collect();
    let keys: Vec<Key> = (0..keys.max(1))
        .map(|k| Key::from(format!("key-{k}")))
        .collect();
    (0..messages)
        .map(|i| {
            let k = i % keys.len();
            let t = k % topics;
            let message = Message::new(names[t].as_str(), Bytes::from_static(&PAYLOAD))
                .with_key(keys[k].clone());
            (t, Arc::new(message))
        })
        .collect()
}

/// Counts handler calls and says when the last of a run's messages was handled.
#[derive(Debug)]
pub struct Counter {
    expected: usize,
    seen: AtomicUsize,
    done: Notify,
}

impl Counter {
    /// A counter waiting for `expected` calls.
    pub fn new(expected: usize) -> Arc<Self> {
        Arc::new(Counter {
            expected,
            seen: AtomicUsize::new(0),
            done: Notify::new(),
        })
    }

    /// One handler call.
    pub fn hit(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.expected {
            self.done.notify_one();
        }
    }

    /// Waits for the last call; returns when it was seen.
    pub async fn wait(&self) -> Instant {
        if self.seen.load(Ordering::Relaxed) < self.expected {
            self.done.notified().await;
        }
        Instant::now()
    }
}

/// The no-op handler work, the same on every side: look at the payload.
#[inline]
pub fn touch(message: &Message) {
    std::hint::black_box(message.payload().len());
}

/// A no-op handler counting its calls: the handler of every bus and dispatcher run here.
#[derive(Debug, Clone)]
pub struct Noop(pub Arc<Counter>);

impl Service<Delivery> for Noop {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, d: Delivery) -> Self::Future {
        touch(d.message());
        self.0.hit();
        std::future::ready(Ok(()))
    }
}

/// The raw baseline: one producer task sends `items` into one bounded `tokio::sync::mpsc`
/// ([`RAW_CAPACITY`]), one consumer task awaits a no-op async handler per item. Keys do not
/// matter to it: a single consumer keeps every key's order by construction.
pub async fn raw_mpsc<T>(items: Vec<T>) -> Duration
where
    T: std::borrow::Borrow<Message> + Send + Sync + 'static,
{
    let counter = Counter::new(items.len());
    let (tx, mut rx) = mpsc::channel::<T>(RAW_CAPACITY);
    let c = Arc::clone(&counter);
    let consumer = tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            let handler = async {
                touch(item.borrow());
                c.hit();
            };
            handler.await;
        }
    });
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for item in items {
            if tx.send(item).await.is_err() {
                panic!("the raw consumer is gone");
            }
        }
    });
    let finished = counter.wait().await;
    producer.await.expect("producer");
    consumer.await.expect("consumer");
    finished - started
}

/// The dispatcher alone (default [`DispatcherConfig`]): one producer task drives it as a tower
/// service (`ready`, then `call`) with a no-op handler. The response futures are dropped
/// unawaited (the outcome is still sent), so the cost of awaiting them is not counted.
pub async fn dispatcher(items: Vec<Arc<Message>>) -> Duration {
    let counter = Counter::new(items.len());
    let dispatcher = Dispatcher::new(DispatcherConfig::default());
    let route = Arc::new(
        Route::builder("bench", "bench", Noop(Arc::clone(&counter)))
            .retry(RetryPolicy::default())
            .build(),
    );
    let mut d = dispatcher.clone();
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for message in items {
            let service = ServiceExt::<Dispatch>::ready(&mut d)
                .await
                .expect("dispatcher closed");
            drop(service.call(Dispatch {
                route: Arc::clone(&route),
                message,
            }));
        }
    });
    let finished = counter.wait().await;
    producer.await.expect("producer");
    dispatcher.shutdown().await;
    finished - started
}

/// [`dispatcher`] over `routes` routes (topics [`spread_topic`]`(0..routes)`, one no-op
/// handler each): each item names its route, as [`spread`] makes them. Kept apart from
/// [`dispatcher`] so that the fixed cost workload's loop stays as it was measured; this one
/// also indexes the route of each message. `items` may be any iterator, so a caller can hand
/// over messages as they are made (the peak heap of a growth table does); `messages` is how
/// many it yields, the handler call the clock stops at.
pub async fn dispatcher_routes<I>(items: I, messages: usize, routes: usize) -> Duration
where
    I: IntoIterator<Item = (usize, Arc<Message>)> + Send + 'static,
    I::IntoIter: Send,
{
    let counter = Counter::new(messages);
    let dispatcher = Dispatcher::new(DispatcherConfig::default());
    let routes: Vec<Arc<Route>> = (0..routes.max(1))
        .map(|t| {
            Arc::new(
                Route::builder(&spread_topic(t), "bench", Noop(Arc::clone(&counter)))
                    .retry(RetryPolicy::default())
                    .build(),
            )
        })
        .collect();
    let mut d = dispatcher.clone();
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for (route, message) in items {
            let service = ServiceExt::<Dispatch>::ready(&mut d)
                .await
                .expect("dispatcher closed");
            drop(service.call(Dispatch {
                route: Arc::clone(&routes[route]),
                message,
            }));
        }
    });
    let finished = counter.wait().await;
    producer.await.expect("producer");
    dispatcher.shutdown().await;
    finished - started
}

/// The memory bus end to end: one subscription with a no-op handler, one task publishing
/// `items` one `publish` at a time. The bus is built and subscribed before the clock starts and
/// closed after it stops.
pub async fn memory_bus(items: Vec<Message>) -> Duration {
    let topic = topic_of(&items);
    let messages = items.len();
    memory_bus_topics(items, messages, &[topic]).await
}

/// [`memory_bus`] with one subscription (group `bench`, no-op handler) on each of `topics`;
/// `items` (`messages` of them: the clock stops at that handler call) are published in their
/// order, whatever their topics. Any iterator will do, so a caller can hand over messages as
/// they are made.
pub async fn memory_bus_topics<I>(items: I, messages: usize, topics: &[String]) -> Duration
where
    I: IntoIterator<Item = Message> + Send + 'static,
    I::IntoIter: Send,
{
    let counter = Counter::new(messages);
    let bus = EventBus::builder(MemoryTransport::new()).build();
    let mut subs = Vec::with_capacity(topics.len());
    for topic in topics {
        let sub = bus
            .subscribe(topic, "bench", Noop(Arc::clone(&counter)))
            .await
            .expect("subscribe");
        subs.push(sub);
    }
    let publisher = bus.clone();
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for message in items {
            publisher.publish(message).await.expect("publish");
        }
    });
    let finished = counter.wait().await;
    producer.await.expect("producer");
    for sub in subs {
        sub.close().await;
    }
    bus.close().await.expect("close");
    finished - started
}

/// The consuming half of [`memory_bus`] alone: every message is published before the clock
/// starts, into a topic that holds them all (its group made first, so it keeps them for it),
/// then one subscription with the no-op handler takes them; timed from its subscribe to the
/// last handler call. With [`memory_bus_publishing`], it shows what each half of the pipeline
/// costs without the other running beside it.
pub async fn memory_bus_consuming(items: Vec<Message>) -> Duration {
    let n = items.len();
    let topic = topic_of(&items);
    let bus = holding_all(n);
    make_group(&bus, &topic).await;
    for message in items {
        bus.publish(message).await.expect("publish");
    }
    let counter = Counter::new(n);
    let started = Instant::now();
    let sub = bus
        .subscribe(&topic, "bench", Noop(Arc::clone(&counter)))
        .await
        .expect("subscribe");
    let finished = counter.wait().await;
    sub.close().await;
    bus.close().await.expect("close");
    finished - started
}

/// The publishing half of [`memory_bus`] alone: one task publishes `items` one `publish` at a
/// time, as there, into a topic that holds them all (its group made first, with no
/// subscription taking them), so no publish waits for room; timed from the first publish to
/// the last.
pub async fn memory_bus_publishing(items: Vec<Message>) -> Duration {
    let topic = topic_of(&items);
    let bus = holding_all(items.len());
    make_group(&bus, &topic).await;
    let publisher = bus.clone();
    let started = Instant::now();
    tokio::spawn(async move {
        for message in items {
            publisher.publish(message).await.expect("publish");
        }
    })
    .await
    .expect("publisher");
    let took = started.elapsed();
    bus.close().await.expect("close");
    took
}

/// Makes group `bench` of `topic` (a subscription opened and closed), so that the topic keeps
/// what is published next for it.
async fn make_group(bus: &EventBus, topic: &str) {
    bus.subscribe(topic, "bench", Noop(Counter::new(usize::MAX)))
        .await
        .expect("subscribe")
        .close()
        .await;
}

/// The topic of a run's messages (`bench` for none).
fn topic_of(items: &[Message]) -> String {
    items
        .first()
        .map_or_else(|| "bench".to_owned(), |m| m.topic().to_owned())
}

/// A memory bus whose topics hold `n` messages: neither half of the pipeline waits for the
/// other.
fn holding_all(n: usize) -> EventBus {
    EventBus::builder(MemoryTransport::with_config(
        MemoryConfig::default().topic_capacity(n),
    ))
    .build()
}

/// Messages per second.
pub fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}
