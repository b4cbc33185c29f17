//! A topic in the Go SDK's format (`Codec::GoSdk`) through a whole bus: envelopes published
//! and decoded with every field, and messages that arrive as the Go SDK publishes them on NATS
//! (its JSON body alone, no key) keyed by their aggregate id, so each aggregate's events are
//! handled in order while the handlers take different times.

use std::sync::Arc;
use std::time::Duration;

use eventbus_core::{BoxError, Codec, Delivery, Envelope, EventBus, Message, handler_fn};
use eventbus_memory::MemoryTransport;
use eventbus_testkit::order::VersionTracker;
use tokio::sync::mpsc;

/// The number `a` of aggregate `order:<a>`.
fn aggregate(env: &Envelope) -> usize {
    let id = env.aggregate_id.as_str();
    id.strip_prefix("order:")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an aggregate of the test: {id}"))
}

const WAIT: Duration = Duration::from_secs(10);

fn bus() -> EventBus {
    EventBus::builder(MemoryTransport::new())
        .topic_codec("orders", Codec::GoSdk)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_travels_in_the_go_format_with_every_field() {
    let bus = bus();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            "orders",
            "billing",
            handler_fn(move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    tx.send((d.message().clone(), d.envelope()?)).unwrap();
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let sent = Envelope::new("order:7", "OrderPlaced", 3, &br#"{"total_cents":1200}"#[..])
        .unwrap()
        .with_tenant_id("17")
        .with_trace_id("t-1")
        .with_correlation_id("c-1")
        .with_causation_id("cmd-1");
    bus.publish_envelope("orders", &sent).await.unwrap();
    let (message, received) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, sent);
    // On the wire it is the Go SDK's JSON, not this project's headers.
    let body: serde_json::Value = serde_json::from_slice(message.payload()).unwrap();
    assert_eq!(body["aggregate_id"], "order:7");
    assert_eq!(body["tenant_id"], 17);
    assert_eq!(body["payload"]["total_cents"], 1200);
    assert_eq!(message.headers().get("X-Event-Type"), Some("OrderPlaced"));
    assert_eq!(message.headers().get("eb-schema"), None);
    sub.close().await;
    bus.close().await.unwrap();
}

/// The JSON body a Go SDK service publishes for version `version` of `aggregate`.
fn go_body(aggregate: &str, version: u64) -> String {
    format!(
        r#"{{"event_id":"{aggregate}-{version}","aggregate_id":"{aggregate}","event_type":"Step","event_version":{version},"timestamp":"2026-03-01T10:00:00Z","payload":{{"n":{version}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_go_messages_are_keyed_by_their_aggregate_and_handled_in_its_order() {
    const AGGREGATES: u64 = 5;
    const VERSIONS: u64 = 20;
    let bus = bus();
    let order = Arc::new(VersionTracker::new(AGGREGATES as usize));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let record = Arc::clone(&order);
    let sub = bus
        .subscribe(
            "orders",
            "billing",
            handler_fn(move |d: Delivery| {
                let (record, done_tx) = (Arc::clone(&record), done_tx.clone());
                async move {
                    let env = d.envelope()?;
                    assert_eq!(d.message().key(), Some(&env.aggregate_id));
                    // Later versions finish faster: without a key, they would overtake.
                    let v = env.event_version.get();
                    tokio::time::sleep(Duration::from_millis((VERSIONS - v) % 7)).await;
                    record.observe(aggregate(&env), v);
                    done_tx.send(()).unwrap();
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    for v in 1..=VERSIONS {
        for a in 0..AGGREGATES {
            let raw = Message::new("orders", go_body(&format!("order:{a}"), v));
            assert!(raw.key().is_none());
            bus.publish(raw).await.unwrap();
        }
    }
    for _ in 0..AGGREGATES * VERSIONS {
        tokio::time::timeout(WAIT, done.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(order.received(), AGGREGATES * VERSIONS);
    assert_eq!((order.violations(), order.lost(VERSIONS)), (0, 0));
    sub.close().await;
    bus.close().await.unwrap();
}
