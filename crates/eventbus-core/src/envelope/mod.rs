//! Domain-event envelopes, and the codecs that put them on the wire.
//!
//! An [`Envelope`] is what happened to which aggregate, in which order. A [`Codec`] says how it
//! travels; a bus uses one per topic ([`EventBusBuilder::codec`](crate::EventBusBuilder::codec),
//! [`topic_codec`](crate::EventBusBuilder::topic_codec)), for
//! [`publish_envelope`](crate::EventBus::publish_envelope), typed events and
//! [`Delivery::envelope`](crate::Delivery::envelope):
//!
//! - [`Codec::Headers`] (the default, [`headers`]): the fields in `eb-*` headers, the payload
//!   untouched; brokers and tools route and inspect on headers alone.
//! - [`Codec::GoSdk`] ([`go_sdk`]): the JSON body of the Go SDK this project replaces
//!   (`github.com/ChenBigdata421/jxt-core`, `sdk/pkg/eventbus`, v1.7.5), with its `X-*`
//!   headers, so Go and Rust services share topics.

pub mod go_sdk;
pub mod headers;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::{EnvelopeError, Error};
use crate::message::{Key, Message, MessageId};
use crate::validate::validate_key;

pub use headers::header;

/// A domain event: what happened to which aggregate, in which order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The event's id, unique (a fresh UUIDv7 unless set): the message id it travels with, so
    /// a broker's or a consumer's deduplication recognises a copy.
    pub event_id: MessageId,
    /// The aggregate the event belongs to; also the message key, so its events stay in order.
    pub aggregate_id: Key,
    /// The event's type name, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Position of the event in its aggregate's history, from 1.
    pub event_version: NonZeroU64,
    /// When the event happened.
    pub occurred_at: SystemTime,
    /// The tenant the event belongs to, in a multi-tenant service.
    pub tenant_id: Option<String>,
    /// Ties together every message of one business operation.
    pub correlation_id: Option<String>,
    /// Id of the message that caused this one.
    pub causation_id: Option<String>,
    /// Trace id, for logs.
    pub trace_id: Option<String>,
    /// Free-form metadata, carried as headers.
    pub metadata: BTreeMap<String, String>,
    /// The event body.
    pub payload: Bytes,
}

impl Envelope {
    /// A new envelope occurring now. Fails on an invalid aggregate id or a version of 0.
    pub fn new(
        aggregate_id: impl Into<Key>,
        event_type: impl Into<String>,
        event_version: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Self, Error> {
        let aggregate_id = aggregate_id.into();
        validate_key(aggregate_id.as_str())?;
        let event_version = NonZeroU64::new(event_version).ok_or(EnvelopeError::InvalidHeader {
            header: header::EVENT_VERSION,
            value: "0".into(),
            reason: "event versions start at 1".into(),
        })?;
        Ok(Envelope {
            event_id: MessageId::new(),
            aggregate_id,
            event_type: event_type.into(),
            event_version,
            occurred_at: SystemTime::now(),
            tenant_id: None,
            correlation_id: None,
            causation_id: None,
            trace_id: None,
            metadata: BTreeMap::new(),
            payload: payload.into(),
        })
    }

    /// Sets the event id (an id made elsewhere, an outbox row's say).
    pub fn with_event_id(mut self, id: impl Into<MessageId>) -> Self {
        self.event_id = id.into();
        self
    }
    /// Sets the tenant id.
    pub fn with_tenant_id(mut self, id: impl Into<String>) -> Self {
        self.tenant_id = Some(id.into());
        self
    }
    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }
    /// Sets the trace id.
    pub fn with_trace_id(mut self, id: impl Into<String>) -> Self {
        self.trace_id = Some(id.into());
        self
    }
    /// Adds a metadata entry.
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }
    /// Sets when the event occurred.
    pub fn with_occurred_at(mut self, at: SystemTime) -> Self {
        self.occurred_at = at;
        self
    }

    /// Encodes the envelope as a message on `topic` with this project's header mapping
    /// ([`Codec::Headers`]).
    pub fn to_message(&self, topic: impl Into<String>) -> Message {
        headers::encode(self, topic.into())
    }

    /// Decodes an envelope from a message with this project's header mapping
    /// ([`Codec::Headers`]). Every failure is a typed [`EnvelopeError`].
    pub fn from_message(msg: &Message) -> Result<Self, EnvelopeError> {
        headers::decode(msg)
    }
}

impl TryFrom<&Message> for Envelope {
    type Error = EnvelopeError;
    fn try_from(msg: &Message) -> Result<Self, EnvelopeError> {
        Envelope::from_message(msg)
    }
}

/// How envelopes are put on the wire: one per topic of a bus, the same for every transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// This project's mapping ([`headers`]): the fields in `eb-*` headers, the payload as it
    /// is, the aggregate id as the message key.
    #[default]
    Headers,
    /// The Go SDK's ([`go_sdk`], jxt-core v1.7.5): the fields and the payload in one JSON body,
    /// mirrored in `X-*` headers, the aggregate id as the message key. A message that arrives
    /// without a key (the Go SDK publishes to NATS without headers) is keyed by the body's
    /// `aggregate_id` before it is dispatched, so its aggregate's order holds.
    GoSdk,
}

impl Codec {
    /// The message carrying `envelope` on `topic`. Fails only where the format cannot say what
    /// the envelope holds (the Go SDK's needs a JSON payload and a numeric tenant id).
    pub fn encode(self, envelope: &Envelope, topic: &str) -> Result<Message, Error> {
        match self {
            Codec::Headers => Ok(headers::encode(envelope, topic.to_owned())),
            Codec::GoSdk => go_sdk::encode(envelope, topic),
        }
    }

    /// The envelope `message` carries; every failure is a typed [`EnvelopeError`].
    pub fn decode(self, message: &Message) -> Result<Envelope, EnvelopeError> {
        match self {
            Codec::Headers => headers::decode(message),
            Codec::GoSdk => go_sdk::decode(message),
        }
    }

    /// The key of a message that arrived without one, where the format carries the aggregate
    /// id elsewhere (the Go SDK's body); `None` otherwise, or if it is not a valid key.
    pub fn key_of(self, message: &Message) -> Option<Key> {
        match self {
            Codec::Headers => None,
            Codec::GoSdk => go_sdk::aggregate_id(message.payload()),
        }
    }
}
