//! Keyed groups ([`Sharing::ByKey`](crate::Sharing::ByKey)): a subscription pulls the
//! partitions its membership assigns it, one pinned consumer each, and hands a partition over
//! only once the bus has settled its messages.
//!
//! The invariant across a hand-over: no key's later message is handled before its earlier
//! message was acked, or was handed to the new owner first. It holds because
//! - the old owner stops pulling a partition it lost, waits until the bus settled every
//!   message of it (acked, or left unacked at a close), records which messages it acked (a
//!   hand-over record, see [`Released`]) and only then unpins the consumer; a crashed owner
//!   stops pulling by itself, and the server unpins it after the member timeout;
//! - the server delivers a pinned consumer's messages to the pinned client only, so the new
//!   owner gets nothing before that;
//! - at its first delivery the new owner reads back, in stream order, the partition's messages
//!   that were sent and not acked (all the record does not list as acked; with no record, as
//!   after a crash, everything above the ack floor) and handles them first (see
//!   `Puller::recover_pending`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream;
use eventbus_core::Result;
use eventbus_core::transport::{Incoming, Started, SubscribeRequest};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, watch};

use crate::held::Held;
use crate::membership::{Bucket, Handover, Membership, Released, bucket_name};
use crate::provision::{PIN_GROUP, partition_consumer_config};
use crate::pull::{PartitionPull, Puller, pull_stream};
use crate::woken::{PullWaker, Task};
use crate::{NatsAck, NatsTransport, partition};

/// Subscribes a keyed group: makes (and checks) every partition's consumer, joins the group's
/// membership and pulls the partitions it is assigned.
pub(crate) async fn subscribe(
    transport: &NatsTransport,
    request: SubscribeRequest,
) -> Result<Started> {
    let inner = &transport.inner;
    let config = &inner.config;
    let topic = request.topic().to_owned();
    let group = request.group().to_owned();
    let layout = config.layout(&topic);
    let partitions = layout.partitions;
    let stream = transport.stream_handle(&topic).await?;
    let mut consumers = Vec::with_capacity(usize::from(partitions));
    for p in 0..partitions {
        let want = partition_consumer_config(config, &topic, &group, p);
        consumers.push(transport.ensure_consumer(&stream, want).await?);
    }
    // Each partition's pull asks for `fetch_batch`, as one puller's does, but for no more than
    // its share of half the bus's buffer (a member may own every partition): at most about a
    // buffer's worth waits outside the bus. (`fetch_batch` itself split over the partitions
    // made pulls of 16 with the defaults: sixteen times the pull requests of one puller for
    // the same messages.)
    let batch = config
        .fetch_batch
        .min(request.max_buffered() / 2 / usize::from(partitions))
        .max(1);
    let group_key = format!("{}.{group}", config.stream_name(&topic));
    let membership = Membership::join(
        inner.js.clone(),
        &inner.io_handle,
        Bucket {
            name: bucket_name(&config.stream_prefix),
            replicas: config.stream_for(&topic).replicas,
        },
        group_key.clone(),
        nuid::next().to_string(),
        partitions,
        config.consumer.member_timeout,
    )
    .await?;
    let shared = Arc::new(Shared {
        topic: topic.clone(),
        stream,
        consumers,
        held: transport.held(),
        batch,
        redelivery_delay: request.redelivery_delay(),
        member_timeout: config.consumer.member_timeout,
        max_pending: usize::try_from(config.consumer.max_ack_pending).unwrap_or(usize::MAX),
        layout,
        transport: transport.clone(),
        store: membership.store.clone(),
        group_key,
    });
    let mut owned = membership.owned.clone();
    let first = owned.borrow_and_update().clone();
    let mut source = KeyedSource {
        shared,
        pulls: Vec::new(),
        changes: changes(owned),
        next: 0,
        task: Task::default(),
        membership: Some(membership),
    };
    source.apply(&first);
    Ok(request.start(source))
}

/// The assignments after the current one.
fn changes(owned: watch::Receiver<Vec<u16>>) -> BoxStream<'static, Vec<u16>> {
    futures::stream::unfold(owned, |mut owned| async move {
        owned.changed().await.ok()?;
        let now = owned.borrow_and_update().clone();
        Some((now, owned))
    })
    .boxed()
}

