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
        let topic = Arc::clone(&self.topic);
        self.finish_locked(&mut lock(&topic.state), redeliver_at);
    }

    /// Settles the message in `st`, its topic's state, locked by the caller.
    fn finish_locked(&mut self, st: &mut TopicState, redeliver_at: Option<Instant>) {
        self.settled = true;
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
        let redeliver_at = self.redeliver_at(outcome);
        self.finish(redeliver_at);
        Settle::Done(Ok(()))
    }

    /// Settles a run under one lock of its topic (one per topic, when a run mixes them).
    fn settle_batch<'a>(
        batch: impl IntoIterator<Item = (Self, &'a Outcome)>,
        mut settled: impl FnMut(Settle),
    ) {
        let mut batch = batch.into_iter().peekable();
        while let Some((first, _)) = batch.peek() {
            let topic = Arc::clone(&first.topic);
            let mut st = lock(&topic.state);
            while let Some((mut ack, outcome)) =
                batch.next_if(|(ack, _)| Arc::ptr_eq(&ack.topic, &topic))
            {
                let redeliver_at = ack.redeliver_at(outcome);
                ack.finish_locked(&mut st, redeliver_at);
                settled(Settle::Done(Ok(())));
            }
        }
    }
}

impl MemoryAck {
    /// When the message comes back: never once handled; after the redelivery delay once
    /// failed; at once when left for redelivery (cancelled).
    fn redeliver_at(&self, outcome: &Outcome) -> Option<Instant> {
        match outcome {
            Outcome::Handled { .. } => None,
            Outcome::Failed { .. } => Some(Instant::now() + self.redelivery_delay),
            Outcome::Cancelled => Some(Instant::now()),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use eventbus_core::transport::Publisher;
    use eventbus_core::{Message, Outcome};
    use futures::StreamExt;

    use super::*;
    use crate::MemoryTransport;

    /// A batch that mixes topics settles each message in its own topic: handled ones are
    /// gone, a cancelled one is pending again.
    #[tokio::test]
    async fn a_batch_across_topics_settles_each_in_its_topic() {
        let transport = MemoryTransport::new();
        for topic in ["a", "b"] {
            for n in 0..2 {
                transport
                    .publish(Message::new(topic, format!("{n}")))
                    .await
                    .expect("published");
            }
        }
        let mut a = transport.join("a", "g", Duration::ZERO, 8);
        let mut b = transport.join("b", "g", Duration::ZERO, 8);
        let take = async |m: &mut crate::member::Member| {
            m.next().await.expect("a message").expect("no error")
        };
        let (a1, a2) = (take(&mut a).await, take(&mut a).await);
        let (b1, b2) = (take(&mut b).await, take(&mut b).await);

        let handled = Outcome::Handled { attempts: 1 };
        let mut settled = 0;
        MemoryAck::settle_batch(
            [
                (a1.ack, &handled),
                (b1.ack, &handled),
                (a2.ack, &handled),
                (b2.ack, &Outcome::Cancelled),
            ],
            |s| {
                assert!(matches!(s, Settle::Done(Ok(()))));
                settled += 1;
            },
        );
        assert_eq!(settled, 4);
        assert_eq!(transport.pending("a", "g"), Some(0));
        assert_eq!(transport.pending("b", "g"), Some(1), "the cancelled one");
    }
}
