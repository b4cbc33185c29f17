//! One subscription's consumer: a thread that polls librdkafka, the stream the bus pulls from,
//! and the acks that record finished offsets.
//!
//! The thread owns the `BaseConsumer` and polls its main queue all the time, so librdkafka's
//! liveness rule (`max.poll.interval.ms`) holds whatever the bus does, and rebalance callbacks
//! run on it. Each assigned partition's messages go to a queue of their own (librdkafka's
//! partition queues), which the thread reads only while the channel to the bus (bounded by
//! the prefetch) has room; when the bus is full the messages stay in librdkafka, which stops
//! fetching once its own bounded prefetch (`queued.max.messages.kbytes`) is full. Nothing
//! buffers without bound, and no partition is paused: pausing drops librdkafka's fetched
//! messages, to be fetched again on resume.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use eventbus_core::transport::{Acknowledge, Incoming, Settle};
use eventbus_core::{Message, Outcome, Result};
use futures::Stream;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol,
    base_consumer::PartitionQueue,
};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::mapping;
use crate::offsets::{Taken, Tracker};

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// What the poller thread, the stream, the acks and the rebalance callbacks share.
pub(crate) struct Shared {
    topic: String,
    /// This member's number in this process, for logs.
    member: u64,
    state: Mutex<State>,
    /// Signalled when a message is settled (a revoke waits for its partitions' handlers).
    settled: Condvar,
    /// Set while the poller waits for the bus to take a message; the stream then wakes it.
    waiting_room: AtomicBool,
    /// Set by the context's callbacks: `poll` served an event through one of them.
    served: AtomicBool,
    /// Wakes the poller: a queue got messages, the bus took one, a stop.
    wake: (Mutex<bool>, Condvar),
    /// Assignments received so far.
    assignments: tokio::sync::watch::Sender<u64>,
    /// The fatal error that ended the consumer (e.g. a group protocol the broker does not
    /// speak): it consumes nothing more, and the poller stops.
    fatal: std::sync::OnceLock<String>,
}

#[derive(Default)]
struct State {
    /// Looked up three times per message (polled, handed out, settled): foldhash, not
    /// SipHash, as partition numbers come from the broker, not from message data.
    parts: HashMap<i32, Part, foldhash::fast::RandomState>,
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
            member: NEXT_MEMBER.fetch_add(1, Ordering::Relaxed),
            state: Mutex::default(),
            settled: Condvar::new(),
            waiting_room: AtomicBool::new(false),
            served: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            assignments: tokio::sync::watch::Sender::new(0),
            fatal: std::sync::OnceLock::new(),
        })
    }

    /// Waits until the group has given this consumer its first assignment (possibly empty),
    /// or the consumer failed for good.
    pub(crate) async fn assigned(&self) {
        let mut rx = self.assignments.subscribe();
        let _ = rx.wait_for(|&n| n > 0 || self.fatal.get().is_some()).await;
    }

    /// The fatal error that ended the consumer, if one did.
    pub(crate) fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// Records a fatal error and wakes whoever waits for the consumer.
    fn fail(&self, reason: String) {
        if self.fatal.set(reason).is_ok() {
            self.assignments.send_modify(|_| {});
            self.wake();
        }
    }

    /// Wakes the poller.
    pub(crate) fn wake(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_one();
    }

    /// Waits up to `timeout` for [`wake`](Self::wake).
    fn sleep(&self, timeout: Duration) {
        let (lock, cv) = &self.wake;
        let mut woken = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !*woken {
            woken = cv
                .wait_timeout(woken, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *woken = false;
    }

    /// Per assigned partition: the offset it would commit now, and the done offsets above it.
    pub(crate) fn local_marks(&self) -> HashMap<i32, (i64, std::collections::BTreeSet<i64>)> {
        self.lock()
            .parts
            .iter()
            .filter(|(_, p)| !p.revoked)
            .filter_map(|(&partition, p)| {
                let (base, metadata) = p.tracker.watermark()?;
                Some((partition, (base, crate::offsets::decode(base, &metadata))))
            })
            .collect()
    }

    /// The partitions assigned now.
    fn assigned_partitions(&self) -> Vec<i32> {
        self.lock()
            .parts
            .iter()
            .filter(|(_, p)| !p.revoked)
            .map(|(&p, _)| p)
            .collect()
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

    /// The offsets to commit for `partitions` (all when `None`), recorded as committed.
    /// `Changed` leaves out what the last commit sent already; `All` (a hand-over) does not:
    /// an asynchronous commit that was sent may not have landed yet, and the next owner reads
    /// the committed offset as soon as the revoke returns.
    fn to_commit(
        &self,
        state: &mut State,
        partitions: Option<&[i32]>,
        which: Marks,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&partition, part) in state.parts.iter_mut() {
            if partitions.is_some_and(|ps| !ps.contains(&partition)) {
                continue;
            }
            let Some(mark) = part.tracker.watermark() else {
                continue;
            };
            if which == Marks::Changed && part.committed.as_ref() == Some(&mark) {
                continue;
            }
            let (offset, metadata) = mark.clone();
            let mut elem = tpl.add_partition(&self.topic, partition);
            if elem.set_offset(Offset::Offset(offset)).is_ok() {
                elem.set_metadata(metadata);
                part.committed = Some(mark);
            }
        }
        tpl
    }
}

/// Which watermarks [`Shared::to_commit`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marks {
    /// Those that moved since the last commit (periodic commits).
    Changed,
    /// Every one (a hand-over, committed synchronously).
    All,
}

