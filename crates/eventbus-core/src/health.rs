//! Health: what a readiness probe needs, from [`EventBus::health`](crate::EventBus::health).
//!
//! ```
//! # async fn demo(bus: eventbus_core::EventBus) {
//! let health = bus.health().await;
//! if !health.is_ready() {
//!     eprintln!("not ready: {health:?}");
//! }
//! # }
//! ```

use std::time::SystemTime;

use crate::dispatch::DispatcherStats;
use crate::retry::Retrying;

/// A transport's connection to its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected.
    Connected,
    /// Lost; the client is reconnecting on its own.
    Disconnected,
    /// Closed.
    Closed,
}

/// A transport's view of its connection, from [`Transport::connection`](crate::Transport::connection).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connection {
    /// The state now.
    pub state: ConnectionState,
    /// Times the connection was re-established after being lost.
    pub reconnects: u64,
    /// The last error the client reported, with when.
    pub last_error: Option<(SystemTime, String)>,
}

impl Connection {
    /// A connection in `state`, never lost, with no error.
    pub fn new(state: ConnectionState) -> Self {
        Connection {
            state,
            reconnects: 0,
            last_error: None,
        }
    }
    /// With a reconnect count.
    pub fn with_reconnects(mut self, n: u64) -> Self {
        self.reconnects = n;
        self
    }
    /// With the last error.
    pub fn with_last_error(mut self, error: Option<(SystemTime, String)>) -> Self {
        self.last_error = error;
        self
    }
}

/// One subscription's health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionHealth {
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Whether it is still consuming.
    pub running: bool,
    /// Its consumer lag, when the broker answered in time (`None`: unsupported, or the broker
    /// did not answer within the probe's deadline).
    pub lag: Option<u64>,
    /// The last error its stream or its acks reported, with when.
    pub last_error: Option<(SystemTime, String)>,
    /// Its messages waiting out a backoff before another attempt (each holds its key), the
    /// longest failing first; at most [`MAX_RETRYING_LISTED`].
    pub retrying: Vec<Retrying>,
    /// How many are retrying in all.
    pub retrying_total: usize,
}

/// Most retrying messages a [`SubscriptionHealth`] lists.
pub const MAX_RETRYING_LISTED: usize = 32;

/// The bus's health.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// The transport's name.
    pub transport: &'static str,
    /// Its connection.
    pub connection: Connection,
    /// Whether the bus is closing or closed.
    pub closed: bool,
    /// Every open subscription.
    pub subscriptions: Vec<SubscriptionHealth>,
    /// The dispatcher's counters.
    pub dispatcher: DispatcherStats,
    /// Messages published to a dead-letter topic (and then acked) since the bus started.
    pub dead_lettered: u64,
}

impl Health {
    /// Connected, not closing, and every subscription consuming.
    pub fn is_ready(&self) -> bool {
        !self.closed
            && self.connection.state == ConnectionState::Connected
            && self.subscriptions.iter().all(|s| s.running)
    }
    /// Messages of every subscription waiting for another attempt, each with its topic and
    /// group: keys that are stuck on a failing message right now.
    pub fn retrying(&self) -> impl Iterator<Item = (&str, &str, &Retrying)> {
        self.subscriptions.iter().flat_map(|s| {
            s.retrying
                .iter()
                .map(move |r| (s.topic.as_str(), s.group.as_str(), r))
        })
    }
    /// The last error seen anywhere (connection or subscription), with when.
    pub fn last_error(&self) -> Option<&(SystemTime, String)> {
        self.subscriptions
            .iter()
            .filter_map(|s| s.last_error.as_ref())
            .chain(self.connection.last_error.as_ref())
            .max_by_key(|(at, _)| *at)
    }
}
