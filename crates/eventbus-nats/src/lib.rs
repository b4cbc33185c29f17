//! NATS JetStream transport for eventbus, on async-nats.
//!
//! ```no_run
//! use eventbus_core::{EventBus, Message, Delivery, BoxError, handler_fn};
//! use eventbus_nats::{NatsConfig, NatsTransport};
//!
//! # #[tokio::main] async fn main() -> eventbus_core::Result<()> {
//! let transport = NatsTransport::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
//! let bus = EventBus::new(transport);
//! let sub = bus
//!     .subscribe("orders", "billing", handler_fn(|d: Delivery| async move {
//!         println!("{:?}", d.message().key());
//!         Ok::<_, BoxError>(())
//!     }))
//!     .await?;
//! bus.publish(Message::new("orders", "placed").with_key("order-1")).await?; // waits for the ack
//! sub.close().await;
//! bus.close().await // drains, closes the client; no task or thread left
//! # }
//! ```
//!
//! # Mapping
//! - A topic is a JetStream stream of its own, named by [`NatsConfig::stream_name`]
//!   (collision-free), holding one subject: the topic itself, or `<subject_prefix>.<topic>`.
//! - A consumer group is a durable pull consumer named after the group on the topic's stream;
//!   the subscriptions of a group, in any process, pull from it and share its messages.
//! - Message id → `Nats-Msg-Id` (so the stream's duplicate window drops a retried publish),
//!   key → `eb-key`, other headers (envelope fields included) as they are. `eb-key` and every
//!   `Nats-*` name are reserved ([`validate::RESERVED_HEADERS`](eventbus_core::validate)): a
//!   user header with one of those names is refused with [`Error::InvalidHeader`], so a header
//!   never decides a message's key; a received message's `Nats-*` headers (JetStream's own,
//!   from other clients) are not handed to handlers. A received message's timestamp is when
//!   JetStream stored it.
//!
//! # Guarantees
//! - Publishing returns after JetStream's ack; a message larger than the server's
//!   `max_payload` fails with [`Error::PayloadTooLarge`] before anything is sent; there is no
//!   fallback to core NATS: no stream, no publish.
//! - Pulls are driven by the bus: the transport asks the server for more only when the bus
//!   takes the previous batch, in batches no larger than the bus can buffer.
//! - Handled → ack; failed for good → nak with [`ConsumerOptions::redelivery_delay`];
//!   cancelled at shutdown → left unacked, so the server redelivers it after
//!   [`ConsumerOptions::ack_wait`] (messages prefetched but not yet handed to the bus too).
//! - **Ordering**: within one subscription, messages of a key are handled one at a time in the
//!   order JetStream delivered them, failures retried in place. A *redelivery* can be overtaken:
//!   a message that failed for good (nak'd), or one left unacked at a close, comes back after
//!   later messages of its key may have been handled. Across the
//!   members of one group there is no key affinity: JetStream hands messages to whichever member
//!   pulls, so one key's messages may be handled concurrently by different members. Use one
//!   member per group where cross-instance order matters.
//! - Messages in the bus (queued behind their key, running, backing off) get in-progress acks,
//!   so the server does not redeliver them while they are ours. Messages prefetched but not
//!   yet taken by a full bus (at most half its buffer) cannot get them, and past `ack_wait` the
//!   server sends them again.
//! - **Copies**: a subscription recognises a message it holds or acked among its last 32,768
//!   stream sequences by stream sequence, message id and store time, and drops any further copy
//!   (re-acking it if it was acked), so it is neither handled twice nor out of its key's order
//!   ([`NatsTransport::copies_dropped`] counts them). That covers copies the server counts as
//!   redeliveries (ack wait passed, ack lost) and those it sends as first deliveries again: a
//!   server killed before it stored its consumer's state (acks and deliveries) forgets them.
//!   Measured with the conformance check `reconnect` (10,000 keyed messages, the server killed
//!   with SIGKILL and restarted twice): 270 messages handled twice before copies sent as first
//!   deliveries were recognised, none since. Not deduplicated: copies reaching *another*
//!   subscription (another member of the group, or the same service after a restart: the
//!   memory of a subscription goes with it), and copies more than 32,768 sequences behind the
//!   newest acked one. Use a
//!   [`DedupLayer`](eventbus_core::dedup::DedupLayer) where those matter.
//! - **Lost on the way**: messages the server sent while a connection went down (or to a pull
//!   stream that ended) never arrive, and the server, which counts them as delivered, sends them
//!   again only after `ack_wait`, behind newer messages of their keys. The puller notices the
//!   gap in stream sequences at its first new message after a reconnect or a new pull stream,
//!   reads the missing messages from the stream (at most two pulls' worth) and hands them to
//!   the bus first, so per-key order holds across server crashes; the server's later copies are
//!   recognised as copies and acked. In a group with several members the gap may hold messages
//!   another member took: those are then handled by both (at-least-once).
//! - The client's own tasks run on a thread the transport owns; `close` drains the client and
//!   ends that thread, so nothing is left, whether the server is up or not.
#![warn(missing_docs)]

