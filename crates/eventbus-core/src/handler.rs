//! What handlers receive and helpers to build them.
//!
//! A handler is any [`tower::Service<Delivery>`] with `Response = ()` and an error convertible
//! into [`BoxError`], so every tower layer (timeout, concurrency limit, rate limit, ...) wraps it
//! as is. Build one from a closure with [`handler_fn`], or decode JSON with [`json_handler`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::envelope::{Codec, Envelope};
use crate::error::{BoxError, EnvelopeError};
use crate::message::Message;

/// What a subscription calls for each message: a tower [`Service`] of [`Delivery`] answering
/// `()`, with an error the bus can box, that can be cloned (the bus clones it per call) and
/// sent between threads. Every such service is one; bounds name `Handler` instead of spelling
/// the service out.
pub trait Handler:
    Service<Delivery, Response = (), Error: Into<BoxError>, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Handler for S where
    S: Service<Delivery, Response = (), Error: Into<BoxError>, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// One delivery of a message to a handler.
///
/// Cheap to clone. The same message is delivered again, with a higher [`attempt`](Self::attempt),
/// when a previous attempt failed.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub(crate) message: Arc<Message>,
    pub(crate) attempt: u32,
    pub(crate) scope: Arc<Scope>,
}

/// What every delivery of one subscription shares, behind one reference count: cloning the
/// token for each delivery would take its lock twice per message.
#[derive(Debug)]
pub(crate) struct Scope {
    pub(crate) group: Arc<str>,
    /// How the topic's envelopes travel.
    pub(crate) codec: Codec,
    pub(crate) closing: CancellationToken,
}

impl Delivery {
    /// A delivery built by hand, to unit-test a handler without a bus.
    pub fn new(message: Message, group: &str) -> Self {
        Delivery {
            message: Arc::new(message),
            attempt: 1,
            scope: Arc::new(Scope {
                group: Arc::from(group),
                codec: Codec::default(),
                closing: CancellationToken::new(),
            }),
        }
    }
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }
    /// The message, shared.
    pub fn message_arc(&self) -> &Arc<Message> {
        &self.message
    }
    /// The payload.
    pub fn payload(&self) -> &bytes::Bytes {
        self.message.payload()
    }
    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The consumer group this delivery is for.
    pub fn group(&self) -> &str {
        &self.scope.group
    }
    /// Fires when the subscription or the bus starts closing. A handler may finish its work or
    /// stop early; an error it returns after this fired is not a failure: the message is left
    /// unacked for redelivery, never retried or dead-lettered.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.scope.closing
    }
    /// Decodes the message as an [`Envelope`], with the codec of the subscription's topic
    /// ([`BusOptions::codec_for`](crate::BusOptions::codec_for)). Returned from a handler, the
    /// error is permanent (see [`Permanent::is_permanent`]): a message that is not an envelope
    /// fails at once, it is never retried.
    pub fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        self.scope.codec.decode(&self.message)
    }
    /// Decodes the payload as JSON; a failure is a [`Permanent`] [`DecodeError`], so returning it
    /// with `?` from a handler is never retried.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Permanent> {
        serde_json::from_slice(self.payload()).map_err(|source| {
            Permanent::new(DecodeError {
                type_name: std::any::type_name::<T>(),
                source,
            })
        })
    }
}

/// Marks a handler error as not worth retrying (bad input, say): the message fails at once.
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// Wraps an error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Permanent(error.into())
    }
    /// The wrapped error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
    /// Whether a handler error is not worth retrying: a [`Permanent`] one, or an error decoding
    /// the message ([`EnvelopeError`], [`Error::MalformedEnvelope`](crate::Error), a
    /// [`DecodeError`]), whichever accessor produced it: the same bytes decode the same way on
    /// every attempt.
    pub fn is_permanent(error: &BoxError) -> bool {
        error.is::<Permanent>()
            || error.is::<EnvelopeError>()
            || error.is::<DecodeError>()
            || matches!(
                error.downcast_ref::<crate::Error>(),
                Some(crate::Error::MalformedEnvelope(_))
            )
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "permanent failure: {}", self.0)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A payload could not be decoded into the handler's type.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {type_name} from the JSON payload: {source}")]
pub struct DecodeError {
    /// The type the payload should have been.
    pub type_name: &'static str,
    /// What serde said.
    #[source]
    pub source: serde_json::Error,
}

