//! Subscribing and the pull loop: a [`Sharing::Any`] subscription's durable consumer and its
//! one puller (a keyed one pulls each partition it owns with the same loop, see
//! `keyed.rs`), the bus's incoming messages for its deliveries, and the recovery of messages
//! lost on the way across a reconnect or left unacked by a partition's earlier owner.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull};
use eventbus_core::Result;
use eventbus_core::transport::{Incoming, Started, SubscribeRequest, Subscriber};
use futures::{Stream, StreamExt};

use crate::NatsAck;
use crate::delivered::{AckSubjects, Delivered};
use crate::held::{Held, Redelivery};
use crate::keyed::InFlight;
use crate::mapping::message;
use crate::membership::Handover;
use crate::provision::{PIN_GROUP, consumer_config};
use crate::{NatsError, NatsTransport, Sharing};

#[async_trait::async_trait]
impl Subscriber for NatsTransport {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started> {
        self.check_open()?;
        self.ensure_stream(request.topic()).await?;
        match self.inner.config.consumer.sharing {
            Sharing::ByKey => crate::keyed::subscribe(self, request).await,
            Sharing::Any => self.subscribe_any(request).await,
        }
    }
}

impl NatsTransport {
    /// A [`Sharing::Any`] subscription: the group's one consumer, pulled by one puller.
    async fn subscribe_any(&self, request: SubscribeRequest) -> Result<Started> {
        let config = &self.inner.config;
        let topic = request.topic().to_owned();
        let stream = self.stream_handle(&topic).await?;
        let consumer = self
            .ensure_consumer(&stream, consumer_config(config, request.group()))
            .await?;
        // Up to half the bus's buffer per pull: with the next pull in flight, at most about a
        // buffer's worth waits outside the bus.
        let batch = config.fetch_batch.min(request.max_buffered() / 2).max(1);
        let source = pull_stream(
            Puller {
                consumer,
                stream,
                connects: Arc::clone(&self.inner.connects),
                recover_limit: 2 * batch as u64,
                partition: None,
            },
            batch,
            topic,
            request.redelivery_delay(),
            self.held(),
            self.inner.io_handle.clone(),
        );
        Ok(request.start(Box::pin(source)))
    }

    pub(crate) async fn stream_handle(&self, topic: &str) -> Result<jetstream::stream::Stream<()>> {
        self.inner
            .js
            .get_stream_no_info(self.inner.config.stream_name(topic))
            .await
            .map_err(|e| NatsError::request("get stream", e).into())
    }

    /// A subscription's registry of held messages, with its progress-ack task.
    pub(crate) fn held(&self) -> Arc<Held> {
        Held::start(
            &self.inner.io_handle,
            self.inner.client.clone(),
            self.inner.config.consumer.shortest_redelivery_wait(),
            Arc::clone(&self.inner.copies_dropped),
        )
    }
}

