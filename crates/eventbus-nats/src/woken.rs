//! Which partition pulls of a keyed subscription woke it since they were last asked.
//!
//! Each pull is polled with a waker of its own, which marks the pull and wakes the
//! subscription's task, so a poll asks only the pulls that may have something. A keyed
//! subscription owns up to all the topic's partitions (16 by default), and async-nats's pull
//! stream looks at two channels and a heartbeat timer even when it has nothing, about 350
//! instructions: asked every time, the idle pulls cost more than the message taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};

/// The task the pulls wake: registered by each poll of the subscription's source, before it
/// asks any pull.
pub(crate) type Task = Arc<AtomicWaker>;

/// One pull's waker and whether it woke.
pub(crate) struct PullWaker {
    mark: Arc<Mark>,
    waker: Waker,
}

struct Mark {
    /// Set by a wake, and while the pull has not returned pending (a new pull starts set).
    woken: AtomicBool,
    task: Task,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl PullWaker {
    pub(crate) fn new(task: &Task) -> Self {
        let mark = Arc::new(Mark {
            woken: AtomicBool::new(true),
            task: Arc::clone(task),
        });
        let waker = Waker::from(Arc::clone(&mark));
        PullWaker { mark, waker }
    }

    /// Polls `pull` if it may have something (`None` if not): it woke since it last returned
    /// pending, or it has not returned pending yet. The caller registered its task first, so
    /// a wake from the moment the mark is cleared on reaches the task.
    pub(crate) fn poll_next<S: Stream + Unpin>(
        &self,
        pull: &mut S,
    ) -> Option<Poll<Option<S::Item>>> {
        if !self.mark.woken.swap(false, Ordering::AcqRel) {
            return None;
        }
        let polled = pull.poll_next_unpin(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            self.mark.woken.store(true, Ordering::Release);
        }
        Some(polled)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Poll, Wake, Waker};

    use futures::task::AtomicWaker;

    use super::{PullWaker, Task};

    /// Counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A pull is asked at first, not again after it returned pending until it wakes, and the
    /// wake reaches the task.
    #[test]
    fn a_pull_is_asked_again_only_once_it_woke() {
        let task: Task = Arc::new(AtomicWaker::new());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        task.register(&Waker::from(Arc::clone(&count)));
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<u32>();
        let pull = PullWaker::new(&task);
        assert!(
            matches!(pull.poll_next(&mut rx), Some(Poll::Pending)),
            "asked at first"
        );
        assert!(
            pull.poll_next(&mut rx).is_none(),
            "not asked again before a wake"
        );
        tx.unbounded_send(7).unwrap();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the pull's wake reached the task"
        );
        assert!(matches!(
            pull.poll_next(&mut rx),
            Some(Poll::Ready(Some(7)))
        ));
        // Ready: asked again at once (it may have more).
        assert!(matches!(pull.poll_next(&mut rx), Some(Poll::Pending)));
    }
}
