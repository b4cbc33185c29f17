//! Settlement: [`MemoryAck`] settles a message for its group, releasing it for redelivery
//! or, once every group is done with it, freeing its slot in the log.

use std::sync::Arc;
use std::time::Duration;

use eventbus_core::Outcome;
use eventbus_core::transport::{Acknowledge, Settle};
use tokio::time::Instant;

use crate::broker::{Redelivery, Topic, TopicState, lock};

/// Settles a message of the memory broker. Dropped unsettled, it releases the message for
/// redelivery.
#[derive(Debug)]
pub struct MemoryAck {
    pub(crate) topic: Arc<Topic>,
    pub(crate) group: usize,
    pub(crate) offset: u64,
    /// Its key's slot (`affinity`).
    pub(crate) slot: u8,
    pub(crate) redelivery_delay: Duration,
    pub(crate) settled: bool,
}

impl MemoryAck {
    /// Settles it, redelivered from `redeliver_at` if given.
    fn finish(&mut self, redeliver_at: Option<Instant>) {
        let topic = Arc::clone(&self.topic);
        let room_freed = self.finish_in(&mut lock(&topic.state), redeliver_at);
        if room_freed {
            topic.space.notify_waiters();
        }
    }

    /// [`finish`](Self::finish) under the topic's lock, held by the caller. Returns whether it
    /// freed room that publishers are waiting for: the caller wakes them once it has settled
    /// what it settles under this lock.
    fn finish_in(&mut self, st: &mut TopicState, redeliver_at: Option<Instant>) -> bool {
        self.settled = true;
        let TopicState {
            log,
            base,
            held,
            groups,
            blocked_publishers,
            ..
        } = st;
        let g = &mut groups[self.group];
        if !g.pending.remove(self.offset) {
            return false;
        }
        // Members wait for redeliveries, and for slots handed over to them to be free (which
        // this may have made them).
        let handed_over = g.keys.settled(self.slot);
        if g.waiting > 0 && (handed_over || redeliver_at.is_some()) {
            g.ready.notify_waiters();
        }
        match redeliver_at {
            Some(at) => {
                let redelivery = Redelivery {
                    at,
                    slot: self.slot,
                };
                g.redeliver.insert(self.offset, redelivery);
                false
            }
            None => {
                if groups.iter().any(|g| g.needs(self.offset, self.slot)) {
                    return false;
                }
                let entry = &mut log[(self.offset - *base) as usize];
                if entry.take().is_none() {
                    return false;
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
                *blocked_publishers > 0
            }
        }
    }

    fn redeliver_at(&self, outcome: &Outcome) -> Option<Instant> {
        match outcome {
            Outcome::Handled { .. } => None,
            Outcome::Failed { .. } => Some(Instant::now() + self.redelivery_delay),
            Outcome::Cancelled => Some(Instant::now()),
        }
    }
}

impl Acknowledge for MemoryAck {
    fn settle(mut self, outcome: &Outcome) -> Settle {
        let redeliver_at = self.redeliver_at(outcome);
        self.finish(redeliver_at);
        Settle::Done(Ok(()))
    }

    /// One lock of the topic per run of acks of one topic, shared with its publishers, and
    /// publishers waiting for room woken once per run rather than once per message freed: a
    /// full topic's publisher then appends a run's worth on waking, instead of one message.
    fn settle_batch<I>(batch: I, mut settled: impl FnMut(Settle))
    where
        I: IntoIterator<Item = (Self, Outcome)>,
    {
        let mut batch = batch.into_iter().peekable();
        while let Some((first, _)) = batch.peek() {
            let topic = Arc::clone(&first.topic);
            let (mut n, mut room_freed) = (0, false);
            {
                let mut st = lock(&topic.state);
                while let Some((mut ack, outcome)) =
                    batch.next_if(|(ack, _)| Arc::ptr_eq(&ack.topic, &topic))
                {
                    let redeliver_at = ack.redeliver_at(&outcome);
                    room_freed |= ack.finish_in(&mut st, redeliver_at);
                    n += 1;
                }
            }
            if room_freed {
                topic.space.notify_waiters();
            }
            // Reported once the lock is released: what the caller does with them (freeing
            // the messages' room in the bus) needs no lock of ours.
            for _ in 0..n {
                settled(Settle::Done(Ok(())));
            }
        }
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if !self.settled {
            self.finish(Some(Instant::now()));
        }
    }
}
