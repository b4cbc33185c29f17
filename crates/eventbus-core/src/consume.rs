//! The consuming loop that connects a transport's stream to the dispatcher.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tower::Service;

use crate::dispatch::{Dispatch, Dispatcher, Outcome, Route};
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
    // One future per message taken: its outcome, then settling it at the broker.
    let mut taken = FuturesUnordered::new();
    let closing = route.closing().clone();
    let mut closed = Box::pin(closing.cancelled_owned());
    let mut intake = true;

    poll_fn(|cx| {
        loop {
            let mut progress = false;
            while let Poll::Ready(Some(settled)) = taken.poll_next_unpin(cx) {
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
                        taken.push(async move {
                            // The response future never fails: a dropped job reads as Cancelled.
                            let outcome = response.await.unwrap_or(Outcome::Cancelled);
                            ack.settle(&outcome).await
                        });
                        progress = true;
                    }
                }
            }
            if !intake && taken.is_empty() {
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
