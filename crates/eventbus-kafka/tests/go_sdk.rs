//! Sharing Kafka topics with services on the Go SDK: its records (key the aggregate id, value
//! the JSON envelope, `X-*` headers) read with `Codec::GoSdk` in each aggregate's order, and
//! this bus's records written as the Go SDK writes them. The Go side is played by a raw
//! rdkafka client doing what the Go SDK's `kafka.go` does (`PublishEnvelope`, and a consumer
//! reading the value): the Go module itself is refused by this machine's module proxy (see
//! `crates/eventbus-core/tests/golden/go-sdk/README.md`).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use eventbus_core::{BoxError, Codec, Delivery, Envelope, EventBus, handler_fn};
use eventbus_kafka::KafkaTransport;
use eventbus_testkit::order::VersionTracker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{SharedBroker, config, unique};
use tokio::sync::mpsc;

/// The number `a` of aggregate `order:<a>`.
fn aggregate(env: &Envelope) -> usize {
    let id = env.aggregate_id.as_str();
    id.strip_prefix("order:")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an aggregate of the test: {id}"))
}

const WAIT: Duration = Duration::from_secs(30);

fn go_body(aggregate: &str, version: u64) -> String {
    format!(
        r#"{{"event_id":"{aggregate}-{version}","aggregate_id":"{aggregate}","event_type":"Step","event_version":{version},"timestamp":"2026-03-01T10:00:00Z","tenant_id":3,"payload":{{"n":{version}}}}}"#
    )
}

async fn bus(brokers: &str, topic: &str) -> EventBus {
    EventBus::builder(KafkaTransport::connect(config(brokers)).await.unwrap())
        .topic_codec(topic, Codec::GoSdk)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_records_are_read_in_each_aggregates_order() {
    const AGGREGATES: u64 = 4;
    const VERSIONS: u64 = 25;
    let broker = SharedBroker::get();
    let topic = unique("go-orders");
    let bus = bus(&broker.brokers(), &topic).await;
    let order = Arc::new(VersionTracker::new(AGGREGATES as usize));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let record = Arc::clone(&order);
    let sub = bus
        .subscribe(
            &topic,
            "rust-billing",
            handler_fn(move |d: Delivery| {
                let (record, done_tx) = (Arc::clone(&record), done_tx.clone());
                async move {
                    let env = d.envelope()?;
                    assert_eq!(env.tenant_id.as_deref(), Some("3"));
                    let v = env.event_version.get();
                    tokio::time::sleep(Duration::from_millis((VERSIONS - v) % 5)).await;
                    record.observe(aggregate(&env), v);
                    done_tx.send(()).unwrap();
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    // The Go SDK's producer: key, JSON value, X-* headers.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    for v in 1..=VERSIONS {
        for a in 0..AGGREGATES {
            let aggregate = format!("order:{a}");
            let body = go_body(&aggregate, v);
            let (id, version) = (format!("{aggregate}-{v}"), v.to_string());
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "X-Event-ID",
                    value: Some(&id),
                })
                .insert(Header {
                    key: "X-Aggregate-ID",
                    value: Some(&aggregate),
                })
                .insert(Header {
                    key: "X-Event-Version",
                    value: Some(&version),
                })
                .insert(Header {
                    key: "X-Event-Type",
                    value: Some("Step"),
                })
                .insert(Header {
                    key: "X-Tenant-ID",
                    value: Some("3"),
                });
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&aggregate)
                        .payload(&body)
                        .headers(headers),
                    WAIT,
                )
                .await
                .unwrap();
        }
    }
    for _ in 0..AGGREGATES * VERSIONS {
        tokio::time::timeout(WAIT, done.recv())
            .await
            .expect("every Go record handled")
            .unwrap();
    }
    assert_eq!(order.received(), AGGREGATES * VERSIONS);
    assert_eq!((order.violations(), order.lost(VERSIONS)), (0, 0));
    sub.close().await;
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_this_bus_publishes_is_a_record_as_the_go_sdk_writes_it() {
    let broker = SharedBroker::get();
    let topic = unique("go-payments");
    let bus = bus(&broker.brokers(), &topic).await;
    let sent = Envelope::new("payment:9", "PaymentCaptured", 4, &br#"{"cents":250}"#[..])
        .unwrap()
        .with_tenant_id("12")
        .with_correlation_id("corr-1");
    bus.publish_envelope(&topic, &sent).await.unwrap();
    bus.close().await.unwrap();
    // The Go SDK's consumer side: the record as it is on the broker.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", unique("go-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let record = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            assert!(std::time::Instant::now() < deadline, "no record");
            if let Some(r) = consumer.poll(Duration::from_millis(200)) {
                break r.unwrap().detach();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(record.key(), Some(&b"payment:9"[..]));
    let body: serde_json::Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
    assert_eq!(body["event_id"], sent.event_id.as_str());
    assert_eq!(body["event_version"], 4);
    assert_eq!(body["tenant_id"], 12);
    assert_eq!(body["correlation_id"], "corr-1");
    assert_eq!(body["payload"]["cents"], 250);
    let headers: HashMap<&str, &[u8]> = record
        .headers()
        .unwrap()
        .iter()
        .map(|h| (h.key, h.value.unwrap_or_default()))
        .collect();
    for (name, value) in [
        ("X-Event-ID", sent.event_id.as_str()),
        ("X-Aggregate-ID", "payment:9"),
        ("X-Event-Version", "4"),
        ("X-Event-Type", "PaymentCaptured"),
        ("X-Correlation-ID", "corr-1"),
        ("X-Tenant-ID", "12"),
    ] {
        assert_eq!(headers.get(name).copied(), Some(value.as_bytes()), "{name}");
    }
}