/// What every partition pull of one subscription shares.
struct Shared {
    topic: String,
    stream: jetstream::stream::Stream<()>,
    /// Indexed by partition.
    consumers: Vec<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>>,
    held: Arc<Held>,
    batch: usize,
    redelivery_delay: Duration,
    member_timeout: Duration,
    max_pending: usize,
    layout: partition::Layout,
    transport: NatsTransport,
    /// The membership bucket, for hand-over records.
    store: async_nats::jetstream::kv::Store,
    /// `<stream>.<group>`.
    group_key: String,
}

impl Shared {
    /// Hands a partition over once the bus has settled its messages (waiting at most the
    /// member timeout: by then the server unpins this member anyway): records the clean
    /// release (see [`Released`]) and unpins the consumer, so the next owner starts at once
    /// and reads back exactly what this member left unacked. If a step fails, no record is
    /// written and the next owner reads back everything that may be unacked (at-least-once).
    ///
    /// Nothing is nak'd: nats-server re-queues a redelivery at the back of its queue whenever
    /// no pull it may serve waits (the next owner's, before the unpin), so nak'd messages
    /// would come back in another order.
    fn release(&self, pull: PartitionSource) {
        let PartitionSource {
            partition,
            in_flight,
            served,
            inherited,
            stream: pulling,
            waker: _,
        } = pull;
        // Its pulls stop; what the client had buffered is read back by the next owner.
        drop(pulling);
        let stream = self.stream.clone();
        let consumer = self.consumers[usize::from(partition)].clone();
        let handover = Handover::new(self.store.clone(), &self.group_key, partition);
        let held = Arc::clone(&self.held);
        let wait = self.member_timeout;
        let topic = self.topic.clone();
        self.transport.inner.background.spawn_on(
            async move {
                let settled = tokio::time::timeout(wait, in_flight.idle()).await.is_ok();
                if !settled {
                    tracing::warn!(%topic, partition, "a partition handed over still had messages in the bus after the member timeout; the server unpins it anyway");
                } else if served.load(Ordering::Relaxed) {
                    // Only an owner that was sent something knows it was the pinned one.
                    let inherited = inherited
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    let recorded = match Released::now(&consumer, &held, &inherited).await {
                        Ok(released) => handover.record(&released).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    if let Err(error) = recorded {
                        tracing::debug!(%topic, partition, %error, "could not record the hand-over; the next owner reads back what may be unacked");
                    }
                } else if let Err(error) = extend(&consumer, &handover).await {
                    tracing::debug!(%topic, partition, %error, "could not extend the hand-over record; the next owner reads back what may be unacked");
                }
                let name = consumer.cached_info().name.clone();
                if let Err(e) = stream.unpin_consumer(&name, PIN_GROUP).await {
                    // Not pinned (nothing was pulled since), or the server is away: the pin
                    // expires by itself.
                    tracing::debug!(%topic, partition, error = %e, "unpin failed");
                }
            },
            &self.transport.inner.io_handle,
        );
    }
}

impl Released {
    /// The record of a release now, by a member whose bus holds none of the partition's
    /// messages: the consumer's state, and which of the messages it may have pending this
    /// member (the ack may not have reached the server yet) or an earlier owner
    /// (`inherited`, sorted) acked.
    async fn now(
        consumer: &jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
        held: &Held,
        inherited: &[u64],
    ) -> std::result::Result<Released, String> {
        /// A wider window is not a hand-over under way: leave it to the next owner's read-back.
        const WIDEST: u64 = 100_000;
        let info = consumer.get_info().await.map_err(|e| e.to_string())?;
        let (floor, last) = (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        );
        if last > floor + WIDEST {
            return Err(format!(
                "{} sequences between ack floor and last delivery",
                last - floor
            ));
        }
        Ok(Released {
            consumer_seq: info.delivered.consumer_sequence,
            floor,
            last,
            acked: (floor + 1..=last)
                .filter(|&seq| held.acked(seq) || inherited.binary_search(&seq).is_ok())
                .collect(),
        })
    }
}

/// For a member that handled nothing of the partition (it may have been sent messages it never
/// took): moves the last hand-over record, if any, to the consumer's state now. Its window
/// grows to the last delivery (what was sent here is unacked, so read back by the next owner)
/// and what it says was acked stays acked; without this the record would no longer match
/// the next owner's first delivery, and the next owner would read back, and handle again,
/// what earlier owners acked above the ack floor.
async fn extend(
    consumer: &jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    handover: &Handover,
) -> std::result::Result<(), String> {
    let Some(earlier) = handover.read().await else {
        return Ok(());
    };
    let info = consumer.get_info().await.map_err(|e| e.to_string())?;
    let floor = earlier.floor.max(info.ack_floor.stream_sequence);
    let extended = Released {
        consumer_seq: info.delivered.consumer_sequence,
        floor,
        last: info.delivered.stream_sequence.max(earlier.last),
        acked: earlier
            .acked
            .into_iter()
            .filter(|&seq| seq > floor)
            .collect(),
    };
    handover.record(&extended).await.map_err(|e| e.to_string())
}

/// One owned partition's pull.
struct PartitionSource {
    partition: u16,
    in_flight: InFlight,
    served: Arc<AtomicBool>,
    inherited: Arc<std::sync::Mutex<Vec<u64>>>,
    stream: BoxStream<'static, Result<Incoming<NatsAck>>>,
    /// Its pull's waker: the source asks it only once it woke.
    waker: PullWaker,
}

/// A keyed subscription's messages: those of the partitions it owns now, taken in turn.
struct KeyedSource {
    shared: Arc<Shared>,
    pulls: Vec<PartitionSource>,
    changes: BoxStream<'static, Vec<u16>>,
    /// The pull to look at first next time (so no partition starves the others).
    next: usize,
    /// The task its pulls wake.
    task: Task,
    membership: Option<Membership>,
}

impl KeyedSource {
    /// Starts pulling what is newly owned; releases what is not owned any more.
    fn apply(&mut self, owned: &[u16]) {
        let shared = &self.shared;
        let (kept, lost): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pulls)
            .into_iter()
            .partition(|p| owned.contains(&p.partition));
        self.pulls = kept;
        for pull in lost {
            shared.release(pull);
        }
        for &partition in owned {
            if self.pulls.iter().any(|p| p.partition == partition) {
                continue;
            }
            let in_flight = InFlight::default();
            let served = Arc::new(AtomicBool::new(false));
            let inherited = Arc::default();
            let puller = Puller {
                consumer: shared.consumers[usize::from(partition)].clone(),
                stream: shared.stream.clone(),
                connects: Arc::clone(&shared.transport.inner.connects),
                recover_limit: 0,
                partition: Some(PartitionPull {
                    subject: shared.layout.subject_of(partition),
                    in_flight: in_flight.clone(),
                    member_timeout: shared.member_timeout,
                    max_pending: shared.max_pending,
                    handover: Handover::new(shared.store.clone(), &shared.group_key, partition),
                    served: Arc::clone(&served),
                    inherited: Arc::clone(&inherited),
                }),
            };
            let stream = pull_stream(
                puller,
                shared.batch,
                shared.topic.clone(),
                shared.redelivery_delay,
                Arc::clone(&shared.held),
                shared.transport.inner.io_handle.clone(),
            )
            .boxed();
            self.pulls.push(PartitionSource {
                partition,
                in_flight,
                served,
                inherited,
                stream,
                waker: PullWaker::new(&self.task),
            });
        }
        tracing::debug!(topic = %shared.topic, owned = ?owned, "pulling the partitions owned");
    }
}

