//! The room messages hold in the dispatcher: buffer slots under a hard cap, and their bytes
//! under a soft one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Room a job holds from admission to completion: one buffer slot and its bytes.
/// Released on drop, so every path out (done, cancelled, dropped at runtime shutdown) frees it.
pub(crate) struct Reservation {
    pub(super) bytes: usize,
    /// Taken once the room is freed by [`release_all`](Self::release_all).
    pub(super) budget: Option<Arc<Budget>>,
}

impl Reservation {
    pub(super) fn new(bytes: usize, budget: Arc<Budget>) -> Self {
        Reservation {
            bytes,
            budget: Some(budget),
        }
    }

    /// Frees the room of every reservation of `rooms`, with one update of each counter per
    /// budget rather than one per message: the counters are shared with every producer.
    pub(crate) fn release_all<'a>(rooms: impl IntoIterator<Item = &'a mut Reservation>) {
        let mut pending: Option<(Arc<Budget>, usize, usize)> = None;
        for room in rooms {
            let Some(budget) = room.budget.take() else {
                continue;
            };
            match &mut pending {
                Some((same, s, b)) if Arc::ptr_eq(same, &budget) => {
                    *s += 1;
                    *b += room.bytes;
                }
                _ => {
                    if let Some((budget, s, b)) = pending.take() {
                        budget.release(s, b);
                    }
                    pending = Some((budget, 1, room.bytes));
                }
            }
        }
        if let Some((budget, s, b)) = pending {
            budget.release(s, b);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(1, self.bytes);
        }
    }
}

/// The dispatcher's admission bounds, as counters: taking and freeing room is an atomic
/// operation each, with no lock and no future, since it happens for every message.
///
/// - **Slots** (hard cap): a slot is taken by `poll_ready` (compare-and-swap below `max`), so
///   at most `max_slots` messages are reserved or admitted.
/// - **Bytes** (soft cap): admission needs `bytes < max_bytes`; callers check and add
///   separately, so each concurrent caller may overshoot by one message: at most `max_bytes`
///   plus one message per subscription.
///
/// Waiters register with a notifier and re-check before sleeping (the pattern
/// `tokio::sync::Notify` documents), so room freed in between is never missed. A slot freed
/// while all were taken wakes one slot waiter, and a woken waiter that leaves a slot free
/// wakes the next: waiters are woken one per slot, as by a semaphore, not all at once per
/// message. Bytes falling under their cap wake every bytes waiter (rare: a soft cap of
/// megabytes).
pub(crate) struct Budget {
    slots: AtomicUsize,
    max_slots: usize,
    bytes: AtomicUsize,
    max_bytes: usize,
    closed: AtomicBool,
    pub(super) slot_freed: Arc<Notify>,
    pub(super) bytes_freed: Arc<Notify>,
}

impl Budget {
    pub(super) fn new(max_slots: usize, max_bytes: usize) -> Self {
        Budget {
            slots: AtomicUsize::new(0),
            max_slots: max_slots.max(1),
            bytes: AtomicUsize::new(0),
            max_bytes: max_bytes.max(1),
            closed: AtomicBool::new(false),
            slot_freed: Arc::new(Notify::new()),
            bytes_freed: Arc::new(Notify::new()),
        }
    }

    /// Takes a slot if one is free.
    pub(super) fn try_take_slot(&self) -> bool {
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_slots).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether the bytes admitted are under the soft cap.
    pub(super) fn has_byte_room(&self) -> bool {
        // Acquire pairs with the release in `release`, so a waiter that sees room also sees
        // the freed state; a stale read only delays admission until the next notification.
        self.bytes.load(Ordering::Acquire) < self.max_bytes
    }

    /// Whether a slot is free now (a woken waiter that leaves one passes the wake on).
    pub(super) fn has_free_slot(&self) -> bool {
        self.slots.load(Ordering::Acquire) < self.max_slots
    }

    pub(super) fn take_bytes(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    /// Frees `slots` slots and `bytes` bytes, waking waiters if a bound stopped holding.
    pub(super) fn release(&self, slots: usize, bytes: usize) {
        let slots_before = self.slots.fetch_sub(slots, Ordering::AcqRel);
        if slots > 0 && slots_before >= self.max_slots {
            self.slot_freed.notify_one();
        }
        if bytes > 0 {
            let bytes_before = self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            if bytes_before >= self.max_bytes && bytes_before - bytes < self.max_bytes {
                self.bytes_freed.notify_waiters();
            }
        }
    }

    /// Slots taken now (reserved or admitted).
    pub(super) fn slots_taken(&self) -> usize {
        self.slots.load(Ordering::Relaxed)
    }

    /// Bytes admitted now.
    pub(super) fn bytes_taken(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Stops admission for good and wakes every waiter to see it.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.slot_freed.notify_waiters();
        self.bytes_freed.notify_waiters();
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
