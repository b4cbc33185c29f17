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
//! - **At least once**: a message is delivered again when its handler did not finish (closed
//!   subscription, dropped bus) — at once, before newer messages — or failed for good —
//!   after [`MemoryConfig::redelivery_delay`].
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use eventbus_core::transport::{
    Acknowledge, Capabilities, Incoming, Publisher, Settle, Started, SubscribeRequest, Subscriber,
    Transport,
};
use eventbus_core::{Error, Message, Outcome, Result};
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

const NAME: &str = "memory";

/// Options of a [`MemoryTransport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Most messages a topic holds that are not yet acked by every group (default 10,000);
    /// publishing into a full topic waits, so memory stays bounded (about 1 KB per envelope)
    /// and slow consumers slow publishers.
    pub topic_capacity: usize,
    /// Delay before a message that failed for good is delivered again (default 1 s).
    pub redelivery_delay: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            topic_capacity: 10_000,
            redelivery_delay: Duration::from_secs(1),
        }
    }
}

impl MemoryConfig {
    /// Sets [`topic_capacity`](Self::topic_capacity).
    pub fn topic_capacity(mut self, n: usize) -> Self {
        self.topic_capacity = n.max(1);
        self
    }
    /// Sets [`redelivery_delay`](Self::redelivery_delay).
    pub fn redelivery_delay(mut self, d: Duration) -> Self {
        self.redelivery_delay = d;
        self
    }
}

/// A connection to an in-memory broker. Clones connect to the same broker, so two buses over
/// clones of one transport behave like two processes connected to one broker; closing one
/// clone (its bus) closes only that connection.
#[derive(Debug, Default)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
    closed: AtomicBool,
}

impl Clone for MemoryTransport {
    fn clone(&self) -> Self {
        MemoryTransport {
            broker: Arc::clone(&self.broker),
            closed: AtomicBool::new(false),
        }
    }
}

/// Topic and group maps are looked up on every publish and ack: foldhash (seeded per process,
/// as the dispatcher's key map) costs a fraction of SipHash there.
type Fast = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Broker {
    config: MemoryConfig,
    topics: Mutex<HashMap<String, Arc<Topic>, Fast>>,
}

#[derive(Debug)]
struct Topic {
    state: Mutex<TopicState>,
    /// Publishers waiting for room.
    space: Notify,
}

#[derive(Debug, Default)]
struct TopicState {
    /// Slots of offsets `base..base + log.len()`: a message some group still needs, or `None`
    /// once every group has acked it. Emptied slots at the front are dropped.
    log: VecDeque<Option<Arc<Message>>>,
    base: u64,
    /// The slots of `log` that hold a message: what the capacity bounds.
    held: usize,
    /// Indexed by the numbers in `group_ids`: groups live as long as the broker, so members
    /// and acks hold an index and no lookup by name is made per message.
    groups: Vec<Group>,
    group_ids: HashMap<String, usize, Fast>,
    /// Publishers waiting for room; only then does trimming notify `Topic::space`.
    blocked_publishers: usize,
}

/// Offsets delivered and not settled. Deliveries are almost always in offset order and acks
/// close behind, so a window of flags over `start..` (its front always set) does in O(1) and
/// without allocating per message what a sorted set would do in O(log n) with node allocations.
#[derive(Debug, Default)]
struct Unsettled {
    start: u64,
    flags: VecDeque<bool>,
    count: usize,
}

impl Unsettled {
    fn insert(&mut self, offset: u64) {
        if self.flags.is_empty() {
            self.start = offset;
        }
        if offset < self.start {
            // A redelivery below the window: widen it down to the offset.
            for _ in offset + 1..self.start {
                self.flags.push_front(false);
            }
            self.flags.push_front(true);
            self.start = offset;
        } else {
            let i = (offset - self.start) as usize;
            if i >= self.flags.len() {
                self.flags.resize(i + 1, false);
            }
            debug_assert!(!self.flags[i], "offset {offset} delivered twice");
            self.flags[i] = true;
        }
        self.count += 1;
    }

    /// Whether `offset` was unsettled (it is not any more).
    fn remove(&mut self, offset: u64) -> bool {
        let Some(i) = offset.checked_sub(self.start) else {
            return false;
        };
        match self.flags.get_mut(i as usize) {
            Some(flag) if *flag => *flag = false,
            _ => return false,
        }
        self.count -= 1;
        while self.flags.front() == Some(&false) {
            self.flags.pop_front();
            self.start += 1;
        }
        true
    }

    #[cfg(test)]
    fn first(&self) -> Option<u64> {
        (!self.flags.is_empty()).then_some(self.start)
    }

