//! Typed events: serde types published and handled as [`Envelope`]s, with no hand-written
//! (de)serialization.
//!
//! ```
//! use eventbus_core::{Event, EventBus, Delivery, BoxError, event_handler};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { total_cents: u64 }
//!
//! impl Event for OrderPlaced {
//!     const TYPE: &'static str = "OrderPlaced";
//!     const SCHEMA_VERSION: u32 = 2;
//! }
//!
//! # async fn demo(bus: EventBus) -> eventbus_core::Result<()> {
//! let sub = bus
//!     .subscribe("orders", "billing", event_handler(|e: OrderPlaced, d: Delivery| async move {
//!         println!("{} cents ({})", e.total_cents, d.message().key().unwrap());
//!         Ok::<_, BoxError>(())
//!     }))
//!     .await?;
//! // Version 1 of aggregate "order-42".
//! bus.publish_event("orders", "order-42", 1, &OrderPlaced { total_cents: 1200 }).await?;
//! # sub.close().await;
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::Envelope;
use crate::error::{EnvelopeError, Error, Result};
use crate::handler::{Decode, Decoded, Delivery, Permanent};
use crate::message::Key;

/// A domain event type. Serialized as JSON into an [`Envelope`] whose event type is
/// [`TYPE`](Self::TYPE) and whose metadata `schema-version` (header `eb-meta-schema-version`)
/// is [`SCHEMA_VERSION`](Self::SCHEMA_VERSION).
pub trait Event: Serialize + DeserializeOwned + Send + 'static {
    /// The event type name in the envelope, e.g. `OrderPlaced`.
    const TYPE: &'static str;
    /// The version of this type's schema (default 1). A consumer decodes newer versions as
    /// long as serde can (unknown fields are ignored by default).
    const SCHEMA_VERSION: u32 = 1;
}

/// Envelope metadata entry naming the event type's schema version.
pub const SCHEMA_VERSION_META: &str = "schema-version";

impl Envelope {
    /// The envelope of `event`, version `aggregate_version` of `aggregate_id` (from 1).
    pub fn of<E: Event>(
        aggregate_id: impl Into<Key>,
        aggregate_version: u64,
        event: &E,
    ) -> Result<Self> {
        let payload = serde_json::to_vec(event).map_err(|e| Error::Serialize {
            event_type: E::TYPE,
            source: e,
        })?;
        Ok(
            Envelope::new(aggregate_id, E::TYPE, aggregate_version, payload)?
                .with_metadata(SCHEMA_VERSION_META, E::SCHEMA_VERSION.to_string()),
        )
    }

    /// Decodes the payload as `E`. Fails when the envelope's event type is not `E::TYPE` or
    /// the payload does not decode.
    pub fn decode<E: Event>(&self) -> Result<E, EventDecodeError> {
        if self.event_type != E::TYPE {
            return Err(EventDecodeError::WrongType {
                expected: E::TYPE,
                found: self.event_type.clone(),
            });
        }
        serde_json::from_slice(&self.payload).map_err(|source| EventDecodeError::Payload {
            event_type: E::TYPE,
            source,
        })
    }
}

/// A message could not be decoded as the handler's event type. Handlers return it as a
/// [`Permanent`] error: retrying cannot fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventDecodeError {
    /// The message is not a valid envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The envelope holds another event type.
    #[error("expected an event of type {expected:?}, found {found:?}")]
    WrongType {
        /// The handler's type.
        expected: &'static str,
        /// The envelope's.
        found: String,
    },
    /// The payload does not decode as the handler's type.
    #[error("cannot decode {event_type} from the JSON payload: {source}")]
    Payload {
        /// The handler's type.
        event_type: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

impl Delivery {
    /// Decodes the message as an envelope holding an `E`; any failure is [`Permanent`].
    pub fn event<E: Event>(&self) -> Result<(E, Envelope), Permanent> {
        let envelope = self
            .envelope()
            .map_err(|e| Permanent::new(EventDecodeError::from(e)))?;
        let event = envelope.decode::<E>().map_err(Permanent::new)?;
        Ok((event, envelope))
    }
}

/// A handler that decodes each message as an envelope holding an `E` and calls
/// `f(event, delivery)`. A message that is not such an envelope fails at once with a
/// [`Permanent`] [`EventDecodeError`] (dead-lettered, when the subscription has a
/// dead-letter topic).
pub fn event_handler<E, F>(f: F) -> EventHandler<E, F> {
    Decoded::new(f)
}

/// See [`event_handler`].
pub type EventHandler<E, F> = Decoded<Typed<E>, F>;

/// Envelopes holding an `E` (see [`event_handler`]).
#[derive(Debug)]
pub struct Typed<E>(PhantomData<fn() -> E>);

impl<E: Event> Decode for Typed<E> {
    type Output = E;
    fn decode(delivery: &Delivery) -> Result<E, Permanent> {
        delivery.event::<E>().map(|(event, _)| event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use tower::ServiceExt;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Placed {
        total: u64,
    }
    impl Event for Placed {
        const TYPE: &'static str = "Placed";
        const SCHEMA_VERSION: u32 = 3;
    }

    #[derive(Serialize, serde::Deserialize)]
    struct Cancelled {}
    impl Event for Cancelled {
        const TYPE: &'static str = "Cancelled";
    }

    #[tokio::test]
    async fn typed_round_trip_and_permanent_mismatches() {
        let env = Envelope::of("order-1", 4, &Placed { total: 7 }).unwrap();
        assert_eq!(env.event_type, "Placed");
        assert_eq!(env.event_version.get(), 4);
        assert_eq!(
            env.metadata.get(SCHEMA_VERSION_META).map(String::as_str),
            Some("3")
        );
        let message = env.to_message("orders");
        let d = Delivery::new(message.clone(), "g");
        let (event, back) = d.event::<Placed>().unwrap();
        assert_eq!(event, Placed { total: 7 });
        assert_eq!(back.aggregate_id.as_str(), "order-1");

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let h = event_handler(move |e: Placed, _d: Delivery| {
            let tx = tx.clone();
            async move {
                tx.send(e.total)?;
                Ok::<_, BoxError>(())
            }
        });
        h.clone().oneshot(d).await.unwrap();
        assert_eq!(rx.recv().await, Some(7));

        let other = Envelope::of("order-1", 5, &Cancelled {}).unwrap();
        let err = h
            .clone()
            .oneshot(Delivery::new(other.to_message("orders"), "g"))
            .await
            .unwrap_err();
        assert!(Permanent::is_permanent(&err), "{err}");
        assert!(
            err.to_string().contains("expected an event of type"),
            "{err}"
        );
        let raw = crate::Message::new("orders", "not an envelope").with_key("order-1");
        let err = h.oneshot(Delivery::new(raw, "g")).await.unwrap_err();
        assert!(Permanent::is_permanent(&err), "{err}");
    }
}
