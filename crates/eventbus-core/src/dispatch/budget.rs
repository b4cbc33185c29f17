//! The room a message holds in the dispatcher: a buffer slot and its bytes, under a soft byte
//! cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit};

/// Room a job holds from admission to completion: one buffer slot and its bytes.
/// Released on drop, so every path out (done, cancelled, dropped at runtime shutdown) frees it.
pub(crate) struct Reservation {
    pub(super) _slot: OwnedSemaphorePermit,
    pub(super) bytes: usize,
    pub(super) budget: Arc<ByteBudget>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Soft byte cap: admission needs `used < max`. Callers check and add separately, so each
/// concurrent caller may overshoot by one message: at most `max` plus one message per
/// subscription.
pub(crate) struct ByteBudget {
    pub(super) used: AtomicUsize,
    pub(super) max: usize,
    pub(super) freed: Arc<Notify>,
}

impl ByteBudget {
    pub(super) fn has_room(&self) -> bool {
        // Acquire pairs with the Release in `release`, so a waiter that sees room also sees the
        // freed state; a stale read only delays admission until the next notification.
        self.used.load(Ordering::Acquire) < self.max
    }
    pub(super) fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }
    fn release(&self, n: usize) {
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        if before >= self.max && before - n < self.max {
            self.freed.notify_waiters();
        }
    }
}
