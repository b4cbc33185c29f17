//! The broker: its topics, each topic's log of messages and the consumer groups reading it
//! (their cursors, what they hold unsettled and what they are to be given again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use eventbus_core::Message;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::MemoryConfig;
use crate::affinity::{Affinity, Takeable, slot_of};
use crate::unsettled::Unsettled;

/// Topic and group maps are looked up on every publish and ack: foldhash (seeded per process,
/// as the dispatcher's key map) costs a fraction of SipHash there.
type Fast = foldhash::fast::RandomState;

#[derive(Debug, Default)]
pub(crate) struct Broker {
    pub(crate) config: MemoryConfig,
    pub(crate) topics: Mutex<HashMap<String, Arc<Topic>, Fast>>,
}

#[derive(Debug)]
pub(crate) struct Topic {
    /// Padded: every publish, delivery and ack clones or drops the topic's `Arc`, and its
    /// count would otherwise share a cache line with the lock they all take.
    pub(crate) state: CachePadded<Mutex<TopicState>>,
    /// Publishers waiting for room.
    pub(crate) space: Notify,
}

#[derive(Debug, Default)]
pub(crate) struct TopicState {
    /// Slots of offsets `base..base + log.len()`: a message some group still needs, or `None`
    /// once every group has acked it. Emptied slots at the front are dropped.
    pub(crate) log: VecDeque<Option<Arc<Message>>>,
    pub(crate) base: u64,
    /// The slots of `log` that hold a message: what the capacity bounds.
    pub(crate) held: usize,
    /// Indexed by the numbers in `group_ids`: groups live as long as the broker, so members
    /// and acks hold an index and no lookup by name is made per message.
    pub(crate) groups: Vec<Group>,
    pub(crate) group_ids: HashMap<String, usize, Fast>,
    /// Publishers waiting for room; only then does trimming notify `Topic::space`.
    pub(crate) blocked_publishers: usize,
}

#[derive(Debug)]
pub(crate) struct Group {
    /// Next offset of the log not yet queued in `keys`.
    pub(crate) cursor: u64,
    /// Offsets from before `cursor` not delivered yet, queued by key, and which member may
    /// take which key.
    pub(crate) keys: Affinity,
    /// Delivered and not settled.
    pub(crate) pending: Unsettled,
    /// To deliver again, not before the instant given; served before newer messages.
    pub(crate) redeliver: BTreeMap<u64, Redelivery>,
    /// Wakes members waiting for messages.
    pub(crate) ready: Arc<Notify>,
    /// Members registered with `ready`; publishing notifies only when there are any, so the
    /// fast path takes no lock but the topic's.
    pub(crate) waiting: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Redelivery {
    pub(crate) at: Instant,
    pub(crate) slot: u8,
}

impl Group {
    pub(crate) fn new(cursor: u64) -> Self {
        Group {
            cursor,
            keys: Affinity::default(),
            pending: Unsettled::default(),
            redeliver: BTreeMap::new(),
            ready: Arc::new(Notify::new()),
            waiting: 0,
        }
    }

    /// Whether this group has yet to settle `offset` (of `slot`): not delivered yet,
    /// delivered and not settled, or waiting to be delivered again.
    pub(crate) fn needs(&self, offset: u64, slot: u8) -> bool {
        offset >= self.cursor
            || self.pending.contains(offset)
            || self.redeliver.contains_key(&offset)
            || self.keys.is_queued(offset, slot)
    }

    /// The next message never delivered that a member taking `mine` may take, and its slot.
    pub(crate) fn next_new(
        &mut self,
        log: &VecDeque<Option<Arc<Message>>>,
        base: u64,
        mine: Takeable,
        next_slot: &mut u8,
    ) -> Option<(u64, u8)> {
        if mine.is_every_key() && self.keys.is_empty() {
            // The only member that may take anything (the usual single member): the log is
            // its queue, in order, with nothing to sort.
            let end = base + log.len() as u64;
            while self.cursor < end {
                let offset = self.cursor;
                self.cursor += 1;
                // An empty entry: acked by every group before this one joined.
                if let Some(message) = &log[(offset - base) as usize] {
                    return Some((offset, slot_of(message)));
                }
            }
            return None;
        }
        self.queue_new(log, base);
        self.keys.pop(mine, next_slot)
    }

    /// Queues by key what was published since the last look. Hashing keys here, not when
    /// publishing, keeps the publish path as it was, and is done once per message and group
    /// either way.
    fn queue_new(&mut self, log: &VecDeque<Option<Arc<Message>>>, base: u64) {
        let end = base + log.len() as u64;
        for offset in self.cursor..end {
            if let Some(message) = &log[(offset - base) as usize] {
                self.keys.queue(offset, slot_of(message));
            }
        }
        self.cursor = end;
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under these locks; a poisoned one still holds consistent state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TopicState {
    /// Wakes the members waiting for messages.
    pub(crate) fn wake_members(&self) {
        for g in self.groups.iter().filter(|g| g.waiting > 0) {
            g.ready.notify_waiters();
        }
    }
}
