//! The bus's record of one subscription: its route, where its dead letters go, and the last
//! error it reported.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::dispatch::Route;

/// What the bus keeps of one subscription besides its route: where its dead letters go, and
/// the last error its stream, its acks or its letters reported (for health).
#[derive(Debug)]
pub(super) struct Subscribed {
    pub(super) route: Arc<Route>,
    pub(super) dead_letter: Option<Arc<str>>,
    /// `eventbus_dead_lettered_total` of this subscription.
    pub(super) dead_lettered: metrics::Counter,
    last_error: Mutex<Option<(SystemTime, String)>>,
}

impl Subscribed {
    pub(super) fn new(route: Arc<Route>, dead_letter: Option<String>) -> Self {
        let labels = [
            ("topic", route.topic().to_owned()),
            ("group", route.group().to_owned()),
        ];
        Subscribed {
            dead_lettered: metrics::counter!(crate::telemetry::names::DEAD_LETTERED, &labels),
            route,
            dead_letter: dead_letter.map(Arc::from),
            last_error: Mutex::new(None),
        }
    }
    /// Records an error of the subscription, for health reports.
    pub(super) fn record_error(&self, error: &dyn std::fmt::Display) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((SystemTime::now(), error.to_string()));
    }
    /// The last error recorded.
    pub(super) fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
