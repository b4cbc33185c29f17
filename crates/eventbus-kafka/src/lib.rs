//! Kafka transport for eventbus, on rdkafka (librdkafka).
//!
//! ```no_run
//! use eventbus_core::{EventBus, Message, Delivery, BoxError, handler_fn};
//! use eventbus_kafka::{KafkaConfig, KafkaTransport};
//!
//! # #[tokio::main] async fn main() -> eventbus_core::Result<()> {
//! let transport = KafkaTransport::connect(KafkaConfig::new("127.0.0.1:9092")).await?;
//! let bus = EventBus::new(transport);
//! let sub = bus
//!     .subscribe("orders", "billing", handler_fn(|d: Delivery| async move {
//!         println!("{:?}", d.message().key());
//!         Ok::<_, BoxError>(())
//!     }))
//!     .await?;
//! // Returns once the broker has acknowledged it (the delivery report).
//! bus.publish(Message::new("orders", "placed").with_key("order-1")).await?;
//! sub.close().await;
//! bus.close().await // drains, commits, closes the clients; no task or thread left
//! # }
//! ```
//!
//! # Mapping
//! - A topic is a Kafka topic, created or checked through the admin client per
//!   [`Provision`] and [`TopicOptions`] (partitions, replication, retention), never by a
//!   broker's auto-creation (which would give it the broker's default partition count): the
//!   transport's metadata requests do not ask for it.
//! - Key → the record key, so one aggregate stays on one partition (librdkafka's
//!   `murmur2_random` partitioner: the partition a Java client picks). Message id → header
//!   `eb-id` (reserved: a user header of that name is refused with
//!   [`Error::InvalidHeader`]); every other header (envelope fields included) → a Kafka
//!   header of the same name and value. The message timestamp → the record timestamp (milliseconds).
//! - A bus group on a topic is the Kafka consumer group [`KafkaConfig::group_id`]
//!   (`<group>.<topic>`); its subscriptions, in any process, share the topic's partitions.
//!
//! # Guarantees
//! - The producer is idempotent (`enable.idempotence=true`, `acks=all`): its own retries
//!   never duplicate or reorder a partition's messages. It sends at once (`linger.ms=0`): a
//!   publish waits for its report, so lingering would cost every single publish. A publish returns after the delivery
//!   report; a failed delivery is [`KafkaError::Delivery`] and a message above
//!   [`KafkaConfig::max_message_bytes`] is [`Error::PayloadTooLarge`], before anything is sent.
//! - Offsets are committed by the transport only (`enable.auto.commit=false`,
//!   `enable.auto.offset.store=false`). Per partition it commits the lowest offset whose
//!   message is not done, so the committed offset never passes a message that failed, was
//!   cancelled or is still running (the Go SDK marked a failed message's offset and committed past unprocessed ones: its
//!   defect 9, in `docs/origin.md`). Messages
//!   finished above it are listed in the commit's metadata (Kafka keeps it with the offset);
//!   the next owner skips them, so a close or rebalance hands nothing twice. A process that
//!   crashes loses what it had not committed: at least once.
//! - "Done" is [`Outcome::Handled`](eventbus_core::Outcome::Handled). A message that failed for good ([`Outcome::Failed`](eventbus_core::Outcome::Failed),
//!   with no dead-letter topic) is **not** done: the offset is not committed past it, it is
//!   delivered again in this subscription after the subscription's redelivery delay
//!   ([`SubscribeRequest::redelivery_delay`](eventbus_core::transport::SubscribeRequest::redelivery_delay)), and
//!   after a restart it comes back. Later messages of its key may be handled before that
//!   redelivery. [`Outcome::Cancelled`](eventbus_core::Outcome::Cancelled) (shutdown) is not done either and is left for the
//!   next owner.
//! - Within a partition, messages go to the bus in offset order; the bus handles them one
//!   at a time per key and concurrently across keys. One key is on one partition and one
//!   partition on one group member, so per-key order holds across the members of a group
//!   (except for the redeliveries above).
//! - Backpressure: the bus pulls only when it has room; the consumer thread hands over at
//!   most [`ConsumerOptions::prefetch`] messages (never more than the bus buffers) and
//!   leaves the rest in librdkafka (whose own prefetch is bounded by
//!   `queued.max.messages.kbytes`, 4 MB here), while it keeps polling (so
//!   `max.poll.interval.ms` is never exceeded). No partition is paused.
//! - Group protocols ([`GroupProtocol`]): KIP-848 (`group.protocol=consumer`, Kafka 4) by
//!   default, or the classic protocol with the cooperative-sticky assignor (or an eager one
//!   set by hand). The rebalance callback follows whichever the group runs: incremental
//!   assign and unassign of just the partitions that move, or eager replacement of the whole
//!   assignment.
//! - Rebalance: on a revoke the transport stops handing out the revoked partitions, waits up
//!   to [`ConsumerOptions::revoke_timeout`] for their handlers, commits synchronously, then
//!   lets the rebalance go on; an assigned partition starts at its committed offset (a new
//!   group at the earliest). Kafka gives a partition to a new owner only once its old owner
//!   released it (eager: once every member rejoined; cooperative: in the rebalance after the
//!   revoke; KIP-848: once the old owner's heartbeat reported it released), so after that
//!   commit: two members, in one process or in several, never hold one partition at once.
//!   Exceptions, both at least once: a handler still running when the revoke timeout ends
//!   (its message goes to the next owner too), and a member removed without being waited
//!   for (a crashed process, or one that did not poll within `max.poll.interval.ms`; the
//!   poller thread polls all the time, so a stuck process): what it handled and had not
//!   committed yet is handled again by the next owner.
//! - [`Transport::lag`]: per partition, the high watermark minus the committed offset (minus
//!   the finished offsets its metadata lists); summed. [`KafkaTransport::partition_lag`]
//!   gives each partition's.
//! - [`Transport::connection`]: disconnected from librdkafka's "all brokers down" until a
//!   broker answers again (librdkafka reconnects on its own and reports no "connected").
//! - **Cost**: librdkafka's threads belong to its clients (a main thread and one per broker
//!   connection, plus two of its own). A transport has one producer, one admin client and a
//!   worker thread; each subscription has its consumer and the thread that polls it: five
//!   threads and two connections to a one-broker cluster. [`Transport::lag`] asks the
//!   group's consumer in this process, or, for a group with no subscription here, a client
//!   made for that query and closed after it. Measured with
//!   `cargo run --release -p eventbus-bench --bin subscription-cost` (threads /
//!   TCP connections with every subscription consuming and its lag asked): 1 subscription
//!   17 / 4, 10 subscriptions 62 / 22, 100 subscriptions 512 / 202 (before lag reused the
//!   consumers: 21 / 5, 102 / 42, 912 / 402). Consumers are not shared across topics: a Kafka
//!   group is one per (topic, bus group), so that one topic's rebalance never stops another
//!   (under an eager assignor a rebalance revokes all of a consumer's partitions), and a
//!   consumer has one group. Sharing one per bus group across its topics would mean moving
//!   the committed offsets of `<group>.<topic>` groups to it.
//! - `close` drains the subscriptions, commits, closes the consumers, flushes and drops the
//!   producer on a thread the transport owns, and joins every thread: nothing is left,
//!   whether the broker is up or not.
//!
//! # Clusters
//! A Kafka cluster survives the loss of a broker when its topics are replicated; what the bus
//! needs set, and what it does meanwhile:
//! - **Bootstrap servers**: [`KafkaConfig::brokers`] takes several, comma-separated;
//!   librdkafka learns the others from the cluster's metadata.
//! - **Replication**: [`TopicOptions::replication`] (default 1) for topics the bus creates;
//!   with 3, and the brokers' `min.insync.replicas=2` (a broker setting, or the topic's own),
//!   a record acknowledged by `acks=all` is on at least two brokers, and a broker's loss loses
//!   none.
//! - **Publishes through a failover**: the producer is idempotent with `acks=all` (always, see
//!   *Guarantees*): while a partition has no leader, librdkafka keeps the record and retries
//!   it in order, without duplicates, until [`KafkaConfig::delivery_timeout`] (30 s); the
//!   publish call just takes longer. A broker's partitions get new leaders once the
//!   controllers fence it, `broker.session.timeout.ms` (9 s by default) after its last
//!   heartbeat.
//! - Consumers fetch from the new leaders; committed offsets are on the replicated
//!   `__consumer_offsets` topic (its `offsets.topic.replication.factor` is the brokers').
//! - Proof: `crates/eventbus-bench/tests/cluster.rs` (a 3-broker KRaft cluster losing the broker
//!   that leads most of the topic's partitions, under keyed load: nothing lost, no key out of
//!   order), and `cargo xtask cluster` for the figures.
//!
//! # Security
//! librdkafka is built with TLS (rdkafka's `ssl` feature, linked to the system's OpenSSL
//! found by `pkg-config`: `libssl-dev` on Debian, not a vendored OpenSSL), which brings SASL
//! `PLAIN`, `SCRAM-SHA-256/512` and `OAUTHBEARER` (the tests run `PLAIN` over TLS); GSSAPI
//! (Kerberos, rdkafka's `sasl` feature, which needs libsasl2) is not built in. SASL and TLS
//! settings are raw librdkafka settings: see [`KafkaConfig`]. A refused password, an untrusted
//! certificate or a listener of another security protocol fails
//! [`KafkaTransport::connect`] at once with [`KafkaError::Authentication`],
//! [`KafkaError::Tls`] or [`KafkaError::ProtocolMismatch`]. No credential reaches a log line,
//! an error or a `Debug` output (`tests/security.rs` runs all of this against a broker with a
//! `SASL_SSL` listener).
#![warn(missing_docs)]

