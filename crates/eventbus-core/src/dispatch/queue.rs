//! Keyed queues, the ready queue and the on-demand workers that drain it.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use backon::ExponentialBackoff;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio_util::sync::ReusableBoxFuture;
use tokio_util::task::TaskTracker;

use super::budget::Reservation;
use super::route::{Done, ErasedHandler, Reply, Route, Slot, empty_slot};
use super::stats::DispatcherStats;
use crate::clock::Stamp;
use crate::error::BoxError;
use crate::handler::{Delivery, Panicked};
use crate::message::{Key, Message};
use crate::outcome::Outcome;
use crate::retry::Retrying;

pub(super) struct Job {
    route: Arc<Route>,
    message: Arc<Message>,
    /// Of the route and the message's key (if it has one), computed once, outside the lock:
    /// the key map is probed with it on admission and on completion.
    hash: u64,
    /// Jobs of its key were waiting behind it when it became ready: the worker taking it looks
    /// them up and takes them along.
    followed: bool,
    /// In a worker's run: the next job of the run is of its key, so finishing this one
    /// releases nothing (the key stays with the run).
    run_continues: bool,
    attempts: u32,
    /// Boxed: only a job that failed has it, and every job is moved through the queues.
    failing: Option<Box<Failing>>,
    /// Taken when the outcome is sent; a job dropped unfinished (its runtime shut down)
    /// replies `Cancelled` from `Drop`, so no waiter is left hanging.
    reply: Option<(Reply, Reservation)>,
}

/// What a job that failed carries into its next attempts.
struct Failing {
    first_failure: SystemTime,
    /// Made on the first retryable failure.
    delays: Option<ExponentialBackoff>,
    /// Its entry in the route's list of retrying messages, while it has one.
    retrying: Option<usize>,
}

impl Job {
    /// Sends the outcome (once) and takes the job off the route's retrying list.
    fn reply_once(&mut self, outcome: Outcome) {
        if let Some((reply, room)) = self.take_reply() {
            reply.send(&self.route, outcome, room);
        }
    }

    /// Where the outcome goes, the first time it is asked: the job is off the route's retrying
    /// list from then on.
    fn take_reply(&mut self) -> Option<(Reply, Reservation)> {
        if let Some(slot) = self.failing.as_mut().and_then(|f| f.retrying.take()) {
            self.route.done_retrying(slot);
        }
        self.reply.take()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Checked here, inline: almost every job dropped has replied and never failed.
        if self.reply.is_some() || self.failing.is_some() {
            self.reply_once(Outcome::Cancelled);
        }
    }
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
            hash: 0,
            followed: false,
            run_continues: false,
            attempts: 0,
            failing: None,
            reply: Some((reply, reservation)),
        }
    }
    fn key(&self) -> Option<&Key> {
        self.message.key()
    }
    /// Whether `busy` is this job's key (of this job's route).
    fn is_of(&self, busy: &Busy) -> bool {
        busy.route == self.route.id && self.key() == Some(&busy.key)
    }
}

/// A key with a job in the dispatcher (running, ready or backing off), and the jobs of the key
/// waiting behind it.
struct Busy {
    route: u64,
    key: Key,
    hash: u64,
    waiting: VecDeque<Job>,
}

#[derive(Default)]
struct State {
    /// Keys with a job in the dispatcher, found by [`Job::hash`]. An entry exists exactly
    /// while the key is busy.
    keys: HashTable<Busy>,
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
    /// Workers holding jobs: the handler calls running now (one per such worker, as a
    /// worker runs its jobs one at a time). Counted here, under the lock a worker takes
    /// anyway to get its jobs, rather than with an atomic every worker shares per call.
    running: usize,
    /// Most workers ever holding jobs at once.
    peak_running: usize,
    closed: bool,
}

/// Most emptied key queues kept for reuse, and the largest capacity kept.
const MAX_SPARE_QUEUES: usize = 1024;
const MAX_SPARE_CAPACITY: usize = 8;

/// Most jobs a worker takes under one lock (see [`take_run`]).
const MAX_RUN: usize = 32;

/// A handler call that finished on its first poll but took longer than this kept its thread
/// busy (a handler computing or blocking): the worker gives back the other keys' jobs of its
/// run, and takes one key at a time until a run is quick again.
const SLOW_CALL: Duration = Duration::from_micros(100);

