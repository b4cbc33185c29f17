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
//!   (collision-free), split into [`StreamOptions::partitions`] (default 16): the stream holds
//!   one subject per partition, `<subject>.<n>`, where `<subject>` is the topic itself or
//!   `<subject_prefix>.<topic>`. A message goes to partition `fnv1a(key) % partitions` (32-bit
//!   FNV-1a, so any client can compute it; a message without a key, by its id). The key itself
//!   is never a subject token (keys may hold `.`).
//! - A stream made by an earlier version (one subject, the topic) or with another partition
//!   count is refused with [`Error::SettingsMismatch`] (`setting: "partitions"`) whatever the
//!   [`Provision`]: moving keys between partitions would break their order. Consume what such a
//!   stream holds with the version that made it, then delete it.
//! - A topic bound with [`StreamOptions::bind`] lives on a stream another program made (the
//!   Go SDK's, whose subject is the topic itself): published to the topic's subject with no
//!   partition number, the stream never created or changed, and one partition, so a keyed
//!   group is one pinned consumer (one instance at a time consumes it). With
//!   [`Codec::GoSdk`](eventbus_core::Codec::GoSdk) for the topic, messages that arrive
//!   without our key header (the Go SDK sends the JSON body alone) are keyed by the body's
//!   aggregate id before they are dispatched: the documented exception to "the key is the
//!   message's key".
//! - A consumer group is keyed by default ([`Sharing::ByKey`]): one durable pull consumer per
//!   partition, `<group>=<n>`, filtered to the partition's subject, with the `pinned_client`
//!   priority policy, so one instance at a time receives a partition's messages (see *Scaling
//!   out*). With [`Sharing::Any`] a group is one durable consumer named after the group, on
//!   the whole stream, pulled by every instance.
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
//! - Handled → ack; failed for good → nak with the subscription's redelivery delay
//!   ([`SubscribeRequest::redelivery_delay`](eventbus_core::transport::SubscribeRequest::redelivery_delay));
//!   cancelled at shutdown → left unacked, so the server redelivers it after
//!   [`ConsumerOptions::ack_wait`] (messages prefetched but not yet handed to the bus too).
//! - **Ordering**: messages of a key are handled one at a time in publish order, failures
//!   retried in place, across the instances of a keyed group too (see *Scaling out*). A message
//!   that failed for good and is nak'd (dead letters turned off) comes back after its
//!   redelivery delay, after later messages of its key may have been handled. With
//!   [`Sharing::Any`] there is no order across instances: JetStream hands messages to
//!   whichever instance pulls, so one key's messages may be handled concurrently by different
//!   instances (within one instance, still in order).
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
//!   ends that thread, so nothing is left, whether the server is up or not. A connect that
//!   fails ends that thread before it returns.
//!
//! # Scaling out
//! Run the same service N times: every instance subscribes with the same group, and the
//! partitions are spread over the live instances (each owns `partitions / N` or one more; with
//! more instances than partitions the extra ones wait as standbys).
//! - **Membership** lives in a JetStream key-value bucket, `<stream_prefix>members` (made on
//!   first use): each instance renews its key every third of
//!   [`ConsumerOptions::member_timeout`] (default 5 s) and watches the others'. Every instance
//!   computes the same assignment from the same set of members (balanced rendezvous hashing:
//!   a join or leave moves few partitions besides the member's own), so there is no
//!   coordinator. While views differ for a moment, the pinned consumer gives a partition to
//!   one instance only; the other waits.
//! - **A clean leave** (the subscription or bus closes) deletes the member's key: the others
//!   rebalance at once. **A crashed instance** keeps its partitions until its key is
//!   `member_timeout` old and the server unpins it (the consumers' pin timeout is the same).
//! - **Hand-over, and the order invariant**: no key's later message is handled before its
//!   earlier message was acked, or was handed to the new owner first. The old owner stops
//!   pulling a partition it lost, waits until its bus settled every message of it (at most
//!   `member_timeout`), records what it acked in a hand-over record in the bucket, and only then
//!   unpins the consumer; the server sends the new owner nothing before that. At its first
//!   delivery the new owner reads back from the stream, in stream order, the partition's
//!   messages the old owner was sent and did not ack (queued in its bus at a close, or left in
//!   its client's buffer), and handles them first: none handled twice. Without a record (the
//!   old owner crashed) it reads back everything between the consumer's ack floor and its first
//!   delivery: what the crashed owner handled without its ack reaching the server is handled
//!   again (at-least-once). Read-back messages are acked through the ack subject the server
//!   would have given them.
//! - Nothing is nak'd at a hand-over: nats-server re-queues a redelivery at the back of its
//!   queue whenever no pull it may serve waits, so nak'd messages would come back out of order.
//! - **Cost**: a keyed subscription pulls each partition it owns with a pull of its own (half
//!   the bus's buffer spread over the partitions), and makes the `partitions` consumers on
//!   first subscribe.
//! - Needs nats-server 2.11 or later (priority groups, unpin).
//!
//! # Clusters
//! A JetStream cluster survives the loss of a minority of its servers when its streams are
//! replicated; what the bus needs set, and what it does meanwhile:
//! - **Seeds**: [`NatsConfig::url`] takes several servers, comma-separated
//!   (`nats://a:4222,nats://b:4222,nats://c:4222`); the client reconnects to another one (or to
//!   one the cluster announced) when its server goes away.
//! - **Replicas**: [`StreamOptions::replicas`] (default 1). With 3, a stream and its
//!   consumers lose nothing when one server dies. The members bucket of keyed groups is made
//!   with the replicas of the first stream whose group creates it (a bucket that exists is
//!   used as it is).
//! - **Publishes through a failover**: while a stream has no leader (nats-server elects one
//!   4 to 9 s after the last fell silent), publishes get no answer. The transport makes a
//!   publish that failed that way (no responders, no ack in time, connection broken) again,
//!   with the same `Nats-Msg-Id`, for up to [`NatsConfig::publish_retry`] (20 s), within the
//!   bus's publish timeout (30 s): the publish call just takes longer. The stream's duplicate
//!   window ([`StreamOptions::duplicate_window`], 2 min; keep it longer than the retry) drops a
//!   copy it already holds, so the stream keeps each message once. After the retry window the
//!   call fails with the last error ([`NatsError::Request`]).
//! - **A batch** ([`EventBus::publish_batch`](eventbus_core::EventBus::publish_batch)) is sent
//!   pipelined; if a message of it failed that way, the transport makes the batch again from
//!   that message on, one message at a time, so none overtakes an earlier one. One window is
//!   left: a message refused just before a new leader is elected and a later one of the same
//!   key stored just after (the two sent microseconds apart) are stored in the wrong order.
//!   Publish a key's messages one at a time where that matters.
//! - Consumers of a replicated stream are replicated too; a pull whose server went away is
//!   made again on the next one, and the keyed groups' hand-over rules hold across it.
//! - Proof: `crates/eventbus-bench/tests/cluster.rs` (a 3-node cluster whose stream leader is
//!   killed under keyed load: nothing lost, no key out of order, each message stored once),
//!   and `cargo xtask cluster` for the figures.
//!
//! # Security
//! Authentication and TLS are async-nats's own client options, passed as they are with
//! [`NatsConfig::connect_options`]: TLS with the CA that signed the server's certificate, and
//! a user and password or an nkey (the seed, `SU...`; the server lists its public key,
//! `U...`). A `tls://` address requires TLS as `require_tls(true)` does; a server with
//! `handshake_first` also needs `tls_first()`.
//!
//! ```no_run
//! use async_nats::ConnectOptions;
//! use eventbus_nats::{NatsConfig, NatsTransport};
//!
//! # #[tokio::main] async fn main() -> eventbus_core::Result<()> {
//! # let password = String::new();
//! # let seed = String::new();
//! let tls = || {
//!     ConnectOptions::new()
//!         .add_root_certificates("ca.pem".into())
//!         .require_tls(true)
//! };
//! let with_password = NatsConfig::new("nats://nats.example:4222")
//!     .connect_options(tls().user_and_password("billing".into(), password));
//! let with_nkey =
//!     NatsConfig::new("nats://nats.example:4222").connect_options(tls().nkey(seed));
//! let transport = NatsTransport::connect(with_password).await?;
//! # let _ = (transport, with_nkey);
//! # Ok(())
//! # }
//! ```
//!
//! - **Failures are typed and bounded**: a failed connect returns within
//!   [`NatsConfig::connect_timeout`] (default 5 s) an
//!   [`Error::Transport`] whose source is a [`NatsError`]. [`NatsError::of`] finds it and
//!   [`NatsError::connect_kind`] says why: [`ConnectErrorKind::Unauthorized`] (a wrong
//!   password or token, an unknown user or nkey), [`ConnectErrorKind::InvalidCredentials`] (an
//!   nkey seed that does not parse: nothing is sent), [`ConnectErrorKind::Tls`] (a CA that did
//!   not sign the server's certificate, a certificate for another name, and a client given no
//!   TLS option at all: when the server requires TLS, async-nats upgrades by itself and checks
//!   the server against the system's roots). A server that never answers gives
//!   [`NatsError::ConnectTimeout`].
//! - **No retry at connect**: async-nats's `retry_on_initial_connect` is off by default. Turned
//!   on, async-nats retries for ever in the background, a refused credential included; the
//!   transport still waits at most the connect timeout for the first connection, then fails
//!   with [`NatsError::ConnectTimeout`] (the last attempt's reason is logged at `warn`).
//! - **No credential is printed**: [`NatsConfig`]'s and the transport's `Debug` output, the
//!   errors and the transport's log lines show the address without the user information a
//!   URL may carry; async-nats's options print no credential, and its `CONNECT` trace line
//!   shows password, token and signature as `XXXXXXXX`. User names and public nkeys do
//!   appear: they are not secrets.
#![warn(missing_docs)]

