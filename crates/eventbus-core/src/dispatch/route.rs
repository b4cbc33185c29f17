//! A subscription as the dispatcher sees it: its handler, type-erased, its retry policy, its
//! tokens, and the messages it has backing off before a retry.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use slab::Slab;
use tokio_util::sync::CancellationToken;
use tokio_util::sync::ReusableBoxFuture;
use tower::ServiceExt;

use super::budget::Reservation;
use super::completions::Completions;
use crate::envelope::Codec;
use crate::error::BoxError;
use crate::handler::{Delivery, Handler, Scope};
use crate::message::Message;
use crate::outcome::Outcome;
use crate::retry::{RetryPolicy, Retrying};
use crate::telemetry::RouteMetrics;

static NEXT_ROUTE: AtomicU64 = AtomicU64::new(1);

/// A subscription's handler, type-erased. One call clones the handler and puts the future of
/// `ready` + `call` together in the worker's [`Slot`].
pub(super) trait ErasedHandler: Send + Sync + 'static {
    fn handle(&self, delivery: Delivery, slot: &mut Slot);
}

/// Where a worker keeps the handler call it runs. One box per worker, reused: calls of one
/// route all have the same layout, so a worker allocates only when it moves to a route whose
/// handler differs in size, not once per message.
pub(super) type Slot = ReusableBoxFuture<'static, Result<(), BoxError>>;

/// An empty slot; it holds nothing and allocates nothing.
pub(super) fn empty_slot() -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
    std::future::pending()
}

struct Erased<H>(H);

impl<H> ErasedHandler for Erased<H>
where
    H: Handler,
{
    fn handle(&self, delivery: Delivery, slot: &mut Slot) {
        let mut handler = self.0.clone();
        // A finished call holds nothing (the async block dropped the handler and its future
        // when it returned), so the previous call dropped here runs no user code.
        slot.set(async move {
            handler.ready().await.map_err(Into::into)?;
            handler.call(delivery).await.map_err(Into::into)
        });
    }
}

