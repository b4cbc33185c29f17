//! The consuming loop that connects a transport's stream to the dispatcher.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tower::Service;

use slab::Slab;
use tokio::sync::mpsc;

use crate::dispatch::{Dispatch, Dispatcher, Done, Reply, Route};
use crate::error::Result;
use crate::transport::{Acknowledge, Incoming, Settle};

/// Pulls from `source` while the dispatcher has room, dispatches, and settles each message on
/// its outcome. Ends when the route is closing (or the source ends) and every message taken
/// has been settled.
pub(crate) async fn pump<S, A>(mut source: S, mut dispatcher: Dispatcher, route: Arc<Route>)
where
    S: Stream<Item = Result<Incoming<A>>> + Send + Unpin + 'static,
    A: Acknowledge,
{
    // Finished messages come back on one queue, tagged with the slot holding their ack: no
    // future per message, one wake per batch.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut acks: Slab<A> = Slab::new();
    let mut settling = FuturesUnordered::new();
    let mut done = Vec::with_capacity(64);
    let closing = route.closing().clone();
    let mut closed = Box::pin(closing.cancelled_owned());
    let mut intake = true;
    let share = dispatcher.max_buffered_per_subscription();

    poll_fn(|cx| {
        loop {
            let mut progress = false;
            while let Poll::Ready(n) = done_rx.poll_recv_many(cx, &mut done, 64) {
                if n == 0 {
                    break;
                }
                for Done { token, outcome, room } in done.drain(..) {
                    // The room is freed only once the message is settled.
                    match acks.remove(token).settle(&outcome) {
                        Settle::Done(settled) => report(&route, settled),
                        Settle::Later(settling_io) => settling.push(async move {
                            let settled = settling_io.await;
                            drop(room);
                            settled
                        }),
                    }
                }
                progress = true;
            }
            while let Poll::Ready(Some(settled)) = settling.poll_next_unpin(cx) {
                report(&route, settled);
                progress = true;
            }
            if intake && closed.as_mut().poll(cx).is_ready() {
                intake = false;
            }
            // A subscription at its share stops taking until one of its messages is settled.
            while intake && acks.len() < share {
                match dispatcher.poll_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => {
                        intake = false;
                        break;
                    }
                    Poll::Ready(Ok(())) => {}
                }
                match source.poll_next_unpin(cx) {
                    Poll::Pending => {
                        // A quiet subscription must not sit on room the others could use: the
                        // source will wake us, and we reserve again then.
                        dispatcher.unreserve();
                        break;
                    }
                    Poll::Ready(None) => {
                        dispatcher.unreserve();
                        intake = false;
                        break;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        // Transports reconnect on their own; an error here is reported and the
                        // stream keeps being polled.
                        tracing::warn!(topic = route.topic(), group = route.group(), %error, "subscription stream error");
                    }
                    Poll::Ready(Some(Ok(Incoming { message, ack }))) => {
                        let token = acks.insert(ack);
                        let reply = Reply::Queue {
                            tx: done_tx.clone(),
                            token,
                        };
                        let route = Arc::clone(&route);
                        dispatcher.submit(Dispatch { route, message }, reply);
                        progress = true;
                    }
                }
            }
            if !intake && acks.is_empty() && settling.is_empty() {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await;
    drop(source);
}

fn report(route: &Route, settled: Result<()>) {
    if let Err(error) = settled {
        tracing::warn!(topic = route.topic(), group = route.group(), %error, "could not settle a message at the broker; it will be redelivered");
    }
}
