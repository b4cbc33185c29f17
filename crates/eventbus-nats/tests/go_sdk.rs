//! Sharing NATS topics with services on the Go SDK: its streams (named by its configuration,
//! one subject per topic, the topic itself) bound with `StreamOptions::bind`, its messages (a
//! JSON body alone, no headers) read with `Codec::GoSdk`, and this bus's messages written so a
//! Go SDK subscriber reads them. The Go side is played by raw async-nats calls that do what
//! the Go SDK's `nats.go` does (`js.AddStream`, `js.Publish(topic, envelopeBytes)`, a
//! subscriber reading the body): the Go module itself is refused by this machine's module
//! proxy (see `crates/eventbus-core/tests/golden/go-sdk/README.md`).

// `support` re-exports a private server, which this file does not start.
#[allow(unused_imports)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use eventbus_core::{BoxError, Codec, Delivery, Envelope, Error, EventBus, Message, handler_fn};
use eventbus_nats::{NatsConfig, NatsTransport, StreamOptions};
use eventbus_testkit::order::VersionTracker;
use support::{SharedServer, unique};
use tokio::sync::mpsc;

/// The number `a` of aggregate `order:<a>`.
fn aggregate(env: &Envelope) -> usize {
    let id = env.aggregate_id.as_str();
    id.strip_prefix("order:")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an aggregate of the test: {id}"))
}

const WAIT: Duration = Duration::from_secs(20);

/// The Go SDK's `ensureTopicStreamExists`: a stream of the name it configures, holding the
/// topic as its one subject. Deleted when dropped.
struct GoStream {
    js: jetstream::Context,
    name: String,
}

impl GoStream {
    async fn create(js: &jetstream::Context, name: &str, topic: &str) -> GoStream {
        js.create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![topic.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
        GoStream {
            js: js.clone(),
            name: name.to_owned(),
        }
    }
}

impl Drop for GoStream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        // The test's runtime may be shutting down: delete on a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { js.delete_stream(&name).await })
        })
        .join();
    }
}

fn go_body(aggregate: &str, version: u64) -> String {
    format!(
        r#"{{"event_id":"{aggregate}-{version}","aggregate_id":"{aggregate}","event_type":"Step","event_version":{version},"timestamp":"2026-03-01T10:00:00.5+08:00","tenant_id":7,"payload":{{"n":{version}}}}}"#
    )
}

async fn bound_bus(url: &str, topic: &str, stream: &str) -> EventBus {
    let config = NatsConfig::new(url).topic(topic, StreamOptions::default().bind(stream));
    EventBus::builder(NatsTransport::connect(config).await.unwrap())
        .topic_codec(topic, Codec::GoSdk)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_messages_on_its_own_stream_are_read_in_each_aggregates_order() {
    const AGGREGATES: u64 = 4;
    const VERSIONS: u64 = 25;
    let shared = SharedServer::get();
    let client = async_nats::connect(shared.url()).await.unwrap();
    let js = jetstream::new(client);
    let topic = unique("go.orders");
    let name = unique("GO_BUSINESS").replace(['.', '-'], "_");
    let go_stream = GoStream::create(&js, &name, &topic).await;
    // The Go SDK publishes first: the JSON body alone, to the topic.
    for v in 1..=VERSIONS {
        for a in 0..AGGREGATES {
            js.publish(topic.clone(), go_body(&format!("order:{a}"), v).into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let bus = bound_bus(&shared.url(), &topic, &name).await;
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
                    assert_eq!(d.message().key(), Some(&env.aggregate_id));
                    assert_eq!(env.tenant_id.as_deref(), Some("7"));
                    assert_eq!(
                        env.event_id.as_str(),
                        format!("{}-{}", env.aggregate_id.as_str(), env.event_version)
                    );
                    // Later versions finish sooner: only the key keeps them in order.
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
    for _ in 0..AGGREGATES * VERSIONS {
        tokio::time::timeout(WAIT, done.recv())
            .await
            .expect("every Go message handled")
            .unwrap();
    }
    assert_eq!(order.received(), AGGREGATES * VERSIONS);
    assert_eq!((order.violations(), order.lost(VERSIONS)), (0, 0));
    // The stream is the Go SDK's as it made it: one subject, the topic.
    let info = js
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.subjects, std::slice::from_ref(&topic));
    sub.close().await;
    bus.close().await.unwrap();
    drop(go_stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_this_bus_publishes_on_a_go_stream_a_go_subscriber_reads() {
    let shared = SharedServer::get();
    let client = async_nats::connect(shared.url()).await.unwrap();
    let js = jetstream::new(client);
    let topic = unique("go.payments");
    let name = unique("GO_PAYMENTS").replace(['.', '-'], "_");
    let go_stream = GoStream::create(&js, &name, &topic).await;
    let bus = bound_bus(&shared.url(), &topic, &name).await;
    let sent = Envelope::new("payment:9", "PaymentCaptured", 4, &br#"{"cents":250}"#[..])
        .unwrap()
        .with_tenant_id("12")
        .with_trace_id("trace-1")
        .with_correlation_id("corr-1");
    bus.publish_envelope(&topic, &sent).await.unwrap();
    // The Go SDK's subscriber: the message on the topic's own subject, its body the envelope.
    let stream = js.get_stream(&name).await.unwrap();
    let message = stream
        .get_last_raw_message_by_subject(&topic)
        .await
        .unwrap();
    assert_eq!(message.subject.as_str(), topic);
    let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["event_id"], sent.event_id.as_str());
    assert_eq!(body["aggregate_id"], "payment:9");
    assert_eq!(body["event_type"], "PaymentCaptured");
    assert_eq!(body["event_version"], 4);
    assert_eq!(body["tenant_id"], 12);
    assert_eq!(body["trace_id"], "trace-1");
    assert_eq!(body["correlation_id"], "corr-1");
    assert_eq!(body["payload"]["cents"], 250);
    // Read back the way the Go SDK reads it, from the body alone.
    let keyless = Message::new(topic.as_str(), message.payload.clone());
    assert_eq!(Codec::GoSdk.decode(&keyless).unwrap(), sent);
    bus.close().await.unwrap();
    drop(go_stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_stream_that_is_missing_or_holds_other_subjects_is_refused() {
    let shared = SharedServer::get();
    let client = async_nats::connect(shared.url()).await.unwrap();
    let js = jetstream::new(client);
    let topic = unique("go.refunds");
    let missing = unique("GO_MISSING").replace(['.', '-'], "_");
    let bus = bound_bus(&shared.url(), &topic, &missing).await;
    let err = bus
        .publish(Message::new(topic.as_str(), "{}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TopicMissing { .. }), "{err}");
    bus.close().await.unwrap();

    let name = unique("GO_OTHER").replace(['.', '-'], "_");
    let other = GoStream::create(&js, &name, &unique("go.other")).await;
    let bus = bound_bus(&shared.url(), &topic, &name).await;
    let err = bus
        .publish(Message::new(topic.as_str(), "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SettingsMismatch {
                setting: "subjects",
                ..
            }
        ),
        "{err}"
    );
    bus.close().await.unwrap();
    drop(other);
    // Nothing was created in its place.
    assert!(js.get_stream(&missing).await.is_err());
}
