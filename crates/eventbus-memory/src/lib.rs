//! In-memory transport for eventbus: the embedded default, with broker semantics.
//!
//! ```
//! use eventbus_core::{EventBus, Message, Delivery, BoxError, handler_fn};
//! use eventbus_memory::MemoryTransport;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> eventbus_core::Result<()> {
//! let bus = EventBus::new(MemoryTransport::new());
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let sub = bus
//!     .subscribe("orders", "billing", handler_fn(move |d: Delivery| {
//!         let tx = tx.clone();
//!         async move { tx.send(d.payload().clone())?; Ok::<_, BoxError>(()) }
//!     }))
//!     .await?;
//! bus.publish(Message::new("orders", "placed").with_key("order-1")).await?;
//! assert_eq!(rx.recv().await.unwrap(), "placed");
//! sub.close().await;
//! bus.close().await
//! # }
//! ```
//!
//! # Semantics
//! - **Topics** are created on first use. Each keeps a log of messages; a message leaves the log
//!   once every consumer group of the topic has acked it.
//! - **Consumer groups**: every group receives every message; the members (subscriptions) of a
//!   group share them. A group lives as long as the transport, so a group whose members all
//!   closed resumes where it stopped, and a new group receives the messages the topic still
//!   holds (with no group yet, that is every message published so far).
//! - **Key affinity** ([`Capabilities::key_affinity`]): a key's messages go to one member of a
//!   group at a time, so per-key order holds across members (several buses over
//!   [`connect`](MemoryTransport::connect)ed transports), as with Kafka's partitions. Keys are
//!   hashed into 64 slots, shared evenly by the group's members and rebalanced when a member
//!   joins (it takes its share from the others) or leaves (its subscription or bus closes; its
//!   slots go to the others). A slot that changes hands while its old owner holds messages of
//!   it unsettled waits for them: the new owner takes none of its messages until those are
//!   settled, or released when the old owner goes and then redelivered to the new owner first,
//!   in order. Messages without a key go to any member. A group has at most 64 members that
//!   get keyed messages; more members stay idle but for unkeyed ones.
//! - **At least once**: a message is delivered again when its handler did not finish (closed
//!   subscription, dropped bus) — at once, before newer messages — or failed for good —
//!   after the subscription's redelivery delay
//!   ([`SubscribeRequest::redelivery_delay`](eventbus_core::transport::SubscribeRequest::redelivery_delay)).
//! - **Bounded**: a topic holds at most [`MemoryConfig::topic_capacity`] messages that some
//!   group has not acked yet (or, with no group, that were not consumed yet); a publish into a
//!   full topic waits (up to the bus's publish timeout), so backpressure from the slowest group
//!   reaches publishers. What counts is what is held, not the distance from the oldest held
//!   message to the newest: a message stuck in its handler holds only itself (and its key's
//!   later messages, which wait behind it), never the other keys of its topic. Each message
//!   acked after a stuck one leaves an empty slot (8 bytes) until the stuck one is settled.
//! - **No tasks, no threads**: consumers are streams polled by the bus; [`close`] leaves
//!   nothing behind.
//! - Nothing survives the process: [`Capabilities::persistent`] is false.
//!
//! [`close`]: eventbus_core::Transport::close
#![warn(missing_docs)]

mod ack;
mod affinity;
mod broker;
mod member;
mod publish;
#[cfg(feature = "testing")]
pub mod testing;
mod unsettled;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;
use eventbus_core::Result;
use eventbus_core::transport::{Capabilities, Transport};
use tokio::sync::Notify;

pub use ack::MemoryAck;

use broker::{Broker, Topic, TopicState, lock};

const NAME: &str = "memory";

/// Options of a [`MemoryTransport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Most messages a topic holds that are not yet acked by every group (default 10,000);
    /// publishing into a full topic waits, so memory stays bounded (about 1 KB per envelope)
    /// and slow consumers slow publishers.
    pub topic_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            topic_capacity: 10_000,
        }
    }
}

impl MemoryConfig {
    /// Sets [`topic_capacity`](Self::topic_capacity).
    pub fn topic_capacity(mut self, n: usize) -> Self {
        self.topic_capacity = n.max(1);
        self
    }
}

/// A connection to an in-memory broker.
///
/// Clones are handles to this connection, as on every transport (to read its state after
/// handing it to a bus; the bus's `close` closes it for all of them).
/// [`connect`](Self::connect) opens another connection to the same broker: two buses over two
/// connections behave like two processes sharing one broker.
#[derive(Debug, Default, Clone)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
    closed: Arc<AtomicBool>,
}

impl MemoryTransport {
    /// A broker with default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        MemoryTransport {
            broker: Arc::new(Broker {
                config,
                ..Broker::default()
            }),
            closed: Arc::default(),
        }
    }

    /// Another connection to this transport's broker: what another process would have.
    pub fn connect(&self) -> Self {
        MemoryTransport {
            broker: Arc::clone(&self.broker),
            closed: Arc::default(),
        }
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.broker.topics);
        if let Some(topic) = topics.get(name) {
            return Arc::clone(topic);
        }
        Arc::clone(topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic {
                state: CachePadded::new(Mutex::new(TopicState::default())),
                space: Notify::new(),
            })
        }))
    }

    /// Messages of `topic` that `group` has not acked yet, or `None` when the group does not
    /// exist: [`Transport::lag`] without the `async` (which counts a group that never
    /// subscribed as behind by all the topic holds).
    pub fn pending(&self, topic: &str, group: &str) -> Option<u64> {
        let topic = lock(&self.broker.topics).get(topic).cloned()?;
        let st = lock(&topic.state);
        let g = &st.groups[*st.group_ids.get(group)?];
        // Messages not delivered yet: those queued by key, and the held slots from the cursor
        // on (a group that joined after others acked messages has empty slots ahead of it).
        let from = g.cursor.saturating_sub(st.base) as usize;
        let unread = st.log.range(from.min(st.log.len())..).flatten().count();
        let undelivered = unread + g.keys.queued_len();
        Some(undelivered as u64 + g.pending.len() as u64 + g.redeliver.len() as u64)
    }

    /// Messages `topic` holds (not yet acked by every group).
    pub fn retained(&self, topic: &str) -> usize {
        lock(&self.broker.topics)
            .get(topic)
            .map_or(0, |t| lock(&t.state).held)
    }
}

#[async_trait::async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_consumer_groups()
            .with_key_affinity()
    }

    async fn close(&self) -> Result<()> {
        // Only this connection's publishers can be waiting here (its consumers are polled by
        // the bus, which has stopped); wake every blocked publisher so these see the close.
        self.closed.store(true, Ordering::Release);
        for topic in lock(&self.broker.topics).values() {
            topic.space.notify_waiters();
        }
        Ok(())
    }

    fn connection(&self) -> eventbus_core::Connection {
        eventbus_core::Connection::new(if self.closed.load(Ordering::Acquire) {
            eventbus_core::ConnectionState::Closed
        } else {
            eventbus_core::ConnectionState::Connected
        })
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        // A group that never subscribed has read nothing: everything retained is its lag.
        Ok(self
            .pending(topic, group)
            .unwrap_or_else(|| self.retained(topic) as u64))
    }
}
