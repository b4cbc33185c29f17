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
            }
            None => {
                if groups.iter().any(|g| g.needs(self.offset, self.slot)) {
                    return;
                }
                let entry = &mut log[(self.offset - *base) as usize];
                if entry.take().is_none() {
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