impl Stream for KeyedSource {
    type Item = Result<Incoming<NatsAck>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Before any pull is asked, so that a wake of one from then on reaches this task.
        this.task.register(cx.waker());
        while let Poll::Ready(Some(owned)) = this.changes.poll_next_unpin(cx) {
            this.apply(&owned);
        }
        let n = this.pulls.len();
        for i in 0..n {
            let at = (this.next + i) % n;
            let pull = &mut this.pulls[at];
            match pull.waker.poll_next(&mut pull.stream) {
                Some(Poll::Ready(Some(item))) => {
                    this.next = (at + 1) % n;
                    return Poll::Ready(Some(item));
                }
                // The I/O runtime is gone: the transport closed.
                Some(Poll::Ready(None)) => return Poll::Ready(None),
                Some(Poll::Pending) | None => {}
            }
        }
        Poll::Pending
    }
}

impl Drop for KeyedSource {
    /// The subscription ended (the bus settled what it took): leave the group, so the others
    /// take the partitions at once, and unpin them.
    fn drop(&mut self) {
        let Some(membership) = self.membership.take() else {
            return;
        };
        let pulls = std::mem::take(&mut self.pulls);
        let shared = Arc::clone(&self.shared);
        let inner = &self.shared.transport.inner;
        inner.background.spawn_on(
            async move {
                membership.leave().await;
                for pull in pulls {
                    shared.release(pull);
                }
            },
            &inner.io_handle,
        );
    }
}

