//! `NatsAck`: acks, naks or leaves unacked one JetStream message when the bus settles it,
//! releasing it from the held-message registry.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use bytes::Bytes;
use eventbus_core::Outcome;
use eventbus_core::transport::{Acknowledge, Settle};
use futures::FutureExt;

use crate::NatsError;
use crate::error::ErrorText;
use crate::held::{CopyKey, Held};
use crate::keyed::InFlightGuard;

/// Acks, naks or releases one JetStream message.
///
/// Small on purpose: the bus moves it from the pull stream to its consuming loop, into a slot
/// and out again at settling, and async-nats's delivery (payload, headers and a whole
/// JetStream context, 400 bytes) moved along with it cost more CPU than the ack itself. What
/// settling needs, the delivery's ack subject, waits in the registry that holds the message
/// anyway (for its progress acks), and the client in the registry is the subscription's.
#[derive(Debug)]
pub struct NatsAck {
    pub(crate) held: Arc<Held>,
    /// Its entry in `held` (where its ack subject is), until settled or dropped.
    pub(crate) id: Option<u64>,
    pub(crate) redelivery_delay: Duration,
    /// Which stream message it is.
    pub(crate) seq: Option<CopyKey>,
    /// For a keyed group's message: counts it among its partition's messages in the bus until
    /// it is settled at the server (a partition is handed over only once none is left).
    pub(crate) in_flight: Option<InFlightGuard>,
}

impl Drop for NatsAck {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.held.release(id, self.seq, false);
        }
    }
}

impl Acknowledge for NatsAck {
    fn settle(mut self, outcome: &Outcome) -> Settle {
        let Some(id) = self.id.take() else {
            return Settle::Done(Ok(()));
        };
        let reply = self.held.release(id, self.seq, outcome.is_handled());
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
        let Some(reply) = reply else {
            return Settle::Done(Err(NatsError::request(
                "ack",
                ErrorText("no ack subject: not a JetStream delivery".into()),
            )
            .into()));
        };
        let body = Bytes::from(kind);
        // An ack is a publish to the ack subject, and a publish only queues the command for
        // the connection: it is done on its first poll unless the queue is full. Tried once
        // here, so most acks need no boxed future (nothing is sent by a try that returns
        // pending: it waited for room in the queue, and dropping it leaves the queue as is).
        // Tried outside tokio's cooperative budget: the queue's send spends it, and once the
        // consuming loop has spent its share in a burst, a send with room would return
        // pending all the same, and a third of the acks were boxed and polled again. The
        // loop's own take spends the budget, so it still yields.
        let client = &self.held.client;
        let attempt = tokio::task::unconstrained(client.publish(reply.clone(), body.clone()));
        if let Some(sent) = attempt.now_or_never() {
            return Settle::Done(sent.map_err(|e| acked_error(&e)));
        }
        let in_flight = self.in_flight.take();
        let held = Arc::clone(&self.held);
        Settle::Later(Box::pin(async move {
            let sent = held.client.publish(reply, body).await;
            drop(in_flight);
            sent.map_err(|e| acked_error(&e))
        }))
    }
}

fn acked_error(e: &async_nats::PublishError) -> eventbus_core::Error {
    NatsError::request("ack", ErrorText(e.to_string())).into()
}

#[cfg(test)]
mod tests {
    use super::NatsAck;

    #[test]
    fn an_ack_is_small_enough_to_move_cheaply() {
        // The bus moves each message's ack several times between the pull and the settling;
        // async-nats's delivery alone is over 400 bytes.
        assert!(std::mem::size_of::<NatsAck>() <= 80);
    }
}