mod admin;
mod config;
mod consumer;
mod error;
mod link;
mod mapping;
mod offsets;
mod publish;
mod subscribe;
#[cfg(feature = "testing")]
pub mod testing;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::transport::{Capabilities, Transport};
use eventbus_core::{Connection, ConnectionState, Error, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::producer::{FutureProducer, Producer as _};

pub use config::{ConsumerOptions, GroupProtocol, KafkaConfig, Provision, TopicOptions};
pub use consumer::KafkaAck;
pub use error::KafkaError;

use link::{Link, LinkContext, Refusal, RefusalKind};
use subscribe::Running;
use worker::Worker;

/// The producer, with errors reported to the [`Link`].
type Producer = FutureProducer<LinkContext>;
/// The admin client, with errors reported to the [`Link`].
type Admin = AdminClient<LinkContext>;

const NAME: &str = "kafka";
const SECURITY_PROTOCOL: &str = "security.protocol";

/// A connection to a Kafka cluster: one idempotent producer, one admin client and one
/// consumer per subscription.
///
/// Clones of an [`EventBus`](eventbus_core::EventBus) share it, and so do clones of the
/// transport (handles to read its state after handing it to a bus; the bus's `close` closes it
/// for all of them), as on every transport. Two transports are two sets of clients, like two
/// processes.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: Mutex<Option<Producer>>,
    admin: Mutex<Option<Arc<Admin>>>,
    link: Arc<Link>,
    worker: Worker,
    ensured: tokio::sync::Mutex<HashSet<String>>,
    consumers: Mutex<Vec<Running>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("brokers", &self.inner.config.brokers)
            .finish_non_exhaustive()
    }
}

