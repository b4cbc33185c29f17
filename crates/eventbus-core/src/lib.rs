//! Core of eventbus: the message and envelope model, the transport traits, and the unified
//! keyed dispatcher that every transport feeds.
//!
//! Most users depend on the `eventbus` facade crate instead, which re-exports this crate.
//!
//! ```
//! use eventbus_core::{Dispatcher, DispatcherConfig, Dispatch, Route, RetryPolicy, Message, Outcome, handler_fn, Delivery, BoxError};
//! use tokio_util::sync::CancellationToken;
//! use tower::{Service, ServiceExt};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut dispatcher = Dispatcher::new(DispatcherConfig::default());
//! let handler = handler_fn(|d: Delivery| async move {
//!     assert_eq!(d.payload(), "hello");
//!     Ok::<_, BoxError>(())
//! });
//! let route = Arc::new(Route::new("orders", "billing", handler, RetryPolicy::default(),
//!     CancellationToken::new(), CancellationToken::new()));
//! let message = Arc::new(Message::new("orders", "hello").with_key("order-1"));
//! let outcome = dispatcher.ready().await.unwrap().call(Dispatch { route, message }).await.unwrap();
//! assert!(outcome.is_handled());
//! dispatcher.shutdown().await;
//! # }
//! ```
#![warn(missing_docs)]

pub mod backlog;
mod bus;
mod consume;
pub mod dead_letter;
pub mod dedup;
pub mod dispatch;
pub mod envelope;
mod error;
pub mod event;
pub mod handler;
pub mod health;
mod message;
pub mod propagation;
mod publish;
mod retry;
pub mod telemetry;
pub mod transport;
pub mod validate;

pub use bus::{BusOptions, EventBus, EventBusBuilder, SubscribeOptions, Subscription};
pub use dead_letter::DeadLetter;
pub use dispatch::{Dispatch, Dispatcher, DispatcherConfig, DispatcherStats, Outcome, Route};
pub use envelope::Envelope;
pub use error::{BoxError, EnvelopeError, Error, HeaderError, NameError, Result};
pub use event::{Event, EventDecodeError, event_handler};
pub use handler::{DecodeError, Delivery, Panicked, Permanent, handler_fn, json_handler};
pub use health::{Connection, ConnectionState, Health, SubscriptionHealth};
pub use message::{Headers, Key, Message, MessageId};
pub use retry::{RetryPolicy, Retrying};
pub use transport::{
    Acknowledge, Capabilities, Incoming, Publisher, SubscribeRequest, Subscriber, Transport,
};
pub use validate::Limits;
