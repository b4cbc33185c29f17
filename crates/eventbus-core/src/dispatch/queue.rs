//! Keyed queues, the ready queue and the on-demand workers that drain it.

use std::collections::VecDeque;
use std::collections::hash_map::{Entry, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use backon::ExponentialBackoff;
use futures::FutureExt;
use slab::Slab;
use tokio::runtime::Handle;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::sync::ReusableBoxFuture;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::error::BoxError;
use crate::handler::{Delivery, Panicked, Scope};
use crate::message::{Key, Message};
use crate::retry::{RetryPolicy, Retrying};
use crate::telemetry::RouteMetrics;
use tracing::Instrument;

/// The final result of dispatching one message.
#[derive(Debug)]
pub enum Outcome {
    /// The handler succeeded: ack the message.
    Handled {
        /// Handler calls it took.
        attempts: u32,
    },
    /// The handler failed for good (last attempt used, or a [`Permanent`](crate::Permanent) error): nack or
    /// dead-letter it.
    Failed {
        /// Handler calls made.
        attempts: u32,
        /// The last error.
        error: BoxError,
        /// When the first attempt failed (dead letters carry it).
        first_failure: SystemTime,
    },
    /// Not (fully) handled because its subscription or bus is closing. Not a failure: leave it
    /// unacked for redelivery; never ack, retry or dead-letter it.
    Cancelled,
}

impl Outcome {
    /// Whether the message was handled.
    pub fn is_handled(&self) -> bool {
        matches!(self, Outcome::Handled { .. })
    }
}

static NEXT_ROUTE: AtomicU64 = AtomicU64::new(1);

/// A subscription's handler, type-erased. One call clones the handler and puts the future of
/// `ready` + `call` together in the worker's [`Slot`].
trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: Delivery, slot: &mut Slot);
}

/// Where a worker keeps the handler call it runs. One box per worker, reused: calls of one
/// route all have the same layout, so a worker allocates only when it moves to a route whose
/// handler differs in size, not once per message.
type Slot = ReusableBoxFuture<'static, Result<(), BoxError>>;

/// An empty slot; it holds nothing and allocates nothing.
fn empty_slot() -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
    std::future::pending()
}

struct Erased<H>(H);

impl<H> Handler for Erased<H>
where
    H: Service<Delivery, Response = ()> + Clone + Send + Sync + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
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

/// A subscription as the dispatcher sees it: where its messages go and how they are retried.
/// Per-key order holds within one route.
pub struct Route {
    id: u64,
    /// Group and closing token, shared with every delivery.
    scope: Arc<Scope>,
    topic: Arc<str>,
    handler: Box<dyn Handler>,
    retry: RetryPolicy,
    dead_letter: Option<Arc<str>>,
    abort: CancellationToken,
    /// The completion queue of the consuming loop that feeds this route, if one does: jobs
    /// reply through it, so a job carries no sender of its own.
    completions: OnceLock<mpsc::UnboundedSender<Done>>,
    pub(crate) metrics: RouteMetrics,
    last_error: Mutex<Option<(SystemTime, String)>>,
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
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// A route to `handler`. `closing` fires when intake stops (deliveries see it; queued
    /// messages are then cancelled, not run); `abort` fires when running handlers must be
    /// dropped (the drain deadline passed).
    pub fn new<H>(
        topic: &str,
        group: &str,
        handler: H,
        retry: RetryPolicy,
        closing: CancellationToken,
        abort: CancellationToken,
    ) -> Self
    where
        H: Service<Delivery, Response = ()> + Clone + Send + Sync + 'static,
        H::Error: Into<BoxError>,
        H::Future: Send + 'static,
    {
        Route {
            id: NEXT_ROUTE.fetch_add(1, Ordering::Relaxed),
            topic: Arc::from(topic),
            scope: Arc::new(Scope {
                group: Arc::from(group),
                closing,
            }),
            handler: Box::new(Erased(handler)),
            retry,
            dead_letter: None,
            abort,
            completions: OnceLock::new(),
            metrics: RouteMetrics::new(topic, group),
            last_error: Mutex::new(None),
            retrying: Mutex::new(Slab::new()),
        }
    }
    /// Sends messages that fail for good to `topic` (see [`dead_letter`](crate::dead_letter)),
    /// when the route is fed by a bus subscription.
    pub fn with_dead_letter(mut self, topic: &str) -> Self {
        self.dead_letter = Some(Arc::from(topic));
        self
    }
    /// Records an error of the subscription (its stream, its acks), for health reports.
    pub(crate) fn record_error(&self, error: &dyn std::fmt::Display) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((SystemTime::now(), error.to_string()));
    }
    /// The last error recorded.
    pub(crate) fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    /// Records that `job` backs off after its attempt failed with `error`.
    fn note_retrying(&self, job: &mut Job, first_failure: SystemTime, error: &BoxError) {
        let mut retrying = self.retrying.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = Retrying {
            key: job.message.key().cloned(),
            message_id: job.message.id().clone(),
            attempts: job.attempts,
            first_failure,
            last_error: error.to_string(),
        };
        match job.retrying.and_then(|slot| retrying.get_mut(slot)) {
            Some(known) => *known = entry,
            None => job.retrying = Some(retrying.insert(entry)),
        }
    }
    /// The dead-letter topic, if any.
    pub fn dead_letter(&self) -> Option<&str> {
        self.dead_letter.as_deref()
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
    /// Makes `completions` the queue of every [`Reply::Queue`] of this route (once: one
    /// consuming loop feeds a route).
    pub(crate) fn complete_into(&self, completions: mpsc::UnboundedSender<Done>) {
        assert!(
            self.completions.set(completions).is_ok(),
            "one consuming loop per route"
        );
    }
    /// Fires when running handlers of the route are dropped.
    pub fn abort(&self) -> &CancellationToken {
        &self.abort
    }
}

