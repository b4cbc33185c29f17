//! What the Kafka tests share: the brokers and test settings (`eventbus_kafka::testing`),
//! unique names and a thread count.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub use eventbus_kafka::testing::{PrivateBroker, SharedBroker, config};

pub fn unique(prefix: &str) -> String {
    eventbus_testkit::conformance::unique(prefix)
}

/// OS threads of this process. Only meaningful when the test has the process to itself, as
/// under cargo-nextest (which sets `NEXTEST`); `None` otherwise.
pub fn threads() -> Option<usize> {
    std::env::var_os("NEXTEST")
        .map(|_| std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count))
}

/// Connects with `config`, publishes one message to a new topic and receives it in a
/// subscription, each step bounded by `wait`, then closes; returns the transport (closed),
/// e.g. for its `Debug` output.
pub async fn publish_and_consume(
    config: eventbus_kafka::KafkaConfig,
    wait: std::time::Duration,
) -> eventbus_kafka::KafkaTransport {
    use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
    let transport = tokio::time::timeout(wait, eventbus_kafka::KafkaTransport::connect(config))
        .await
        .expect("connect still waiting")
        .expect("connect");
    let bus = EventBus::new(transport.clone());
    let topic = unique("round-trip");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            &topic,
            "g",
            handler_fn(move |d: Delivery| {
                let _ = tx.send(d.payload().clone());
                async { Ok::<_, BoxError>(()) }
            }),
        )
        .await
        .unwrap();
    tokio::time::timeout(
        wait,
        bus.publish(Message::new(&topic, "round trip").with_key("k")),
    )
    .await
    .expect("publish still waiting")
    .unwrap();
    let received = tokio::time::timeout(wait, rx.recv())
        .await
        .expect("no delivery")
        .expect("the subscription ended");
    assert_eq!(&received[..], b"round trip");
    sub.close().await;
    bus.close().await.unwrap();
    transport
}
