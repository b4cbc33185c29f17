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
use crate::keyed::InFlightGuard;

/// Acks, naks or releases one JetStream message.
#[derive(Debug)]
pub struct NatsAck {
    /// The delivery (for a message read back from the stream, one made with the ack subject
    /// the server would have given it); taken when settled.
    pub(crate) msg: Option<jetstream::Message>,
    pub(crate) redelivery_delay: Duration,
    pub(crate) held: Option<(u64, Arc<Held>)>,
    /// Which stream message it is.
    pub(crate) seq: Option<CopyKey>,
    /// For a keyed group's message: counts it among its partition's messages in the bus until
    /// it is settled at the server (a partition is handed over only once none is left).
    pub(crate) in_flight: Option<InFlightGuard>,
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
            // after the ack wait (a keyed group's partition handed over naks it at once, in
            // stream order with the rest; see `keyed::nak_pending`). Naked one by one here, in
            // whatever order they settle, such messages would be redelivered in that order.
            // (nats-server 2.9 was also seen delivering a nak'd message twice to the next
            // member: the conformance check `subscribe_cancel` caught it.)
            Outcome::Cancelled => return Settle::Done(Ok(())),
        };
        let Some(msg) = self.msg.take() else {
            return Settle::Done(Ok(()));
        };
        let in_flight = self.in_flight.take();
        Settle::Later(Box::pin(async move {
            let acked = msg
                .ack_with(kind)
                .await
                .map_err(|e| NatsError::request("ack", ErrorText(e.to_string())).into());
            drop(in_flight);
            acked
        }))
    }
}