/// Counters of a dispatcher, read with [`Dispatcher::stats`](super::Dispatcher::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatcherStats {
    /// Handler calls running now.
    pub in_flight: usize,
    /// Most handler calls ever running at once.
    pub peak_in_flight: usize,
    /// Worker tasks alive now.
    pub workers: usize,
    /// Messages admitted and not finished (queued, running or backing off).
    pub buffered: usize,
    /// Their encoded bytes.
    pub buffered_bytes: usize,
    /// Keys with at least one message in the dispatcher.
    pub active_keys: usize,
    /// Messages handled successfully.
    pub handled: u64,
    /// Messages that failed for good.
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Handler panics caught.
    pub panicked: u64,
    /// Messages cancelled by a closing subscription or bus.
    pub cancelled: u64,
    /// Messages published to a dead-letter topic (and then acked).
    pub dead_lettered: u64,
}

pub(super) struct Job {
    route: Arc<Route>,
    message: Arc<Message>,
    attempts: u32,
    /// Boxed: only retried jobs need it, and every job is moved through the queues.
    delays: Option<Box<ExponentialBackoff>>,
    first_failure: Option<SystemTime>,
    /// Its entry in the route's list of retrying messages, while it has one.
    retrying: Option<usize>,
    /// Taken when the outcome is sent; a job dropped unfinished (its runtime shut down)
    /// replies `Cancelled` from `Drop`, so no waiter is left hanging.
    reply: Option<(Reply, Reservation)>,
}

impl Job {
    fn finish(mut self, outcome: Outcome) {
        self.reply_once(outcome);
    }

    /// Sends the outcome (once) and takes the job off the route's retrying list.
    fn reply_once(&mut self, outcome: Outcome) {
        if let Some(slot) = self.retrying.take() {
            let mut retrying = (self.route.retrying.lock()).unwrap_or_else(PoisonError::into_inner);
            retrying.try_remove(slot);
        }
        if let Some((reply, room)) = self.reply.take() {
            reply.send(&self.route, outcome, room);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.reply_once(Outcome::Cancelled);
    }
}

impl Reply {
    fn send(self, route: &Route, outcome: Outcome, room: Reservation) {
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
                if let Some(tx) = route.completions.get() {
                    let _ = tx.send(done);
                }
            }
        }
    }
}

