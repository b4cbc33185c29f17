//! One subscription's consumer: a thread that polls librdkafka, the stream the bus pulls from,
//! and the acks that record finished offsets.
//!
//! The thread owns the `BaseConsumer` and polls it all the time, so librdkafka's liveness rule
//! (`max.poll.interval.ms`) holds whatever the bus does, and rebalance callbacks run on it. It
//! hands messages over through a channel bounded by the prefetch; when the channel is full it
//! pauses the assigned partitions (librdkafka then stops fetching them) and keeps the few
//! messages polled meanwhile, resuming once the bus has taken them. Nothing buffers without
//! bound.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventbus_core::transport::{Acknowledge, Incoming, Settle};
use eventbus_core::{Headers, Key, Message, MessageId, Outcome, Result};
use futures::Stream;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::ConsumerOptions;
use crate::done::DoneStore;
use crate::offsets::{Taken, Tracker};

/// The header carrying the message id.
pub(crate) const HEADER_ID: &str = "eb-id";

/// What the poller thread, the stream, the acks and the rebalance callbacks share.
pub(crate) struct Shared {
    topic: String,
    state: Mutex<State>,
    /// Signalled when a message is settled (a revoke waits for its partitions' handlers).
    settled: Condvar,
    /// Set while the poller has paused the partitions; the stream then signals `room`.
    paused: AtomicBool,
    room: (Mutex<()>, Condvar),
    /// Assignments received so far.
    assignments: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    parts: HashMap<i32, Part>,
    next_epoch: u64,
}

/// One assigned partition. A new assignment gets a new epoch: acks and buffered messages of an
/// earlier one are ignored.
struct Part {
    epoch: u64,
    tracker: Tracker,
    /// Messages handed to the bus and not settled.
    in_flight: usize,
    /// Being revoked: hand nothing more out.
    revoked: bool,
    /// What was last committed.
    committed: Option<(i64, String)>,
}

impl Shared {
    pub(crate) fn new(topic: String) -> Arc<Self> {
        Arc::new(Shared {
            topic,
            state: Mutex::default(),
            settled: Condvar::new(),
            paused: AtomicBool::new(false),
            room: (Mutex::new(()), Condvar::new()),
            assignments: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Waits until the group has given this consumer its first assignment (possibly empty).
    pub(crate) async fn assigned(&self) {
        let mut rx = self.assignments.subscribe();
        let _ = rx.wait_for(|&n| n > 0).await;
    }

    /// Wakes the poller if it waits for room (to notice a stop).
    pub(crate) fn wake(&self) {
        let (lock, room) = &self.room;
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        room.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_current(&self, partition: i32, epoch: u64) -> bool {
        self.lock()
            .parts
            .get(&partition)
            .is_some_and(|p| p.epoch == epoch && !p.revoked)
    }

    /// The offsets to commit for `partitions` (all when `None`) that changed since the last
    /// commit, recorded as committed; with (partition, offset, metadata) of those whose
    /// metadata lists finished offsets.
    fn to_commit(
        &self,
        state: &mut State,
        partitions: Option<&[i32]>,
    ) -> (TopicPartitionList, Vec<(i32, i64, String)>) {
        let mut tpl = TopicPartitionList::new();
        let mut finished = Vec::new();
        for (&partition, part) in state.parts.iter_mut() {
            if partitions.is_some_and(|ps| !ps.contains(&partition)) {
                continue;
            }
            let Some(mark) = part.tracker.watermark() else {
                continue;
            };
            if part.committed.as_ref() == Some(&mark) {
                continue;
            }
            let (offset, metadata) = mark.clone();
            let mut elem = tpl.add_partition(&self.topic, partition);
            if elem.set_offset(Offset::Offset(offset)).is_ok() {
                if !metadata.is_empty() {
                    finished.push((partition, offset, metadata.clone()));
                }
                elem.set_metadata(metadata);
                part.committed = Some(mark);
            }
        }
        (tpl, finished)
    }
}

/// The consumer's context: rebalance callbacks (they run on the poller thread, inside `poll`).
pub(crate) struct KafkaContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) group_id: String,
    pub(crate) store: Arc<DoneStore>,
    pub(crate) revoke_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl ClientContext for KafkaContext {}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(consumer, tpl),
            Rebalance::Revoke(tpl) => self.revoke(consumer, tpl),
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.shared.topic, error = %e, "rebalance error")
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            // The next commit carries the same or a later watermark.
            tracing::debug!(topic = %self.shared.topic, error = %e, "offset commit failed");
        }
    }
}

