//! What became of one message: the dispatcher's verdict, which a transport settles at the
//! broker (ack, nack, or leave for redelivery).

use std::time::SystemTime;

use crate::error::BoxError;

/// The final result of dispatching one message.
#[derive(Debug)]
pub enum Outcome {
    /// The handler succeeded: ack the message.
    Handled {
        /// Handler calls it took.
        attempts: u32,
    },
    /// The handler failed for good (last attempt used, or a [`Permanent`](crate::Permanent) error): nack or
    /// dead-letter it.
    Failed {
        /// Handler calls made.
        attempts: u32,
        /// The last error.
        error: BoxError,
        /// When the first attempt failed (dead letters carry it).
        first_failure: SystemTime,
    },
    /// Not (fully) handled because its subscription or bus is closing. Not a failure: leave it
    /// unacked for redelivery; never ack, retry or dead-letter it.
    Cancelled,
}

impl Outcome {
    /// Whether the message was handled.
    pub fn is_handled(&self) -> bool {
        matches!(self, Outcome::Handled { .. })
    }
}
