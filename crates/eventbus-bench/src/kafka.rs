//! The Kafka bus against raw rdkafka, end to end on a Kafka-protocol broker: idempotent
//! produce awaiting each delivery report → group consumer → handler → committed offsets.
//!
//! Both sides publish keyed messages (100 keys) with an `eb-id` header (the bus adds its
//! message id there, so both send the same bytes) in pipelined chunks of [`CHUNK`] (queue all, then await every delivery
//! report: what the bus's `publish_batch` does) to a fresh 4-partition topic, with the
//! transport's producer settings. One consumer of a fresh group reads it with the transport's
//! consumer settings on a thread of its own, reads each message's key, id header and payload
//! (what the bus reads to hand a message on), calls the no-op handler, stores each offset and
//! commits the stored offsets every [`COMMIT_INTERVAL`] (the transport's default commit
//! interval). Timed from the first publish to the last handler call; clients are created, the
//! group joined and one warm-up message published (its delivery report awaited) before the
//! clock starts.
//!
//! The broker is `EVENTBUS_KAFKA_BROKERS` if set, else a private Apache Kafka started for the
//! case.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventbus_core::transport::Transport as _;
use eventbus_core::{EventBus, Message, MessageId};
use eventbus_kafka::{KafkaConfig, KafkaTransport};
use eventbus_testkit::brokers::ServerProcess;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::cpu::{Run, Start};
use crate::workload::{Counter, Noop, PAYLOAD_LEN};

/// Publish chunk of both sides.
pub const CHUNK: usize = 256;
/// Keys the messages are spread over.
pub const KEYS: usize = 100;
/// How often the raw consumer commits (the transport's default `commit_interval`).
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// Where the brokers are: given, or a private Kafka that lives as long as this.
#[derive(Debug)]
pub struct Broker {
    brokers: String,
    _private: Option<ServerProcess>,
}

impl Broker {
    /// `EVENTBUS_KAFKA_BROKERS`, else a private Apache Kafka (installed by `cargo xtask brokers
    /// install`); the error says why there is none.
    pub fn start() -> Result<Broker, String> {
        if let Ok(brokers) = std::env::var("EVENTBUS_KAFKA_BROKERS") {
            return Ok(Broker {
                brokers,
                _private: None,
            });
        }
        let kafka = ServerProcess::kafka().map_err(|e| format!("cannot start Kafka: {e}"))?;
        Ok(Broker {
            brokers: format!("127.0.0.1:{}", kafka.port()),
            _private: Some(kafka),
        })
    }

    /// `bootstrap.servers`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }
}

fn payload() -> Bytes {
    Bytes::from_static(&[b'x'; PAYLOAD_LEN])
}

fn topic(side: &str, run: u32) -> String {
    format!("bench-{side}-{}-{run}", std::process::id())
}

fn key(i: usize) -> String {
    format!("key-{}", i % KEYS)
}

/// Raw rdkafka: `n` messages, run number `run` (names are unique per run): its rate and process CPU per message.
pub async fn raw(brokers: &str, n: usize, run: u32) -> Run {
    let topic = topic("raw", run);
    // The topic as the bus would provision it (4 partitions), by the transport's admin path.
    let provisioner = KafkaTransport::connect(KafkaConfig::new(brokers))
        .await
        .expect("connect");
    provisioner.ensure_topic(&topic).await.expect("topic");
    provisioner.close().await.expect("close");
    // The transport's producer settings (`KafkaTransport::connect`).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
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
    // The transport's consumer settings (`subscribe`).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench.{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
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
    // One more: the warm-up message.
    let counter = Counter::new(n + 1);
    let assigned = Arc::new(AtomicBool::new(false));
    let reader = {
        let (counter, assigned) = (Arc::clone(&counter), Arc::clone(&assigned));
        std::thread::spawn(move || {
            let mut seen = 0;
            let mut last_commit = Instant::now();
            while seen < n + 1 {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    // What the bus reads of every message to hand it on: its key, its id
                    // header and its payload (the bus then copies them into a message of its
                    // own). librdkafka parses a message's headers only when asked, so a raw
                    // loop that skipped them would skip work every real consumer does.
                    let id = m
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == "eb-id"))
                        .and_then(|h| h.value);
                    std::hint::black_box((m.key(), id, m.payload().map(<[u8]>::len)));
                    counter.hit();
                    let _ = consumer.store_offset_from_message(&m);
                    seen += 1;
                }
                if last_commit.elapsed() >= COMMIT_INTERVAL {
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
        })
    };
    // Like the bus after `subscribe`: the clock starts with the partitions assigned.
    while !assigned.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let body = payload();
    // One message, its delivery report awaited, before the clock, on both sides: a new
    // producer gets its producer id and broker connection on its first send.
    producer
        .send_result(
            FutureRecord::to(&topic)
                .key("warm-up")
                .payload(body.as_ref())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "eb-id",
                    value: Some(MessageId::new().as_str()),
                })),
        )
        .map_err(|(e, _)| e)
        .expect("queue")
        .await
        .expect("report")
        .map_err(|(e, _)| e)
        .expect("warm-up delivery");
    let started = Start::now();
    let mut sent = 0;
    while sent < n {
        let mut deliveries = Vec::with_capacity(CHUNK);
        for i in sent..(sent + CHUNK).min(n) {
            let key = key(i);
            let id = MessageId::new();
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: "eb-id",
                value: Some(id.as_str()),
            });
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(body.as_ref())
                .headers(headers);
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("queue"),
            );
        }
        sent += deliveries.len();
        for d in deliveries {
            d.await
                .expect("report")
                .map_err(|(e, _)| e)
                .expect("delivery");
        }
    }
    let figures = started.finish(n, counter.wait().await);
    tokio::task::spawn_blocking(move || {
        reader.join().expect("reader");
        drop(producer);
    })
    .await
    .expect("join");
    figures
}

/// The Kafka bus: `n` messages through `publish_batch` and one subscription: its rate and process CPU per message.
pub async fn bus(brokers: &str, n: usize, run: u32) -> Run {
    let topic = topic("bus", run);
    let transport = KafkaTransport::connect(KafkaConfig::new(brokers))
        .await
        .expect("connect");
    let bus = EventBus::new(transport);
    // One more: the warm-up message.
    let counter = Counter::new(n + 1);
    let sub = bus
        .subscribe(&topic, "bench", Noop(Arc::clone(&counter)))
        .await
        .expect("subscribe");
    // See `raw`.
    bus.publish(Message::new(&topic, payload()).with_key("warm-up"))
        .await
        .expect("warm-up publish");
    let started = Start::now();
    let mut sent = 0;
    while sent < n {
        let chunk: Vec<_> = (sent..(sent + CHUNK).min(n))
            .map(|i| Message::new(&topic, payload()).with_key(key(i)))
            .collect();
        sent += chunk.len();
        bus.publish_batch(chunk).await.expect("publish");
    }
    let figures = started.finish(n, counter.wait().await);
    sub.close().await;
    bus.close().await.expect("close");
    figures
}