fn client_config(config: &KafkaConfig, own: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    // rdkafka takes librdkafka's log level from the `log` crate's filter, which a `tracing`
    // subscriber does not set: without this, the lines a `debug` setting asks for are dropped
    // inside librdkafka before they reach `link::log`.
    c.set_log_level(link::log_level());
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in config.client.iter().chain(own) {
        c.set(k, v);
    }
    c
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

impl KafkaTransport {
    /// What the transport offers.
    pub const CAPABILITIES: Capabilities = Capabilities::none()
        .with_consumer_groups()
        .with_persistence()
        .with_key_affinity();

    /// Creates the clients and checks that a broker answers (a metadata request within
    /// [`KafkaConfig::request_timeout`]); librdkafka reconnects on its own afterwards.
    ///
    /// # Errors
    /// Carried as [`Error::Transport`] with a [`KafkaError`] as its source:
    /// - [`KafkaError::Config`]: librdkafka refused a setting.
    /// - [`KafkaError::Authentication`], [`KafkaError::Tls`], [`KafkaError::ProtocolMismatch`]:
    ///   a broker refused the credentials, TLS failed, or the listener speaks another
    ///   security protocol; returned as soon as librdkafka reports it (within a few hundred
    ///   milliseconds of the refusal), not after the request timeout.
    /// - [`KafkaError::Connect`]: no broker answered within the request timeout.
    ///
    /// A failed connect has closed every client and joined every thread it started.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let mut producer_settings = BTreeMap::from([
            ("enable.idempotence".to_owned(), "true".to_owned()),
            ("acks".to_owned(), "all".to_owned()),
            ("partitioner".to_owned(), "murmur2_random".to_owned()),
            // A publish waits for its delivery report, so librdkafka's default wait of 5 ms
            // for more messages to batch with is paid by every caller that publishes one at a
            // time (a third of the throughput in `cargo xtask load`). Messages queued
            // together (`publish_batch`, concurrent publishers) still share requests.
            ("linger.ms".to_owned(), "0".to_owned()),
            (
                "message.timeout.ms".to_owned(),
                millis(config.delivery_timeout),
            ),
            // Room for the envelope's framing above the largest message we accept.
            (
                "message.max.bytes".to_owned(),
                (config.max_message_bytes + 64 * 1024)
                    .max(1_000_000)
                    .to_string(),
            ),
        ]);
        producer_settings.extend(config.producer.clone());
        let protocol = producer_settings
            .get(SECURITY_PROTOCOL)
            .or_else(|| config.client.get(SECURITY_PROTOCOL))
            .map_or("plaintext", String::as_str)
            .to_owned();
        let link = Arc::new(Link::new(&protocol));
        // The producer's metadata request is the probe below: its log lines must include the
        // one that tells a plaintext client's hang-up on a TLS listener (`link` module).
        let producer: Producer = client_config(&config, &producer_settings)
            .set_log_level(link::probe_log_level())
            .create_with_context(LinkContext(Arc::clone(&link)))
            .map_err(KafkaError::Config)?;
        // The admin client also describes topics. A metadata request that names a missing
        // topic makes a broker with `auto.create.topics.enable` (Kafka's default) create it
        // with its default partitions: asking must not create.
        let admin_settings =
            BTreeMap::from([("allow.auto.create.topics".to_owned(), "false".to_owned())]);
        let admin: Admin = match client_config(&config, &admin_settings)
            .create_with_context(LinkContext(Arc::clone(&link)))
        {
            Ok(admin) => admin,
            Err(e) => {
                drop_blocking(producer).await;
                return Err(KafkaError::Config(e).into());
            }
        };
        let admin = Arc::new(admin);
        let worker = match Worker::start() {
            Ok(worker) => worker,
            Err(e) => {
                drop_blocking((producer, admin)).await;
                return Err(Error::transport(NAME, e));
            }
        };
        let transport = KafkaTransport {
            inner: Arc::new(Inner {
                producer: Mutex::new(Some(producer)),
                admin: Mutex::new(Some(admin)),
                link,
                worker,
                ensured: tokio::sync::Mutex::default(),
                consumers: Mutex::default(),
                closed: AtomicBool::new(false),
                config,
            }),
        };
        let producer = transport.producer()?;
        let link = Arc::clone(&transport.inner.link);
        let timeout = transport.inner.config.request_timeout;
        let reached = transport
            .inner
            .worker
            .run(move || probe(&producer, &link, timeout))
            .await;
        let brokers = transport.inner.config.brokers.clone();
        let failure: Option<Error> = match reached {
            Ok(Ok(())) => None,
            Ok(Err(Unreached::Silent(source))) => {
                Some(KafkaError::Connect { brokers, source }.into())
            }
            Ok(Err(Unreached::Refused(Refusal { kind, reason }))) => Some(
                match kind {
                    RefusalKind::Authentication => KafkaError::Authentication { brokers, reason },
                    RefusalKind::Tls => KafkaError::Tls { brokers, reason },
                    RefusalKind::ProtocolMismatch => KafkaError::ProtocolMismatch {
                        brokers,
                        protocol,
                        reason,
                    },
                }
                .into(),
            ),
            Err(e) => Some(e.into()),
        };
        if let Some(error) = failure {
            let _ = transport.close().await;
            return Err(error);
        }
        Ok(transport)
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn producer(&self) -> Result<Producer> {
        lock(&self.inner.producer).clone().ok_or(Error::Closed)
    }

    fn admin(&self) -> Result<Arc<Admin>> {
        lock(&self.inner.admin).clone().ok_or(Error::Closed)
    }
}