/// The consumer's context: rebalance callbacks (they run on the poller thread, inside `poll`).
pub(crate) struct KafkaContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) link: Arc<crate::link::Link>,
    pub(crate) revoke_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.shared.served.store(true, Ordering::Relaxed);
        crate::link::log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.shared.served.store(true, Ordering::Relaxed);
        self.link.error(&error, reason);
    }
}

impl ConsumerContext for KafkaContext {
    /// Assign and revoke, with the transport's bookkeeping, under whichever protocol the
    /// group runs: incremental (KIP-848, or the classic protocol with a cooperative assignor)
    /// adds and removes just the partitions listed; eager replaces the whole assignment. An
    /// assignment starts at the committed offsets read for it, given explicitly, so
    /// librdkafka need not look them up again.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.shared.served.store(true, Ordering::Relaxed);
        let incremental = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                for (partition, offset) in self.assign(consumer, tpl) {
                    let _ = tpl.set_partition_offset(
                        &self.shared.topic,
                        partition,
                        Offset::Offset(offset),
                    );
                }
                let assigned = if incremental {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::warn!(topic = %self.shared.topic, error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl);
                let unassigned = if incremental {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = unassigned {
                    tracing::warn!(topic = %self.shared.topic, error = %e, "unassign failed");
                }
            }
            other => {
                // librdkafka could not complete the rebalance: give everything up, as a revoke
                // would (the group assigns again).
                tracing::warn!(topic = %self.shared.topic, error = ?other, "rebalance error");
                let mut all = TopicPartitionList::new();
                for partition in self.shared.assigned_partitions() {
                    all.add_partition(&self.shared.topic, partition);
                }
                self.revoke(consumer, &all);
                let _ = if incremental {
                    consumer.incremental_unassign(&all)
                } else {
                    consumer.unassign()
                };
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        self.shared.served.store(true, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::debug!(topic = %self.shared.topic, error = %e, "offset commit failed");
            // Not committed after all: the next periodic commit sends these marks again.
            let mut state = self.shared.lock();
            for elem in offsets.elements_for_topic(&self.shared.topic) {
                if let (Some(part), Offset::Offset(o)) =
                    (state.parts.get_mut(&elem.partition()), elem.offset())
                    && part.committed.as_ref().is_some_and(|(c, _)| *c == o)
                {
                    part.committed = None;
                }
            }
        }
    }
}

impl KafkaContext {
    /// Starts tracking the assigned partitions from their committed offsets and metadata
    /// (librdkafka itself resumes fetching at the committed offset).
    /// Returns the committed offsets found, to start from.
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
        let topic = &self.shared.topic;
        let mut starts: HashMap<i32, (Option<i64>, String)> = tpl
            .elements_for_topic(topic)
            .iter()
            .map(|e| (e.partition(), (None, String::new())))
            .collect();
        // Kafka gives a partition to a new owner only after its previous owner gave it up,
        // that is after that owner's revoke (drain, then a synchronous commit) returned: the
        // eager protocol once every member rejoined, a cooperative assignor in the rebalance
        // after the one that revoked it, KIP-848 once the old owner's heartbeat reported it
        // released. The committed offsets read here are that owner's last.
        tracing::debug!(%topic, member = self.shared.member, partitions = ?starts.keys().collect::<Vec<_>>(), "assigned");
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
        let found: Vec<(i32, i64)> = starts
            .iter()
            .filter_map(|(&p, (c, _))| c.map(|c| (p, c)))
            .collect();
        let mut state = self.shared.lock();
        for (partition, (committed, metadata)) in starts {
            state.next_epoch += 1;
            let epoch = state.next_epoch;
            let tracker = Tracker::starting_at(committed, &metadata);
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
        tracing::debug!(%topic, member = self.shared.member, committed = ?found, "starting at");
        self.shared.assignments.send_modify(|n| *n += 1);
        found
    }

