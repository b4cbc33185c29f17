//! Subscribing: the [`Subscriber`] impl, which joins a group, and [`Member`], one
//! subscription's view of its group: the stream of messages it takes from the topic's log.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use eventbus_core::transport::{Incoming, Started, SubscribeRequest, Subscriber};
use eventbus_core::{Error, Result};
use futures::Stream;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use crate::MemoryTransport;
use crate::ack::MemoryAck;
use crate::broker::{Group, Topic, TopicState, lock};

#[async_trait::async_trait]
impl Subscriber for MemoryTransport {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let member = self.join(
            request.topic(),
            request.group(),
            request.redelivery_delay(),
            request.max_buffered(),
        );
        Ok(request.start(member))
    }
}

impl MemoryTransport {
    /// A new member of `group` on `topic` (created if need be), with its share of the keys.
    fn join(
        &self,
        topic: &str,
        group: &str,
        redelivery_delay: Duration,
        max_buffered: usize,
    ) -> Member {
        let topic = self.topic(topic);
        let (group, id, ready) = {
            let mut st = lock(&topic.state);
            let st = &mut *st;
            let group = match st.group_ids.get(group) {
                Some(&group) => group,
                None => {
                    st.groups.push(Group::new(st.base));
                    st.group_ids.insert(group.to_owned(), st.groups.len() - 1);
                    st.groups.len() - 1
                }
            };
            let g = &mut st.groups[group];
            (group, g.keys.join(), Arc::clone(&g.ready))
        };
        Member {
            wake: Box::pin(Arc::clone(&ready).notified_owned()),
            topic,
            group,
            id,
            next_slot: 0,
            ready,
            redelivery_delay,
            registered: false,
            due: None,
            taken: VecDeque::new(),
            batch: max_buffered.clamp(1, TAKE_BATCH),
        }
    }
}

/// One subscription's view of its group.
struct Member {
    topic: Arc<Topic>,
    group: usize,
    /// Its id in its group's `keys`.
    id: u64,
    /// Where its next look for a message of its slots starts, going round them.
    next_slot: u8,
    ready: Arc<Notify>,
    /// Registered with `ready` while `registered`; one box per member, refilled in place.
    wake: Pin<Box<OwnedNotified>>,
    /// The timer of the next redelivery falling due, made the first time one is waited for.
    due: Option<Pin<Box<Sleep>>>,
    redelivery_delay: Duration,
    /// Counted in its group's `waiting`.
    registered: bool,
    /// Taken under one lock, not yet handed to the bus.
    taken: VecDeque<Incoming<MemoryAck>>,
    /// Most messages taken at once: never more than the bus admits, so a slow member does not
    /// hoard what the other members of its group could handle.
    batch: usize,
}

/// Most messages a member takes from its group under one lock.
const TAKE_BATCH: usize = 32;

impl Drop for Member {
    /// Leaves the group: its slots go to the other members, which wake to take them (once
    /// what it took is settled or, dropped with it, released for redelivery).
    fn drop(&mut self) {
        let mut st = lock(&self.topic.state);
        let g = &mut st.groups[self.group];
        if self.registered {
            g.waiting -= 1;
        }
        g.keys.leave(self.id);
        if g.waiting > 0 {
            g.ready.notify_waiters();
        }
    }
}

enum Next {
    Message(Incoming<MemoryAck>),
    /// Nothing now; a redelivery falls due at this instant.
    WaitUntil(Instant),
    Wait,
}

