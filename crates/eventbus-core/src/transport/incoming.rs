//! What a transport hands the bus for each message it receives, and how the bus's verdict is
//! settled at the broker.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::Result;
use crate::message::Message;
use crate::outcome::Outcome;

/// A message received from the broker, with what settles it there.
#[derive(Debug)]
pub struct Incoming<A> {
    /// The message.
    pub message: Arc<Message>,
    /// Acks, nacks or releases it.
    pub ack: A,
}

/// Settles one received message at the broker according to its [`Outcome`].
pub trait Acknowledge: Send + 'static {
    /// [`Outcome::Handled`]: ack. [`Outcome::Failed`]: nack (or dead-letter).
    /// [`Outcome::Cancelled`]: leave unacked, for redelivery.
    fn settle(self, outcome: &Outcome) -> Settle;

    /// Settles messages of one subscription, in the order given, handing each one's
    /// [`Settle`] to `settled`, in the same order. The bus settles whatever finished together
    /// through this. The default settles them one by one; a transport whose settling takes a
    /// lock its publishers share (the memory broker's topic) overrides it to take the lock
    /// once per batch.
    fn settle_batch<I>(batch: I, mut settled: impl FnMut(Settle))
    where
        Self: Sized,
        I: IntoIterator<Item = (Self, Outcome)>,
    {
        for (ack, outcome) in batch {
            settled(ack.settle(&outcome));
        }
    }
}

/// How settling went: most acks are bookkeeping that is done at once (an offset to commit, a
/// queued ack); only those that must wait for I/O return a future, so the common case costs
/// no allocation.
#[must_use]
pub enum Settle {
    /// Settled (or failed to).
    Done(Result<()>),
    /// Settles when this completes.
    Later(BoxFuture<'static, Result<()>>),
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Settle::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Settle::Later(_) => f.write_str("Later(..)"),
        }
    }
}
