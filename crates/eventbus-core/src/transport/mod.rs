//! What a transport implements: publishing, and adapting a broker's stream of messages into
//! the bus's dispatcher.
//!
//! A transport holds no worker pool. Its subscription is a [`Stream`](futures::Stream) of [`Incoming`] messages
//! that it hands to [`SubscribeRequest::start`]; the bus pulls from that stream only while its
//! dispatcher has room (so a transport that fetches on demand never over-fetches), runs the
//! handlers, and calls [`Acknowledge::settle`] with each message's outcome.

pub(crate) mod incoming;
mod provision;
pub(crate) mod publisher;

pub use crate::bus::subscription::{Started, SubscribeRequest};
pub use incoming::{Acknowledge, Incoming, Settle};
pub use provision::Provision;
pub use publisher::{PublishFuture, Publisher, settle_batch};

use crate::error::Result;

/// What a transport can do; the conformance suite checks that what a transport lacks is
/// reported as [`Error::Unsupported`](crate::Error::Unsupported), never skipped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages survive a restart of the process (and a new group reads old messages).
    pub persistent: bool,
    /// Consumer groups: members of a group share messages, every group gets all of them.
    pub consumer_groups: bool,
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
    /// One key, one group member.
    pub const fn with_key_affinity(mut self) -> Self {
        self.key_affinity = true;
        self
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

    /// Messages of `topic` that `group` has not acked yet (its consumer lag), as the broker
    /// reports it: an ack just sent may count a moment longer (JetStream applies acks
    /// asynchronously, Kafka commits on an interval).
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let _ = (topic, group);
        Err(crate::Error::Unsupported {
            transport: self.name(),
            capability: "consumer lag",
        })
    }
}
