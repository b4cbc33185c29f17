//! What a transport implements: publishing, and adapting a broker's stream of messages into
//! the bus's dispatcher.
//!
//! A transport holds no worker pool. Its subscription is a [`Stream`] of [`Incoming`] messages
//! that it hands to [`SubscribeRequest::start`]; the bus pulls from that stream only while its
//! dispatcher has room (so a transport that fetches on demand never over-fetches), runs the
//! handlers, and calls [`Acknowledge::settle`] with each message's outcome.

use futures::future::BoxFuture;
use std::sync::Arc;

use futures::Stream;

use crate::consume;
use crate::dispatch::{Dispatcher, Outcome, Route};
use crate::error::Result;
use crate::message::Message;

/// What a transport can do; the conformance suite checks that what a transport lacks is
/// reported as [`Error::Unsupported`](crate::Error::Unsupported), never skipped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages survive a restart of the process (and a new group reads old messages).
    pub persistent: bool,
    /// Consumer groups: members of a group share messages, every group gets all of them.
    pub consumer_groups: bool,
    /// The broker can be restarted by a test (it runs out of process).
    pub broker_restart: bool,
    /// All messages of one key go to the same member of a group (Kafka's partitions), so
    /// per-key order holds across the instances of one group, not only within one subscription.
    pub key_affinity: bool,
}

impl Capabilities {
    /// No optional capability.
    pub const fn none() -> Self {
        Capabilities {
            persistent: false,
            consumer_groups: false,
            broker_restart: false,
            key_affinity: false,
        }
    }
    /// With consumer groups.
    pub const fn with_consumer_groups(mut self) -> Self {
        self.consumer_groups = true;
        self
    }
    /// Persistent.
    pub const fn with_persistence(mut self) -> Self {
        self.persistent = true;
        self
    }
    /// Broker restartable by tests.
    pub const fn with_broker_restart(mut self) -> Self {
        self.broker_restart = true;
        self
    }
    /// One key, one group member.
    pub const fn with_key_affinity(mut self) -> Self {
        self.key_affinity = true;
        self
    }
}

/// A message received from the broker, with what settles it there.
#[derive(Debug)]
pub struct Incoming<A> {
    /// The message.
    pub message: Arc<Message>,
    /// Acks, nacks or releases it.
    pub ack: A,
}

/// Settles one received message at the broker according to its [`Outcome`].
pub trait Acknowledge: Send + 'static {
    /// [`Outcome::Handled`]: ack. [`Outcome::Failed`]: nack (or dead-letter).
    /// [`Outcome::Cancelled`]: leave unacked, for redelivery.
    fn settle(self, outcome: &Outcome) -> Settle;
}

/// How settling went: most acks are bookkeeping that is done at once (an offset to commit, a
/// queued ack); only those that must wait for I/O return a future, so the common case costs
/// no allocation.
#[must_use]
pub enum Settle {
    /// Settled (or failed to).
    Done(Result<()>),
    /// Settles when this completes.
    Later(BoxFuture<'static, Result<()>>),
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Settle::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Settle::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// Publishes messages. Topic, key and size are validated by the bus before a call.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; returns once the broker has it (its ack, where it has one).
    async fn publish(&self, message: Message) -> Result<()>;

    /// Publishes several messages, in order; returns once the broker has all of them.
    async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        for message in messages {
            self.publish(message).await?;
        }
        Ok(())
    }
}

/// Opens subscriptions.
#[async_trait::async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Opens the broker side of `request`'s (topic, group) and hands its message stream to
    /// [`SubscribeRequest::start`].
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started>;
}

/// A complete transport.
#[async_trait::async_trait]
pub trait Transport: Publisher + Subscriber {
    /// Short name, for errors and reports (`memory`, `nats`, `kafka`).
    fn name(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Releases connections and every task or thread the transport started. Called by the bus
    /// after all subscriptions have drained.
    async fn close(&self) -> Result<()>;

    /// The connection to the broker now; cheap (no I/O): health probes call it. The default
    /// is for transports without a connection: always connected.
    fn connection(&self) -> crate::health::Connection {
        crate::health::Connection::new(crate::health::ConnectionState::Connected)
    }

    /// Messages of `topic` that `group` has not acked yet (its consumer lag).
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let _ = (topic, group);
        Err(crate::Error::Unsupported {
            transport: self.name(),
            capability: "consumer lag",
        })
    }
}

/// A subscription the bus asks a transport to open.
#[derive(Debug)]
pub struct SubscribeRequest {
    pub(crate) route: Arc<Route>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) tracker: tokio_util::task::TaskTracker,
    pub(crate) outlet: crate::publish::Outlet,
}

impl SubscribeRequest {
    /// The topic.
    pub fn topic(&self) -> &str {
        self.route.topic()
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        self.route.group()
    }
    /// Most messages the bus's dispatcher admits at once: a transport that prefetches should
    /// not ask the broker for more than this per pull.
    pub fn max_buffered(&self) -> usize {
        self.dispatcher.max_buffered()
    }
    /// Fires when the subscription starts closing; the stream need not watch it (the bus stops
    /// pulling), but a transport may use it to stop background work early.
    pub fn closing(&self) -> &tokio_util::sync::CancellationToken {
        self.route.closing()
    }

    /// Starts consuming `source` through the bus's dispatcher, in a task the bus tracks.
    /// The source is polled only while the dispatcher has room, and dropped once the
    /// subscription has closed and every message taken from it has been settled.
    pub fn start<S, A>(self, source: S) -> Started
    where
        S: Stream<Item = Result<Incoming<A>>> + Send + Unpin + 'static,
        A: Acknowledge,
    {
        let ended = tokio_util::sync::CancellationToken::new();
        let guard = ended.clone().drop_guard();
        self.tracker.spawn(async move {
            // Fires inside the tracked future, so whoever saw the bus's tracker empty also
            // sees every subscription ended (a JoinHandle finishes a moment later).
            let _ended = guard;
            consume::pump(source, self.dispatcher, self.route, self.outlet).await;
        });
        Started(ended)
    }
}

/// A running subscription's consuming task, returned by [`SubscribeRequest::start`].
#[derive(Debug)]
#[must_use = "return it from Subscriber::subscribe"]
pub struct Started(pub(crate) tokio_util::sync::CancellationToken);