impl Member {
    /// Takes the next message, or registers `wake` for when one may be there. Takes up to
    /// `batch` at once under one lock; the rest wait in `taken` (pending at the broker,
    /// released for redelivery if the subscription ends first).
    fn try_next(&mut self) -> Next {
        if let Some(incoming) = self.taken.pop_front() {
            return Next::Message(incoming);
        }
        let mut st = lock(&self.topic.state);
        let TopicState {
            log, base, groups, ..
        } = &mut *st;
        let g = &mut groups[self.group];
        if std::mem::take(&mut self.registered) {
            g.waiting -= 1;
        }
        let mine = g.keys.takeable(self.id);
        let now = (!g.redeliver.is_empty()).then(Instant::now);
        while self.taken.len() < self.batch {
            // Redeliveries first, lowest offset first, so a key's older message comes back
            // before its newer ones.
            let due = now.and_then(|now| {
                g.redeliver
                    .iter()
                    .find(|&(_, r)| r.at <= now && mine.contains(r.slot))
                    .map(|(&o, r)| (o, r.slot))
            });
            let (offset, slot) = match due {
                Some((o, slot)) => {
                    g.redeliver.remove(&o);
                    (o, slot)
                }
                None => match g.next_new(log, *base, mine, &mut self.next_slot) {
                    Some(next) => next,
                    None => break,
                },
            };
            let message = log[(offset - *base) as usize]
                .as_ref()
                .expect("a message its group has not settled is held");
            g.pending.insert(offset);
            g.keys.took(slot, self.id);
            self.taken.push_back(Incoming {
                message: Arc::clone(message),
                ack: MemoryAck {
                    topic: Arc::clone(&self.topic),
                    group: self.group,
                    offset,
                    slot,
                    redelivery_delay: self.redelivery_delay,
                    settled: false,
                },
            });
        }
        if let Some(incoming) = self.taken.pop_front() {
            return Next::Message(incoming);
        }
        // Registered under the topic lock, so a publish, a redelivery or a hand-over after we
        // looked wakes us.
        self.wake.set(Arc::clone(&self.ready).notified_owned());
        self.wake.as_mut().enable();
        g.waiting += 1;
        self.registered = true;
        // Only its own slots' redeliveries: another member's are no reason to wake.
        let next_due = g
            .redeliver
            .values()
            .filter(|r| mine.contains(r.slot))
            .map(|r| r.at)
            .min();
        match next_due {
            Some(at) => Next::WaitUntil(at),
            None => Next::Wait,
        }
    }
}

impl Stream for Member {
    type Item = Result<Incoming<MemoryAck>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.try_next() {
                Next::Message(incoming) => return Poll::Ready(Some(Ok(incoming))),
                Next::Wait => {}
                Next::WaitUntil(at) => {
                    let due = this
                        .due
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if due.deadline() != at {
                        due.as_mut().reset(at);
                    }
                    if due.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                }
            }
            if this.wake.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use eventbus_core::transport::{Acknowledge, Publisher, Settle};
    use eventbus_core::{Message, Outcome};

    use super::{Member, Next};
    use crate::MemoryTransport;
    use crate::affinity::{SLOTS, slot_of};

    /// A key for each slot.
    fn key_per_slot() -> Vec<String> {
        let mut keys: BTreeMap<u8, String> = BTreeMap::new();
        for i in 0.. {
            let key = format!("key-{i}");
            let slot = slot_of(&Message::new("t", "").with_key(key.as_str()));
            keys.entry(slot).or_insert(key);
            if keys.len() == SLOTS {
                return keys.into_values().collect();
            }
        }
        unreachable!()
    }

    async fn publish_round(t: &MemoryTransport, keys: &[String], seq: u32) {
        for key in keys {
            let m = Message::new("t", seq.to_string()).with_key(key.as_str());
            t.publish(m).await.unwrap();
        }
    }

    /// Takes everything `member` may take now: (key, seq, the message's ack).
    fn take_all(member: &mut Member) -> Vec<(String, u32, crate::MemoryAck)> {
        let mut got = Vec::new();
        while let Next::Message(incoming) = member.try_next() {
            let key = incoming.message.key().unwrap().to_string();
            let seq = std::str::from_utf8(incoming.message.payload()).unwrap();
            got.push((key, seq.parse().unwrap(), incoming.ack));
        }
        got
    }

    fn seqs(got: &[(String, u32, crate::MemoryAck)]) -> Vec<(&str, u32)> {
        got.iter().map(|(k, s, _)| (k.as_str(), *s)).collect()
    }

