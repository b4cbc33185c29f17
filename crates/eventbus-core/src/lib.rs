//! Core of eventbus: the [`EventBus`] and what it is made of. Users depend on the `eventbus`
//! facade crate, which re-exports this crate together with the transports.
//!
//! ```
//! use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
//! # async fn demo(bus: EventBus) -> eventbus_core::Result<()> {
//! // `bus` is `EventBus::new(transport)`, over memory, NATS or Kafka.
//! let sub = bus
//!     .subscribe("orders", "billing", handler_fn(|d: Delivery| async move {
//!         println!("{:?}: {:?}", d.message().key(), d.payload());
//!         Ok::<_, BoxError>(())
//!     }))
//!     .await?;
//! bus.publish(Message::new("orders", "placed").with_key("order-1")).await?;
//! sub.close().await;
//! bus.close().await
//! # }
//! ```
//!
//! # Map
//! - The user's side: [`EventBus`] (publish, subscribe with [`SubscribeOptions`], health,
//!   backlog, close), [`Message`] and [`Envelope`], handlers as tower services ([`handler`],
//!   [`event`] for typed events), [`RetryPolicy`], [`dead_letter`], [`dedup`], [`health`],
//!   [`backlog`], [`telemetry`], [`propagation`], [`validate`].
//! - A transport's side: [`transport`] (the traits a transport implements, what it hands the
//!   bus for each message, how it settles an [`Outcome`]).
//! - Between them: [`dispatch`], the one keyed dispatcher per bus that runs every handler
//!   call: per-key order, no head-of-line blocking, bounds, backpressure. It can be used alone:
//!
//! ```
//! use eventbus_core::{BoxError, Delivery, Dispatch, Dispatcher, DispatcherConfig, Message, Route, handler_fn};
//! use tower::{Service, ServiceExt};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut dispatcher = Dispatcher::new(DispatcherConfig::default());
//! let handler = handler_fn(|d: Delivery| async move {
//!     assert_eq!(d.payload(), "hello");
//!     Ok::<_, BoxError>(())
//! });
//! let route = Arc::new(Route::builder("orders", "billing", handler).build());
//! let message = Arc::new(Message::new("orders", "hello").with_key("order-1"));
//! let outcome = dispatcher.ready().await.unwrap().call(Dispatch { route, message }).await.unwrap();
//! assert!(outcome.is_handled());
//! dispatcher.shutdown().await;
//! # }
//! ```
#![warn(missing_docs)]

pub mod backlog;
mod bus;
mod clock;
pub mod dead_letter;
pub mod dedup;
pub mod dispatch;
pub mod envelope;
mod error;
pub mod event;
pub mod handler;
pub mod health;
mod message;
mod outcome;
pub mod propagation;
mod retry;
pub mod telemetry;
pub mod transport;
pub mod validate;

pub use bus::{BusOptions, EventBus, EventBusBuilder, SubscribeOptions, Subscription};
pub use dead_letter::DeadLetter;
pub use dispatch::{Dispatch, Dispatcher, DispatcherConfig, DispatcherStats, Route, RouteBuilder};
pub use envelope::{Codec, Envelope};
pub use error::{BoxError, EnvelopeError, Error, HeaderError, NameError, Result};
pub use event::{Event, EventDecodeError, event_handler};
pub use handler::{DecodeError, Delivery, Handler, Panicked, Permanent, handler_fn, json_handler};
pub use health::{Connection, ConnectionState, Health, SubscriptionHealth};
pub use message::{Headers, Key, Message, MessageId, TopicName};
pub use outcome::Outcome;
pub use retry::{RetryPolicy, Retrying};
pub use transport::{
    Acknowledge, Capabilities, Incoming, Provision, PublishFuture, Publisher, SubscribeRequest,
    Subscriber, Transport,
};
pub use validate::Limits;
