use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tower::Service;

use super::budget::{Budget, Reservation};
use super::future::ResponseFuture;
use super::queue::{Job, Shared};
use super::route::Reply;
use super::{DispatcherStats, Route};
use crate::error::Error;
use crate::message::Message;

/// Bounds of a [`Dispatcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatcherConfig {
    /// Most handler calls running at once, over all subscriptions (default 256).
    pub max_in_flight: usize,
    /// Most messages admitted and not yet finished (default 4,096). At least `max_in_flight`.
    pub max_buffered: usize,
    /// Admission stops while admitted messages hold this many encoded bytes (default 64 MiB).
    pub max_buffered_bytes: usize,
    /// Most messages one subscription may have taken and not yet settled (default: no cap
    /// beyond `max_buffered`). A cap isolates subscriptions: a key stalled in one of them can
    /// then fill only its share of the buffer, and the others keep flowing.
    pub max_buffered_per_subscription: Option<usize>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            max_in_flight: 256,
            max_buffered: 4096,
            max_buffered_bytes: 64 * 1024 * 1024,
            max_buffered_per_subscription: None,
        }
    }
}

impl DispatcherConfig {
    /// Most handler calls running at once.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// Most messages admitted and not yet finished.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = n;
        self
    }
    /// Admission stops while admitted messages hold this many encoded bytes.
    pub fn max_buffered_bytes(mut self, n: usize) -> Self {
        self.max_buffered_bytes = n;
        self
    }
    /// Most messages one subscription may have taken and not yet settled.
    pub fn max_buffered_per_subscription(mut self, n: usize) -> Self {
        self.max_buffered_per_subscription = Some(n);
        self
    }
}

/// One message to dispatch to a route's handler.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The subscription it belongs to.
    pub route: Arc<Route>,
    /// The message.
    pub message: Arc<Message>,
}

/// The unified keyed dispatcher (see the [module docs](super)).
///
/// Clones share one dispatcher. Each clone is driven like any tower service: `poll_ready`
/// reserves room for one message (or returns `Pending` at a bound, or `Err(Closed)` once
/// closed), `call` admits the message and returns a future of its [`Outcome`](crate::Outcome).
/// Construct it inside a tokio runtime: its workers run there.
pub struct Dispatcher {
    shared: Arc<Shared>,
    _handles: Arc<Handles>,
    budget: Arc<Budget>,
    max_buffered: usize,
    per_subscription: usize,
    /// A slot taken by `poll_ready` for the next `call`.
    reserved: bool,
    /// Room being waited for, and which: made only at a bound, so the common path makes no
    /// future.
    wait: Option<(Need, Pin<Box<OwnedNotified>>)>,
}

/// What a caller of `poll_ready` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Slot,
    Bytes,
}