/// Why [`probe`] found no broker.
enum Unreached {
    /// None answered within the timeout: what the last metadata request said.
    Silent(rdkafka::error::KafkaError),
    /// One refused the client (credentials, TLS, security protocol).
    Refused(Refusal),
}

/// Waits until a broker answers a metadata request, one refuses the client (as the `link`
/// reports: see its module documentation), or `timeout` has passed. Runs on the worker.
///
/// librdkafka's metadata request first waits for a usable broker (one connected, through
/// TLS and SASL), then for the answer, until its timeout; a refusal does not end it (the
/// broker just never becomes usable). So the wait is cut into requests of [`PROBE_SLICE`],
/// with the link read after each one that failed: a refusal ends the wait at most a slice
/// after librdkafka reported it. A request that did reach a broker and timed out
/// (`__TIMED_OUT`, where no usable broker gives `__TRANSPORT`) doubles the slice, so a slow
/// broker gets ever longer to answer. Nothing runs after it returns, so the clients can be
/// closed at once.
fn probe(producer: &Producer, link: &Link, timeout: Duration) -> Result<(), Unreached> {
    let deadline = Instant::now() + timeout;
    let mut slice = PROBE_SLICE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match producer.client().fetch_metadata(None, slice.min(left)) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let Some(refusal) = link.refusal() {
            return Err(Unreached::Refused(refusal));
        }
        if Instant::now() >= deadline {
            return Err(Unreached::Silent(error));
        }
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::OperationTimedOut) {
            slice *= 2;
        }
    }
}