/// The subscription's one puller: async-nats's pull stream, asking for `batch` messages at a
/// time and for more only as the bus takes them (the bus polls this stream only when its
/// dispatcher has room), so at most about one and a half batches wait outside the bus. Made on
/// the I/O runtime, where its request task lives; dropped (and its task with it) when the
/// subscription ends. It survives reconnects (async-nats re-requests once connected) and is
/// made anew only if it ends: there is never more than one puller per subscription.
pub(crate) fn pull_stream(
    puller: Puller,
    batch: usize,
    topic: String,
    redelivery_delay: Duration,
    held: Arc<Held>,
    io: tokio::runtime::Handle,
) -> impl Stream<Item = Result<Incoming<NatsAck>>> + Send {
    struct State {
        puller: Puller,
        current: Option<pull::Stream>,
        topic: Arc<str>,
        held: Arc<Held>,
        io: tokio::runtime::Handle,
        /// Errors in a row: the next poll waits 100 ms, doubling with each, at most 800 ms.
        errors: u32,
        /// The transport's connection count when the puller last looked.
        generation: u64,
        /// Set when a pull stream replaces an ended one: what the old one was sent in flight
        /// went with it.
        renewed: bool,
        /// The highest stream sequence first delivered to this puller.
        highest: u64,
        /// Messages ready for the bus, oldest first: one as a rule, more after a recovery.
        ready: VecDeque<Incoming<NatsAck>>,
        /// A partition's pull: whether the current term (pull stream, connection and pin)
        /// has been checked for messages an earlier owner left unacked.
        term_checked: bool,
        /// The pin id of the last delivery.
        pin: Option<String>,
        /// How the consumer's deliveries say which message they are.
        acks: AckSubjects,
    }
    let generation = puller.connects.load(Ordering::Relaxed);
    let info = puller.consumer.cached_info();
    let acks = AckSubjects::new(&info.stream_name, &info.name);
    let state = State {
        puller,
        current: None,
        topic: Arc::from(topic),
        held,
        io,
        errors: 0,
        generation,
        renewed: false,
        highest: 0,
        ready: VecDeque::new(),
        term_checked: false,
        pin: None,
        acks,
    };
    // Boxed, and the rare steps' futures too: `unfold` moves its state into each item's future
    // and back out, and moves that future into place, once per message. By value, the
    // puller (async-nats's consumer, with its whole info) and the pull stream were copied
    // twice per message: a tenth of the bus's CPU at 30,000 messages.
    futures::stream::unfold(Box::new(state), move |mut st| async move {
        loop {
            if let Some(incoming) = st.ready.pop_front() {
                return Some((Ok(incoming), st));
            }
            if st.errors > 0 {
                let wait = Duration::from_millis(100 << (st.errors - 1).min(3));
                Box::pin(tokio::time::sleep(wait)).await;
            }
            if let Some(current) = &mut st.current {
                match current.next().await {
                    Some(Ok(msg)) => {
                        st.errors = 0;
                        // Read once: the ack subject's numbers.
                        let info = st.acks.read(&msg);
                        if let Some(partition) = &st.puller.partition {
                            partition.served.store(true, Ordering::Relaxed);
                            // Borrowed: the pin is copied only when it changed. Found by
                            // going over the delivery's few headers: `HeaderMap::get` makes
                            // a header name and hashes it with SipHash, about 470
                            // instructions a delivery.
                            let pin = msg
                                .headers
                                .as_ref()
                                .and_then(|h| {
                                    h.iter()
                                        .find(|(name, _)| AsRef::<str>::as_ref(name) == PIN_HEADER)
                                })
                                .and_then(|(_, values)| values.first())
                                .map(|v| v.as_str());
                            let generation = st.puller.connects.load(Ordering::Relaxed);
                            let repinned = pin.is_some() && pin != st.pin.as_deref();
                            if !st.term_checked || generation != st.generation || repinned {
                                st.term_checked = true;
                                st.generation = generation;
                                if let Some(pin) = pin {
                                    st.pin = Some(pin.to_owned());
                                }
                                if let Some(info) = info {
                                    let recovered = Box::pin(
                                        st.puller
                                            .recover_pending(info, &st.topic, &st.held, &st.io),
                                    )
                                    .await;
                                    st.ready.extend(recovered);
                                }
                            }
                        } else if let Some(info) = info
                            && info.delivered == 1
                        {
                            let seq = info.stream_sequence;
                            let generation = st.puller.connects.load(Ordering::Relaxed);
                            // The first new message since a reconnect or a new pull stream:
                            // what went missing on the way is handed to the bus before it.
                            if generation != st.generation || st.renewed {
                                st.generation = generation;
                                st.renewed = false;
                                if st.highest > 0 && seq > st.highest + 1 {
                                    let lost = st.highest + 1..seq;
                                    let recovered = Box::pin(
                                        st.puller.recover(lost, &st.topic, &st.held, &st.io),
                                    )
                                    .await;
                                    st.ready.extend(recovered);
                                }
                            }
                            st.highest = st.highest.max(seq);
                        }
                        // Every delivery, not only those the server counts as redelivered: a
                        // server that crashed before it stored its consumer's state sends
                        // messages again as first deliveries.
                        let in_flight = st.puller.partition.as_ref().map(|p| &p.in_flight);
                        if let Some(incoming) =
                            incoming(&st.topic, msg, info, redelivery_delay, &st.held, in_flight)
                        {
                            st.ready.push_back(incoming);
                        }
                        // Same stream, next message: making a new stream here would lose what
                        // the server is sending to this one.
                        continue;
                    }
                    // A failed pull request, across a reconnect say: the stream recovers by
                    // itself (it re-requests once connected) and keeps the messages it has
                    // buffered, whose loss would bring them back later, behind newer
                    // messages of their keys. Report it, and pause before polling again.
                    //
                    // Unless the server lost the pull: no heartbeat came, or no server took
                    // the request (the consumer's leader died and no other is elected yet).
                    // async-nats would ask again only when the lost pull expires, plus 5 s; a
                    // new pull asks at once. Nothing is buffered at these errors (async-nats
                    // reports a missed heartbeat with its buffer empty, and no delivery
                    // follows a request nobody took), and what was sent and never arrived is
                    // read back at the new pull's first delivery (a partition's new term, or
                    // the gap check of a renewed pull).
                    Some(Err(e)) => {
                        st.errors += 1;
                        if matches!(
                            e.kind(),
                            pull::MessagesErrorKind::MissingHeartbeat
                                | pull::MessagesErrorKind::NoResponders
                        ) {
                            st.current = None;
                        }
                        let error = NatsError::request("pull", e);
                        return Some((Err(error.into()), st));
                    }
                    // Ended (its consumer was deleted, say, or its requests failed for too
                    // long): make another.
                    None => {
                        tracing::debug!(topic = %st.topic, "pull stream ended; pulling anew");
                        st.current = None;
                    }
                }
            }
            let consumer = st.puller.consumer.clone();
            let pinned = st.puller.partition.as_ref().map(|p| p.member_timeout);
            let made = Box::pin(st.io.spawn(async move {
                let pull = consumer.stream().max_messages_per_batch(batch);
                match pinned {
                    // The pin is kept by pulling within the member timeout: a pull
                    // expires and is renewed at half of it.
                    Some(timeout) => {
                        pull.group(PIN_GROUP)
                            .expires(timeout / 2)
                            .heartbeat(timeout / 5)
                            .messages()
                            .await
                    }
                    None => pull.messages().await,
                }
            }))
            .await;
            match made {
                Ok(Ok(stream)) => {
                    st.renewed = st.highest > 0;
                    st.term_checked = false;
                    st.current = Some(stream);
                }
                Ok(Err(e)) => {
                    // Disconnected, say: report it and pull again after a pause; the client
                    // reconnects.
                    st.errors += 1;
                    return Some((Err(NatsError::request("pull", e).into()), st));
                }
                // The I/O runtime is gone: the transport closed.
                Err(_) => return None,
            }
        }
    })
}

