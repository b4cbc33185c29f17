//! eventbus on Kafka: connect, subscribe, publish, shut down.
//!
//! `cargo run -p eventbus --features kafka --example kafka`
//!
//! Needs a Kafka broker at `EVENTBUS_KAFKA_BROKERS` (a librdkafka `bootstrap.servers` list),
//! else 127.0.0.1:9092. The topic `orders` is created when missing, with the partitions given
//! here; the group `billing` is the Kafka consumer group `billing.orders`, whose members, in
//! any process, share the topic's partitions.

use std::time::Duration;

use eventbus::kafka::{KafkaConfig, KafkaTransport, TopicOptions};
use eventbus::{BoxError, Delivery, Envelope, EventBus, handler_fn};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let brokers =
        std::env::var("EVENTBUS_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    // One aggregate stays on one partition, so partitions bound how many members of a group
    // share the work, not the order of an aggregate's events.
    let config = KafkaConfig::new(&brokers).topic("orders", TopicOptions::default().partitions(3));
    let bus = EventBus::new(KafkaTransport::connect(config).await?);
    println!("connected to {brokers}");

    let (handled, mut received) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            "orders",
            "billing",
            handler_fn(move |d: Delivery| {
                let handled = handled.clone();
                async move {
                    let event = d.envelope()?;
                    println!(
                        "billing: {} v{} of {}",
                        event.event_type, event.event_version, event.aggregate_id
                    );
                    // The offset is committed only past messages handled: an error retries
                    // this one in place, then dead-letters it to `orders.dlq`.
                    handled.send(d.message().id().clone())?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await?;

    let placed = Envelope::new("order-42", "OrderPlaced", 1, r#"{"total_cents":1200}"#)?
        .to_message("orders");
    let id = placed.id().clone();
    // Returns once the broker acknowledged it (the delivery report).
    bus.publish(placed).await?;

    // A new group starts at the earliest offset, so the message arrives even though the group
    // is still joining (which takes a few seconds); an earlier run's messages may come first.
    let wait = async {
        while let Some(got) = received.recv().await {
            if got == id {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait).await?;

    sub.close().await;
    // Drains, commits, closes the clients; no task or thread of the bus is left.
    bus.close().await?;
    Ok(())
}
