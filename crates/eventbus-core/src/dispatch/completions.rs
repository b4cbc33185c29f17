//! Finished jobs on their way back to the consuming loop that fed their route: a worker adds
//! those it finished together (one lock, one wake of the loop), the loop takes all of them at
//! once.
//!
//! A channel would do the same, at a cost paid per message: tokio's unbounded queue writes
//! each job into a slot of a linked block and frees the blocks it has read (and glibc merges
//! its cached free chunks on some of those frees). Here a job is one push onto a queue under a
//! lock nobody holds for long, and the loop swaps its emptied queue for the full one, so in a
//! steady flow nothing is allocated at all. A queue a burst grew is made small again once the
//! burst is over.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use futures::task::AtomicWaker;

use super::route::Done;

/// Most finished jobs the loop settles as one batch; the capacity a queue is made small to.
pub(crate) const TAKE: usize = 64;

/// Most capacity a queue keeps once a burst that grew it is over.
const KEEP: usize = 4 * TAKE;

/// The finished jobs of one route, for the one consuming loop that feeds it.
#[derive(Default)]
pub(crate) struct Completions {
    /// `None` while no loop takes them: before the loop starts and after it ended (a job
    /// that finishes then is dropped, which frees its room).
    queue: Mutex<Option<VecDeque<Done>>>,
    /// The loop, waiting for a finished job.
    waker: AtomicWaker,
}

impl Completions {
    fn lock(&self) -> MutexGuard<'_, Option<VecDeque<Done>>> {
        // Pushing and swapping cannot panic midway, so a poisoned lock still holds a sound queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts taking finished jobs. `false` if a loop already takes them: one loop per route.
    pub(crate) fn open(&self) -> bool {
        let mut queue = self.lock();
        if queue.is_some() {
            return false;
        }
        *queue = Some(VecDeque::new());
        true
    }

    /// Hands a finished job to the loop, or drops it when no loop takes them.
    pub(crate) fn push(&self, done: Done) {
        self.push_all(std::iter::once(done));
    }

    /// Hands finished jobs to the loop, under one lock and with one wake, or drops them when
    /// no loop takes them.
    pub(crate) fn push_all(&self, done: impl IntoIterator<Item = Done>) {
        let mut queue = self.lock();
        let Some(jobs) = queue.as_mut() else {
            drop(queue);
            // Dropped outside the lock: dropping one frees its message's room in the dispatcher.
            drop(done);
            return;
        };
        jobs.extend(done);
        drop(queue);
        self.waker.wake();
    }

    /// Moves every finished job into `into`, which the caller has emptied, or registers to be
    /// woken when one comes: the two queues are swapped, so the shared one goes on with
    /// `into`'s capacity, made small first if a burst grew it. Each take counts against the
    /// task's cooperative budget, as a channel's receive does, so a loop kept busy by its
    /// workers still yields to the other tasks of its thread.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, into: &mut VecDeque<Done>) -> Poll<()> {
        debug_assert!(into.is_empty());
        if into.capacity() > KEEP {
            into.shrink_to(TAKE);
        }
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        // Registered before looking, so a job pushed after the look wakes this task.
        self.waker.register(cx.waker());
        let mut queue = self.lock();
        let Some(jobs) = queue.as_mut().filter(|jobs| !jobs.is_empty()) else {
            return Poll::Pending;
        };
        std::mem::swap(jobs, into);
        drop(queue);
        coop.made_progress();
        Poll::Ready(())
    }

    /// Stops taking finished jobs (the loop ended): those not taken are dropped.
    pub(crate) fn close(&self) {
        let left = self.lock().take();
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use futures::task::noop_waker_ref;

    use super::{Completions, TAKE};
    use crate::dispatch::budget::{Budget, Reservation};
    use crate::dispatch::route::Done;
    use crate::outcome::Outcome;

    fn done(token: usize, budget: &Arc<Budget>) -> Done {
        assert!(budget.try_take_slot());
        Done {
            token,
            outcome: Outcome::Cancelled,
            room: Reservation::new(0, Arc::clone(budget)),
        }
    }

    #[tokio::test]
    async fn jobs_come_back_in_order_and_a_closed_queue_frees_their_room() {
        let budget = Arc::new(Budget::new(8, 1 << 20));
        let completions = Completions::default();
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut taken = VecDeque::new();

        // Before a loop opens it, a finished job only frees its room.
        completions.push(done(0, &budget));
        assert_eq!(budget.slots_taken(), 0);

        assert!(completions.open());
        assert!(!completions.open(), "one loop per route");
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Pending);
        for token in 1..=3 {
            completions.push(done(token, &budget));
        }
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Ready(()));
        let tokens: Vec<usize> = taken.iter().map(|d| d.token).collect();
        assert_eq!(tokens, [1, 2, 3]);
        taken.clear();
        assert_eq!(budget.slots_taken(), 0, "rooms go with the taken jobs");
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Pending);

        completions.push(done(4, &budget));
        assert_eq!(budget.slots_taken(), 1);
        completions.close();
        assert_eq!(budget.slots_taken(), 0, "closing drops what was not taken");
        completions.push(done(5, &budget));
        assert_eq!(budget.slots_taken(), 0);
    }

    #[tokio::test]
    async fn a_burst_is_taken_whole_and_its_queue_made_small_again() {
        let budget = Arc::new(Budget::new(16 * TAKE, 1 << 20));
        let completions = Completions::default();
        assert!(completions.open());
        let mut cx = Context::from_waker(noop_waker_ref());
        let burst = 8 * TAKE;
        for token in 0..burst {
            completions.push(done(token, &budget));
        }
        let mut taken = VecDeque::new();
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Ready(()));
        assert_eq!(taken.len(), burst);
        assert!(taken.capacity() >= burst);
        taken.clear();
        completions.push(done(burst, &budget));
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Ready(()));
        assert_eq!(taken.len(), 1);
        taken.clear();
        // The burst's queue went back to the shared side small.
        completions.push(done(burst + 1, &budget));
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Ready(()));
        assert!(taken.capacity() < burst, "capacity {}", taken.capacity());
    }

    /// Counts its wakes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_batch_comes_back_in_order_with_one_wake_and_a_closed_queue_frees_its_room() {
        let budget = Arc::new(Budget::new(8, 1 << 20));
        let completions = Completions::default();
        assert!(completions.open());
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut taken = VecDeque::new();
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Pending);

        completions.push_all((1..=3).map(|token| done(token, &budget)));
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(completions.poll_take(&mut cx, &mut taken), Poll::Ready(()));
        let tokens: Vec<usize> = taken.iter().map(|d| d.token).collect();
        assert_eq!(tokens, [1, 2, 3]);
        taken.clear();

        completions.close();
        completions.push_all((4..=5).map(|token| done(token, &budget)));
        assert_eq!(budget.slots_taken(), 0, "a closed queue drops the batch");
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_loop() {
        let completions = Arc::new(Completions::default());
        assert!(completions.open());
        let budget = Arc::new(Budget::new(8, 1 << 20));
        let taker = {
            let completions = Arc::clone(&completions);
            tokio::spawn(async move {
                let mut taken = VecDeque::new();
                std::future::poll_fn(|cx| completions.poll_take(cx, &mut taken)).await;
                taken.len()
            })
        };
        tokio::task::yield_now().await;
        completions.push(done(7, &budget));
        assert_eq!(taker.await.expect("taker"), 1);
    }
}