/// The header of a pinned consumer's deliveries naming the pin they were sent under.
const PIN_HEADER: &str = "Nats-Pin-Id";

/// The bus's incoming message for a delivery, unless the delivery is a copy of a message the
/// subscription holds (its first copy settles it) or acked already (the copy is acked again
/// with the next progress acks: no task per copy, and the stream is not held up by the ack).
fn incoming(
    topic: &Arc<str>,
    msg: jetstream::Message,
    info: Option<Delivered>,
    redelivery_delay: Duration,
    held: &Arc<Held>,
    in_flight: Option<&InFlight>,
) -> Option<Incoming<NatsAck>> {
    // JetStream's own record of when it stored the message, and its stream sequence (from the
    // ack subject).
    let (timestamp, stream_seq) = match info {
        Some(info) => (Some(info.published), Some(info.stream_sequence)),
        None => (None, None),
    };
    let (message, seq) = message(
        topic,
        msg.headers.as_ref(),
        msg.payload.clone(),
        timestamp,
        stream_seq,
    );
    let id = match held.hold(msg.reply.clone(), seq) {
        Ok(id) => id,
        Err(Redelivery::StillHeld) => return None,
        Err(Redelivery::Acked) => {
            if let Some(reply) = msg.reply.clone() {
                held.ack_later(reply);
            }
            return None;
        }
    };
    Some(Incoming {
        message: Arc::new(message),
        ack: NatsAck {
            held: Arc::clone(held),
            id: Some(id),
            seq,
            redelivery_delay,
            in_flight: in_flight.map(InFlight::enter),
        },
    })
}