/// The first length of [`probe`]'s metadata requests, and the longest a refusal waits to be
/// noticed while no broker is usable.
const PROBE_SLICE: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops a librdkafka client on a thread of its own: dropping one joins its threads.
async fn drop_blocking<T: Send + 'static>(value: T) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        drop(value);
        let _ = tx.send(());
    });
    let _ = rx.await;
    let _ = thread.join();
}

#[async_trait::async_trait]
impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    /// Connected unless librdkafka reported all brokers down and none has answered since.
    fn connection(&self) -> Connection {
        let link = &self.inner.link;
        let state = if self.inner.closed.load(Ordering::Acquire) {
            ConnectionState::Closed
        } else if link.is_down() {
            ConnectionState::Disconnected
        } else {
            ConnectionState::Connected
        };
        Connection::new(state)
            .with_reconnects(link.reconnects())
            .with_last_error(link.last_error())
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // The bus has drained the subscriptions: their consumers commit and close.
        let running: Vec<Running> = std::mem::take(&mut *lock(&self.inner.consumers));
        for r in &running {
            r.stop.store(true, Ordering::Release);
            r.shared.wake();
        }
        for r in running {
            let _ = r.done.await;
            let _ = r.thread.join();
        }
        let producer = lock(&self.inner.producer).take();
        let admin = lock(&self.inner.admin).take();
        let flush = self.inner.config.delivery_timeout;
        let _ = self
            .inner
            .worker
            .run(move || {
                if let Some(producer) = producer {
                    if let Err(e) = producer.flush(flush) {
                        tracing::warn!(error = %e, "flushing the producer at close failed");
                    }
                    drop(producer);
                }
                drop(admin);
            })
            .await;
        self.inner.worker.stop().await;
        Ok(())
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        Ok(self
            .partition_lag(topic, group)
            .await?
            .into_iter()
            .map(|(_, lag)| lag)
            .sum())
    }
}