impl Clone for Dispatcher {
    fn clone(&self) -> Self {
        // Room reserved by `poll_ready` belongs to this handle's next `call`; a clone must
        // reserve its own, as tower's `ConcurrencyLimit` does.
        Dispatcher {
            shared: Arc::clone(&self.shared),
            _handles: Arc::clone(&self._handles),
            budget: Arc::clone(&self.budget),
            max_buffered: self.max_buffered,
            per_subscription: self.per_subscription,
            reserved: false,
            wait: None,
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.unreserve();
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("stats", &self.stats())
            .field("reserved", &self.reserved)
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher whose workers run on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(config: DispatcherConfig) -> Self {
        let max_in_flight = config.max_in_flight.max(1);
        let max_buffered = config.max_buffered.max(max_in_flight);
        let shared = Arc::new(Shared::new(max_in_flight, Handle::current()));
        // The clock that times handler calls calibrates on its first use (once per process):
        // here, not in the first message's call.
        crate::clock::calibrate();
        Dispatcher {
            _handles: Arc::new(Handles(Arc::clone(&shared))),
            shared,
            budget: Arc::new(Budget::new(max_buffered, config.max_buffered_bytes)),
            max_buffered,
            per_subscription: config
                .max_buffered_per_subscription
                .map_or(max_buffered, |n| n.clamp(1, max_buffered)),
            reserved: false,
            wait: None,
        }
    }

    /// Most messages admitted at once (`max_buffered`).
    pub fn max_buffered(&self) -> usize {
        self.max_buffered
    }

    /// Most messages one subscription may hold at once (taken and not settled).
    pub fn max_buffered_per_subscription(&self) -> usize {
        self.per_subscription
    }

    /// Gives back room reserved by `poll_ready` and not used by a `call` (a consuming loop whose
    /// source had nothing to deliver), so other callers can have it.
    pub(crate) fn unreserve(&mut self) {
        if std::mem::take(&mut self.reserved) {
            self.budget.release(1, 0);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> DispatcherStats {
        // Every admitted job and every reservation made by `poll_ready` holds one slot.
        self.shared
            .stats(self.budget.slots_taken(), self.budget.bytes_taken())
    }

    /// Stops intake: `poll_ready` returns `Err(Closed)` from now on, for every clone. Messages
    /// already admitted still run (or are cancelled by their route's tokens).
    pub fn close(&self) {
        self.budget.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.budget.is_closed()
    }

    /// Closes intake and waits until every task the dispatcher started (workers, retry
    /// timers) has ended. Cancel the routes' tokens first, or this waits for their handlers
    /// and retries to finish.
    pub async fn shutdown(&self) {
        self.close();
        self.shared.close_workers();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

/// Held by every [`Dispatcher`] handle (not by its workers): when the last handle is dropped,
/// parked workers are told to exit, so a dispatcher dropped without `shutdown` leaves no task.
struct Handles(Arc<Shared>);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.close_workers();
    }
}

impl Service<Dispatch> for Dispatcher {
    type Response = crate::outcome::Outcome;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Whether this call consumed a wake meant for slot waiters.
        let mut woken_for_slot = false;
        loop {
            if self.budget.is_closed() {
                self.unreserve();
                self.wait = None;
                return Poll::Ready(Err(Error::Closed));
            }
            if !self.reserved {
                if !self.budget.try_take_slot() {
                    woken_for_slot |= ready!(self.wait_for(Need::Slot, cx));
                    continue;
                }
                self.reserved = true;
                // A wake is for one slot: if more are free, the next waiter gets one too.
                if std::mem::take(&mut woken_for_slot) && self.budget.has_free_slot() {
                    self.budget.slot_freed.notify_one();
                }
            }
            if self.budget.has_byte_room() {
                self.wait = None;
                return Poll::Ready(Ok(()));
            }
            ready!(self.wait_for(Need::Bytes, cx));
        }
    }

    fn call(&mut self, req: Dispatch) -> ResponseFuture {
        let (tx, rx) = oneshot::channel();
        self.submit(req, Reply::Oneshot(tx));
        ResponseFuture {
            rx: sync_wrapper::SyncWrapper::new(rx.into_future()),
        }
    }
}

impl Dispatcher {
    /// Waits for `need`: the first call registers for its wake-up and returns at once, so the
    /// caller looks again (room freed before registering is seen then); later calls wait for
    /// the wake-up. `Ready(true)` when a wake-up was consumed.
    fn wait_for(&mut self, need: Need, cx: &mut Context<'_>) -> Poll<bool> {
        if let Some((waiting_for, wait)) = &mut self.wait
            && *waiting_for == need
        {
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
            return Poll::Ready(true);
        }
        let notify: &Arc<Notify> = match need {
            Need::Slot => &self.budget.slot_freed,
            Need::Bytes => &self.budget.bytes_freed,
        };
        let mut wait = Box::pin(Arc::clone(notify).notified_owned());
        wait.as_mut().enable();
        self.wait = Some((need, wait));
        Poll::Ready(false)
    }

    /// Admits a message whose outcome goes to `reply`: what `call` does, and what the bus's
    /// consuming loops use to avoid a future per message. Needs room reserved by `poll_ready`.
    pub(crate) fn submit(&mut self, req: Dispatch, reply: Reply) {
        assert!(
            std::mem::take(&mut self.reserved),
            "poll_ready must be called first"
        );
        let bytes = req.message.encoded_len();
        self.budget.take_bytes(bytes);
        let reservation = Reservation::new(bytes, Arc::clone(&self.budget));
        self.shared
            .submit(Job::new(req.route, req.message, reply, reservation));
    }
}