mod ack;
mod config;
mod delivered;
mod error;
mod held;
mod io;
mod keyed;
mod mapping;
mod membership;
mod partition;
mod provision;
mod publish;
mod pull;
#[cfg(feature = "testing")]
pub mod testing;
mod woken;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::Event;
use async_nats::jetstream;
use eventbus_core::transport::{Capabilities, Transport};
use eventbus_core::{Error, Result};
use tokio::sync::watch;

use crate::error::ErrorText;

pub use ack::NatsAck;
pub use config::{
    ConsumerOptions, NatsConfig, Provision, Retention, Sharing, Storage, StreamOptions,
};
pub use error::{ConnectErrorKind, NatsError};

const NAME: &str = "nats";

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
    /// Keyed groups' hand-overs and leaves, on the I/O runtime: `close` waits for them.
    background: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("url", &config::redacted_url(&self.inner.config.url))
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// What the transport offers with keyed groups (the default [`Sharing`]); with
    /// [`Sharing::Any`], no key affinity.
    pub const CAPABILITIES: Capabilities = Capabilities::none()
        .with_consumer_groups()
        .with_persistence()
        .with_key_affinity();

    /// What the transport offers when its groups share topics by `sharing`.
    pub(crate) const fn capabilities_with(sharing: Sharing) -> Capabilities {
        match sharing {
            Sharing::ByKey => Self::CAPABILITIES,
            Sharing::Any => Capabilities::none()
                .with_consumer_groups()
                .with_persistence(),
        }
    }

    /// Connects. A server that is down, refuses, or rejects the credentials or the TLS
    /// handshake gives a typed error within [`NatsConfig::connect_timeout`] (see the crate
    /// docs, section *Security*).
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
        // A cluster's seeds, comma-separated, as nats.go takes them; async-nats parses one
        // address per string.
        let urls: Vec<String> = config
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(ToOwned::to_owned)
            .collect();
        let timeout = config.connect_timeout;
        let connecting = io.run(async move { options.connect(urls.as_slice()).await });
        let client = match tokio::time::timeout(timeout + Duration::from_secs(1), connecting).await
        {
            Ok(Some(Ok(client))) => client,
            Ok(Some(Err(source))) => {
                io.stop().await;
                return Err(
                    NatsError::connect(config::redacted_url(&config.url), timeout, source).into(),
                );
            }
            _ => {
                io.stop().await;
                return Err(NatsError::ConnectTimeout {
                    url: config::redacted_url(&config.url),
                    after: timeout,
                }
                .into());
            }
        };
        // With `retry_on_initial_connect` async-nats returns at once a client still connecting
        // in the background, which retries for ever (a refused credential or certificate
        // included): the JetStream check below would wait for its request timeout (10 s) and
        // blame JetStream. Wait for the first connection within the connect timeout instead.
        if client.connection_state() != async_nats::connection::State::Connected {
            let mut first = state.clone();
            let connected = tokio::time::timeout(
                timeout,
                first.wait_for(|s| *s == ConnectionState::Connected),
            )
            .await
            .is_ok_and(|first| first.is_ok());
            if !connected {
                let last_attempt = last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .map(|(_, error)| error);
                tracing::warn!(
                    url = %config::redacted_url(&config.url),
                    ?last_attempt,
                    "no connection to NATS within the connect timeout"
                );
                io.stop().await;
                return Err(NatsError::ConnectTimeout {
                    url: config::redacted_url(&config.url),
                    after: timeout,
                }
                .into());
            }
        }
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
                background: tokio_util::task::TaskTracker::new(),
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
}

#[async_trait::async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Self::capabilities_with(self.inner.config.consumer.sharing)
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
        // Leaves and hand-overs of keyed groups still under way (their subscriptions closed
        // before the transport): they delete member keys and unpin consumers, so the other
        // instances take over at once rather than after the member timeout.
        self.inner.background.close();
        let _ = tokio::time::timeout(
            self.inner.config.consumer.member_timeout + Duration::from_secs(1),
            self.inner.background.wait(),
        )
        .await;
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
        let stream = self.stream_handle(topic).await?;
        let consumers = match self.inner.config.consumer.sharing {
            Sharing::ByKey => (0..self.inner.config.layout(topic).partitions)
                .map(|p| partition::consumer_name(group, p))
                .collect(),
            Sharing::Any => vec![group.to_owned()],
        };
        let mut lag = 0;
        for consumer in consumers {
            let info = stream
                .consumer_info(&consumer)
                .await
                .map_err(|e| NatsError::request("consumer info", e))?;
            lag += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(lag)
    }
}