impl KafkaContext {
    /// Starts tracking the assigned partitions from their committed offsets and metadata
    /// (librdkafka itself resumes fetching at the committed offset).
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let topic = &self.shared.topic;
        let mut starts: HashMap<i32, (Option<i64>, String)> = tpl
            .elements_for_topic(topic)
            .iter()
            .map(|e| (e.partition(), (None, String::new())))
            .collect();
        // Owned values only: a list returned by the consumer and still alive when the consumer
        // is dropped makes the drop hang.
        match consumer.committed_offsets(tpl.clone(), self.request_timeout) {
            Ok(committed) => {
                for e in committed.elements_for_topic(topic) {
                    if let (Offset::Offset(o), Some(start)) =
                        (e.offset(), starts.get_mut(&e.partition()))
                    {
                        *start = (Some(o), e.metadata().to_owned());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot read committed offsets at assignment; done offsets above them will be handled again");
            }
        }
        let mut recorded = if starts.values().any(|(c, _)| c.is_some()) {
            self.store.read(&self.group_id)
        } else {
            HashMap::new()
        };
        let mut state = self.shared.lock();
        for (partition, (committed, metadata)) in starts {
            state.next_epoch += 1;
            let epoch = state.next_epoch;
            let mut tracker = Tracker::starting_at(committed, &metadata);
            if let (Some(c), Some(done)) = (committed, recorded.remove(&partition)) {
                tracker.add_done(c, done);
            }
            state.parts.insert(
                partition,
                Part {
                    epoch,
                    tracker,
                    in_flight: 0,
                    revoked: false,
                    committed: committed.map(|o| (o, metadata)),
                },
            );
        }
        drop(state);
        self.shared.assignments.send_modify(|n| *n += 1);
    }

    /// Stops handing out the revoked partitions' messages, waits (up to the revoke timeout)
    /// for their handlers, commits what is done and forgets them.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.shared.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let deadline = Instant::now() + self.revoke_timeout;
        let mut state = self.shared.lock();
        for p in &revoked {
            if let Some(part) = state.parts.get_mut(p) {
                part.revoked = true;
            }
        }
        loop {
            let busy = revoked
                .iter()
                .any(|p| state.parts.get(p).is_some_and(|part| part.in_flight > 0));
            let now = Instant::now();
            if !busy || now >= deadline {
                if busy {
                    tracing::warn!(topic = %self.shared.topic, "revoke timeout: handlers still running; their messages will be delivered again to the next owner");
                }
                break;
            }
            state = self
                .shared
                .settled
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let commit = self.shared.to_commit(&mut state, Some(&revoked));
        for p in &revoked {
            state.parts.remove(p);
        }
        drop(state);
        self.hand_over(consumer, commit);
    }

    /// Commits for a new owner: the finished offsets above each committed one are recorded
    /// first (see `done`), then the offsets are committed, synchronously.
    fn hand_over(
        &self,
        consumer: &BaseConsumer<Self>,
        (tpl, finished): (TopicPartitionList, Vec<(i32, i64, String)>),
    ) {
        if tpl.count() == 0 {
            return;
        }
        if !self.store.write(&self.group_id, &finished) {
            tracing::warn!(topic = %self.shared.topic, "could not record the finished offsets above the committed ones; the next owner handles them again");
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(topic = %self.shared.topic, error = %e, "commit at hand-over failed; finished messages will be delivered again");
        }
    }
}

/// A message polled and tracked, on its way to the bus.
pub(crate) struct Polled {
    message: Arc<Message>,
    partition: i32,
    offset: i64,
    epoch: u64,
}

/// Polls `consumer` until `stop` is set or the stream is gone, then commits and closes it.
pub(crate) fn poll_loop(
    consumer: BaseConsumer<KafkaContext>,
    tx: mpsc::Sender<Polled>,
    stop: &AtomicBool,
    commit_interval: Duration,
) {
    let shared = Arc::clone(&consumer.context().shared);
    let topic: Arc<str> = Arc::from(shared.topic.as_str());
    let mut held: VecDeque<Polled> = VecDeque::new();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Acquire) && !tx.is_closed() {
        while let Some(p) = held.pop_front() {
            if !shared.is_current(p.partition, p.epoch) {
                continue;
            }
            match tx.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => {
                    held.push_front(p);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        if held.is_empty() && shared.paused.swap(false, Ordering::AcqRel) {
            set_paused(&consumer, false);
        }
        if last_commit.elapsed() >= commit_interval {
            last_commit = Instant::now();
            commit(&consumer, &shared, CommitMode::Async);
        }
        let timeout = if held.is_empty() {
            Duration::from_millis(100)
        } else {
            // Paused: serve callbacks and heartbeats, then wait for the bus to take something.
            Duration::ZERO
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Err(e)) => tracing::debug!(%topic, error = %e, "consumer error"),
            Some(Ok(m)) => {
                if let Some(p) = track(&shared, &topic, &m) {
                    held.push_back(p);
                }
            }
        }
        if let Some(p) = held.pop_front() {
            match tx.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => held.push_front(p),
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        if !held.is_empty() {
            if !shared.paused.swap(true, Ordering::AcqRel) {
                set_paused(&consumer, true);
            }
            let (lock, room) = &shared.room;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            if tx.capacity() == 0 {
                let _ = room.wait_timeout(guard, Duration::from_millis(50));
            }
        }
    }
    drop(held);
    let last = {
        let mut state = shared.lock();
        shared.to_commit(&mut state, None)
    };
    consumer.context().hand_over(&consumer, last);
    // Dropping closes the consumer: librdkafka revokes (our callback commits again if
    // anything changed), leaves the group, and ends its threads.
    drop(consumer);
}

fn set_paused(consumer: &BaseConsumer<KafkaContext>, paused: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, paused, "pause/resume failed");
    }
}