/// A handler panicked; the panic was caught and counted, and the message treated as failed.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub struct Panicked(pub String);

/// A handler from an async closure taking a [`Delivery`].
///
/// ```
/// use eventbus_core::{handler_fn, Delivery, BoxError};
/// let handler = handler_fn(|d: Delivery| async move {
///     println!("{} bytes", d.payload().len());
///     Ok::<_, BoxError>(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F>(f: F) -> tower::util::ServiceFn<F> {
    tower::service_fn(f)
}

/// A handler that decodes each payload as JSON into `T` and calls `f(event, delivery)`.
///
/// A payload that does not decode fails the message at once with a [`Permanent`]
/// [`DecodeError`]: retrying cannot fix it.
///
/// ```
/// use eventbus_core::{json_handler, Delivery, BoxError};
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { total: u64 }
/// let handler = json_handler::<OrderPlaced, _>(|e: OrderPlaced, _d: Delivery| async move {
///     assert!(e.total > 0);
///     Ok::<_, BoxError>(())
/// });
/// # let _ = handler;
/// ```
pub fn json_handler<T, F>(f: F) -> JsonHandler<T, F> {
    Decoded::new(f)
}

/// See [`json_handler`].
pub type JsonHandler<T, F> = Decoded<Json<T>, F>;

/// How a decoding handler turns a delivery into its closure's argument; a failure is
/// [`Permanent`]: retrying cannot fix it.
pub trait Decode: 'static {
    /// What the closure receives.
    type Output;
    /// Decodes the delivery.
    fn decode(delivery: &Delivery) -> Result<Self::Output, Permanent>;
}

/// JSON payloads of type `T` (see [`json_handler`]).
#[derive(Debug)]
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T: DeserializeOwned + 'static> Decode for Json<T> {
    type Output = T;
    fn decode(delivery: &Delivery) -> Result<T, Permanent> {
        delivery.json()
    }
}

/// A handler that decodes each delivery with `D` and calls `f(decoded, delivery)`
/// ([`json_handler`], [`event_handler`](crate::event_handler)).
pub struct Decoded<D, F> {
    f: F,
    _decode: PhantomData<fn() -> D>,
}

impl<D, F> Decoded<D, F> {
    pub(crate) fn new(f: F) -> Self {
        Decoded {
            f,
            _decode: PhantomData,
        }
    }
}

impl<D, F: Clone> Clone for Decoded<D, F> {
    fn clone(&self) -> Self {
        Decoded::new(self.f.clone())
    }
}

impl<D, F> fmt::Debug for Decoded<D, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("decode", &std::any::type_name::<D>())
            .finish()
    }
}

impl<D, F, Fut, E> Service<Delivery> for Decoded<D, F>
where
    D: Decode,
    F: FnMut(D::Output, Delivery) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        match D::decode(&delivery) {
            Ok(decoded) => {
                let fut = (self.f)(decoded, delivery);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    struct Ev {
        n: u32,
    }

    #[tokio::test]
    async fn json_decode_failure_is_permanent() {
        let h = json_handler(|e: Ev, _d: Delivery| async move {
            assert_eq!(e.n, 1);
            Ok::<_, BoxError>(())
        });
        h.clone()
            .oneshot(Delivery::new(Message::new("t", r#"{"n":1}"#), "g"))
            .await
            .unwrap();
        let err = h
            .oneshot(Delivery::new(Message::new("t", "not json"), "g"))
            .await
            .unwrap_err();
        assert!(Permanent::is_permanent(&err));
        let inner = err.downcast::<Permanent>().unwrap().into_inner();
        assert!(inner.is::<DecodeError>(), "{inner}");
    }
}
