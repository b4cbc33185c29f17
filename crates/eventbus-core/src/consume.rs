//! The consuming loop that connects a transport's stream to the dispatcher.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tower::Service;

use crate::dispatch::{Dispatch, Dispatcher, Route};
use crate::error::Result;
use crate::transport::{Acknowledge, Incoming};

/// Pulls from `source` while the dispatcher has room, dispatches, and settles each message on
/// its outcome. Ends when the route is closing (or the source ends) and every message taken
/// has been settled.
pub(crate) async fn pump<S, A>(mut source: S, mut dispatcher: Dispatcher, route: Arc<Route>)
where
    S: Stream<Item = Result<Incoming<A>>> + Send + Unpin + 'static,
    A: Acknowledge,
{
    let mut outcomes = FuturesUnordered::new();
    let mut settling = FuturesUnordered::new();
    let closing = route.closing().clone();
    let mut closed = Box::pin(closing.cancelled_owned());
    let mut intake = true;

    poll_fn(|cx| {
        loop {
            let mut progress = false;
            while let Poll::Ready(Some((outcome, ack))) = outcomes.poll_next_unpin(cx) {
                let ack: A = ack;
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(_) => crate::Outcome::Cancelled,
                };
                settling.push(async move { ack.settle(&outcome).await });
                progress = true;
            }
            while let Poll::Ready(Some(settled)) = settling.poll_next_unpin(cx) {
                if let Err(error) = settled {
                    tracing::warn!(topic = route.topic(), group = route.group(), %error, "could not settle a message at the broker; it will be redelivered");
                }
                progress = true;
            }
            if intake && closed.as_mut().poll(cx).is_ready() {
                intake = false;
            }
            while intake {
                match dispatcher.poll_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => {
                        intake = false;
                        break;
                    }
                    Poll::Ready(Ok(())) => {}
                }
                match source.poll_next_unpin(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        intake = false;
                        break;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        // Transports reconnect on their own; an error here is reported and the
                        // stream keeps being polled.
                        tracing::warn!(topic = route.topic(), group = route.group(), %error, "subscription stream error");
                    }
                    Poll::Ready(Some(Ok(Incoming { message, ack }))) => {
                        let route = Arc::clone(&route);
                        let response = dispatcher.call(Dispatch { route, message });
                        outcomes.push(response.map(move |outcome| (outcome, ack)));
                        progress = true;
                    }
                }
            }
            if !intake && outcomes.is_empty() && settling.is_empty() {
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
