//! The smallest service: an in-memory bus, one subscription, three events of one order, a
//! clean shutdown.
//!
//! `cargo run -p eventbus --example quickstart`
//!
//! The in-memory transport needs no broker: tests and single-process services use it. On NATS
//! or Kafka only the transport changes (the `nats` and `kafka` examples).

use std::time::Duration;

use eventbus::{BoxError, Delivery, Envelope, EventBus, MemoryTransport, handler_fn};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // At most 64 handler calls run at once, over every subscription of the bus.
    let bus = EventBus::builder(MemoryTransport::new())
        .max_in_flight(64)
        .build();

    // The handler tells `main` what it handled, so the example knows when to stop; a real one
    // would update a database instead. The bus clones the handler for each call.
    let (handled, mut received) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            "orders",
            "billing",
            handler_fn(move |d: Delivery| {
                let handled = handled.clone();
                async move {
                    // A message that is not an envelope fails for good: never retried, sent to
                    // the dead-letter topic (`orders.dlq`).
                    let event = d.envelope()?;
                    println!(
                        "billing: {} v{} of {}",
                        event.event_type, event.event_version, event.aggregate_id
                    );
                    handled.send(event.event_version.get())?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await?;

    // Events of one aggregate (the key, here "order-42") are handled one at a time, in the
    // order they were published; other aggregates do not wait for them.
    for (version, event_type) in [(1, "OrderPlaced"), (2, "OrderPaid"), (3, "OrderShipped")] {
        let event = Envelope::new("order-42", event_type, version, r#"{"total_cents":1200}"#)?;
        // Returns once the transport has the message (for a broker: once it acknowledged it).
        bus.publish_envelope("orders", &event).await?;
    }
    for expected in 1..=3 {
        let version = tokio::time::timeout(Duration::from_secs(5), received.recv()).await?;
        assert_eq!(version, Some(expected), "versions arrive in order");
    }

    // Closing drains: a subscription finishes what it holds, then the bus ends every task it
    // started.
    sub.close().await;
    bus.close().await?;
    Ok(())
}
