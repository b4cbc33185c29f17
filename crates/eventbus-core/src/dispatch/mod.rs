//! The unified keyed dispatcher: one [`tower::Service`] per bus, shared by every subscription.
//!
//! # What it guarantees
//! - **Per-key FIFO.** Within one subscription, messages with the same key run one at a time, in
//!   the order they were submitted. A failing message is retried in place (with backoff) before
//!   any later message of its key runs.
//! - **No head-of-line blocking.** There are no lanes or hash buckets: any worker runs any ready
//!   key. A stalled key holds back only its own later messages (and the one worker running it).
//!   *Limit:* those later messages wait inside the dispatcher, each holding a buffer slot; a key
//!   that stays stalled while its traffic keeps coming eventually fills `max_buffered`, and then
//!   the bound wins: intake stops until the key moves. Set
//!   [`max_buffered_per_subscription`](DispatcherConfig::max_buffered_per_subscription) so
//!   such a backlog stops only its own subscription, and bound stalls (a retry limit with
//!   dead-lettering).
//! - **Runs.** A worker taking a key's next job also takes the jobs of that key waiting behind it
//!   and runs them one after another, as they would run anyway; a worker whose last run finished
//!   on the spot (no handler waited) also takes the next ready jobs of other keys (and theirs),
//!   up to 32 jobs in all; while another worker is parked, at most half the ready keys, the
//!   other half left to it to run on another thread. One lock for the run instead of one per
//!   job. A job of the run whose handler waits, or that backs off before a retry, gives the
//!   rest back where each came from (its own key's later jobs to the front of its key's queue,
//!   other keys' to the front of the ready queue, for another worker), so they hold no worker
//!   and wait for no other key. A call that finishes on its first
//!   poll but keeps its thread busy for more than 100 µs (a handler computing or blocking) makes
//!   its worker give back the other keys' jobs of its run too, and take one key at a time until a
//!   run is quick again: other keys' jobs wait behind one such call at most. A run goes on
//!   without a pause otherwise, as if all its jobs had started when it was taken: a route found
//!   closing then cancels its jobs in the run, and one that starts closing during a run lets it
//!   finish (a handler that blocks its thread for long can thus delay a drain by up to 31 calls
//!   of its key).
//! - **Bounds.** At most [`max_in_flight`](DispatcherConfig::max_in_flight) handler calls run at
//!   once; at most [`max_buffered`](DispatcherConfig::max_buffered) messages are admitted and
//!   not yet finished, and admission stops once
//!   [`max_buffered_bytes`](DispatcherConfig::max_buffered_bytes) is reached. At a bound
//!   `poll_ready` returns `Pending` and wakes the caller when room frees up: transports stop
//!   fetching, so backpressure reaches the broker.
//! - **Cost.** Tasks: one worker per handler call running at once (started on demand, at most
//!   `max_in_flight`; when work runs out, about one per runtime thread stays parked for the next
//!   burst and the rest exit) plus one timer task per message waiting out a retry backoff (at
//!   most `max_buffered`). Nothing depends on the number of topics or keys; a key that has no
//!   message in the dispatcher has no state at all. Messages without a key run concurrently.
//!   [`Dispatcher::shutdown`] (or dropping the last handle) ends every task.
//! - **Outcome.** The response future resolves with the final [`Outcome`](crate::Outcome): transports ack on
//!   [`Outcome::Handled`](crate::Outcome::Handled), nack on [`Outcome::Failed`](crate::Outcome::Failed) and leave the message for redelivery on
//!   [`Outcome::Cancelled`](crate::Outcome::Cancelled). A handler panic is caught, counted and treated as an error.
//!
//! # Why no loom model
//! The per-key hand-off (a key is busy while it has an entry in the key map; finishing a job pops
//! the next one or removes the entry) is one critical section under a single mutex, so there is
//! no lock-free protocol to model. The one lock-free piece, the soft byte budget, re-checks the
//! counter after registering for wake-ups (the pattern `tokio::sync::Notify` documents).
//! Ordering under random delays, errors and panics is checked by property tests instead.

mod budget;
mod completions;
mod future;
mod queue;
mod route;
mod service;
mod stats;

pub(crate) use budget::Reservation;
pub(crate) use completions::TAKE;
pub use future::ResponseFuture;
pub(crate) use route::{Done, Reply};
pub use route::{Route, RouteBuilder};
pub use service::{Dispatch, Dispatcher, DispatcherConfig};
pub use stats::DispatcherStats;
