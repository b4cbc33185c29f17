//! A subscription, from both sides: the handle a user holds ([`Subscription`]) and the request
//! a transport receives ([`SubscribeRequest`]) to start its consuming loop.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::publish::Outlet;
use super::subscribed::Subscribed;
use crate::dispatch::{Dispatcher, Route};
use crate::error::Result;
use crate::transport::incoming::{Acknowledge, Incoming};

/// A subscription the bus asks a transport to open.
#[derive(Debug)]
pub struct SubscribeRequest {
    pub(super) subscribed: Arc<Subscribed>,
    pub(super) redelivery_delay: Duration,
    pub(super) dispatcher: Dispatcher,
    pub(super) tracker: TaskTracker,
    pub(super) outlet: Outlet,
}

impl SubscribeRequest {
    /// The topic.
    pub fn topic(&self) -> &str {
        self.subscribed.route.topic()
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        self.subscribed.route.group()
    }
    /// How long a message settled as [`Outcome::Failed`](crate::Outcome::Failed) waits before
    /// the transport delivers it again (the bus's or the subscription's option, one setting
    /// for every transport).
    pub fn redelivery_delay(&self) -> Duration {
        self.redelivery_delay
    }
    /// Most messages the bus's dispatcher admits at once: a transport that prefetches should
    /// not ask the broker for more than this per pull.
    pub fn max_buffered(&self) -> usize {
        self.dispatcher.max_buffered()
    }
    /// Fires when the subscription starts closing; the stream need not watch it (the bus stops
    /// pulling), but a transport may use it to stop background work early.
    pub fn closing(&self) -> &CancellationToken {
        self.subscribed.route.closing()
    }

    /// Starts consuming `source` through the bus's dispatcher, in a task the bus tracks.
    /// The source is polled only while the dispatcher has room, and dropped once the
    /// subscription has closed and every message taken from it has been settled.
    pub fn start<S, A>(self, source: S) -> Started
    where
        S: Stream<Item = Result<Incoming<A>>> + Send + Unpin + 'static,
        A: Acknowledge,
    {
        let ended = CancellationToken::new();
        let guard = ended.clone().drop_guard();
        self.tracker.spawn(async move {
            // Fires inside the tracked future, so whoever saw the bus's tracker empty also
            // sees every subscription ended (a JoinHandle finishes a moment later).
            let _ended = guard;
            super::consume::pump(source, self.dispatcher, self.subscribed, self.outlet).await;
        });
        Started(ended)
    }
}

/// A running subscription's consuming task, returned by [`SubscribeRequest::start`].
#[derive(Debug)]
#[must_use = "return it from Subscriber::subscribe"]
pub struct Started(pub(super) CancellationToken);

/// A running subscription. Close it with [`close`](Self::close), which drains it; dropping it
/// also closes it, draining in the background until the bus closes.
#[must_use = "dropping a Subscription closes it; call .detach() to keep it running until the bus closes"]
#[derive(Debug)]
pub struct Subscription {
    pub(super) route: Arc<Route>,
    /// Fires when its consuming task has ended.
    pub(super) ended: CancellationToken,
    pub(super) drain_timeout: Duration,
    pub(super) detached: bool,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        self.route.topic()
    }
    /// The consumer group.
    pub fn group(&self) -> &str {
        self.route.group()
    }
    /// Whether it has stopped (closed, or its transport stream ended).
    pub fn is_finished(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Stops taking messages, lets running handlers finish for up to the bus's drain timeout
    /// (then drops them: their messages stay unacked), settles everything taken, and returns
    /// when its consuming task has ended. Queued messages are left for redelivery.
    pub async fn close(self) {
        self.route.closing().cancel();
        if tokio::time::timeout(self.drain_timeout, self.ended.cancelled())
            .await
            .is_err()
        {
            self.route.abort().cancel();
            self.ended.cancelled().await;
        }
    }

    /// Keeps the subscription running after this handle is dropped, until the bus closes.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.detached {
            self.route.closing().cancel();
        }
    }
}