    fn contains(&self, offset: u64) -> bool {
        offset
            .checked_sub(self.start)
            .and_then(|i| self.flags.get(i as usize))
            .is_some_and(|&flag| flag)
    }

    fn len(&self) -> usize {
        self.count
    }
}

#[derive(Debug)]
struct Group {
    /// Next offset never delivered to this group.
    cursor: u64,
    /// Delivered and not settled.
    pending: Unsettled,
    /// To deliver again, not before the instant given; served before newer messages.
    redeliver: BTreeMap<u64, Instant>,
    /// Wakes members waiting for messages.
    ready: Arc<Notify>,
    /// Members registered with `ready`; publishing notifies only when there are any, so the
    /// fast path takes no lock but the topic's.
    waiting: usize,
}

impl Group {
    /// Whether this group has yet to settle `offset`: not delivered yet, delivered and not
    /// settled, or waiting to be delivered again.
    fn needs(&self, offset: u64) -> bool {
        offset >= self.cursor
            || self.pending.contains(offset)
            || self.redeliver.contains_key(&offset)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under these locks; a poisoned one still holds consistent state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
            closed: AtomicBool::new(false),
        }
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.broker.topics);
        if let Some(topic) = topics.get(name) {
            return Arc::clone(topic);
        }
        Arc::clone(topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic {
                state: Mutex::new(TopicState::default()),
                space: Notify::new(),
            })
        }))
    }

    /// Messages of `topic` that `group` has not acked yet (its consumer lag), or `None` when the
    /// group does not exist.
    pub fn lag(&self, topic: &str, group: &str) -> Option<u64> {
        let topic = lock(&self.broker.topics).get(topic).cloned()?;
        let st = lock(&topic.state);
        let g = &st.groups[*st.group_ids.get(group)?];
        // Messages not delivered yet: the held slots from the cursor on (a group that joined
        // after others acked messages has empty slots ahead of it).
        let from = g.cursor.saturating_sub(st.base) as usize;
        let unread = st.log.range(from.min(st.log.len())..).flatten().count();
        Some(unread as u64 + g.pending.len() as u64 + g.redeliver.len() as u64)
    }

    /// Messages `topic` holds (not yet acked by every group).
    pub fn retained(&self, topic: &str) -> usize {
        lock(&self.broker.topics)
            .get(topic)
            .map_or(0, |t| lock(&t.state).held)
    }

    /// Appends `message` if its topic has room; gives it back if the topic is full.
    fn try_append(&self, message: Message) -> Append {
        let topic = self.topic(message.topic());
        let mut st = lock(&topic.state);
        if self.closed.load(Ordering::Acquire) {
            return Append::Done(Err(Error::Closed));
        }
        if st.held >= self.broker.config.topic_capacity {
            return Append::Full(message);
        }
        st.log.push_back(Some(Arc::new(message)));
        st.held += 1;
        st.wake_members();
        Append::Done(Ok(()))
    }

    /// Appends messages of one topic, waiting for room as needed.
    async fn append<I>(&self, messages: I) -> Result<()>
    where
        I: IntoIterator<Item = Message>,
        I::IntoIter: Send,
    {
        let mut messages = messages.into_iter().map(Arc::new).peekable();
        let Some(first) = messages.peek() else {
            return Ok(());
        };
        let topic = self.topic(first.topic());
        let capacity = self.broker.config.topic_capacity;
        while messages.peek().is_some() {
            let space = topic.space.notified();
            tokio::pin!(space);
            let _blocked = {
                let mut st = lock(&topic.state);
                if self.closed.load(Ordering::Acquire) {
                    return Err(Error::Closed);
                }
                let room = capacity.saturating_sub(st.held);
                if room > 0 {
                    let before = st.log.len();
                    st.log.extend(messages.by_ref().take(room).map(Some));
                    st.held += st.log.len() - before;
                    st.wake_members();
                    continue;
                }
                // Registered under the topic lock, so room freed after we looked wakes us.
                space.as_mut().enable();
                st.blocked_publishers += 1;
                Blocked(&topic)
            };
            space.await;
        }
        Ok(())
    }
}

impl TopicState {
    /// Wakes the members waiting for messages.
    fn wake_members(&self) {
        for g in self.groups.iter().filter(|g| g.waiting > 0) {
            g.ready.notify_waiters();
        }
    }
}

/// What [`MemoryTransport::try_append`] did.
enum Append {
    Done(Result<()>),
    /// The topic is full: the message back, to wait for room with.
    Full(Message),
}

