//! The held-message registry: messages a subscription has taken and not settled, their
//! in-progress acks, and the recognition of copies of messages it holds or acked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Messages a subscription has taken and not settled (queued behind their key, running, or
/// backing off before a retry). A task on the transport's I/O runtime sends each of them an
/// in-progress ack every third of the shortest redelivery wait, so the server never redelivers a
/// message that is still being worked on. The task ends when the subscription's stream and acks
/// are gone.
///
/// Messages the client has received but the bus has not taken yet (at most one pull batch,
/// while the bus is full) cannot get those acks: past the ack wait the server sends them again.
/// So `Held` also remembers the stream sequences it holds and the ones it acked last, and the
/// puller drops a redelivered copy of either: handling it would repeat a message, and out of
/// its key's order.
pub(crate) struct Held {
    state: Mutex<HeldState>,
    /// Settles the held messages (see `NatsAck`).
    pub(crate) client: async_nats::Client,
    next: AtomicU64,
    /// The transport's count of copies dropped.
    dropped: Arc<AtomicU64>,
}

/// Hashes the registry's maps: foldhash, as they are looked up for every delivery and ack
/// (SipHash costs about twice as much); seeded per process.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct HeldState {
    replies: HashMap<u64, async_nats::Subject, Hasher>,
    /// Messages held now (with their copy count).
    seqs: HashMap<CopyKey, u32, Hasher>,
    /// Messages acked last: slot `seq % ACKED_MEMORY` holds the last acked message whose stream
    /// sequence falls there (sequences start at 1, so `(0, 0)` is an empty slot). Direct-mapped
    /// rather than a set with an eviction queue: one write per ack, no hashing, no growth.
    /// Made at the first ack, zeroed by the allocator (pages are touched as sequences reach
    /// them).
    acked: Vec<CopyKey>,
    /// Reply subjects of skipped copies of acked messages, acked on the next tick.
    ack_later: Vec<async_nats::Subject>,
}

/// Which stream message a delivery is: its stream sequence, and a hash of its message id and
/// of when the stream stored it. After an unclean server restart a stream may reuse the
/// sequences of messages it lost, so the sequence alone could name another message; the store
/// time tells such messages apart also when they carry no id (published by another client).
pub(crate) type CopyKey = (u64, u64);

pub(crate) fn identity_hash(id: Option<&str>, stored: Option<SystemTime>) -> u64 {
    use std::hash::BuildHasher;
    // Fixed seed: only compared within this process.
    foldhash::fast::FixedState::with_seed(0).hash_one((id, stored))
}

/// How many acked sequences a subscription remembers (the last this many stream sequences'
/// worth). A stale copy comes from messages delivered about the same time as the acked one (at
/// most a pull batch plus the bus buffer apart), or from what a crashed server had not stored
/// of its consumer's state (in the check `reconnect`, a few hundred messages); 32 Ki slots of
/// 16 bytes (512 KiB per subscription, touched only as sequences reach them) cover both.
const ACKED_MEMORY: usize = 32 * 1024;

fn acked_slot((seq, _): CopyKey) -> usize {
    (seq % ACKED_MEMORY as u64) as usize
}

/// What a copy of a message is to the subscription that receives it.
pub(crate) enum Redelivery {
    /// Its first copy is still in the bus.
    StillHeld,
    /// Acked already.
    Acked,
}

impl Held {
    pub(crate) fn start(
        io: &tokio::runtime::Handle,
        client: async_nats::Client,
        // The shortest wait before the server redelivers an unacked message.
        wait: Duration,
        dropped: Arc<AtomicU64>,
    ) -> Arc<Held> {
        let held = Arc::new(Held {
            state: Mutex::default(),
            client: client.clone(),
            next: AtomicU64::new(0),
            dropped,
        });
        let weak = Arc::downgrade(&held);
        let period = (wait / 3).max(Duration::from_millis(100));
        io.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(held) = weak.upgrade() else { return };
                let (replies, acks) = {
                    let mut st = held.lock();
                    let replies: Vec<_> = st.replies.values().cloned().collect();
                    (replies, std::mem::take(&mut st.ack_later))
                };
                drop(held);
                for reply in replies {
                    // Best effort: a lost progress ack only risks an early redelivery.
                    let _ = client
                        .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                        .await;
                }
                for reply in acks {
                    // Best effort too: a lost one brings the copy back, to be skipped again.
                    let _ = client
                        .publish(reply, bytes::Bytes::from_static(b"+ACK"))
                        .await;
                }
            }
        });
        held
    }

    /// Acks a skipped copy of an acked message with the next progress acks.
    pub(crate) fn ack_later(&self, reply: async_nats::Subject) {
        self.lock().ack_later.push(reply);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeldState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds a message (`reply` gets its progress acks), unless `seq` names one held or acked
    /// already: then the delivery is a copy, counted and not held.
    pub(crate) fn hold(
        &self,
        reply: Option<async_nats::Subject>,
        seq: Option<CopyKey>,
    ) -> std::result::Result<u64, Redelivery> {
        let mut st = self.lock();
        if let Some(seq) = seq {
            let copy = if st.seqs.contains_key(&seq) {
                Some(Redelivery::StillHeld)
            } else if st.acked.get(acked_slot(seq)) == Some(&seq) {
                Some(Redelivery::Acked)
            } else {
                None
            };
            if let Some(copy) = copy {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(copy);
            }
            *st.seqs.entry(seq).or_default() += 1;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = reply {
            st.replies.insert(id, reply);
        }
        Ok(id)
    }

    /// Whether the message at stream sequence `seq` is among those this subscription acked
    /// last (see [`ACKED_MEMORY`]).
    pub(crate) fn acked(&self, seq: u64) -> bool {
        let st = self.lock();
        st.acked
            .get((seq % ACKED_MEMORY as u64) as usize)
            .is_some_and(|&(acked, _)| acked == seq)
    }

    /// Forgets a held message, `acked` when it was acked, and gives back its reply subject
    /// (where it is settled).
    pub(crate) fn release(
        &self,
        id: u64,
        seq: Option<CopyKey>,
        acked: bool,
    ) -> Option<async_nats::Subject> {
        let mut st = self.lock();
        let reply = st.replies.remove(&id);
        let Some(seq) = seq else { return reply };
        if let std::collections::hash_map::Entry::Occupied(mut e) = st.seqs.entry(seq) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        if acked {
            if st.acked.is_empty() {
                st.acked = vec![(0, 0); ACKED_MEMORY];
            }
            st.acked[acked_slot(seq)] = seq;
        }
        reply
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
}
