//! Subscribing and the pull loop: the subscription's durable consumer and its one puller,
//! the bus's incoming messages for its deliveries, and the recovery of messages lost on the
//! way across a reconnect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull};
use eventbus_core::transport::{Incoming, Started, SubscribeRequest, Subscriber};
use eventbus_core::{Error, Result};
use futures::{Stream, StreamExt};

use crate::NatsAck;
use crate::held::{Held, Redelivery};
use crate::mapping::message;
use crate::provision::{consumer_config, consumer_diff, consumer_info};
use crate::{NAME, NatsError, NatsTransport, Provision};

#[async_trait::async_trait]
impl Subscriber for NatsTransport {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started> {
        self.check_open()?;
        let config = &self.inner.config;
        let topic = request.topic().to_owned();
        let group = request.group().to_owned();
        self.ensure_stream(&topic).await?;
        let stream_name = config.stream_name(&topic);
        let stream = self
            .inner
            .js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| NatsError::request("get stream", e))?;
        let want = consumer_config(config, &group);
        let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(&group, want.clone())
            .await
            .map_err(|e| NatsError::request("create consumer", e))?;
        // The consumer that runs must be the one configured (the Go SDK's defect 3): compare
        // through consumer info, update where allowed, and check again.
        let mut difference = consumer_diff(&want, &consumer_info(&mut consumer).await?);
        if difference.is_some() && config.provision == Provision::CreateOrUpdate {
            consumer = stream
                .create_consumer(want.clone())
                .await
                .map_err(|e| NatsError::request("update consumer", e))?;
            difference = consumer_diff(&want, &consumer_info(&mut consumer).await?);
        }
        if let Some((field, expected, actual)) = difference {
            return Err(Error::SettingsMismatch {
                transport: NAME,
                resource: format!("consumer {group} on stream {stream_name}"),
                setting: field,
                expected,
                actual,
            });
        }
        // Up to half the bus's buffer per pull: with the next pull in flight, at most about a
        // buffer's worth waits outside the bus.
        let batch = config.fetch_batch.min(request.max_buffered() / 2).max(1);
        let held = Held::start(
            &self.inner.io_handle,
            self.inner.client.clone(),
            config.consumer.shortest_redelivery_wait(),
            Arc::clone(&self.inner.copies_dropped),
        );
        let source = pull_stream(
            Puller {
                consumer,
                stream,
                connects: Arc::clone(&self.inner.connects),
                recover_limit: 2 * batch as u64,
            },
            batch,
            topic,
            request.redelivery_delay(),
            held,
            self.inner.io_handle.clone(),
        );
        Ok(request.start(Box::pin(source)))
    }
}

/// The subscription's one puller: async-nats's pull stream, asking for `batch` messages at a
/// time and for more only as the bus takes them (the bus polls this stream only when its
/// dispatcher has room), so at most about one and a half batches wait outside the bus. Made on
/// the I/O runtime, where its request task lives; dropped (and its task with it) when the
/// subscription ends. It survives reconnects (async-nats re-requests once connected) and is
/// made anew only if it ends: there is never more than one puller per subscription.
fn pull_stream(
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
        /// Set after an error: the next poll waits a little.
        pause: bool,
        /// The transport's connection count when the puller last looked.
        generation: u64,
        /// Set when a pull stream replaces an ended one: what the old one was sent in flight
        /// went with it.
        renewed: bool,
        /// The highest stream sequence first delivered to this puller.
        highest: u64,
        /// Messages ready for the bus, oldest first: one as a rule, more after a recovery.
        ready: VecDeque<Incoming<NatsAck>>,
    }
    let generation = puller.connects.load(Ordering::Relaxed);
    let state = State {
        puller,
        current: None,
        topic: Arc::from(topic),
        held,
        io,
        pause: false,
        generation,
        renewed: false,
        highest: 0,
        ready: VecDeque::new(),
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(incoming) = st.ready.pop_front() {
                return Some((Ok(incoming), st));
            }
            if std::mem::take(&mut st.pause) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Some(current) = &mut st.current {
                match current.next().await {
                    Some(Ok(msg)) => {
                        // Parsed once: the reply subject is split and its numbers read.
                        let info = Delivered::of(&msg);
                        if let Some(info) = info
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
                                    let recovered =
                                        st.puller.recover(lost, &st.topic, &st.held, &st.io).await;
                                    st.ready.extend(recovered);
                                }
                            }
                            st.highest = st.highest.max(seq);
                        }
                        // Every delivery, not only those the server counts as redelivered: a
                        // server that crashed before it stored its consumer's state sends
                        // messages again as first deliveries.
                        if let Some(incoming) =
                            incoming(&st.topic, msg, info, redelivery_delay, &st.held)
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
                    Some(Err(e)) => {
                        st.pause = true;
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
            let made = st
                .io
                .spawn(async move {
                    consumer
                        .stream()
                        .max_messages_per_batch(batch)
                        .messages()
                        .await
                })
                .await;
            match made {
                Ok(Ok(stream)) => {
                    st.renewed = st.highest > 0;
                    st.current = Some(stream);
                }
                Ok(Err(e)) => {
                    // Disconnected, say: report it and pull again; the client reconnects.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Some((Err(NatsError::request("pull", e).into()), st));
                }
                // The I/O runtime is gone: the transport closed.
                Err(_) => return None,
            }
        }
    })
}

