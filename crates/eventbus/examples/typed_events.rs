//! Typed events and a handler stack: a serde type as the event, a handler that receives it
//! decoded, and tower layers around that handler (deduplication, a concurrency limit, a
//! timeout), on the in-memory bus.
//!
//! `cargo run -p eventbus --example typed_events`

use std::time::Duration;

use eventbus::dedup::{DedupLayer, DedupStore};
use eventbus::{BoxError, Delivery, Envelope, Event, EventBus, MemoryTransport, event_handler};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tower::ServiceBuilder;

/// The event, as JSON in an envelope whose event type is `PaymentReceived`.
#[derive(Debug, Serialize, Deserialize)]
struct PaymentReceived {
    amount_cents: u64,
}

impl Event for PaymentReceived {
    const TYPE: &'static str = "PaymentReceived";
    // Written into each envelope: raise it when the type changes, so consumers can tell.
    const SCHEMA_VERSION: u32 = 1;
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bus = EventBus::new(MemoryTransport::new());

    // Kept to read how many duplicates the layer skipped.
    let dedup = DedupStore::new(100_000, Duration::from_secs(3600));
    let (handled, mut received) = mpsc::unbounded_channel();
    let handler = ServiceBuilder::new()
        // Outermost: a message this group already handled is acked at once, before it takes
        // a slot of the limit below. Ids are remembered in this process, for an hour.
        .layer(DedupLayer::with_store(dedup.clone()))
        // This handler's own bound (the bus has one for all handlers: `max_in_flight`).
        .concurrency_limit(32)
        // A call taking longer is dropped and fails; the bus retries it while its key waits.
        .timeout(Duration::from_secs(5))
        // A message that is not a `PaymentReceived` fails for good, without retries.
        .service(event_handler(
            move |payment: PaymentReceived, d: Delivery| {
                let handled = handled.clone();
                async move {
                    let order = d.message().key().map_or("", |k| k.as_str());
                    println!("billing: {order} paid {} cents", payment.amount_cents);
                    handled.send(payment.amount_cents)?;
                    Ok::<_, BoxError>(())
                }
            },
        ));
    let sub = bus.subscribe("orders", "billing", handler).await?;

    // Version 1 of aggregate "order-42", sent twice, as a publisher retrying after a timeout
    // would: one message id, so the second is a duplicate.
    let first = Envelope::of("order-42", 1, &PaymentReceived { amount_cents: 1200 })?;
    let message = first.to_message("orders");
    bus.publish(message.clone()).await?;
    bus.publish(message).await?;
    // `publish_event` builds the envelope itself.
    bus.publish_event(
        "orders",
        "order-42",
        2,
        &PaymentReceived { amount_cents: 300 },
    )
    .await?;

    // One key's messages are handled one at a time, in order: by the time version 2 is
    // handled, the copy of version 1 before it was skipped.
    let mut amounts = Vec::new();
    for _ in 0..2 {
        let amount = tokio::time::timeout(Duration::from_secs(5), received.recv()).await?;
        amounts.extend(amount);
    }
    assert_eq!(amounts, [1200, 300], "each payment handled once, in order");
    println!("duplicates skipped: {}", dedup.skipped());
    assert_eq!(dedup.skipped(), 1);

    sub.close().await;
    bus.close().await?;
    Ok(())
}