/// Counts a publisher waiting for room for as long as it waits (a timed-out publish included).
struct Blocked<'a>(&'a Topic);

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).blocked_publishers -= 1;
    }
}

#[async_trait::async_trait]
impl Publisher for MemoryTransport {
    async fn publish(&self, message: Message) -> Result<()> {
        // The waiting append lives in its own box, made only when the topic is full, so the
        // future boxed for every publish holds little more than the message.
        match self.try_append(message) {
            Append::Done(appended) => appended,
            Append::Full(message) => Box::pin(self.append(std::iter::once(message))).await,
        }
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        // One append per run of messages on the same topic, in order.
        let mut run: Vec<Message> = Vec::new();
        for message in messages {
            if run
                .last()
                .is_some_and(|last| last.topic() != message.topic())
            {
                self.append(std::mem::take(&mut run)).await?;
            }
            run.push(message);
        }
        self.append(run).await
    }
}

#[async_trait::async_trait]
impl Subscriber for MemoryTransport {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let topic = self.topic(request.topic());
        let (group, ready) = {
            let mut st = lock(&topic.state);
            let st = &mut *st;
            let group = match st.group_ids.get(request.group()) {
                Some(&group) => group,
                None => {
                    st.groups.push(Group {
                        cursor: st.base,
                        pending: Unsettled::default(),
                        redeliver: BTreeMap::new(),
                        ready: Arc::new(Notify::new()),
                        waiting: 0,
                    });
                    st.group_ids
                        .insert(request.group().to_owned(), st.groups.len() - 1);
                    st.groups.len() - 1
                }
            };
            (group, Arc::clone(&st.groups[group].ready))
        };
        let member = Member {
            wake: Box::pin(Arc::clone(&ready).notified_owned()),
            topic,
            group,
            ready,
            redelivery_delay: self.broker.config.redelivery_delay,
            registered: false,
            due: None,
            taken: VecDeque::new(),
            batch: request.max_buffered().clamp(1, TAKE_BATCH),
        };
        Ok(request.start(member))
    }
}

#[async_trait::async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none().with_consumer_groups()
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
        Ok(MemoryTransport::lag(self, topic, group).unwrap_or_else(|| self.retained(topic) as u64))
    }
}

/// One subscription's view of its group.
struct Member {
    topic: Arc<Topic>,
    group: usize,
    ready: Arc<Notify>,
    /// Registered with `ready` while `registered`; one box per member, refilled in place.
    wake: Pin<Box<OwnedNotified>>,
    /// The timer of the next redelivery falling due, made the first time one is waited for.
    due: Option<Pin<Box<Sleep>>>,
    redelivery_delay: Duration,
    /// Counted in its group's `waiting`.
    registered: bool,
    /// Taken under one lock, not yet handed to the bus.
    taken: VecDeque<Incoming<MemoryAck>>,
    /// Most messages taken at once: never more than the bus admits, so a slow member does not
    /// hoard what the other members of its group could handle.
    batch: usize,
}

/// Most messages a member takes from its group under one lock.
const TAKE_BATCH: usize = 32;

impl Drop for Member {
    fn drop(&mut self) {
        if self.registered {
            lock(&self.topic.state).groups[self.group].waiting -= 1;
        }
    }
}

enum Next {
    Message(Incoming<MemoryAck>),
    /// Nothing now; a redelivery falls due at this instant.
    WaitUntil(Instant),
    Wait,
}

impl Member {
    /// Takes the next message, or registers `wake` for when one may be there. Takes up to
    /// `batch` at once under one lock; the rest wait in `taken` (pending at the broker,
    /// released for redelivery if the subscription ends first).
    fn try_next(&mut self) -> Next {
        if let Some(incoming) = self.taken.pop_front() {
            return Next::Message(incoming);
        }
        let mut st = lock(&self.topic.state);
        let TopicState {
            log, base, groups, ..
        } = &mut *st;
        let g = &mut groups[self.group];
        if std::mem::take(&mut self.registered) {
            g.waiting -= 1;
        }
        let now = (!g.redeliver.is_empty()).then(Instant::now);
        while self.taken.len() < self.batch {
            // Redeliveries first, lowest offset first, so a key's older message comes back
            // before its newer ones.
            let due = now.and_then(|now| {
                g.redeliver
                    .iter()
                    .find(|&(_, &at)| at <= now)
                    .map(|(&o, _)| o)
            });
            let offset = match due {
                Some(o) => {
                    g.redeliver.remove(&o);
                    o
                }
                None if g.cursor < *base + log.len() as u64 => {
                    g.cursor += 1;
                    g.cursor - 1
                }
                None => break,
            };
            // An empty slot: acked by every group before this one joined.
            let Some(message) = &log[(offset - *base) as usize] else {
                continue;
            };
            g.pending.insert(offset);
            self.taken.push_back(Incoming {
                message: Arc::clone(message),
                ack: MemoryAck {
                    topic: Arc::clone(&self.topic),
                    group: self.group,
                    offset,
                    redelivery_delay: self.redelivery_delay,
                    settled: false,
                },
            });
        }
        if let Some(incoming) = self.taken.pop_front() {
            return Next::Message(incoming);
        }
        // Registered under the topic lock, so a publish after we looked wakes us.
        self.wake.set(Arc::clone(&self.ready).notified_owned());
        self.wake.as_mut().enable();
        g.waiting += 1;
        self.registered = true;
        match g.redeliver.values().min() {
            Some(&at) => Next::WaitUntil(at),
            None => Next::Wait,
        }
    }
}

