//! eventbus on NATS JetStream: connect, subscribe, publish, shut down.
//!
//! `cargo run -p eventbus --features nats --example nats`
//!
//! Needs a nats-server with JetStream (`nats-server -js`) at `EVENTBUS_NATS_URL`, else
//! nats://127.0.0.1:4222. The topic `orders` becomes a stream of its own, created when missing
//! (see `NatsConfig` for its limits and retention), split into 16 partitions by key; the group
//! `billing` a durable consumer per partition. Every instance of the service subscribes the
//! same way: the partitions are spread over the running instances, each key's messages
//! handled by one instance at a time, in order.

use std::time::Duration;

use eventbus::nats::{ConsumerOptions, NatsConfig, NatsTransport};
use eventbus::{BoxError, Delivery, Envelope, EventBus, handler_fn};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("EVENTBUS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    // A message a handler holds past `ack_wait` without the bus extending it (a crashed
    // instance, say) is delivered again, to the instance that owns its partition then.
    let config = NatsConfig::new(&url)
        .consumer(ConsumerOptions::default().ack_wait(Duration::from_secs(30)));
    let bus = EventBus::new(NatsTransport::connect(config).await?);
    println!("connected to {url}");

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
                    // Returning Ok acks the message; an error retries it in place, then
                    // dead-letters it to `orders.dlq`.
                    handled.send(d.message().id().clone())?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await?;

    let placed = Envelope::new("order-42", "OrderPlaced", 1, r#"{"total_cents":1200}"#)?
        .to_message("orders");
    let id = placed.id().clone();
    // Returns once JetStream has stored the message (its ack).
    bus.publish(placed).await?;

    // The stream outlives this process: a message left unacked by an earlier run may come
    // first. Wait for ours.
    let wait = async {
        while let Some(got) = received.recv().await {
            if got == id {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await?;

    sub.close().await;
    // Drains, then closes the connection; no task or thread of the bus is left.
    bus.close().await?;
    Ok(())
}
