//! `NatsAck`: acks, naks or leaves unacked one JetStream message when the bus settles it,
//! releasing it from the held-message registry.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use eventbus_core::Outcome;
use eventbus_core::transport::{Acknowledge, Settle};

use crate::NatsError;
use crate::error::ErrorText;
use crate::held::{CopyKey, Held};

/// Acks, naks or releases one JetStream message.
#[derive(Debug)]
pub struct NatsAck {
    /// `None` for a message read back after a reconnect: the server's later copy is acked.
    pub(crate) msg: Option<jetstream::Message>,
    pub(crate) redelivery_delay: Duration,
    pub(crate) held: Option<(u64, Arc<Held>)>,
    /// Which stream message it is.
    pub(crate) seq: Option<CopyKey>,
}

impl Drop for NatsAck {
    fn drop(&mut self) {
        if let Some((id, held)) = self.held.take() {
            held.release(id, self.seq, false);
        }
    }
}

impl Acknowledge for NatsAck {
    fn settle(mut self, outcome: &Outcome) -> Settle {
        if let Some((id, held)) = self.held.take() {
            held.release(id, self.seq, outcome.is_handled());
        }
        let kind = match outcome {
            Outcome::Handled { .. } => AckKind::Ack,
            Outcome::Failed { .. } => AckKind::Nak(Some(self.redelivery_delay)),
            // Not a failure, and not ours any more: leave it unacked; the server redelivers it
            // after the ack wait. (A nak would hand it over sooner, but nats-server 2.9 was
            // seen delivering a nak'd message twice to the next member: the conformance
            // check `subscribe_cancel` caught it.)
            Outcome::Cancelled => return Settle::Done(Ok(())),
        };
        let Some(msg) = self.msg.take() else {
            return Settle::Done(Ok(()));
        };
        Settle::Later(Box::pin(async move {
            msg.ack_with(kind)
                .await
                .map_err(|e| NatsError::request("ack", ErrorText(e.to_string())).into())
        }))
    }
}