    /// A member joining takes half the slots from one holding a message of every slot: it gets
    /// none of those keys' later messages until the earlier one is settled or released (then
    /// the released one first); a member leaving while holding messages blocks its slots'
    /// new owner the same way, until those messages are released.
    #[tokio::test]
    async fn a_moved_key_waits_for_its_messages_at_the_old_owner() {
        let t = MemoryTransport::new();
        let keys = key_per_slot();
        let mut first = t.join("t", "g", Duration::ZERO, usize::MAX);
        publish_round(&t, &keys, 0).await;
        let mut held = take_all(&mut first);
        assert_eq!(held.len(), SLOTS, "the only member takes every key");

        let mut second = t.join("t", "g", Duration::ZERO, usize::MAX);
        publish_round(&t, &keys, 1).await;
        assert!(
            take_all(&mut second).is_empty(),
            "every key is unsettled at the first member"
        );
        let kept = take_all(&mut first);
        assert_eq!(
            kept.len(),
            SLOTS / 2,
            "the first member keeps half the keys"
        );
        let moved: Vec<&String> = keys
            .iter()
            .filter(|k| !kept.iter().any(|(kk, _, _)| kk == *k))
            .collect();

        // What the second member takes, held unsettled to the end.
        let mut taken = Vec::new();

        // Settled: the next message of the key goes to its new owner.
        let at = held.iter().position(|(k, _, _)| k == moved[0]).unwrap();
        let (_, _, ack) = held.swap_remove(at);
        let settled = ack.settle(&Outcome::Handled { attempts: 1 });
        assert!(matches!(settled, Settle::Done(Ok(()))));
        let got = take_all(&mut second);
        assert_eq!(seqs(&got), vec![(moved[0].as_str(), 1)]);
        taken.extend(got);

        // Released unsettled: the new owner gets it again, then the next.
        let at = held.iter().position(|(k, _, _)| k == moved[1]).unwrap();
        drop(held.swap_remove(at));
        let got = take_all(&mut second);
        assert_eq!(
            seqs(&got),
            vec![(moved[1].as_str(), 0), (moved[1].as_str(), 1)]
        );
        taken.extend(got);

        // The first member leaves holding messages of every other key: the second owns every
        // slot now, and takes a key only once all its messages held there are released.
        drop(first);
        assert!(take_all(&mut second).is_empty());
        let (own, other): (Vec<_>, Vec<_>) = held
            .into_iter()
            .partition(|(k, _, _)| kept.iter().any(|(kk, _, _)| kk == k));
        for (key, _, ack) in other {
            drop(ack);
            let got = take_all(&mut second);
            assert_eq!(seqs(&got), vec![(key.as_str(), 0), (key.as_str(), 1)]);
            taken.extend(got);
        }
        let mut kept = kept;
        for (key, _, ack) in own {
            drop(ack);
            assert!(
                take_all(&mut second).is_empty(),
                "{key}: its next message is still at the first member"
            );
            let at = kept.iter().position(|(k, _, _)| *k == key).unwrap();
            drop(kept.swap_remove(at));
            let got = take_all(&mut second);
            assert_eq!(seqs(&got), vec![(key.as_str(), 0), (key.as_str(), 1)]);
            taken.extend(got);
        }
        assert_eq!(taken.len(), 2 * SLOTS - 1, "all but the one settled");
    }

    fn take_acks(member: &mut Member) -> Vec<crate::MemoryAck> {
        let mut acks = Vec::new();
        while let Next::Message(incoming) = member.try_next() {
            acks.push(incoming.ack);
        }
        acks
    }

    /// A batch spanning two topics settles each ack as its outcome says, reports one `Settle`
    /// per ack, and wakes a publisher waiting for room in a full topic.
    #[tokio::test]
    async fn a_batch_of_acks_settles_each_and_frees_room_for_a_waiting_publisher() {
        let t = MemoryTransport::with_config(crate::MemoryConfig::default().topic_capacity(3));
        let mut a = t.join("a", "g", Duration::ZERO, usize::MAX);
        let mut b = t.join("b", "g", Duration::ZERO, usize::MAX);
        for topic in ["a", "b"] {
            for i in 0..3 {
                let m = Message::new(topic, i.to_string()).with_key(format!("k{i}"));
                t.publish(m).await.unwrap();
            }
        }
        let (a_acks, b_acks) = (take_acks(&mut a), take_acks(&mut b));
        assert_eq!(
            (a_acks.len(), b_acks.len()),
            (3, 3),
            "every message delivered"
        );
        let mut waiting = std::pin::pin!(t.publish(Message::new("a", "3").with_key("k3")));
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "topic a is full"
        );

        let outcomes = [
            Outcome::Handled { attempts: 1 },
            Outcome::Cancelled,
            Outcome::Handled { attempts: 1 },
        ];
        let batch = a_acks.into_iter().zip(outcomes).chain(
            b_acks
                .into_iter()
                .map(|ack| (ack, Outcome::Handled { attempts: 1 })),
        );
        let mut settled = 0;
        crate::MemoryAck::settle_batch(batch, |settle| {
            assert!(matches!(settle, Settle::Done(Ok(()))));
            settled += 1;
        });
        assert_eq!(settled, 6, "one report per ack");

        assert_eq!(t.retained("b"), 0, "every message of b acked");
        assert_eq!(t.retained("a"), 1, "the cancelled message of a is kept");
        // Woken by the batch (not by a later event): its next poll appends.
        match futures::poll!(waiting.as_mut()) {
            std::task::Poll::Ready(published) => published.expect("room for the publisher"),
            std::task::Poll::Pending => panic!("the waiting publisher was not woken"),
        }
        // The cancelled message comes again, then the one published into the freed room.
        // (Their acks are held: one dropped unsettled would release its message again.)
        let mut again = Vec::new();
        while let Next::Message(incoming) = a.try_next() {
            again.push(incoming);
        }
        let payloads: Vec<&[u8]> = again.iter().map(|i| &i.message.payload()[..]).collect();
        assert_eq!(payloads, [b"1", b"3"]);
    }
}