/// The messages of one partition in the bus (taken and not settled at the server).
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<Count>);

#[derive(Default)]
struct Count {
    messages: AtomicUsize,
    /// Tasks in `idle`: the last message out notifies only when there are any, so a delivery
    /// and its ack touch one counter each and no lock (a `watch` channel locked its value and
    /// notified its eight wait lists whenever the count fell to zero, about 180 instructions
    /// per delivery).
    waiting: AtomicUsize,
    none_left: Notify,
}

impl InFlight {
    /// Counts one more message until the guard drops.
    pub(crate) fn enter(&self) -> InFlightGuard {
        self.0.messages.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Waits until none is left.
    async fn idle(&self) {
        let count = &*self.0;
        let _waiting = Waiting::new(count);
        loop {
            let none_left = count.none_left.notified();
            tokio::pin!(none_left);
            // Registered before looking: the last message out either sees this task waiting
            // (both sides' updates are sequentially consistent) or left the count at zero
            // before it was read here.
            none_left.as_mut().enable();
            if count.messages.load(Ordering::SeqCst) == 0 {
                return;
            }
            none_left.await;
        }
    }
}

/// Counts a task in `idle` for as long as it waits (a wait given up included).
struct Waiting<'a>(&'a Count);

impl<'a> Waiting<'a> {
    fn new(count: &'a Count) -> Self {
        count.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One message of a partition in the bus.
pub(crate) struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let count = &*self.0.0;
        if count.messages.fetch_sub(1, Ordering::SeqCst) == 1
            && count.waiting.load(Ordering::SeqCst) > 0
        {
            count.none_left.notify_waiters();
        }
    }
}

impl std::fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlightGuard")
    }
}

#[cfg(test)]
mod in_flight_tests {
    use std::time::Duration;

    use super::InFlight;

    #[tokio::test]
    async fn idle_waits_for_the_last_message_out() {
        let in_flight = InFlight::default();
        // None in: idle at once.
        in_flight.idle().await;
        let first = in_flight.enter();
        let second = in_flight.enter();
        let mut idle = std::pin::pin!(in_flight.idle());
        assert!(futures::poll!(idle.as_mut()).is_pending());
        drop(first);
        assert!(
            futures::poll!(idle.as_mut()).is_pending(),
            "one is still in"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("woken by the last message out");
    }

    /// A wait given up leaves nobody counted as waiting, and a new wait still sees the count.
    #[tokio::test]
    async fn a_wait_given_up_is_not_counted() {
        let in_flight = InFlight::default();
        let guard = in_flight.enter();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), in_flight.idle())
                .await
                .is_err()
        );
        assert_eq!(
            in_flight
                .0
                .waiting
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        drop(guard);
        in_flight.idle().await;
    }

    /// Messages leaving on other threads while a task starts waiting: the wait never misses
    /// the last one out (it would hang, and the timeout fail the test).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_last_message_out_is_missed() {
        for _ in 0..2_000 {
            let in_flight = InFlight::default();
            let guards: Vec<_> = (0..4).map(|_| in_flight.enter()).collect();
            let leaving = tokio::spawn(async move {
                for guard in guards {
                    tokio::task::yield_now().await;
                    drop(guard);
                }
            });
            tokio::time::timeout(Duration::from_secs(5), in_flight.idle())
                .await
                .expect("the last message out woke the wait");
            leaving.await.expect("leaving");
        }
    }
}
