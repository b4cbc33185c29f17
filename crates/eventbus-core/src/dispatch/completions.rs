//! Finished jobs on their way back to the consuming loop that fed their route: workers add them
//! one by one, the loop takes all of them at once.
//!
//! A channel would do the same, at a cost paid per message: tokio's unbounded queue writes
//! each job into a slot of a linked block and frees the blocks it has read (each free of one
//! can make glibc consolidate its whole heap). Here a job is one push onto a vector under a
//! lock nobody holds for long, and the loop swaps its emptied vector for the full one, so in a
//! steady flow nothing is allocated at all.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use futures::task::AtomicWaker;

use super::route::Done;

/// The finished jobs of one route, for the one consuming loop that feeds it.
#[derive(Default)]
pub(crate) struct Completions {
    /// `None` while no loop takes them: before the loop starts and after it ended (a job
    /// that finishes then is dropped, which frees its room).
    queue: Mutex<Option<Vec<Done>>>,
    /// The loop, waiting for a finished job.
    waker: AtomicWaker,
}

impl Completions {
    fn lock(&self) -> MutexGuard<'_, Option<Vec<Done>>> {
        // Pushing and swapping cannot panic midway, so a poisoned lock still holds a sound queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts taking finished jobs. `false` if a loop already takes them: one loop per route.
    pub(crate) fn open(&self) -> bool {
        let mut queue = self.lock();
        if queue.is_some() {
            return false;
        }
        *queue = Some(Vec::new());
        true
    }

    /// Hands a finished job to the loop, or drops it when no loop takes them.
    pub(crate) fn push(&self, done: Done) {
        let mut queue = self.lock();
        let Some(jobs) = queue.as_mut() else {
            drop(queue);
            // Dropped outside the lock: dropping it frees the message's room in the dispatcher.
            drop(done);
            return;
        };
        jobs.push(done);
        drop(queue);
        self.waker.wake();
    }

    /// Moves every finished job into `into` (which the caller has emptied, and whose capacity
    /// the queue reuses), or registers to be woken when one comes. Each take counts against
    /// the task's cooperative budget, as a channel's receive does, so a loop kept busy by its
    /// workers still yields to the other tasks of its thread.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<Done>) -> Poll<()> {
        debug_assert!(into.is_empty());
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        // Registered before looking, so a job pushed after the look wakes this task.
        self.waker.register(cx.waker());
        let mut queue = self.lock();
        match queue.as_mut() {
            Some(jobs) if !jobs.is_empty() => {
                std::mem::swap(jobs, into);
                drop(queue);
                coop.made_progress();
                Poll::Ready(())
            }
            _ => Poll::Pending,
        }
    }

    /// Stops taking finished jobs (the loop ended): those not taken are dropped.
    pub(crate) fn close(&self) {
        let left = self.lock().take();
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use futures::task::noop_waker_ref;

    use super::Completions;
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
        let mut taken = Vec::new();

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
    async fn a_push_wakes_the_waiting_loop() {
        let completions = Arc::new(Completions::default());
        assert!(completions.open());
        let budget = Arc::new(Budget::new(8, 1 << 20));
        let taker = {
            let completions = Arc::clone(&completions);
            tokio::spawn(async move {
                let mut taken = Vec::new();
                std::future::poll_fn(|cx| completions.poll_take(cx, &mut taken)).await;
                taken.len()
            })
        };
        tokio::task::yield_now().await;
        completions.push(done(7, &budget));
        assert_eq!(taker.await.expect("taker"), 1);
    }
}