mod config;
mod error;
mod io;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_nats::{Event, HeaderMap};
use eventbus_core::transport::{
    Acknowledge, Capabilities, Incoming, Publisher, Settle, Started, SubscribeRequest, Subscriber,
    Transport,
};
use eventbus_core::{Error, Headers, Key, Message, MessageId, Outcome, Result};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

pub use config::{ConsumerOptions, NatsConfig, Provision, Retention, Storage, StreamOptions};
pub use error::NatsError;

const NAME: &str = "nats";
const HEADER_ID: &str = "Nats-Msg-Id";
const HEADER_KEY: &str = "eb-key";

/// Connection state, as the client reports it (the core's type, shared by every transport).
pub use eventbus_core::ConnectionState;

/// A connection to a NATS server with JetStream.
///
/// One connection per transport; clones of an [`EventBus`](eventbus_core::EventBus) share it,
/// and so do clones of the transport (handles to read its state after handing it to a bus;
/// the bus's `close` closes it for all of them). Two transports are two connections, like two
/// processes.
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    io: tokio::sync::Mutex<io::Io>,
    io_handle: tokio::runtime::Handle,
    ensured: Mutex<HashSet<String>>,
    state: watch::Receiver<ConnectionState>,
    connects: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<(std::time::SystemTime, String)>>>,
    copies_dropped: Arc<AtomicU64>,
    closed: AtomicBool,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("url", &self.inner.config.url)
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// What the transport offers (a test harness adds `broker_restart` when it owns the server).
    pub const CAPABILITIES: Capabilities = Capabilities::none()
        .with_consumer_groups()
        .with_persistence();

    /// Connects. A server that is down, refuses, or rejects the credentials gives a typed error
    /// within [`NatsConfig::connect_timeout`].
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        config.consumer.validate()?;
        let mut io = io::Io::start()
            .await
            .map_err(|e| Error::transport(NAME, e))?;
        let (state_tx, state) = watch::channel(ConnectionState::Disconnected);
        let connects = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&connects);
        let last_error = Arc::new(Mutex::new(None));
        let errors = Arc::clone(&last_error);
        let state_tx = Arc::new(state_tx);
        let options = config
            .connect
            .clone()
            .connection_timeout(config.connect_timeout)
            .event_callback(move |event| {
                let state_tx = Arc::clone(&state_tx);
                let counter = Arc::clone(&counter);
                let errors = Arc::clone(&errors);
                async move {
                    let error = match &event {
                        Event::ServerError(e) => Some(format!("server error: {e}")),
                        Event::ClientError(e) => Some(format!("client error: {e}")),
                        Event::SlowConsumer(sid) => {
                            Some(format!("slow consumer (subscription {sid})"))
                        }
                        Event::Disconnected => Some("disconnected".to_owned()),
                        _ => None,
                    };
                    if let Some(error) = error {
                        *errors.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some((std::time::SystemTime::now(), error));
                    }
                    let state = match event {
                        Event::Connected => {
                            counter.fetch_add(1, Ordering::Relaxed);
                            ConnectionState::Connected
                        }
                        Event::Disconnected => ConnectionState::Disconnected,
                        Event::Closed => ConnectionState::Closed,
                        _ => return,
                    };
                    state_tx.send_replace(state);
                }
            });
        let url = config.url.clone();
        let timeout = config.connect_timeout;
        let connecting = io.run(async move { options.connect(url).await });
        let client = match tokio::time::timeout(timeout + Duration::from_secs(1), connecting).await
        {
            Ok(Some(Ok(client))) => client,
            Ok(Some(Err(source))) => {
                io.stop().await;
                return Err(NatsError::Connect {
                    url: config.url.clone(),
                    source,
                }
                .into());
            }
            _ => {
                io.stop().await;
                return Err(NatsError::ConnectTimeout {
                    url: config.url.clone(),
                    after: timeout,
                }
                .into());
            }
        };
        // The JetStream context spawns an ack-tracking task where it is made: make it on the
        // I/O runtime too.
        let for_js = client.clone();
        let Some(js) = io.run(async move { jetstream::new(for_js) }).await else {
            io.stop().await;
            return Err(Error::transport(
                NAME,
                ErrorText("the NATS I/O thread stopped".into()),
            ));
        };
        // A server without JetStream (or an account without access) fails here, not later.
        // (A plain request: the account-info response format differs between server versions.)
        if let Err(e) = client.request("$JS.API.INFO", bytes::Bytes::new()).await {
            drop(js);
            let _ = client.drain().await;
            io.stop().await;
            return Err(NatsError::JetStreamUnavailable(e.to_string()).into());
        }
        Ok(NatsTransport {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                io_handle: io.handle().clone(),
                io: tokio::sync::Mutex::new(io),
                ensured: Mutex::default(),
                state,
                connects,
                last_error,
                copies_dropped: Arc::default(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The connection's state now.
    pub fn connection_state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// Watches the connection's state.
    pub fn watch_connection(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Times the client has (re)connected.
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Redelivered copies dropped because this transport's subscriptions still held the
    /// message or had acked it already (see the crate docs on redelivery).
    pub fn copies_dropped(&self) -> u64 {
        self.inner.copies_dropped.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The underlying JetStream context (for tools and tests).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Makes sure `topic`'s stream is as configured, per [`Provision`]. Done once per topic.
    pub async fn ensure_stream(&self, topic: &str) -> Result<()> {
        let inner = &self.inner;
        if inner.config.provision == Provision::Skip
            || inner
                .ensured
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(topic)
        {
            return Ok(());
        }
        let want = stream_config(&inner.config, topic);
        match inner.js.get_stream(&want.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| NatsError::request("stream info", e))?;
                if let Some((field, expected, actual)) = stream_diff(&want, &info.config) {
                    match inner.config.provision {
                        Provision::CreateOrUpdate => {
                            inner
                                .js
                                .update_stream(want.clone())
                                .await
                                .map_err(|e| NatsError::request("update stream", e))?;
                        }
                        Provision::ValidateOnly => {
                            return Err(NatsError::StreamMismatch {
                                stream: want.name,
                                field,
                                expected,
                                actual,
                            }
                            .into());
                        }
                        Provision::CreateOnly | Provision::Skip => {}
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                if inner.config.provision == Provision::ValidateOnly {
                    return Err(NatsError::StreamMissing {
                        stream: want.name,
                        topic: topic.to_owned(),
                    }
                    .into());
                }
                inner
                    .js
                    .create_stream(want)
                    .await
                    .map_err(|e| NatsError::request("create stream", e))?;
            }
            Err(e) => return Err(NatsError::request("stream info", e).into()),
        }
        inner
            .ensured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    /// Sends one message (its stream ensured by the caller) and returns its ack future.
    async fn send(&self, message: &Message) -> Result<jetstream::context::PublishAckFuture> {
        let max = self.inner.client.max_payload();
        let size = message.encoded_len();
        if max > 0 && size > max {
            return Err(Error::PayloadTooLarge { size, limit: max });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in message.headers().iter() {
            // The bus validated them already; a transport used on its own must not panic in
            // async-nats's header constructors either (the core's rule is the stricter one).
            eventbus_core::validate::validate_header(name, value)?;
            headers.insert(name, value);
        }
        headers.insert(HEADER_ID, message.id().as_str());
        if let Some(key) = message.key() {
            headers.insert(HEADER_KEY, key.as_str());
        }
        self.inner
            .js
            .publish_with_headers(
                self.inner.config.subject(message.topic()),
                headers,
                message.payload().clone(),
            )
            .await
            .map_err(|e| NatsError::request("publish", e).into())
    }
}

async fn confirm(ack: jetstream::context::PublishAckFuture) -> Result<()> {
    ack.await
        .map(drop)
        .map_err(|e| NatsError::request("publish ack", e).into())
}

fn stream_config(config: &NatsConfig, topic: &str) -> stream::Config {
    let o = config.stream_for(topic);
    stream::Config {
        name: config.stream_name(topic),
        subjects: vec![config.subject(topic)],
        storage: match o.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        retention: match o.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
        },
        max_age: o.max_age.unwrap_or_default(),
        max_bytes: o.max_bytes.unwrap_or(-1),
        max_messages: o.max_messages.unwrap_or(-1),
        num_replicas: o.replicas,
        duplicate_window: o.duplicate_window,
        ..Default::default()
    }
}

/// The first of `fields` (name, configured, on the server) whose values differ, formatted.
fn first_difference<const N: usize>(
    fields: [(&'static str, &dyn std::fmt::Debug, &dyn std::fmt::Debug); N],
) -> Option<(&'static str, String, String)> {
    fields
        .into_iter()
        .map(|(name, want, have)| (name, format!("{want:?}"), format!("{have:?}")))
        .find(|(_, want, have)| want != have)
}

/// The first stream setting that differs between what is configured and what the server has.
fn stream_diff(
    want: &stream::Config,
    have: &stream::Config,
) -> Option<(&'static str, String, String)> {
    first_difference([
        ("subjects", &want.subjects, &have.subjects),
        ("storage", &want.storage, &have.storage),
        ("retention", &want.retention, &have.retention),
        ("max_age", &want.max_age, &have.max_age),
        ("max_bytes", &want.max_bytes, &have.max_bytes),
        ("max_messages", &want.max_messages, &have.max_messages),
        ("replicas", &want.num_replicas, &have.num_replicas),
        (
            "duplicate_window",
            &want.duplicate_window,
            &have.duplicate_window,
        ),
    ])
}

fn consumer_config(config: &NatsConfig, group: &str) -> pull::Config {
    let c = &config.consumer;
    pull::Config {
        durable_name: Some(group.to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver.unwrap_or(-1),
        max_ack_pending: c.max_ack_pending,
        backoff: c.backoff.clone(),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl Publisher for NatsTransport {
    async fn publish(&self, message: Message) -> Result<()> {
        self.check_open()?;
        self.ensure_stream(message.topic()).await?;
        confirm(self.send(&message).await?).await
    }

    /// Sends every message, then waits for all the acks (pipelined).
    async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        let mut acks = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            if i == 0 || message.topic() != messages[i - 1].topic() {
                self.ensure_stream(message.topic()).await?;
            }
            acks.push(self.send(message).await?);
        }
        for ack in acks {
            confirm(ack).await?;
        }
        Ok(())
    }
}

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
            return Err(NatsError::ConsumerMismatch {
                stream: stream_name,
                consumer: group,
                field,
                expected,
                actual,
            }
            .into());
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
            config.consumer.redelivery_delay,
            held,
            self.inner.io_handle.clone(),
        );
        Ok(request.start(Box::pin(source)))
    }
}

async fn consumer_info(
    consumer: &mut jetstream::consumer::Consumer<pull::Config>,
) -> Result<jetstream::consumer::Config> {
    let info = consumer
        .info()
        .await
        .map_err(|e| NatsError::request("consumer info", e))?;
    Ok(info.config.clone())
}

/// The first consumer setting that differs between what is configured and what runs.
fn consumer_diff(
    want: &pull::Config,
    have: &jetstream::consumer::Config,
) -> Option<(&'static str, String, String)> {
    first_difference([
        ("ack_wait", &want.ack_wait, &have.ack_wait),
        ("max_deliver", &want.max_deliver, &have.max_deliver),
        (
            "max_ack_pending",
            &want.max_ack_pending,
            &have.max_ack_pending,
        ),
        ("backoff", &want.backoff, &have.backoff),
    ])
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

#[derive(Debug)]
struct ErrorText(String);
impl std::fmt::Display for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ErrorText {}

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

/// The bus's message for a stream message, and which stream message it is.
fn message(
    topic: &Arc<str>,
    nats_headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
    timestamp: Option<SystemTime>,
    stream_seq: Option<u64>,
) -> (Message, Option<CopyKey>) {
    let mut id = None;
    let mut key = None;
    let mut headers = Headers::default();
    if let Some(h) = nats_headers {
        for (name, values) in h.iter() {
            let Some(value) = values.first() else {
                continue;
            };
            match name.as_ref() {
                HEADER_ID => id = Some(MessageId::from(value.as_str())),
                HEADER_KEY => key = Some(Key::from(value.as_str())),
                // JetStream's own (`Nats-Expected-*`, `Nats-Rollup`, ...): acted on when the
                // message was published, and acted on again if it were republished (a dead
                // letter, a replay). Not user headers: the bus refuses them as reserved.
                name if is_nats_header(name) => {}
                name => {
                    headers.insert(name, value.as_str());
                }
            }
        }
    }
    let seq = stream_seq.map(|seq| {
        let id = id.as_ref().map(MessageId::as_str);
        (seq, identity_hash(id, timestamp))
    });
    // A message published without our headers (by another client) still gets an id: the
    // stream sequence would be stabler, but reading it means parsing the reply subject.
    let message = Message::from_parts(
        id.unwrap_or_default(),
        topic.as_ref(),
        key,
        headers,
        payload,
        timestamp.unwrap_or_else(SystemTime::now),
    );
    (message, seq)
}

/// JetStream's own headers: the core's reserved prefix (`Nats-`).
fn is_nats_header(name: &str) -> bool {
    eventbus_core::validate::reserved_prefix(name).is_some()
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

/// Messages a subscription has taken and not settled (queued behind their key, running, or
/// backing off before a retry). A task on the transport's I/O runtime sends each of them an
/// in-progress ack every third of the shortest redelivery wait, so the server never redelivers a
/// message that is still being worked on. The task ends when the subscription's stream and acks
/// are gone.
///
/// Messages the client has received but the bus has not taken yet (at most one pull batch,
/// while the bus is full) cannot get those acks: past the ack wait the server sends them again.
/// So `Held` also remembers the stream sequences it holds and the ones it acked last, and the
/// puller drops a redelivered copy of either: handling it would repeat a message, and out of
/// its key's order.
struct Held {
    state: Mutex<HeldState>,
    next: AtomicU64,
    /// The transport's count of copies dropped.
    dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct HeldState {
    replies: HashMap<u64, async_nats::Subject>,
    /// Messages held now (with their copy count).
    seqs: HashMap<CopyKey, u32>,
    /// Messages acked last: slot `seq % ACKED_MEMORY` holds the last acked message whose stream
    /// sequence falls there (sequences start at 1, so `(0, 0)` is an empty slot). Direct-mapped
    /// rather than a set with an eviction queue: one write per ack, no hashing, no growth.
    /// Made at the first ack, zeroed by the allocator (pages are touched as sequences reach
    /// them).
    acked: Vec<CopyKey>,
    /// Reply subjects of skipped copies of acked messages, acked on the next tick.
    ack_later: Vec<async_nats::Subject>,
}

/// Which stream message a delivery is: its stream sequence, and a hash of its message id and
/// of when the stream stored it. After an unclean server restart a stream may reuse the
/// sequences of messages it lost, so the sequence alone could name another message; the store
/// time tells such messages apart also when they carry no id (published by another client).
type CopyKey = (u64, u64);

fn identity_hash(id: Option<&str>, stored: Option<SystemTime>) -> u64 {
    use std::hash::BuildHasher;
    // Fixed seed: only compared within this process.
    foldhash::fast::FixedState::with_seed(0).hash_one((id, stored))
}

/// How many acked sequences a subscription remembers (the last this many stream sequences'
/// worth). A stale copy comes from messages delivered about the same time as the acked one (at
/// most a pull batch plus the bus buffer apart), or from what a crashed server had not stored
/// of its consumer's state (in the check `reconnect`, a few hundred messages); 32 Ki slots of
/// 16 bytes (512 KiB per subscription, touched only as sequences reach them) cover both.
const ACKED_MEMORY: usize = 32 * 1024;

fn acked_slot((seq, _): CopyKey) -> usize {
    (seq % ACKED_MEMORY as u64) as usize
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

/// What a copy of a message is to the subscription that receives it.
enum Redelivery {
    /// Its first copy is still in the bus.
    StillHeld,
    /// Acked already.
    Acked,
}

impl Held {
    fn start(
        io: &tokio::runtime::Handle,
        client: async_nats::Client,
        // The shortest wait before the server redelivers an unacked message.
        wait: Duration,
        dropped: Arc<AtomicU64>,
    ) -> Arc<Held> {
        let held = Arc::new(Held {
            state: Mutex::default(),
            next: AtomicU64::new(0),
            dropped,
        });
        let weak = Arc::downgrade(&held);
        let period = (wait / 3).max(Duration::from_millis(100));
        io.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(held) = weak.upgrade() else { return };
                let (replies, acks) = {
                    let mut st = held.lock();
                    let replies: Vec<_> = st.replies.values().cloned().collect();
                    (replies, std::mem::take(&mut st.ack_later))
                };
                drop(held);
                for reply in replies {
                    // Best effort: a lost progress ack only risks an early redelivery.
                    let _ = client
                        .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                        .await;
                }
                for reply in acks {
                    // Best effort too: a lost one brings the copy back, to be skipped again.
                    let _ = client
                        .publish(reply, bytes::Bytes::from_static(b"+ACK"))
                        .await;
                }
            }
        });
        held
    }

    /// Acks a skipped copy of an acked message with the next progress acks.
    fn ack_later(&self, reply: async_nats::Subject) {
        self.lock().ack_later.push(reply);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeldState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds a message (`reply` gets its progress acks), unless `seq` names one held or acked
    /// already: then the delivery is a copy, counted and not held.
    fn hold(
        &self,
        reply: Option<async_nats::Subject>,
        seq: Option<CopyKey>,
    ) -> std::result::Result<u64, Redelivery> {
        let mut st = self.lock();
        if let Some(seq) = seq {
            let copy = if st.seqs.contains_key(&seq) {
                Some(Redelivery::StillHeld)
            } else if st.acked.get(acked_slot(seq)) == Some(&seq) {
                Some(Redelivery::Acked)
            } else {
                None
            };
            if let Some(copy) = copy {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(copy);
            }
            *st.seqs.entry(seq).or_default() += 1;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = reply {
            st.replies.insert(id, reply);
        }
        Ok(id)
    }

    /// Forgets a held message; `acked` when it was acked.
    fn release(&self, id: u64, seq: Option<CopyKey>, acked: bool) {
        let mut st = self.lock();
        st.replies.remove(&id);
        let Some(seq) = seq else { return };
        if let std::collections::hash_map::Entry::Occupied(mut e) = st.seqs.entry(seq) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        if acked {
            if st.acked.is_empty() {
                st.acked = vec![(0, 0); ACKED_MEMORY];
            }
            st.acked[acked_slot(seq)] = seq;
        }
    }
}

/// Acks, naks or releases one JetStream message.
#[derive(Debug)]
pub struct NatsAck {
    /// `None` for a message read back after a reconnect: the server's later copy is acked.
    msg: Option<jetstream::Message>,
    redelivery_delay: Duration,
    held: Option<(u64, Arc<Held>)>,
    /// Which stream message it is.
    seq: Option<CopyKey>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
    }
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

#[async_trait::async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    fn connection(&self) -> eventbus_core::Connection {
        let last_error = self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        eventbus_core::Connection::new(self.connection_state())
            .with_reconnects(self.connects().saturating_sub(1))
            .with_last_error(last_error)
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Flush what was published and end the connection; wait (bounded) for the client to
        // report it closed, then end its thread whatever happened.
        let mut state = self.inner.state.clone();
        // A disconnected client cannot drain: nothing to wait for.
        let connected = *state.borrow() == ConnectionState::Connected;
        if connected && self.inner.client.drain().await.is_ok() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                state.wait_for(|s| *s == ConnectionState::Closed),
            )
            .await;
        }
        self.inner.io.lock().await.stop().await;
        Ok(())
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        let stream = self
            .inner
            .js
            .get_stream_no_info(self.inner.config.stream_name(topic))
            .await
            .map_err(|e| NatsError::request("get stream", e))?;
        let info = stream
            .consumer_info(group)
            .await
            .map_err(|e| NatsError::request("consumer info", e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

#[cfg(test)]
mod wire_tests {
    use eventbus_core::{Error, HeaderError};

    /// The headers this transport writes for itself are reserved in the core, so no user
    /// header can take their place.
    #[test]
    fn the_wire_headers_are_reserved() {
        for name in [super::HEADER_ID, super::HEADER_KEY] {
            assert!(
                matches!(
                    eventbus_core::validate::validate_header(name, "x"),
                    Err(Error::InvalidHeader {
                        reason: HeaderError::Reserved { .. },
                        ..
                    })
                ),
                "{name}"
            );
        }
        assert!(super::is_nats_header("Nats-Expected-Stream"));
        assert!(!super::is_nats_header("eb-key"));
    }
}