    /// Stops handing out the revoked partitions' messages, waits (up to the revoke timeout)
    /// for their handlers, commits what is done and forgets them.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.shared.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let started = Instant::now();
        let deadline = started + self.revoke_timeout;
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
        let commit = self
            .shared
            .to_commit(&mut state, Some(&revoked), Marks::All);
        tracing::debug!(topic = %self.shared.topic, member = self.shared.member, partitions = ?revoked, waited = ?started.elapsed(), "revoked");
        for p in &revoked {
            state.parts.remove(p);
        }
        drop(state);
        self.hand_over(consumer, commit);
    }

    /// Commits for a new owner, synchronously: the offsets with, in their metadata, the
    /// finished offsets above them (see `offsets`).
    fn hand_over(&self, consumer: &BaseConsumer<Self>, tpl: TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        let committed = consumer.commit(&tpl, CommitMode::Sync);
        tracing::debug!(topic = %self.shared.topic, member = self.shared.member, offsets = ?tpl.to_topic_map(), ok = committed.is_ok(), "handed over");
        if let Err(e) = committed {
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
    consumer: Arc<BaseConsumer<KafkaContext>>,
    tx: mpsc::Sender<Polled>,
    stop: &AtomicBool,
    commit_interval: Duration,
) {
    let shared = Arc::clone(&consumer.context().shared);
    let link = Arc::clone(&consumer.context().link);
    let topic: Arc<str> = Arc::from(shared.topic.as_str());
    let mut queues: Vec<Split> = Vec::new();
    let mut split_for = 0;
    // Messages that came on the main queue (fetched before their partition was split off)
    // while the channel was full: at most what librdkafka had fetched by then.
    let mut held: VecDeque<Polled> = VecDeque::new();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Acquire) && !tx.is_closed() && shared.fatal().is_none() {
        let mut moved = false;
        // Events, rebalance callbacks, and messages fetched before their partition was split
        // off: all of them before anything is read from a partition queue, since they precede
        // what is there. After an assignment the partition queues are split off again and
        // the main queue drained once more (a fetch may have landed there meanwhile).
        loop {
            loop {
                match consumer.poll(Duration::ZERO) {
                    Some(Err(e)) => consumer_error(&consumer, &shared, &e),
                    Some(Ok(m)) => {
                        moved = true;
                        link.up();
                        if let Some(p) = track(&shared, &topic, &m) {
                            held.push_back(p);
                        }
                    }
                    // Nothing, or an event served through one of the context's callbacks (a
                    // rebalance, a commit result, a log line, an error): then more may wait
                    // behind it, and no wake-up comes for those (librdkafka signals only a
                    // queue that was empty), so poll again.
                    None if shared.served.swap(false, Ordering::Relaxed) => {}
                    None => break,
                }
            }
            let assignments = *shared.assignments.borrow();
            if assignments == split_for {
                break;
            }
            split_for = assignments;
            queues.clear();
            for partition in shared.assigned_partitions() {
                if let Some(mut queue) = consumer.split_partition_queue(&topic, partition) {
                    let signalled = Arc::new(AtomicBool::new(false));
                    let callback = (Arc::clone(&shared), Arc::clone(&signalled));
                    queue.set_nonempty_callback(move || {
                        callback.1.store(true, Ordering::Release);
                        callback.0.wake();
                    });
                    // Whatever it got before its callback was set is looked for once.
                    queues.push(Split {
                        queue,
                        signalled,
                        maybe_more: true,
                    });
                }
            }
        }
        while let Some(p) = held.pop_front() {
            if !shared.is_current(p.partition, p.epoch) {
                continue;
            }
            match tx.try_send(p) {
                Ok(()) => moved = true,
                Err(mpsc::error::TrySendError::Full(p)) => {
                    held.push_front(p);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        // Take from the partition queues, one message of each in turn, while the bus has room.
        // Only from those that may hold one: a queue found empty is polled again once its
        // callback said it got something (librdkafka calls it when an empty queue gets a
        // message), and at each commit tick: rdkafka's `poll` also returns nothing when it
        // served an event that was not a message, with more maybe behind it. Polling every
        // queue until a round found them all empty took three polls, each a lock of the queue,
        // per message.
        let tick = last_commit.elapsed() >= commit_interval;
        for split in &mut queues {
            if split.signalled.swap(false, Ordering::Acquire) || tick {
                split.maybe_more = true;
            }
        }
        let mut full = !held.is_empty();
        'fill: while !full {
            let mut any = false;
            for split in queues.iter_mut().filter(|s| s.maybe_more) {
                if tx.capacity() == 0 {
                    full = true;
                    break 'fill;
                }
                match split.queue.poll(Duration::ZERO) {
                    None => split.maybe_more = false,
                    Some(Err(e)) => consumer_error(&consumer, &shared, &e),
                    Some(Ok(m)) => {
                        any = true;
                        link.up();
                        if let Some(p) = track(&shared, &topic, &m) {
                            if tx.try_send(p).is_err() {
                                break 'fill;
                            }
                            moved = true;
                        }
                    }
                }
            }
            if !any {
                break;
            }
        }
        if tick {
            last_commit = Instant::now();
            commit(&consumer, &shared, CommitMode::Async);
        }
        if !moved {
            if full {
                shared.waiting_room.store(true, Ordering::SeqCst);
                std::sync::atomic::fence(Ordering::SeqCst);
                // The bus may have taken a message between the check above and the flag
                // (its wake-up was then skipped): look again rather than sleep through it.
                if tx.capacity() > 0 {
                    shared.waiting_room.store(false, Ordering::Relaxed);
                    continue;
                }
            }
            // Woken by new messages, by the bus taking one, or by a stop; the timeout keeps
            // the main queue (rebalances, commit results) served.
            shared.sleep(Duration::from_millis(100));
        }
    }
    drop(held);
    // The queues hold the consumer: drop them first, so it is closed below.
    drop(queues);
    let last = {
        let mut state = shared.lock();
        let last = shared.to_commit(&mut state, None, Marks::All);
        // Handed over here: the revoke that closing the consumer runs has nothing to add.
        state.parts.clear();
        last
    };
    consumer.context().hand_over(&consumer, last);
    // Dropping the last handle closes the consumer: librdkafka revokes (our callback commits
    // again if anything changed), leaves the group, and ends its threads. (A `lag` query
    // running now holds another handle, on the transport's worker thread, which then closes
    // it.)
    drop(consumer);
}

/// An error polled. A fatal one (librdkafka stops the consumer for good, e.g. a broker that
/// does not speak the group protocol asked for: KIP-848 before Kafka 4.0, or turned off) ends
/// the subscription; the others librdkafka recovers from.
fn consumer_error(
    consumer: &BaseConsumer<KafkaContext>,
    shared: &Shared,
    error: &rdkafka::error::KafkaError,
) {
    if let rdkafka::error::KafkaError::MessageConsumptionFatal(_) = error {
        let reason = consumer
            .client()
            .fatal_error()
            .map_or_else(|| error.to_string(), |(_, reason)| reason);
        tracing::error!(topic = %shared.topic, %reason, "the consumer failed for good");
        shared.fail(reason);
    } else {
        tracing::debug!(topic = %shared.topic, %error, "consumer error");
    }
}

/// A periodic commit (finished offsets above it go in its metadata only).
fn commit(consumer: &BaseConsumer<KafkaContext>, shared: &Shared, mode: CommitMode) {
    let tpl = {
        let mut state = shared.lock();
        shared.to_commit(&mut state, None, Marks::Changed)
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

/// A partition's queue, split off the consumer's, as the poller reads it.
struct Split {
    queue: PartitionQueue<KafkaContext>,
    /// Set by the queue's callback: it got a message while empty.
    signalled: Arc<AtomicBool>,
    /// Not found empty since it was last signalled: worth a poll.
    maybe_more: bool,
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
        message: Arc::new(mapping::to_message(topic, m)),
        partition,
        offset,
        epoch,
    })
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
        redelivery_delay: Duration,
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
            redelivery_delay,
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
        tracing::trace!(topic = %self.shared.topic, partition = p.partition, offset = p.offset, id = %p.message.id(), member = self.shared.member, "to the bus");
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
                    if let Some((_, p)) = this.delayed.pop_front()
                        && let Some(incoming) = this.hand_out(p)
                    {
                        return Poll::Ready(Some(Ok(incoming)));
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
                    if this.shared.waiting_room.swap(false, Ordering::SeqCst) {
                        this.shared.wake();
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
///   again after the subscription's redelivery delay (and, after a restart or rebalance, to
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
        let current = finish_in(&mut self.shared.lock(), &p, done);
        self.shared.settled.notify_all();
        current.then_some(p)
    }

    /// What becomes of `p` once settled with `outcome`: a message that failed for good is
    /// delivered again after the redelivery delay. Callers pass only a message whose partition
    /// is still this member's (`finish_in` said so).
    fn redeliver(&self, outcome: &Outcome, p: Polled) {
        if matches!(outcome, Outcome::Failed { .. }) {
            let due = tokio::time::Instant::now() + self.redelivery_delay;
            // The stream is gone only when the subscription ended: nothing to redeliver to.
            let _ = self.redeliver.send((due, p));
        }
    }
}

/// Records one settled message in its partition's state: whether it is done (the committed
/// offset may pass it) and that it is no longer in flight. Whether its partition is still
/// this member's, in the same assignment.
fn finish_in(state: &mut State, p: &Polled, done: bool) -> bool {
    match state.parts.get_mut(&p.partition) {
        Some(part) if part.epoch == p.epoch => {
            part.in_flight = part.in_flight.saturating_sub(1);
            if done {
                part.tracker.done(p.offset);
            }
            !part.revoked
        }
        _ => false,
    }
}

impl Acknowledge for KafkaAck {
    fn settle(mut self, outcome: &Outcome) -> Settle {
        let handled = matches!(outcome, Outcome::Handled { .. });
        if let Some(p) = self.finish(handled) {
            self.redeliver(outcome, p);
        }
        Settle::Done(Ok(()))
    }

    /// One lock of the consumer's state and one wake-up of a waiting revoke per batch, not per
    /// message: the poller thread takes that lock for every message it polls.
    fn settle_batch<I>(batch: I, mut settled: impl FnMut(Settle))
    where
        I: IntoIterator<Item = (Self, Outcome)>,
    {
        let mut batch = batch.into_iter().peekable();
        let mut finished = Vec::new();
        while let Some((first, _)) = batch.peek() {
            let shared = Arc::clone(&first.shared);
            {
                let mut state = shared.lock();
                while let Some((mut ack, outcome)) =
                    batch.next_if(|(ack, _)| Arc::ptr_eq(&ack.shared, &shared))
                {
                    let current = ack.polled.take().map(|p| {
                        let handled = matches!(outcome, Outcome::Handled { .. });
                        let current = finish_in(&mut state, &p, handled);
                        (p, current)
                    });
                    finished.push((ack, outcome, current));
                }
            }
            shared.settled.notify_all();
            // Outside the lock: redeliveries, and the messages freed as their acks go.
            for (ack, outcome, current) in finished.drain(..) {
                if let Some((p, true)) = current {
                    ack.redeliver(&outcome, p);
                }
                settled(Settle::Done(Ok(())));
            }
        }
    }
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        self.finish(false);
    }
}