/// What a delivery's reply subject says.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    stream_sequence: u64,
    delivered: i64,
    published: SystemTime,
}

impl Delivered {
    fn of(msg: &jetstream::Message) -> Option<Self> {
        let info = msg.info().ok()?;
        Some(Delivered {
            stream_sequence: info.stream_sequence,
            delivered: info.delivered,
            published: SystemTime::from(info.published),
        })
    }
}

/// The bus's incoming message for a delivery, unless the delivery is a copy of a message the
/// subscription holds (its first copy settles it) or acked already (the copy is acked again
/// with the next progress acks: no task per copy, and the stream is not held up by the ack).
fn incoming(
    topic: &Arc<str>,
    msg: jetstream::Message,
    info: Option<Delivered>,
    redelivery_delay: Duration,
    held: &Arc<Held>,
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
            held: Some((id, Arc::clone(held))),
            seq,
            msg: Some(msg),
            redelivery_delay,
        },
    })
}

/// What a subscription's puller pulls from, and how it notices reconnects.
struct Puller {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    stream: jetstream::stream::Stream<()>,
    /// The transport's connection count.
    connects: Arc<AtomicU64>,
    /// The most messages a connection can lose on their way: what the puller's requests had
    /// outstanding (about one and a half pulls). A wider gap is not all ours (other members
    /// of the group took some) and is left to redelivery.
    recover_limit: u64,
}

impl Puller {
    /// Reads from the stream the messages in `lost`: stream sequences first delivered (to this
    /// puller, as far as the server knows) while a connection went down, and so never received.
    /// A server killed while sending keeps them as delivered and sends them again only after
    /// the ack wait, behind newer messages of their keys; read now, they are handed to the bus
    /// in order. They have no reply subject: the server's later copy is recognised as a copy
    /// (see [`Held`]) and acked then.
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
                Ok(m) => {
                    let (message, key) = message(
                        topic,
                        Some(&m.headers),
                        m.payload,
                        Some(SystemTime::from(m.time)),
                        Some(seq),
                    );
                    // Held or acked already (it did arrive after all): nothing to hand on.
                    let Ok(id) = held.hold(None, key) else {
                        continue;
                    };
                    recovered.push(Incoming {
                        message: Arc::new(message),
                        ack: NatsAck {
                            held: Some((id, Arc::clone(held))),
                            seq: key,
                            msg: None,
                            redelivery_delay: Duration::ZERO,
                        },
                    });
                }
                // Deleted (by limits, say) or not ours to read: nothing to hand on.
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => {
                    tracing::warn!(topic = %topic, seq, error = %e, "could not read back a message missed across a reconnect; it comes back with redelivery");
                }
            }
        }
        recovered
    }
}