/// A periodic commit (finished offsets above it go in its metadata only).
fn commit(consumer: &BaseConsumer<KafkaContext>, shared: &Shared, mode: CommitMode) {
    let (tpl, _) = {
        let mut state = shared.lock();
        shared.to_commit(&mut state, None)
    };
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::debug!(topic = %shared.topic, error = %e, "offset commit failed");
        // Let the next round try again.
        let mut state = shared.lock();
        for part in state.parts.values_mut() {
            part.committed = None;
        }
    }
}

/// Records a polled message; `None` for one to skip (done already, duplicate, not assigned).
fn track(shared: &Shared, topic: &Arc<str>, m: &BorrowedMessage<'_>) -> Option<Polled> {
    let (partition, offset) = (m.partition(), m.offset());
    let epoch = {
        let mut state = shared.lock();
        let part = state.parts.get_mut(&partition)?;
        if part.revoked || part.tracker.take(offset) != Taken::Deliver {
            return None;
        }
        part.epoch
    };
    Some(Polled {
        message: Arc::new(to_message(topic, m)),
        partition,
        offset,
        epoch,
    })
}

fn to_message(topic: &Arc<str>, m: &BorrowedMessage<'_>) -> Message {
    let mut id = None;
    let mut headers = Headers::default();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if header.key == HEADER_ID {
                id = Some(MessageId::from(value));
            } else {
                headers.insert(header.key, value);
            }
        }
    }
    let key = m
        .key()
        .map(|k| Key::from(String::from_utf8_lossy(k).as_ref()));
    let timestamp = m
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    // A message from another client still gets a stable id: its place in the log.
    let id =
        id.unwrap_or_else(|| MessageId::from(format!("{topic}/{}/{}", m.partition(), m.offset())));
    Message::from_parts(
        id,
        topic.as_ref(),
        key,
        headers,
        bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        timestamp,
    )
}

/// The stream the bus pulls: polled messages, and failed ones again after the redelivery delay.
pub(crate) struct KafkaStream {
    rx: mpsc::Receiver<Polled>,
    redelivered: mpsc::UnboundedReceiver<(tokio::time::Instant, Polled)>,
    redeliver: mpsc::UnboundedSender<(tokio::time::Instant, Polled)>,
    delayed: VecDeque<(tokio::time::Instant, Polled)>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    redelivery_delay: Duration,
}