/// Releases the keys of finished jobs: the next job waiting behind each becomes ready (and
/// says whether more wait behind it), or the key's entry goes.
fn release(st: &mut State, done: &[Finished]) {
    let State {
        keys, ready, spare, ..
    } = st;
    for Finished { job, release, .. } in done {
        if !release || job.key().is_none() {
            continue;
        }
        if let Ok(mut e) = keys.find_entry(job.hash, |busy| job.is_of(busy)) {
            let waiting = &mut e.get_mut().waiting;
            match waiting.pop_front() {
                Some(mut next) => {
                    next.followed = !waiting.is_empty();
                    ready.push_back(next);
                }
                None => {
                    let queue = e.remove().0.waiting;
                    // Bounded, and only small queues: a key that once had a long backlog
                    // does not pin its memory here. A queue that never held a job has no
                    // memory to reuse.
                    if spare.len() < MAX_SPARE_QUEUES
                        && (1..=MAX_SPARE_CAPACITY).contains(&queue.capacity())
                    {
                        spare.push(queue);
                    }
                }
            }
        }
    }
}

/// Takes the next ready job and the jobs of its key waiting behind it: they would run one
/// after another anyway, so taking them together spares a lock per job (a lock every producer
/// shares) and keeps no other key waiting. With `other_keys`, goes on with the next ready jobs
/// (and theirs) while the run has fewer than [`MAX_RUN`] jobs; while another worker is parked,
/// with at most half the ready keys, so that one (woken by `wake_worker`, after the run is
/// taken) gets the other half to run on another thread. Jobs of one key are next to each other
/// in the run, marked by [`Job::run_continues`].
fn take_run(st: &mut State, run: &mut VecDeque<Job>, other_keys: bool) {
    let mut keys = match (other_keys, st.idle) {
        (false, _) => 1,
        (true, 0) => MAX_RUN,
        (true, _) => st.ready.len().div_ceil(2),
    };
    while run.len() < MAX_RUN && keys > 0 {
        let Some(mut job) = st.ready.pop_front() else {
            return;
        };
        keys -= 1;
        let behind = if std::mem::take(&mut job.followed) {
            st.keys.find_mut(job.hash, |busy| job.is_of(busy))
        } else {
            None
        };
        let n = behind
            .as_ref()
            .map_or(0, |busy| (MAX_RUN - run.len() - 1).min(busy.waiting.len()));
        job.run_continues = n > 0;
        run.push_back(job);
        if let Some(busy) = behind {
            for (i, mut next) in busy.waiting.drain(..n).enumerate() {
                next.run_continues = i + 1 < n;
                run.push_back(next);
            }
        }
    }
}

/// How an attempt ended.
enum Attempt {
    /// With the job's final outcome.
    Finished(Outcome),
    /// With a retryable failure: the job backs off this long before its next attempt.
    Retry(std::time::Duration),
}

/// A job that ran to its outcome, waiting for the next lock to release its key (when no job
/// of its key was taken along behind it) and then to reply.
struct Finished {
    job: Job,
    outcome: Outcome,
    release: bool,
}

pub(super) struct Shared {
    state: Mutex<State>,
    /// Hashes keys for [`State::keys`]: foldhash, seeded per process. Keys come from message
    /// data, so the hash must not be predictable, but SipHash costs twice as much on this path.
    hasher: foldhash::fast::RandomState,
    max_in_flight: usize,
    /// Parked workers kept for the next burst: spawning a task per message costs more than
    /// waking a parked one. About one per runtime thread; the rest exit when out of work.
    keep_idle: usize,
    work: Notify,
    pub(super) tracker: TaskTracker,
    runtime: Handle,
    handled: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
}

