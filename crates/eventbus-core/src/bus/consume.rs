//! The consuming loop that connects a transport's stream to the dispatcher.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tower::Service;

use slab::Slab;

use futures::future::BoxFuture;

use super::publish::Outlet;
use super::subscribed::Subscribed;
use crate::dispatch::{Dispatch, Dispatcher, Done, Reply, Reservation, TAKE};
use crate::error::Result;
use crate::message::Message;
use crate::outcome::Outcome;
use crate::transport::incoming::{Acknowledge, Incoming, Settle};

/// Pulls from `source` while the dispatcher has room, dispatches, and settles each message on
/// its outcome. Ends when the route is closing (or the source ends) and every message taken
/// has been settled.
pub(crate) async fn pump<S, A>(
    mut source: S,
    mut dispatcher: Dispatcher,
    subscribed: Arc<Subscribed>,
    outlet: Outlet,
) where
    S: Stream<Item = Result<Incoming<A>>> + Send + Unpin + 'static,
    A: Acknowledge,
{
    // Finished messages come back on one queue, tagged with the slot holding their ack: no
    // future per message, one wake per batch.
    let route = &subscribed.route;
    let completions = route.complete_into_queue();
    // Each ack, with its message only where a dead letter may have to be built from it.
    let mut acks: Slab<(A, Option<Arc<Message>>)> = Slab::new();
    let mut settling = FuturesUnordered::new();
    // Rare (a message that failed for good), so boxed.
    let mut dead_lettering: FuturesUnordered<BoxFuture<'static, Result<()>>> =
        FuturesUnordered::new();
    let mut done = VecDeque::with_capacity(TAKE);
    // The batch being settled, and the room each of its messages holds in the dispatcher.
    let mut to_settle: Vec<(A, Outcome)> = Vec::with_capacity(TAKE);
    let mut rooms: Vec<Reservation> = Vec::with_capacity(TAKE);
    // Rooms of the batch's messages settled on the spot.
    let mut freed: Vec<Reservation> = Vec::with_capacity(TAKE);
    let closing = route.closing().clone();
    let mut closed = Box::pin(closing.cancelled_owned());
    let mut intake = true;
    let share = dispatcher.max_buffered_per_subscription();

    poll_fn(|cx| {
        // Set once the source returned pending in this poll: it holds our waker then, and
        // wakes us when it has more, so it is not asked again before that. (Asked again on
        // every turn of the loop below, a pull stream found nothing about four times per
        // message, each time looking at its channels and timers.)
        let mut source_waits = false;
        loop {
            let mut progress = false;
            while completions.poll_take(cx, &mut done).is_ready() {
                // Settled in batches of at most `TAKE`, so the batch vectors stay that small
                // however many finished since the last take.
                while !done.is_empty() {
                    let batch = done.len().min(TAKE);
                    for Done { token, outcome, room } in done.drain(..batch) {
                        let (ack, message) = acks.remove(token);
                        if let (Outcome::Failed { .. }, Some(dlq), Some(message)) =
                            (&outcome, subscribed.dead_letter.as_deref(), &message)
                        {
                            let letter = dead_letter_of(message, dlq, route.group(), &outcome);
                            dead_lettering.push(Box::pin(send_dead_letter(
                                outlet.clone(),
                                letter,
                                ack,
                                outcome,
                                room,
                                Arc::clone(&subscribed),
                            )));
                            continue;
                        }
                        to_settle.push((ack, outcome));
                        rooms.push(room);
                    }
                    // Settled together (the transport may do it under one lock), each message's
                    // room freed only once it is settled.
                    let mut rooms = rooms.drain(..);
                    A::settle_batch(to_settle.drain(..), |settle| {
                        let room = rooms.next();
                        match settle {
                            Settle::Done(settled) => {
                                freed.extend(room);
                                report(&subscribed, settled);
                            }
                            Settle::Later(settling_io) => settling.push(async move {
                                let settled = settling_io.await;
                                drop(room);
                                settled
                            }),
                        }
                    });
                    // Freed together: one update of the dispatcher's shared counters per batch.
                    Reservation::release_all(freed.iter_mut());
                    freed.clear();
                }
                progress = true;
            }
            while let Poll::Ready(Some(settled)) = settling.poll_next_unpin(cx) {
                report(&subscribed, settled);
                progress = true;
            }
            while let Poll::Ready(Some(settled)) = dead_lettering.poll_next_unpin(cx) {
                report(&subscribed, settled);
                progress = true;
            }
            if intake && closed.as_mut().poll(cx).is_ready() {
                intake = false;
            }
            // A subscription at its share stops taking until one of its messages is settled.
            while intake && !source_waits && acks.len() < share {
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
                        source_waits = true;
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
                        subscribed.record_error(&error);
                    }
                    Poll::Ready(Some(Ok(Incoming { message, ack }))) => {
                        let message = route.keyed(message);
                        let kept = subscribed.dead_letter.as_ref().map(|_| Arc::clone(&message));
                        let token = acks.insert((ack, kept));
                        let reply = Reply::Queue { token };
                        let route = Arc::clone(route);
                        dispatcher.submit(Dispatch { route, message }, reply);
                        progress = true;
                    }
                }
            }
            if !intake && acks.is_empty() && settling.is_empty() && dead_lettering.is_empty() {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await;
    completions.close();
    drop(source);
}

fn report(subscribed: &Subscribed, settled: Result<()>) {
    if let Err(error) = settled {
        let route = &subscribed.route;
        tracing::warn!(topic = route.topic(), group = route.group(), %error, "could not settle a message at the broker; it will be redelivered");
        subscribed.record_error(&error);
    }
}

fn dead_letter_of(message: &Message, dlq: &str, group: &str, outcome: &Outcome) -> Message {
    let Outcome::Failed {
        attempts,
        error,
        first_failure,
    } = outcome
    else {
        unreachable!("only failed messages are dead-lettered")
    };
    crate::dead_letter::letter(message, dlq, group, *attempts, error, *first_failure)
}

/// Publishes a letter, then acks the original; if the broker did not take the letter, the
/// original is left unacked (settled as `Cancelled`), for redelivery: nothing is lost.
async fn send_dead_letter<A: Acknowledge>(
    outlet: Outlet,
    letter: Message,
    ack: A,
    outcome: Outcome,
    room: Reservation,
    subscribed: Arc<Subscribed>,
) -> Result<()> {
    let topic = letter.topic().to_owned();
    let attempts = match outcome {
        Outcome::Failed { attempts, .. } => attempts,
        _ => 0,
    };
    let published = outlet.publish(letter).await;
    let settle_as = match &published {
        Ok(()) => {
            outlet.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            subscribed.dead_lettered.increment(1);
            Outcome::Handled { attempts }
        }
        Err(error) => {
            tracing::error!(dead_letter_topic = %topic, %error, "could not publish a dead letter; the message stays unacked for redelivery");
            subscribed.record_error(&format!("dead letter to {topic}: {error}"));
            Outcome::Cancelled
        }
    };
    let settled = match ack.settle(&settle_as) {
        Settle::Done(r) => r,
        Settle::Later(f) => f.await,
    };
    drop(room);
    settled
}