/// What a subscription's puller pulls from, and how it notices reconnects.
pub(crate) struct Puller {
    pub(crate) consumer: jetstream::consumer::Consumer<pull::Config>,
    pub(crate) stream: jetstream::stream::Stream<()>,
    /// The transport's connection count.
    pub(crate) connects: Arc<AtomicU64>,
    /// The most messages a connection can lose on their way: what the puller's requests had
    /// outstanding (about one and a half pulls). A wider gap is not all ours (other members
    /// of the group took some) and is left to redelivery.
    pub(crate) recover_limit: u64,
    /// Set when this pulls one partition of a keyed group.
    pub(crate) partition: Option<PartitionPull>,
}

/// What a keyed group's pull of one partition needs besides its consumer.
pub(crate) struct PartitionPull {
    /// The partition's subject.
    pub(crate) subject: String,
    /// The partition's messages in the bus.
    pub(crate) in_flight: InFlight,
    /// The group's member timeout (the consumer's pin timeout).
    pub(crate) member_timeout: Duration,
    /// The most messages an earlier owner can have left unacked: the consumer's
    /// `max_ack_pending`.
    pub(crate) max_pending: usize,
    /// The partition's hand-over record.
    pub(crate) handover: Handover,
    /// Set at the first delivery: this member was the pinned one, so its release may
    /// record a clean hand-over.
    pub(crate) served: Arc<AtomicBool>,
    /// Stream sequences earlier owners acked above the ack floor (sorted), from the hand-over
    /// record this term opened with: never read back, and passed on in this owner's own
    /// record (the floor stays below a message left unacked, and every ack above it must be
    /// remembered until the floor passes it).
    pub(crate) inherited: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Puller {
    /// Reads from the stream the messages in `lost`: stream sequences first delivered (to this
    /// puller, as far as the server knows) while a connection went down, and so never received.
    /// A server killed while sending keeps them as delivered and sends them again only after
    /// the ack wait, behind newer messages of their keys; read now, they are handed to the bus
    /// in order, and settled through their ack subjects (see `read_back`); a later copy the
    /// server sends anyway is recognised as a copy (see [`Held`]).
    async fn recover(
        &self,
        lost: std::ops::Range<u64>,
        topic: &Arc<str>,
        held: &Arc<Held>,
        io: &tokio::runtime::Handle,
    ) -> Vec<Incoming<NatsAck>> {
        if lost.end - lost.start > self.recover_limit {
            tracing::warn!(topic = %topic, from = lost.start, to = lost.end, "too many messages missed across a reconnect to read back; they come back with redelivery");
            return Vec::new();
        }
        let stream = self.stream.clone();
        let read = io
            .spawn(async move {
                let mut read = Vec::new();
                for seq in lost {
                    read.push((seq, stream.get_raw_message(seq).await));
                }
                read
            })
            .await
            .unwrap_or_default();
        let mut recovered = Vec::new();
        for (seq, result) in read {
            match result {
                Ok(m) => recovered.extend(self.read_back(m, 0, topic, held)),
                // Deleted (by limits, say) or not ours to read: nothing to hand on.
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => {
                    tracing::warn!(topic = %topic, seq, error = %e, "could not read back a message missed across a reconnect; it comes back with redelivery");
                }
            }
        }
        recovered
    }

    /// The bus's incoming message for a message read from the stream, unless it is held or
    /// acked already (it did arrive after all).
    ///
    /// It is settled like a delivery, through the ack subject the server would have given it
    /// (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`):
    /// for acks and progress the server reads only the stream sequence, and looks it up among
    /// the consumer's pending messages. A nak also needs a consumer sequence above the ack
    /// floor: `consumer_seq` is the consumer's last delivered one when known (0 otherwise: the
    /// nak is ignored and the message comes back after the ack wait).
    fn read_back(
        &self,
        m: jetstream::message::StreamMessage,
        consumer_seq: u64,
        topic: &Arc<str>,
        held: &Arc<Held>,
    ) -> Option<Incoming<NatsAck>> {
        let seq = m.sequence;
        let (message, key) = message(
            topic,
            Some(&m.headers),
            m.payload.clone(),
            Some(SystemTime::from(m.time)),
            Some(seq),
        );
        let info = self.consumer.cached_info();
        let reply = async_nats::Subject::from(format!(
            "$JS.ACK.{}.{}.1.{seq}.{consumer_seq}.0.0",
            info.stream_name, info.name
        ));
        let id = held.hold(Some(reply), key).ok()?;
        Some(Incoming {
            message: Arc::new(message),
            ack: NatsAck {
                held: Arc::clone(held),
                id: Some(id),
                seq: key,
                redelivery_delay: Duration::ZERO,
                in_flight: self.partition.as_ref().map(|p| p.in_flight.enter()),
            },
        })
    }

    /// For a partition's pull, at the first delivery of a term (a new pull stream, a new
    /// connection, a new pin): the partition's messages that an earlier owner (or this one,
    /// across a reconnect) was sent and did not ack, read from the stream, oldest first.
    ///
    /// The server would send them again only after their ack wait, and by then it may have sent
    /// newer messages of their keys to the new owner: read now and handed to the bus before
    /// the delivery that opened the term, they keep per-key order across a hand-over. A first
    /// delivery (not a redelivery) is newer than everything delivered before it, so what is
    /// left unacked lies between the consumer's ack floor and it; a redelivery opening the
    /// term may have unacked messages after it too, up to the consumer's last delivered
    /// sequence: then the opening one is read back too, in its place, and its delivery is
    /// dropped as a copy. Messages acked above the floor are read too (the server does not say which):
    /// handled again, at-least-once, unless this subscription acked them (see [`Held`]). What
    /// is read back is settled through its ack subject (see `read_back`).
    ///
    /// After a clean hand-over, the earlier owner's record (see
    /// [`Released`](crate::membership::Released)) says which messages of its window it acked:
    /// exactly the others are read back, none handled twice. The record is trusted only if
    /// nothing was delivered between it and the delivery opening this term (else it is from an
    /// older term, or the server sent the earlier owner more after it).
    async fn recover_pending(
        &self,
        opening: Delivered,
        topic: &Arc<str>,
        held: &Arc<Held>,
        io: &tokio::runtime::Handle,
    ) -> Vec<Incoming<NatsAck>> {
        let Some(partition) = &self.partition else {
            return Vec::new();
        };
        let handover = partition.handover.clone();
        let inherited = Arc::clone(&partition.inherited);
        let consumer = self.consumer.clone();
        let stream = self.stream.clone();
        let subject = partition.subject.clone();
        let limit = partition.max_pending;
        let read = io
            .spawn(async move {
                let info = match consumer.get_info().await {
                    Ok(info) => info,
                    Err(e) => return Err(e.to_string()),
                };
                // The window that may hold unacked messages, and what in it was acked.
                let lock = |m: &std::sync::Mutex<Vec<u64>>| {
                    m.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                };
                let (mut seq, end, acked) = match handover.take().await {
                    // Every delivery, a redelivery too, takes the next consumer sequence: the
                    // record is this term's if the opening delivery is the first after it.
                    Some(r) if opening.consumer_sequence == r.consumer_seq + 1 => {
                        *inherited
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = r.acked.clone();
                        (r.floor + 1, r.last, r.acked)
                    }
                    _ => {
                        let end = if opening.delivered > 1 {
                            info.delivered.stream_sequence
                        } else {
                            opening.stream_sequence.saturating_sub(1)
                        };
                        (info.ack_floor.stream_sequence + 1, end, lock(&inherited))
                    }
                };
                let mut read = Vec::new();
                while seq <= end && read.len() < limit {
                    match stream.get_first_raw_message_by_subject(&subject, seq).await {
                        Ok(m) if m.sequence <= end => {
                            seq = m.sequence + 1;
                            if acked.binary_search(&m.sequence).is_err() {
                                read.push(m);
                            }
                        }
                        Ok(_) => break,
                        Err(e)
                            if e.kind()
                                == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                        {
                            break;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok((read, info.delivered.consumer_sequence))
            })
            .await;
        match read {
            Ok(Ok((read, consumer_seq))) => {
                if !read.is_empty() {
                    tracing::debug!(topic = %topic, subject = %partition.subject, messages = read.len(), "read back the partition's unacked messages at a new term");
                }
                read.into_iter()
                    .filter_map(|m| self.read_back(m, consumer_seq, topic, held))
                    .collect()
            }
            Ok(Err(error)) => {
                tracing::warn!(topic = %topic, subject = %partition.subject, %error, "could not read back the partition's unacked messages; they come back with redelivery");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }
}