impl Shared {
    pub(super) fn new(max_in_flight: usize, runtime: Handle) -> Self {
        let keep_idle = runtime
            .metrics()
            .num_workers()
            .clamp(1, max_in_flight.max(1));
        Shared {
            state: Mutex::default(),
            hasher: foldhash::fast::RandomState::default(),
            max_in_flight: max_in_flight.max(1),
            keep_idle,
            work: Notify::new(),
            tracker: TaskTracker::new(),
            runtime,
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock, so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a job: it runs now if its key is idle, else it waits behind its key.
    pub(super) fn submit(self: &Arc<Self>, mut job: Job) {
        if let Some(key) = job.key() {
            job.hash = self.hasher.hash_one((job.route.id, key.as_str()));
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(key) = job.key() {
            match st
                .keys
                .entry(job.hash, |busy| job.is_of(busy), |busy| busy.hash)
            {
                Entry::Occupied(mut busy) => {
                    busy.get_mut().waiting.push_back(job);
                    return;
                }
                Entry::Vacant(idle) => {
                    idle.insert(Busy {
                        route: job.route.id,
                        key: key.clone(),
                        hash: job.hash,
                        waiting: st.spare.pop().unwrap_or_default(),
                    });
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
        // Holding jobs (counted in `State::running`).
        let mut running = false;
        // Jobs taken under the last lock and not started yet: a run (see `take_run`).
        let mut run: VecDeque<Job> = VecDeque::new();
        // Whether the last run finished on the spot (no handler waited, none backed off): only
        // then does the next run take other keys' ready jobs too. A worker whose handlers wait
        // would give those back each time, and they would wait meanwhile for its lock.
        let mut on_the_spot = false;
        // Finished jobs whose keys are released under the next lock, before they reply.
        let mut done: Vec<Finished> = Vec::new();
        // Outcomes of `done` on their way to a consuming loop (see `reply`).
        let mut to_loops: Vec<Done> = Vec::new();
        let mut slot: Slot = ReusableBoxFuture::new(empty_slot());
        // Made only when the worker parks: most turns of the loop take jobs instead.
        let mut parked = std::pin::pin!(None::<Notified<'_>>);
        loop {
            // One lock per run of jobs: release the finished jobs' keys and take the next run.
            let park = {
                let mut st = self.lock();
                if std::mem::take(&mut searching) {
                    st.searching -= 1;
                }
                release(&mut st, &done);
                take_run(&mut st, &mut run, on_the_spot);
                if running == run.is_empty() {
                    running = !running;
                    if running {
                        st.running += 1;
                        st.peak_running = st.peak_running.max(st.running);
                    } else {
                        st.running -= 1;
                    }
                }
                let park = run.is_empty() && !st.closed && st.idle < self.keep_idle;
                if !run.is_empty() {
                    self.wake_worker(st);
                } else if park {
                    // Registered before the lock is released, so a wake that sees us idle cannot
                    // be missed.
                    parked.set(Some(self.work.notified()));
                    if let Some(parked) = parked.as_mut().as_pin_mut() {
                        parked.enable();
                    }
                    st.idle += 1;
                    drop(st);
                } else {
                    st.workers -= 1;
                    drop(st);
                }
                park
            };
            self.reply(&mut done, &mut to_loops);
            if run.is_empty() {
                if !park {
                    return;
                }
                if let Some(parked) = parked.as_mut().as_pin_mut() {
                    parked.await;
                }
                parked.set(None);
                searching = true;
                continue;
            }
            // A run goes on only while its handlers finish on their first poll (one that waits,
            // or backs off, gives the rest back), so it runs at once, as of when it was taken:
            // whether a route is closing is read once for the run (a lock on the route's
            // token), and each job's end is the next one's start (one clock read per job).
            let mut closing: Option<(u64, bool)> = None;
            let mut clock = Stamp::now();
            on_the_spot = true;
            while let Some(mut job) = run.pop_front() {
                let closing = match closing {
                    Some((route, closing)) if route == job.route.id => closing,
                    _ => {
                        let now = job.route.scope.closing.is_cancelled();
                        closing = Some((job.route.id, now));
                        now
                    }
                };
                let continues = job.run_continues;
                let mut took = Duration::ZERO;
                let attempt = match self.start(&mut job, &mut slot, closing) {
                    Started::Skipped => Attempt::Finished(Outcome::Cancelled),
                    Started::Ended(result) => {
                        self.end(&mut job, &mut slot, Some(result), &mut clock, &mut took)
                    }
                    Started::Waiting(span) => {
                        // The handler waits: the rest of the run goes back where it was taken
                        // from, so it holds no worker while this one waits.
                        on_the_spot = false;
                        self.give_back(continues, &mut run, &mut done, &mut to_loops);
                        let result = wait(&job.route, &mut slot, &span).await;
                        self.end(&mut job, &mut slot, result, &mut clock, &mut took)
                    }
                };
                match attempt {
                    Attempt::Finished(outcome) => {
                        done.push(Finished {
                            // Its key goes on in the run unless the run was given back.
                            release: !job.run_continues || run.is_empty(),
                            job,
                            outcome,
                        });
                        if on_the_spot && took > SLOW_CALL {
                            // A call that kept the thread: other keys' jobs of the run go back
                            // for another worker rather than wait behind more such calls.
                            on_the_spot = false;
                            let ours = if continues {
                                run.iter()
                                    .position(|j| !j.run_continues)
                                    .map_or(run.len(), |i| i + 1)
                            } else {
                                0
                            };
                            if ours < run.len() {
                                let mut others = run.split_off(ours);
                                self.give_back(false, &mut others, &mut done, &mut to_loops);
                            }
                        }
                    }
                    // Backing off before a retry: its key stays busy, and the jobs of its key
                    // taken along wait behind the retry in the key's queue.
                    // The jobs go back first, so the retry, however soon it is due, finds them
                    // behind it.
                    Attempt::Retry(delay) => {
                        on_the_spot = false;
                        self.give_back(continues, &mut run, &mut done, &mut to_loops);
                        self.back_off(job, delay);
                    }
                }
            }
        }
    }

    /// Puts the jobs of `run` back where they were taken from, in order, when a job of the run
    /// waits or backs off: the rest of that job's key (`continues`: the run starts with some)
    /// to the front of its key's queue, behind it; each other key's first job to the front of
    /// the ready queue, and its later jobs to the front of its key's queue. Releases the keys
    /// of `done` and replies for them.
    fn give_back(
        self: &Arc<Self>,
        continues: bool,
        run: &mut VecDeque<Job>,
        done: &mut Vec<Finished>,
        to_loops: &mut Vec<Done>,
    ) {
        // Lock only to put jobs back or to release a key: a finished job followed by another
        // of its key releases nothing.
        if run.is_empty() && !done.iter().any(|f| f.release) {
            self.reply(done, to_loops);
            return;
        }
        let mut st = self.lock();
        release(&mut st, done);
        // Each key's jobs, from the last key's to the first's, so that pushing to the fronts
        // keeps their order.
        let mut to_ready = false;
        while !run.is_empty() {
            // The last key's jobs are `run[start..]`: back to where its `run_continues` chain
            // starts.
            let mut start = run.len() - 1;
            while start > 0 && run[start - 1].run_continues {
                start -= 1;
            }
            // The first of them was ready, unless it continues the job that stopped the run;
            // the others go back to the front of the key's queue, last first.
            let head_was_ready = !(continues && start == 0);
            let queued_from = if head_was_ready { start + 1 } else { start };
            let first = &run[start];
            match st.keys.find_mut(first.hash, |busy| first.is_of(busy)) {
                Some(busy) => {
                    for mut job in run.drain(queued_from..).rev() {
                        job.run_continues = false;
                        busy.waiting.push_front(job);
                    }
                    if head_was_ready {
                        run[start].followed = !busy.waiting.is_empty();
                    }
                }
                // A job without a key has no queue: it was ready, and goes back alone.
                None => debug_assert_eq!(queued_from, run.len()),
            }
            if head_was_ready {
                let mut head = run.pop_back().expect("the key's first job");
                head.run_continues = false;
                st.ready.push_front(head);
                to_ready = true;
            }
        }
        if to_ready {
            // This worker is about to wait: another takes the ready jobs it gave back.
            self.wake_worker(st);
        } else {
            drop(st);
        }
        self.reply(done, to_loops);
    }

    /// Sends the outcomes of finished jobs whose keys were released.
    fn reply(&self, done: &mut Vec<Finished>, to_loops: &mut Vec<Done>) {
        // Counted before any reply goes, so whoever sees an outcome sees it counted; and once
        // per batch, as the counters are shared by every worker.
        let (mut handled, mut failed, mut cancelled) = (0, 0, 0);
        for finished in done.iter() {
            match finished.outcome {
                Outcome::Handled { .. } => handled += 1,
                Outcome::Failed { .. } => failed += 1,
                Outcome::Cancelled => cancelled += 1,
            }
        }
        for (counter, n) in [
            (&self.handled, handled),
            (&self.failed, failed),
            (&self.cancelled, cancelled),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        // The room of outcomes that go straight to a waiting caller, freed at once before any
        // is sent (whoever sees an outcome sees its room free), with one update of the shared
        // counters. Outcomes that go to a consuming loop carry their room there, to be freed
        // once the message is settled.
        Reservation::release_all(done.iter_mut().filter_map(|f| match &mut f.job.reply {
            Some((Reply::Oneshot(_), room)) => Some(room),
            _ => None,
        }));
        // Outcomes for a consuming loop go to its queue together: one lock, and one wake of
        // the loop, per run of jobs of one route.
        let mut queued_for: Option<Arc<Route>> = None;
        for Finished {
            mut job, outcome, ..
        } in done.drain(..)
        {
            let metrics = &job.route.metrics;
            let metric = match &outcome {
                Outcome::Handled { .. } => &metrics.handled,
                Outcome::Failed { .. } => &metrics.failed,
                Outcome::Cancelled => &metrics.cancelled,
            };
            metric.increment(1);
            match job.take_reply() {
                Some((Reply::Queue { token }, room)) => {
                    if !queued_for
                        .as_ref()
                        .is_some_and(|route| Arc::ptr_eq(route, &job.route))
                        && let Some(route) = queued_for.replace(Arc::clone(&job.route))
                    {
                        route.completions.push_all(to_loops.drain(..));
                    }
                    to_loops.push(Done {
                        token,
                        outcome,
                        room,
                    });
                }
                Some((reply, room)) => reply.send(&job.route, outcome, room),
                None => {}
            }
        }
        if let Some(route) = queued_for {
            route.completions.push_all(to_loops.drain(..));
        }
    }

    /// Starts one attempt of `job` and polls it once, unless its route was `closing` when its
    /// run was taken. Not a future: most calls end in their first poll, and only one that
    /// waits is awaited ([`wait`]). The job is borrowed, not moved into the call and back: it
    /// is moved often enough through the queues.
    fn start(&self, job: &mut Job, slot: &mut Slot, closing: bool) -> Started {
        // Borrowed, not cloned: the route's reference count is shared by every worker and
        // producer, and touching it costs a cache line passed between threads.
        let route: &Route = &job.route;
        if closing {
            return Started::Skipped;
        }
        job.attempts += 1;
        let delivery = Delivery {
            message: Arc::clone(&job.message),
            attempt: job.attempts,
            scope: Arc::clone(&route.scope),
        };
        let span = tracing::info_span!(
            "eventbus.handle",
            topic = %route.topic,
            group = %route.scope.group,
            key = job.message.key().map(|k| k.as_str()),
            message_id = %job.message.id(),
            attempt = job.attempts,
        );
        crate::propagation::restore_parent(&span, &job.message);
        // The first poll has no waker to give: a call that waits is polled again at once by
        // `wait`, with the worker's.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match poll_call(&span, slot, Some((&*route.handler, delivery)), &mut cx) {
            Poll::Ready(result) => Started::Ended(result),
            Poll::Pending => Started::Waiting(span),
        }
    }

    /// Ends an attempt of `job` with the `result` of its call (`None`: dropped, as the route
    /// aborted). `clock` is when the call started, and is set to when it ended; `took` is set
    /// to the time the call took.
    fn end(
        &self,
        job: &mut Job,
        slot: &mut Slot,
        result: Option<CallResult>,
        clock: &mut Stamp,
        took: &mut Duration,
    ) -> Attempt {
        let route: &Route = &job.route;
        if !matches!(result, Some(Ok(_))) {
            // An aborted (or panicked) call may still hold the handler and its future: they
            // are dropped here, where a panic in their drop is caught too.
            if std::panic::catch_unwind(AssertUnwindSafe(|| slot.set(empty_slot()))).is_err() {
                self.panicked.fetch_add(1, Ordering::Relaxed);
                route.metrics.panicked.increment(1);
            }
        }
        let ended = Stamp::now();
        *took = ended.since(*clock);
        *clock = ended;
        route.metrics.duration.record(*took);

        let error = match result {
            None => return Attempt::Finished(Outcome::Cancelled),
            Some(Ok(Ok(()))) => {
                return Attempt::Finished(Outcome::Handled {
                    attempts: job.attempts,
                });
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
            return Attempt::Finished(Outcome::Cancelled);
        }
        let failing = job.failing.get_or_insert_with(|| {
            Box::new(Failing {
                first_failure: SystemTime::now(),
                delays: None,
                retrying: None,
            })
        });
        let first_failure = failing.first_failure;
        let delay = if !route.retry.is_retryable(&error) {
            None
        } else {
            failing
                .delays
                .get_or_insert_with(|| route.retry.delays())
                .next()
        };
        let Some(delay) = delay else {
            tracing::warn!(topic = %route.topic, group = %route.scope.group, message_id = %job.message.id(), attempts = job.attempts, error = %error, "handler failed for good");
            return Attempt::Finished(Outcome::Failed {
                attempts: job.attempts,
                error,
                first_failure,
            });
        };
        tracing::debug!(topic = %route.topic, message_id = %job.message.id(), attempt = job.attempts, ?delay, error = %error, "handler failed, retrying");
        failing.retrying = Some(route.note_retrying(
            failing.retrying,
            Retrying {
                key: job.message.key().cloned(),
                message_id: job.message.id().clone(),
                attempts: job.attempts,
                first_failure,
                last_error: error.to_string(),
            },
        ));
        self.retried.fetch_add(1, Ordering::Relaxed);
        route.metrics.retried.increment(1);
        Attempt::Retry(delay)
    }

    /// Waits out `delay` before the job's next attempt (less if its route starts closing), in
    /// a task of its own: its key stays busy meanwhile.
    fn back_off(self: &Arc<Self>, job: Job, delay: std::time::Duration) {
        let shared = Arc::clone(self);
        self.tracker.spawn_on(
            async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = job.route.scope.closing.cancelled() => {}
                }
                shared.resume(job);
            },
            &self.runtime,
        );
    }

    pub(super) fn stats(&self, buffered: usize, buffered_bytes: usize) -> DispatcherStats {
        let (workers, active_keys, in_flight, peak_in_flight) = {
            let st = self.lock();
            (st.workers, st.keys.len(), st.running, st.peak_running)
        };
        DispatcherStats {
            in_flight,
            peak_in_flight,
            workers,
            buffered,
            buffered_bytes,
            active_keys,
            handled: self.handled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
        }
    }
}

/// What a handler call's result is: the handler's, or the panic it raised.
type CallResult = std::thread::Result<Result<(), BoxError>>;

/// How an attempt's first poll left it.
enum Started {
    /// Not called: its route was closing when the run was taken.
    Skipped,
    /// The call ended in its first poll.
    Ended(CallResult),
    /// The call waits, in the worker's slot: [`wait`] polls it on, inside this span.
    Waiting(tracing::Span),
}

/// Polls on a call that did not end in its first poll, until it ends or its route aborts
/// (`None`). Only a call that waits registers with the abort token: a lock on a token the
/// route's calls share.
async fn wait(route: &Route, slot: &mut Slot, span: &tracing::Span) -> Option<CallResult> {
    let call = std::future::poll_fn(|cx| poll_call(span, slot, None, cx));
    tokio::select! {
        biased;
        () = route.abort.cancelled() => None,
        r = call => Some(r),
    }
}

/// One poll of a handler call, inside its span and `catch_unwind`, as everything that runs user
/// code (cloning the handler, polling it, dropping the previous call) is: a panic anywhere in
/// it is counted, and the job still gets its outcome. The first poll (`start`) makes the call.
/// A plain function, not a future wrapped in `Instrumented` and `CatchUnwind`: most calls
/// finish in their first poll, and those wrappers cost about 40 instructions a call more.
fn poll_call(
    span: &tracing::Span,
    slot: &mut Slot,
    start: Option<(&dyn ErasedHandler, Delivery)>,
    cx: &mut Context<'_>,
) -> Poll<CallResult> {
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let _entered = span.enter();
        if let Some((handler, delivery)) = start {
            handler.handle(delivery, slot);
        }
        slot.poll(cx)
    }));
    match polled {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
        Err(panic) => Poll::Ready(Err(panic)),
    }
}
