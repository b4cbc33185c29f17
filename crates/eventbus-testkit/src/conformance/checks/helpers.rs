//! Small helpers several theme modules share (the rest are in `support`): a lock that
//! survives a poisoned mutex, a set of ids, options with a retry policy, publishing a batch.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use eventbus_core::{EventBus, Message, RetryPolicy};

use crate::conformance::Harness;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn set(ids: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    ids.into_iter().collect()
}

/// Options with the given retry policy.
pub(super) fn with_retry(retry: RetryPolicy) -> eventbus_core::BusOptions {
    let mut o = Harness::default_options();
    o.retry = retry;
    o
}

/// Publishes `messages` as one batch; panics on error.
pub(super) async fn publish_batch(h: &Harness, bus: &EventBus, messages: Vec<Message>) {
    if let Err(e) = h.within("publish_batch", bus.publish_batch(messages)).await {
        panic!("publish_batch: expected Ok, got {e:?}");
    }
}
