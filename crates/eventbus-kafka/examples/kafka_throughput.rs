//! End-to-end throughput over a Kafka-protocol broker: the bus (idempotent publish awaiting the
//! delivery reports → handler → tracked commit) against raw rdkafka doing the same work (the
//! same producer and consumer settings, a group consumer storing each offset and committing
//! every 200 ms, the transport's default interval), in the same run, interleaved (raw, bus,
//! bus, raw, ...: the broker's store grows, so neither side always goes first); prints
//! medians and the ratio.
//!
//! `cargo run --release -p eventbus-kafka --example kafka_throughput [-- --messages N --rounds N --brokers B]`
//!
//! Without `--brokers` it starts a private tansu (sqlite storage; `tansu` on the `PATH`).
//! The raw side sends the one header the bus adds to a plain message (`eb-id`): against
//! tansu, a record header alone divides the produce rate by about four.
//! Both sides publish in pipelined chunks of 256 (queue all, then await all delivery reports;
//! the bus's `publish_batch` does exactly this) to a fresh 4-partition topic, while one
//! consumer of a fresh group reads it; the clock runs from the first publish to the last
//! message handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventbus_core::transport::Transport;
use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
use eventbus_kafka::{KafkaConfig, KafkaTransport};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio::sync::Notify;

const CHUNK: usize = 256;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn payload() -> Vec<u8> {
    vec![b'x'; 108]
}

async fn create_topic(brokers: &str, topic: &str) {
    let t = KafkaTransport::connect(KafkaConfig::new(brokers))
        .await
        .expect("connect");
    t.ensure_topic(topic).await.expect("create topic");
    t.close().await.expect("close");
}

async fn raw(brokers: &str, n: u64, run: u32) -> f64 {
    let topic = format!("bench-raw-{}-{run}", std::process::id());
    create_topic(brokers, &topic).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", "1065536")
        .create()
        .expect("producer");
    // Before the clock, as the bus's producer does when it provisions the topic (it has
    // also had its producer id since connecting): the topic's metadata, so the first send
    // does not wait for a lookup.
    {
        let producer = producer.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(drop)
        })
        .await
        .expect("metadata")
        .expect("metadata");
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-{run}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    // The topic's 4 partitions from offset 0 (the topic is new), committed under the group.
    // The bus's `subscribe` returns once the group assigned it and it read the committed
    // offsets it starts from; a raw `subscribe` would still be looking its offsets up (an
    // offset fetch, then the reset to the earliest) with the clock running.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(0))
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let got = Arc::new(AtomicU64::new(0));
    let assigned = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Notify::new());
    let reader = {
        let (got, assigned, done) = (Arc::clone(&got), Arc::clone(&assigned), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut last_commit = Instant::now();
            // n and the warm-up message.
            while got.load(Ordering::Relaxed) < n + 1 {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        // A trivial handler, then the offset stored for the next commit.
                        std::hint::black_box(m.payload());
                        let _ = consumer.store_offset_from_message(&m);
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(_)) => {}
                    None => {}
                }
                // The transport's default commit interval.
                if last_commit.elapsed() >= Duration::from_millis(200) {
                    last_commit = Instant::now();
                    let _ = consumer.commit_consumer_state(CommitMode::Async);
                }
                if !assigned.load(Ordering::Relaxed)
                    && consumer.assignment().is_ok_and(|a| a.count() > 0)
                {
                    assigned.store(true, Ordering::Release);
                }
            }
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
            done.notify_one();
        })
    };
    // Like the bus after subscribe: measure with the partitions assigned.
    while !assigned.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = payload();
    // One message, its delivery report awaited, before the clock, on both sides: a new
    // producer gets its producer id and broker connection on its first send.
    let id = eventbus_core::MessageId::new();
    let warm_up = FutureRecord::to(&topic)
        .key("warm-up")
        .payload(&body)
        .headers(OwnedHeaders::new().insert(Header {
            key: "eb-id",
            value: Some(id.as_str()),
        }));
    producer
        .send_result(warm_up)
        .map_err(|(e, _)| e)
        .expect("queue")
        .await
        .expect("report")
        .map_err(|(e, _)| e)
        .expect("warm-up delivery");
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut deliveries = Vec::with_capacity(CHUNK);
        for i in sent..(sent + CHUNK as u64).min(n) {
            let key = format!("k{}", i % 100);
            // The one header the bus adds to a plain message: its id, of the same length
            // (tansu stores headers slowly, so leaving it out would measure the broker).
            let id = eventbus_core::MessageId::new();
            let headers = OwnedHeaders::new().insert(Header {
                key: "eb-id",
                value: Some(id.as_str()),
            });
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&body)
                .headers(headers);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("queue"),
            );
        }
        sent += deliveries.len() as u64;
        for d in deliveries {
            d.await
                .expect("report")
                .map_err(|(e, _)| e)
                .expect("delivery");
        }
    }
    let published = started.elapsed();
    let notified = done.notified();
    if got.load(Ordering::Relaxed) < n + 1 {
        notified.await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "  raw: published in {published:?}, handled in {:?}",
        started.elapsed()
    );
    reader.join().expect("reader");
    rate
}