impl Stream for Member {
    type Item = Result<Incoming<MemoryAck>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.try_next() {
                Next::Message(incoming) => return Poll::Ready(Some(Ok(incoming))),
                Next::Wait => {}
                Next::WaitUntil(at) => {
                    let due = this
                        .due
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if due.deadline() != at {
                        due.as_mut().reset(at);
                    }
                    if due.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                }
            }
            if this.wake.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// Settles a message of the memory broker. Dropped unsettled, it releases the message for
/// redelivery.
#[derive(Debug)]
pub struct MemoryAck {
    topic: Arc<Topic>,
    group: usize,
    offset: u64,
    redelivery_delay: Duration,
    settled: bool,
}

impl MemoryAck {
    fn finish(&mut self, redeliver_at: Option<Instant>) {
        self.settled = true;
        let mut st = lock(&self.topic.state);
        let TopicState {
            log,
            base,
            held,
            groups,
            ..
        } = &mut *st;
        let g = &mut groups[self.group];
        if !g.pending.remove(self.offset) {
            return;
        }
        match redeliver_at {
            Some(at) => {
                g.redeliver.insert(self.offset, at);
                if g.waiting > 0 {
                    g.ready.notify_waiters();
                }
            }
            None => {
                if groups.iter().any(|g| g.needs(self.offset)) {
                    return;
                }
                let slot = &mut log[(self.offset - *base) as usize];
                if slot.take().is_none() {
                    return;
                }
                *held -= 1;
                while log.front().is_some_and(Option::is_none) {
                    log.pop_front();
                    *base += 1;
                }
                // A group that joined after others acked messages may have its cursor on
                // empty slots just dropped.
                for g in groups.iter_mut() {
                    g.cursor = g.cursor.max(*base);
                }
                if st.blocked_publishers > 0 {
                    self.topic.space.notify_waiters();
                }
            }
        }
    }
}

impl Acknowledge for MemoryAck {
    fn settle(mut self, outcome: &Outcome) -> Settle {
        let redeliver_at = match outcome {
            Outcome::Handled { .. } => None,
            Outcome::Failed { .. } => Some(Instant::now() + self.redelivery_delay),
            Outcome::Cancelled => Some(Instant::now()),
        };
        self.finish(redeliver_at);
        Settle::Done(Ok(()))
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(Some(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Unsettled;
    use std::collections::BTreeSet;

    /// The window answers as the sorted set it replaces, over acks out of order and
    /// redeliveries below, inside and above the window.
    #[test]
    fn unsettled_window_matches_a_sorted_set() {
        let mut window = Unsettled::default();
        let mut set = BTreeSet::new();
        // A fixed pseudo-random walk: deliver the next offset, settle one at random, or
        // redeliver a settled one.
        let (mut next, mut seed) = (0u64, 0x9E37_79B9_7F4A_7C15u64);
        let mut settled: Vec<u64> = Vec::new();
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 5 {
                0 | 1 => {
                    window.insert(next);
                    set.insert(next);
                    next += 1;
                }
                2 | 3 if !set.is_empty() => {
                    let pick = *set.iter().nth((seed >> 8) as usize % set.len()).unwrap();
                    assert!(window.remove(pick));
                    assert!(!window.remove(pick), "{pick} removed twice");
                    set.remove(&pick);
                    settled.push(pick);
                }
                _ if !settled.is_empty() => {
                    let o = settled.swap_remove((seed >> 8) as usize % settled.len());
                    window.insert(o);
                    set.insert(o);
                }
                _ => {}
            }
            assert_eq!(window.first(), set.first().copied());
            assert_eq!(window.len(), set.len());
        }
        assert!(!window.remove(next), "never delivered");
    }
}
