//! eventbus: publish and consume domain events over NATS JetStream, Kafka or an in-memory bus
//! through one API, with strict per-aggregate order, no head-of-line blocking, bounded
//! resources and no leaked tasks.
//!
//! ```
//! use eventbus::{EventBus, Envelope, Delivery, BoxError, handler_fn, MemoryTransport};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> eventbus::Result<()> {
//! let bus = EventBus::builder(MemoryTransport::new()).max_in_flight(64).build();
//!
//! let sub = bus
//!     .subscribe("orders", "billing", handler_fn(|d: Delivery| async move {
//!         let event = d.envelope()?;
//!         println!("{} v{} of {}", event.event_type, event.event_version, event.aggregate_id);
//!         Ok::<_, BoxError>(())
//!     }))
//!     .await?;
//!
//! let placed = Envelope::new("order-42", "OrderPlaced", 1, r#"{"total":12}"#)?;
//! bus.publish_envelope("orders", &placed).await?;
//!
//! sub.close().await;
//! bus.close().await // every task the bus started has ended
//! # }
//! ```
//!
//! Transports are picked by cargo feature: `memory` (default), `nats`, `kafka`.
//!
//! Examples to copy are in this crate's `examples/`: `quickstart` (the memory bus), `nats`,
//! `kafka`, `typed_events` (an [`Event`] type and a tower stack around its handler) and
//! `health` (a readiness endpoint over [`EventBus::health`]).
//!
//! The crate root holds what services use; [`transport`] holds what only a transport's author
//! needs (the traits a transport implements, the dispatcher it feeds).
#![warn(missing_docs)]
// On docs.rs (nightly rustdoc), feature-gated items show the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use eventbus_core::{
    BoxError, BusOptions, Capabilities, Codec, Connection, ConnectionState, DeadLetter,
    DecodeError, Delivery, DispatcherConfig, DispatcherStats, Envelope, EnvelopeError, Error,
    Event, EventBus, EventBusBuilder, EventDecodeError, Handler, HeaderError, Headers, Health, Key,
    Limits, Message, MessageId, NameError, Panicked, Permanent, Result, RetryPolicy, Retrying,
    SubscribeOptions, Subscription, SubscriptionHealth, Transport, event_handler, handler_fn,
    json_handler,
};
pub use eventbus_core::{
    backlog, dead_letter, dedup, envelope, event, handler, health, propagation, telemetry, validate,
};

/// What a transport's author needs: the traits a transport implements, what it hands the bus
/// for each message and how it settles the [`Outcome`](transport::Outcome), and the
/// [`dispatch`](transport::dispatch)er the bus runs handlers on (usable alone).
pub mod transport {
    pub use eventbus_core::Outcome;
    pub use eventbus_core::dispatch;
    pub use eventbus_core::transport::*;
}

/// The in-memory transport (feature `memory`, on by default).
#[cfg(feature = "memory")]
pub use eventbus_memory as memory;
#[cfg(feature = "memory")]
pub use eventbus_memory::{MemoryConfig, MemoryTransport};

/// The NATS JetStream transport (feature `nats`).
#[cfg(feature = "nats")]
pub use eventbus_nats as nats;
#[cfg(feature = "nats")]
pub use eventbus_nats::{NatsConfig, NatsTransport};

/// The Kafka transport (feature `kafka`).
#[cfg(feature = "kafka")]
pub use eventbus_kafka as kafka;
#[cfg(feature = "kafka")]
pub use eventbus_kafka::{KafkaConfig, KafkaTransport};

/// The README's code, compiled and run as a doc test so it stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