async fn bus(brokers: &str, n: u64, run: u32) -> f64 {
    let topic = format!("bench-bus-{}-{run}", std::process::id());
    let transport = KafkaTransport::connect(KafkaConfig::new(brokers))
        .await
        .expect("connect");
    let bus = EventBus::new(transport);
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let sub = {
        let (got, done) = (Arc::clone(&got), Arc::clone(&done));
        bus.subscribe(
            &topic,
            "bench",
            handler_fn(move |d: Delivery| {
                let (got, done) = (Arc::clone(&got), Arc::clone(&done));
                async move {
                    std::hint::black_box(d.message().payload());
                    if got.fetch_add(1, Ordering::Relaxed) == n {
                        done.notify_one();
                    }
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .expect("subscribe")
    };
    let body = payload();
    // See `raw`.
    bus.publish(Message::new(&topic, body.clone()).with_key("warm-up"))
        .await
        .expect("warm-up publish");
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Message> = (sent..(sent + CHUNK as u64).min(n))
            .map(|i| Message::new(&topic, body.clone()).with_key(format!("k{}", i % 100)))
            .collect();
        sent += batch.len() as u64;
        bus.publish_batch(batch).await.expect("publish");
    }
    let published = started.elapsed();
    let notified = done.notified();
    if got.load(Ordering::Relaxed) < n + 1 {
        notified.await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "  bus: published in {published:?}, handled in {:?}",
        started.elapsed()
    );
    sub.close().await;
    bus.close().await.expect("close");
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = arg("--messages", "20000").parse().expect("--messages N");
    let rounds: u32 = arg("--rounds", "3").parse().expect("--rounds N");
    let given = arg("--brokers", "");
    let private = given
        .is_empty()
        .then(|| eventbus_testkit::process::ServerProcess::tansu(&[]).expect("start tansu"));
    let brokers = match &private {
        Some(p) => format!("127.0.0.1:{}", p.port()),
        None => given,
    };
    let (mut raws, mut buses) = (Vec::new(), Vec::new());
    for run in 0..rounds {
        // The broker's store grows with every run: alternate which side goes first, so
        // neither always meets the larger one.
        let (r, b) = if run % 2 == 0 {
            let r = raw(&brokers, n, run).await;
            (r, bus(&brokers, n, run).await)
        } else {
            let b = bus(&brokers, n, run).await;
            (raw(&brokers, n, run).await, b)
        };
        println!("round {run}: raw rdkafka {r:.0} msg/s, bus {b:.0} msg/s");
        raws.push(r);
        buses.push(b);
    }
    let (r, b) = (median(raws), median(buses));
    println!(
        "median over {rounds} rounds of {n} messages: raw rdkafka {r:.0} msg/s, bus {b:.0} msg/s, bus/raw {:.2}",
        b / r
    );
}