/// Where a job's final outcome goes.
pub(crate) enum Reply {
    /// To a [`ResponseFuture`](super::ResponseFuture) (the tower `call` path).
    Oneshot(oneshot::Sender<Outcome>),
    /// To the completion queue of the consuming loop feeding the route (see
    /// [`Route::complete_into`]), tagged with the loop's token for the message. The room the
    /// message held travels along and is freed once the loop has settled it, so the
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

impl Job {
    pub(super) fn new(
        route: Arc<Route>,
        message: Arc<Message>,
        reply: Reply,
        reservation: Reservation,
    ) -> Self {
        Job {
            route,
            message,
            attempts: 0,
            delays: None,
            first_failure: None,
            retrying: None,
            reply: Some((reply, reservation)),
        }
    }
    fn key(&self) -> Option<(u64, Key)> {
        self.message.key().map(|k| (self.route.id, k.clone()))
    }
}

/// Room a job holds from admission to completion: one buffer slot and its bytes.
/// Released on drop, so every path out (done, cancelled, dropped at runtime shutdown) frees it.
pub(crate) struct Reservation {
    pub(super) _slot: OwnedSemaphorePermit,
    pub(super) bytes: usize,
    pub(super) budget: Arc<ByteBudget>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Soft byte cap: admission needs `used < max`. Callers check and add separately, so each
/// concurrent caller may overshoot by one message: at most `max` plus one message per
/// subscription.
pub(super) struct ByteBudget {
    pub(super) used: AtomicUsize,
    pub(super) max: usize,
    pub(super) freed: Arc<Notify>,
}

impl ByteBudget {
    pub(super) fn has_room(&self) -> bool {
        // Acquire pairs with the Release in `release`, so a waiter that sees room also sees the
        // freed state; a stale read only delays admission until the next notification.
        self.used.load(Ordering::Acquire) < self.max
    }
    pub(super) fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }
    fn release(&self, n: usize) {
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        if before >= self.max && before - n < self.max {
            self.freed.notify_waiters();
        }
    }
}

#[derive(Default)]
struct State {
    /// Keys with a job in the dispatcher (running, ready or backing off), mapped to the jobs
    /// waiting behind it. An entry exists exactly while the key is busy.
    /// Hashed with foldhash (seeded per process): keys come from message data, so the hash must
    /// not be predictable, but SipHash costs twice as much on this path.
    keys: HashMap<(u64, Key), VecDeque<Job>, foldhash::fast::RandomState>,
    /// Emptied queues of `keys`, kept for the next key that gets a waiting job: in a burst
    /// most busy keys get one, and a fresh queue would allocate for each.
    spare: Vec<VecDeque<Job>>,
    /// Jobs that may run now; at most one per key.
    ready: VecDeque<Job>,
    workers: usize,
    /// Workers started or woken for a ready job that have not taken one yet.
    searching: usize,
    /// Workers parked waiting for work (each has registered with `Shared::work`).
    idle: usize,
    closed: bool,
}

/// Most emptied key queues kept for reuse, and the largest capacity kept.
const MAX_SPARE_QUEUES: usize = 1024;
const MAX_SPARE_CAPACITY: usize = 8;

pub(super) struct Shared {
    state: Mutex<State>,
    max_in_flight: usize,
    /// Parked workers kept for the next burst: spawning a task per message costs more than
    /// waking a parked one. About one per runtime thread; the rest exit when out of work.
    keep_idle: usize,
    work: Notify,
    pub(super) tracker: TaskTracker,
    runtime: Handle,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    handled: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
}

impl Shared {
    pub(super) fn new(max_in_flight: usize, runtime: Handle) -> Self {
        let keep_idle = runtime
            .metrics()
            .num_workers()
            .clamp(1, max_in_flight.max(1));
        Shared {
            state: Mutex::default(),
            max_in_flight: max_in_flight.max(1),
            keep_idle,
            work: Notify::new(),
            tracker: TaskTracker::new(),
            runtime,
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock, so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a job: it runs now if its key is idle, else it waits behind its key.
    pub(super) fn submit(self: &Arc<Self>, job: Job) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(id) = job.key() {
            match st.keys.entry(id) {
                Entry::Occupied(mut waiting) => {
                    waiting.get_mut().push_back(job);
                    return;
                }
                Entry::Vacant(idle) => {
                    idle.insert(st.spare.pop().unwrap_or_default());
                }
            }
        }
        let mut st = guard;
        st.ready.push_back(job);
        self.wake_worker(st);
    }

    /// Puts a job whose key is already busy (a retry after its backoff) back on the ready queue.
    fn resume(self: &Arc<Self>, job: Job) {
        let mut st = self.lock();
        st.ready.push_back(job);
        self.wake_worker(st);
    }

    /// Gets a worker on its way to the ready queue unless one already is: wakes a parked worker,
    /// or starts one while fewer than `max_in_flight` exist. With every worker busy, whichever
    /// finishes first takes the job. A worker that takes a job and leaves others behind calls
    /// this again, so ready jobs never wait behind a running handler (no head-of-line blocking)
    /// while workers only grow with the handler calls actually running at once.
    fn wake_worker(self: &Arc<Self>, mut st: MutexGuard<'_, State>) {
        if st.searching > 0 || st.ready.is_empty() {
            return;
        }
        if st.idle > 0 {
            // Claimed under the lock, so two wakes never count on one parked worker.
            st.idle -= 1;
            st.searching += 1;
            drop(st);
            self.work.notify_one();
        } else if st.workers < self.max_in_flight {
            st.workers += 1;
            st.searching += 1;
            drop(st);
            let shared = Arc::clone(self);
            self.tracker.spawn_on(shared.work(), &self.runtime);
        }
    }

    /// Stops parked workers and keeps no more: on shutdown, or when the last dispatcher
    /// handle goes.
    pub(super) fn close_workers(&self) {
        let mut st = self.lock();
        st.closed = true;
        // Woken below as if claimed by `wake_worker`, so the searching count stays exact.
        st.searching += st.idle;
        st.idle = 0;
        drop(st);
        self.work.notify_waiters();
    }

    async fn work(self: Arc<Self>) {
        // Started or woken on behalf of a ready job (counted in `State::searching`).
        let mut searching = true;
        let mut done: Option<(Job, Outcome)> = None;
        let mut slot: Slot = ReusableBoxFuture::new(empty_slot());
        loop {
            let parked = self.work.notified();
            tokio::pin!(parked);
            // One lock per job: release the finished job's key and take the next ready job.
            let (next, park) = {
                let mut st = self.lock();
                if std::mem::take(&mut searching) {
                    st.searching -= 1;
                }
                if let Some((job, _)) = &done {
                    if let Some(id) = job.key() {
                        let State {
                            keys, ready, spare, ..
                        } = &mut *st;
                        if let Entry::Occupied(mut e) = keys.entry(id) {
                            match e.get_mut().pop_front() {
                                Some(next) => ready.push_back(next),
                                None => {
                                    let queue = e.remove();
                                    // Bounded, and only small queues: a key that once had a
                                    // long backlog does not pin its memory here.
                                    if spare.len() < MAX_SPARE_QUEUES
                                        && queue.capacity() <= MAX_SPARE_CAPACITY
                                    {
                                        spare.push(queue);
                                    }
                                }
                            }
                        }
                    }
                }
                let next = st.ready.pop_front();
                let park = next.is_none() && !st.closed && st.idle < self.keep_idle;
                if next.is_some() {
                    self.wake_worker(st);
                } else if park {
                    // Registered before the lock is released, so a wake that sees us idle cannot
                    // be missed.
                    parked.as_mut().enable();
                    st.idle += 1;
                    drop(st);
                } else {
                    st.workers -= 1;
                    drop(st);
                }
                (next, park)
            };
            if let Some((job, outcome)) = done.take() {
                self.complete(job, outcome);
            }
            match next {
                Some(job) => done = self.run(job, &mut slot).await,
                None if park => {
                    parked.await;
                    searching = true;
                }
                None => return,
            }
        }
    }

    fn complete(&self, job: Job, outcome: Outcome) {
        let metrics = &job.route.metrics;
        let (counter, metric) = match &outcome {
            Outcome::Handled { .. } => (&self.handled, &metrics.handled),
            Outcome::Failed { .. } => (&self.failed, &metrics.failed),
            Outcome::Cancelled => (&self.cancelled, &metrics.cancelled),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metric.increment(1);
        job.finish(outcome);
    }

    /// Runs one attempt. Returns the job with its final outcome, or `None` when it went to
    /// back off before a retry (its key stays busy meanwhile).
    async fn run(self: &Arc<Self>, mut job: Job, slot: &mut Slot) -> Option<(Job, Outcome)> {
        let route = Arc::clone(&job.route);
        if route.scope.closing.is_cancelled() {
            return Some((job, Outcome::Cancelled));
        }
        job.attempts += 1;
        let delivery = Delivery {
            message: Arc::clone(&job.message),
            attempt: job.attempts,
            scope: Arc::clone(&route.scope),
        };
        // Everything that runs user code (cloning the handler, polling it, dropping it) stays
        // inside `catch_unwind`, so a panic anywhere in it is counted and the job still gets
        // its outcome.
        let span = tracing::info_span!(
            "eventbus.handle",
            topic = %route.topic,
            group = %route.scope.group,
            key = job.message.key().map(|k| k.as_str()),
            message_id = %job.message.id(),
            attempt = job.attempts,
        );
        crate::propagation::restore_parent(&span, &job.message);
        let started = std::time::Instant::now();
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        let result = {
            let (handler, slot) = (&route.handler, &mut *slot);
            let call = AssertUnwindSafe(
                async move {
                    handler.handle(delivery, slot);
                    std::future::poll_fn(|cx| slot.poll(cx)).await
                }
                .instrument(span),
            )
            .catch_unwind();
            let mut call = std::pin::pin!(call);
            // Most handlers finish on their first poll; only register with the abort token (a
            // lock on a token shared by the route) for those that wait.
            match futures::FutureExt::now_or_never(call.as_mut()) {
                Some(r) => Some(r),
                None => tokio::select! {
                    biased;
                    () = route.abort.cancelled() => None,
                    r = call => Some(r),
                },
            }
        };
        if !matches!(result, Some(Ok(_))) {
            // An aborted (or panicked) call may still hold the handler and its future: they
            // are dropped here, where a panic in their drop is caught too.
            if std::panic::catch_unwind(AssertUnwindSafe(|| slot.set(empty_slot()))).is_err() {
                self.panicked.fetch_add(1, Ordering::Relaxed);
                route.metrics.panicked.increment(1);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        route.metrics.duration.record(started.elapsed());

        let error = match result {
            None => return Some((job, Outcome::Cancelled)),
            Some(Ok(Ok(()))) => {
                let attempts = job.attempts;
                return Some((job, Outcome::Handled { attempts }));
            }
            Some(Ok(Err(e))) => e,
            Some(Err(panic)) => {
                self.panicked.fetch_add(1, Ordering::Relaxed);
                route.metrics.panicked.increment(1);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                tracing::error!(topic = %route.topic, group = %route.scope.group, message_id = %job.message.id(), panic = %what, "handler panicked");
                Box::new(Panicked(what))
            }
        };
        // Shutdown is not failure: an error once closing began leaves the message for redelivery.
        if route.scope.closing.is_cancelled() {
            return Some((job, Outcome::Cancelled));
        }
        let first_failure = *job.first_failure.get_or_insert_with(SystemTime::now);
        let delay = if !route.retry.is_retryable(&error) {
            None
        } else {
            job.delays
                .get_or_insert_with(|| Box::new(route.retry.delays()))
                .next()
        };
        let Some(delay) = delay else {
            tracing::warn!(topic = %route.topic, group = %route.scope.group, message_id = %job.message.id(), attempts = job.attempts, error = %error, "handler failed for good");
            let attempts = job.attempts;
            return Some((
                job,
                Outcome::Failed {
                    attempts,
                    error,
                    first_failure,
                },
            ));
        };
        tracing::debug!(topic = %route.topic, message_id = %job.message.id(), attempt = job.attempts, ?delay, error = %error, "handler failed, retrying");
        route.note_retrying(&mut job, first_failure, &error);
        self.retried.fetch_add(1, Ordering::Relaxed);
        route.metrics.retried.increment(1);
        let shared = Arc::clone(self);
        self.tracker.spawn_on(
            async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = route.scope.closing.cancelled() => {}
                }
                shared.resume(job);
            },
            &self.runtime,
        );
        None
    }

    pub(super) fn stats(&self, buffered: usize, buffered_bytes: usize) -> DispatcherStats {
        let (workers, active_keys) = {
            let st = self.lock();
            (st.workers, st.keys.len())
        };
        DispatcherStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
            workers,
            buffered,
            buffered_bytes,
            active_keys,
            handled: self.handled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
        }
    }
}