impl KafkaStream {
    pub(crate) fn new(
        rx: mpsc::Receiver<Polled>,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
        options: &ConsumerOptions,
    ) -> Self {
        let (redeliver, redelivered) = mpsc::unbounded_channel();
        KafkaStream {
            rx,
            redelivered,
            redeliver,
            delayed: VecDeque::new(),
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            shared,
            stop,
            redelivery_delay: options.redelivery_delay,
        }
    }

    /// Hands `p` to the bus, unless its partition was revoked meanwhile.
    fn hand_out(&self, p: Polled) -> Option<Incoming<KafkaAck>> {
        {
            let mut state = self.shared.lock();
            let part = state.parts.get_mut(&p.partition)?;
            if part.epoch != p.epoch || part.revoked {
                return None;
            }
            part.in_flight += 1;
        }
        Some(Incoming {
            message: Arc::clone(&p.message),
            ack: KafkaAck {
                polled: Some(p),
                shared: Arc::clone(&self.shared),
                redeliver: self.redeliver.clone(),
                redelivery_delay: self.redelivery_delay,
            },
        })
    }
}

impl Stream for KafkaStream {
    type Item = Result<Incoming<KafkaAck>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            while let Poll::Ready(Some(r)) = this.redelivered.poll_recv(cx) {
                this.delayed.push_back(r);
            }
            if let Some(&(due, _)) = this.delayed.front() {
                if due <= tokio::time::Instant::now() {
                    if let Some((_, p)) = this.delayed.pop_front() {
                        if let Some(incoming) = this.hand_out(p) {
                            return Poll::Ready(Some(Ok(incoming)));
                        }
                    }
                    continue;
                }
                if this.sleep.deadline() != due {
                    this.sleep.as_mut().reset(due);
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(p)) => {
                    if this.shared.paused.load(Ordering::Acquire) {
                        let (lock, room) = &this.shared.room;
                        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                        room.notify_one();
                    }
                    if let Some(incoming) = this.hand_out(p) {
                        return Poll::Ready(Some(Ok(incoming)));
                    }
                }
                // The poller ended (the consumer could not go on): nothing more comes.
                Poll::Ready(None) if this.delayed.is_empty() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for KafkaStream {
    fn drop(&mut self) {
        // The bus drops the stream once every message taken from it is settled: the poller
        // commits and closes the consumer.
        self.stop.store(true, Ordering::Release);
        self.shared.wake();
    }
}

/// Records one message's outcome for the partition's commit.
///
/// - Handled → done: the committed offset may pass it.
/// - Failed (for good) → not done: the committed offset never passes it; it is delivered
///   again after [`ConsumerOptions::redelivery_delay`] (and, after a restart or rebalance, to
///   whoever owns the partition), so later messages of its key may be handled before it.
/// - Cancelled (shutdown) → not done, not redelivered here: the next owner gets it.
pub struct KafkaAck {
    polled: Option<Polled>,
    shared: Arc<Shared>,
    redeliver: mpsc::UnboundedSender<(tokio::time::Instant, Polled)>,
    redelivery_delay: Duration,
}

impl std::fmt::Debug for KafkaAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("KafkaAck");
        if let Some(p) = &self.polled {
            d.field("partition", &p.partition)
                .field("offset", &p.offset);
        }
        d.finish_non_exhaustive()
    }
}

impl KafkaAck {
    fn finish(&mut self, done: bool) -> Option<Polled> {
        let p = self.polled.take()?;
        let mut state = self.shared.lock();
        let current = match state.parts.get_mut(&p.partition) {
            Some(part) if part.epoch == p.epoch => {
                part.in_flight = part.in_flight.saturating_sub(1);
                if done {
                    part.tracker.done(p.offset);
                }
                !part.revoked
            }
            _ => false,
        };
        drop(state);
        self.shared.settled.notify_all();
        current.then_some(p)
    }
}

impl Acknowledge for KafkaAck {
    fn settle(mut self, outcome: &Outcome) -> Settle {
        match outcome {
            Outcome::Handled { .. } => {
                self.finish(true);
            }
            Outcome::Failed { .. } => {
                if let Some(p) = self.finish(false) {
                    let due = tokio::time::Instant::now() + self.redelivery_delay;
                    // The stream is gone only when the subscription ended: nothing to redeliver to.
                    let _ = self.redeliver.send((due, p));
                }
            }
            Outcome::Cancelled => {
                self.finish(false);
            }
        }
        Settle::Done(Ok(()))
    }
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        self.finish(false);
    }
}