/// A subscription as the dispatcher sees it: its handler, how failures are retried, and the
/// tokens that stop it. Per-key order holds within one route.
///
/// ```
/// use eventbus_core::{Route, RetryPolicy, handler_fn, Delivery, BoxError};
/// let route = Route::builder("orders", "billing", handler_fn(|_d: Delivery| async {
///     Ok::<_, BoxError>(())
/// }))
/// .retry(RetryPolicy::never())
/// .build();
/// assert_eq!(route.topic(), "orders");
/// ```
pub struct Route {
    pub(super) id: u64,
    /// Group and closing token, shared with every delivery.
    pub(super) scope: Arc<Scope>,
    pub(super) topic: Arc<str>,
    pub(super) handler: Box<dyn ErasedHandler>,
    pub(super) retry: RetryPolicy,
    pub(super) abort: CancellationToken,
    /// Where finished jobs of the route are reported when one consuming loop feeds it (the
    /// other way is a future per message): jobs reply through it, so a job carries no sender
    /// of its own.
    pub(super) completions: Completions,
    pub(crate) metrics: RouteMetrics,
    /// Messages backing off before a retry, each at the slot its job remembers.
    retrying: Mutex<Slab<Retrying>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("group", &self.scope.group)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Route`]: the retry policy and the tokens are optional.
#[must_use]
pub struct RouteBuilder {
    topic: Arc<str>,
    group: Arc<str>,
    handler: Box<dyn ErasedHandler>,
    retry: RetryPolicy,
    codec: Codec,
    closing: CancellationToken,
    abort: CancellationToken,
}

impl std::fmt::Debug for RouteBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteBuilder")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl RouteBuilder {
    /// How failed calls are retried (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// How the topic's envelopes travel: deliveries decode with it, and a message that arrives
    /// without a key is keyed by it where the format carries the aggregate id elsewhere
    /// (default: [`Codec::Headers`]).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }
    /// Fires when intake stops: deliveries see it, and queued messages are then cancelled, not
    /// run (default: a token of its own).
    pub fn closing(mut self, closing: CancellationToken) -> Self {
        self.closing = closing;
        self
    }
    /// Fires when running handlers must be dropped, the drain deadline passed (default: a
    /// token of its own).
    pub fn abort(mut self, abort: CancellationToken) -> Self {
        self.abort = abort;
        self
    }
    /// The route.
    pub fn build(self) -> Route {
        Route {
            id: NEXT_ROUTE.fetch_add(1, Ordering::Relaxed),
            metrics: RouteMetrics::new(&self.topic, &self.group),
            topic: self.topic,
            scope: Arc::new(Scope {
                group: self.group,
                codec: self.codec,
                closing: self.closing,
            }),
            handler: self.handler,
            retry: self.retry,
            abort: self.abort,
            completions: Completions::default(),
            retrying: Mutex::new(Slab::new()),
        }
    }
}

impl Route {
    /// A route of `group` on `topic` to `handler`.
    pub fn builder<H>(topic: &str, group: &str, handler: H) -> RouteBuilder
    where
        H: Handler,
    {
        RouteBuilder {
            topic: Arc::from(topic),
            group: Arc::from(group),
            handler: Box::new(Erased(handler)),
            retry: RetryPolicy::default(),
            codec: Codec::default(),
            closing: CancellationToken::new(),
            abort: CancellationToken::new(),
        }
    }

    /// `message`, keyed by the route's codec if it arrived without a key and the codec finds
    /// one in it (the Go SDK's NATS messages carry the aggregate id in their body only): the
    /// dispatcher orders by key.
    pub(crate) fn keyed(&self, message: Arc<Message>) -> Arc<Message> {
        if message.key().is_some() {
            return message;
        }
        match self.scope.codec.key_of(&message) {
            Some(key) => Arc::new(Arc::unwrap_or_clone(message).with_key(key)),
            None => message,
        }
    }
    /// Messages of the route waiting out a backoff before another attempt, longest failing
    /// first.
    pub fn retrying(&self) -> Vec<Retrying> {
        let mut all: Vec<Retrying> = self
            .retrying
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, r)| r.clone())
            .collect();
        all.sort_by_key(|r| r.first_failure);
        all
    }
    /// Records a message backing off (`slot`: where it was recorded before, if it was);
    /// returns where it is recorded now.
    pub(super) fn note_retrying(&self, slot: Option<usize>, entry: Retrying) -> usize {
        let mut retrying = self.retrying.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.filter(|&s| retrying.contains(s)) {
            Some(slot) => {
                retrying[slot] = entry;
                slot
            }
            None => retrying.insert(entry),
        }
    }
    /// Forgets a message recorded by [`note_retrying`](Self::note_retrying).
    pub(super) fn done_retrying(&self, slot: usize) {
        let mut retrying = self.retrying.lock().unwrap_or_else(PoisonError::into_inner);
        retrying.try_remove(slot);
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.scope.group
    }
    /// Fires when the route stops taking messages.
    pub fn closing(&self) -> &CancellationToken {
        &self.scope.closing
    }
    /// Starts the route's queue of finished jobs, for every [`Reply::Queue`] of this route:
    /// once, as one consuming loop feeds a route.
    pub(crate) fn complete_into_queue(&self) -> &Completions {
        assert!(self.completions.open(), "one consuming loop per route");
        &self.completions
    }
    /// Fires when running handlers of the route are dropped.
    pub fn abort(&self) -> &CancellationToken {
        &self.abort
    }
}

impl Reply {
    pub(super) fn send(self, route: &Route, outcome: Outcome, room: Reservation) {
        // The receiver may be gone (the transport stopped caring): the room is freed either way.
        match self {
            Reply::Oneshot(tx) => {
                // Room first, so whoever sees the outcome also sees the room it freed.
                drop(room);
                let _ = tx.send(outcome);
            }
            Reply::Queue { token } => {
                let done = Done {
                    token,
                    outcome,
                    room,
                };
                route.completions.push(done);
            }
        }
    }
}

/// Where a job's final outcome goes.
pub(crate) enum Reply {
    /// To a [`ResponseFuture`](super::ResponseFuture) (the tower `call` path).
    Oneshot(oneshot::Sender<Outcome>),
    /// To the completion queue of the consuming loop feeding the route (see
    /// [`Route::complete_into_queue`]), tagged with the loop's token for the message. The room
    /// the message held travels along and is freed once the loop has settled it, so the
    /// dispatcher's bounds also cover messages waiting to be acked.
    Queue {
        /// The loop's tag for the message.
        token: usize,
    },
}

/// A finished job, as a consuming loop receives it.
pub(crate) struct Done {
    pub(crate) token: usize,
    pub(crate) outcome: Outcome,
    /// Frees the message's room in the dispatcher when dropped.
    pub(crate) room: Reservation,
}
