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
//!   cancelled or is still running (the Go SDK committed past them: its defect 9). Messages
//!   finished above it are listed in the commit's metadata (Kafka keeps it with the offset);
//!   the next owner skips them, so a close or rebalance hands nothing twice. A process that
//!   crashes loses what it had not committed: at least once.
//! - "Done" is [`Outcome::Handled`](eventbus_core::Outcome::Handled). A message that failed for good ([`Outcome::Failed`](eventbus_core::Outcome::Failed),
//!   with no dead-letter topic) is **not** done: the offset is not committed past it, it is
//!   delivered again in this subscription after [`ConsumerOptions::redelivery_delay`], and
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
//! - Rebalance (the eager protocol): on a revoke the transport stops handing out the revoked
//!   partitions, waits up to [`ConsumerOptions::revoke_timeout`] for their handlers, commits
//!   synchronously, then lets the rebalance go on; an assigned partition starts at its
//!   committed offset (a new group at the earliest). Kafka's coordinator assigns a partition
//!   anew only once every member has rejoined, so after that commit: two members, in one
//!   process or in several, never hold one partition at once. Exceptions, both at least
//!   once: a handler still running when the revoke timeout ends (its message goes to the next
//!   owner too), and a member removed without being waited for (one that did not poll within
//!   `max.poll.interval.ms`; the poller thread polls all the time, so a stuck process).
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
//!   `cargo run --release -p eventbus --features kafka --example subscription_cost` (threads /
//!   TCP connections with every subscription consuming and its lag asked): 1 subscription
//!   17 / 4, 10 subscriptions 62 / 22, 100 subscriptions 512 / 202 (before lag reused the
//!   consumers: 21 / 5, 102 / 42, 912 / 402). Consumers are not shared across topics: a Kafka
//!   group is one per (topic, bus group), so that one topic's rebalance never stops another
//!   (under the eager protocol a rebalance revokes all of a consumer's partitions), and a
//!   consumer has one group. Sharing one per bus group across its topics would mean moving
//!   the committed offsets of `<group>.<topic>` groups to it.
//! - `close` drains the subscriptions, commits, closes the consumers, flushes and drops the
//!   producer on a thread the transport owns, and joins every thread: nothing is left,
//!   whether the broker is up or not.
//!
//! # Security
//! SASL and TLS settings are raw librdkafka settings: see [`KafkaConfig`].
#![warn(missing_docs)]

mod config;
mod consumer;
mod error;
mod link;
mod offsets;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use eventbus_core::transport::{
    Capabilities, Publisher, Started, SubscribeRequest, Subscriber, Transport,
};
use eventbus_core::{Connection, ConnectionState, Error, Message, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

pub use config::{ConsumerOptions, KafkaConfig, Provision, TopicOptions};
pub use consumer::KafkaAck;
pub use error::KafkaError;

use consumer::{HEADER_ID, KafkaContext, KafkaStream, Shared};
use link::{Link, LinkContext};

/// The producer, with errors reported to the [`Link`].
type Producer = FutureProducer<LinkContext>;
/// The admin client, with errors reported to the [`Link`].
type Admin = AdminClient<LinkContext>;
use worker::Worker;

const NAME: &str = "kafka";

/// A connection to a Kafka cluster: one idempotent producer, one admin client and one
/// consumer per subscription.
///
/// Clones of an [`EventBus`](eventbus_core::EventBus) share it; two transports are two sets
/// of clients, like two processes.
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

/// A subscription's consumer thread.
struct Running {
    group_id: String,
    /// Its consumer, for `lag` (committed offsets are asked of a client of the group): the
    /// consumer thread holds it, and closes it when it ends.
    consumer: Weak<BaseConsumer<KafkaContext>>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    done: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
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
    /// What the transport offers (a test harness adds `broker_restart` when it owns the broker).
    pub const CAPABILITIES: Capabilities = Capabilities::none()
        .with_consumer_groups()
        .with_persistence()
        .with_key_affinity();

    /// Creates the clients and checks that a broker answers (a metadata request within
    /// [`KafkaConfig::request_timeout`]); librdkafka reconnects on its own afterwards.
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
        let link = Arc::new(Link::default());
        let producer: Producer = client_config(&config, &producer_settings)
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
        let timeout = transport.inner.config.request_timeout;
        let reached = transport
            .inner
            .worker
            .run(move || producer.client().fetch_metadata(None, timeout).map(drop))
            .await;
        let failure: Option<Error> = match reached {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(
                KafkaError::Connect {
                    brokers: transport.inner.config.brokers.clone(),
                    source,
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

    /// Partitions and replication factor of `topic`, `None` when it does not exist.
    async fn describe(&self, topic: &str) -> Result<Option<(i32, i32)>> {
        let admin = self.admin()?;
        let timeout = self.inner.config.request_timeout;
        let name = topic.to_owned();
        let link = Arc::clone(&self.inner.link);
        self.inner
            .worker
            .run(move || {
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(&name), timeout)
                    .map_err(|e| KafkaError::request("topic metadata", e))?;
                link.up();
                let Some(t) = metadata.topics().iter().find(|t| t.name() == name) else {
                    return Ok(None);
                };
                match t.error() {
                    None if !t.partitions().is_empty() => {}
                    None => return Ok(None),
                    Some(e) => {
                        let code = RDKafkaErrorCode::from(e);
                        if code == RDKafkaErrorCode::UnknownTopicOrPartition
                            || code == RDKafkaErrorCode::UnknownTopic
                        {
                            return Ok(None);
                        }
                        return Err(KafkaError::request(
                            "topic metadata",
                            RdError::MetadataFetch(code),
                        ));
                    }
                }
                let partitions = t.partitions().len() as i32;
                let replication = t.partitions()[0].replicas().len() as i32;
                Ok(Some((partitions, replication)))
            })
            .await?
            .map_err(Error::from)
    }

    /// Makes sure `topic` exists as configured, per [`Provision`]. Done once per topic.
    pub async fn ensure_topic(&self, topic: &str) -> Result<()> {
        let provision = self.inner.config.provision;
        if provision == Provision::Skip {
            return Ok(());
        }
        let mut ensured = self.inner.ensured.lock().await;
        if ensured.contains(topic) {
            return Ok(());
        }
        let want = self.inner.config.topic_for(topic).clone();
        let admin = self.admin()?;
        let opts = AdminOptions::new().operation_timeout(Some(self.inner.config.request_timeout));
        match (self.describe(topic).await?, provision) {
            (None, Provision::ValidateOnly) => {
                return Err(KafkaError::TopicMissing {
                    topic: topic.to_owned(),
                }
                .into());
            }
            (None, _) => {
                let retention = want.retention.map(millis);
                let mut new = NewTopic::new(
                    topic,
                    want.partitions,
                    TopicReplication::Fixed(want.replication),
                );
                if let Some(ms) = &retention {
                    new = new.set("retention.ms", ms);
                }
                let results = admin
                    .create_topics([&new], &opts)
                    .await
                    .map_err(|e| KafkaError::request("create topic", e))?;
                for result in results {
                    match result {
                        Ok(_) => {}
                        // Another client (or process) created it meanwhile.
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => {
                            return Err(KafkaError::request(
                                "create topic",
                                RdError::AdminOp(code),
                            )
                            .into());
                        }
                    }
                }
                self.wait_for_topic(topic).await?;
            }
            (Some(_), Provision::CreateOnly | Provision::Skip) => {}
            (Some((partitions, replication)), Provision::ValidateOnly) => {
                let mismatch = |field, expected: String, actual: String| -> Error {
                    KafkaError::TopicMismatch {
                        topic: topic.to_owned(),
                        field,
                        expected,
                        actual,
                    }
                    .into()
                };
                if partitions != want.partitions {
                    return Err(mismatch(
                        "partitions",
                        want.partitions.to_string(),
                        partitions.to_string(),
                    ));
                }
                if replication != want.replication {
                    return Err(mismatch(
                        "replication",
                        want.replication.to_string(),
                        replication.to_string(),
                    ));
                }
                if let Some(retention) = want.retention {
                    let actual = self.retention_of(&admin, topic, &opts).await?;
                    if actual.as_deref() != Some(millis(retention).as_str()) {
                        return Err(mismatch(
                            "retention.ms",
                            millis(retention),
                            actual.unwrap_or_else(|| "unset".to_owned()),
                        ));
                    }
                }
            }
            (Some((partitions, replication)), Provision::CreateOrUpdate) => {
                if partitions < want.partitions {
                    let more = NewPartitions::new(topic, want.partitions as usize);
                    let results = admin
                        .create_partitions([&more], &opts)
                        .await
                        .map_err(|e| KafkaError::request("create partitions", e))?;
                    if let Some(Err((_, code))) = results.into_iter().next() {
                        return Err(KafkaError::request(
                            "create partitions",
                            RdError::AdminOp(code),
                        )
                        .into());
                    }
                } else if partitions > want.partitions {
                    tracing::warn!(
                        topic,
                        partitions,
                        configured = want.partitions,
                        "the topic has more partitions than configured; Kafka cannot remove partitions"
                    );
                }
                if replication != want.replication {
                    tracing::warn!(
                        topic,
                        replication,
                        configured = want.replication,
                        "the topic's replication factor differs from the configured one; it is left as it is"
                    );
                }
                if let Some(retention) = want.retention {
                    let ms = millis(retention);
                    let alter =
                        AlterConfig::new(ResourceSpecifier::Topic(topic)).set("retention.ms", &ms);
                    let results = admin
                        .alter_configs([&alter], &opts)
                        .await
                        .map_err(|e| KafkaError::request("alter topic config", e))?;
                    if let Some(Err((_, code))) = results.into_iter().next() {
                        return Err(KafkaError::request(
                            "alter topic config",
                            RdError::AdminOp(code),
                        )
                        .into());
                    }
                }
            }
        }
        ensured.insert(topic.to_owned());
        Ok(())
    }

    async fn retention_of(
        &self,
        admin: &Admin,
        topic: &str,
        opts: &AdminOptions,
    ) -> Result<Option<String>> {
        let results = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], opts)
            .await
            .map_err(|e| KafkaError::request("describe topic config", e))?;
        match results.into_iter().next() {
            Some(Ok(resource)) => Ok(resource
                .get("retention.ms")
                .and_then(|entry| entry.value.clone())),
            Some(Err(code)) => {
                Err(KafkaError::request("describe topic config", RdError::AdminOp(code)).into())
            }
            None => Ok(None),
        }
    }

    /// Waits (up to the request timeout) until a just created topic shows in the metadata.
    async fn wait_for_topic(&self, topic: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.config.request_timeout;
        loop {
            if self.describe(topic).await?.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(KafkaError::TopicMissing {
                    topic: topic.to_owned(),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Queues one message at the producer; its future resolves with the delivery report.
    async fn send(&self, producer: &Producer, message: &Message) -> Result<DeliveryFuture> {
        let limit = self.inner.config.max_message_bytes;
        let size = message.encoded_len();
        if size > limit {
            return Err(Error::PayloadTooLarge { size, limit });
        }
        let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 1);
        headers = headers.insert(Header {
            key: HEADER_ID,
            value: Some(message.id().as_str()),
        });
        for (name, value) in message.headers().iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let timestamp = message
            .timestamp()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok());
        let key = message.key().map(|k| k.as_str());
        let mut record = FutureRecord::to(message.topic())
            .payload(message.payload().as_ref())
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's queue is full: wait for deliveries to free it.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.delivery_error(message, e)),
            }
        }
    }

    fn delivery_error(&self, message: &Message, e: RdError) -> Error {
        match e {
            RdError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                Error::PayloadTooLarge {
                    size: message.encoded_len(),
                    limit: self.inner.config.max_message_bytes,
                }
            }
            source => KafkaError::Delivery {
                topic: message.topic().to_owned(),
                source,
            }
            .into(),
        }
    }

    async fn confirm(&self, message: &Message, delivery: DeliveryFuture) -> Result<()> {
        match delivery.await {
            Ok(Ok(_)) => {
                self.inner.link.up();
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.delivery_error(message, e)),
            // The producer was dropped with the message in its queue.
            Err(_) => Err(Error::Closed),
        }
    }

    /// Lag of `group` on `topic` per partition: (partition, messages not done).
    pub async fn partition_lag(&self, topic: &str, group: &str) -> Result<Vec<(i32, u64)>> {
        self.check_open()?;
        let admin = self.admin()?;
        let config = &self.inner.config;
        let group_id = config.group_id(topic, group);
        // What this process's own subscriptions of the group know is newer than the last
        // commit; and one of them, if any, answers for the group's committed offsets.
        let mut local: HashMap<i32, (i64, std::collections::BTreeSet<i64>)> = HashMap::new();
        let mut member = None;
        for r in lock(&self.inner.consumers).iter() {
            if r.group_id == group_id && !r.thread.is_finished() {
                local.extend(r.shared.local_marks());
                member = member.or_else(|| r.consumer.upgrade());
            }
        }
        // Without one, a client of the group for this query only: one per group held for
        // later queries would cost a client's threads and connections for each.
        let mut settings = client_config(config, &config.consumer_settings);
        settings.set("group.id", &group_id);
        settings.set("enable.auto.commit", "false");
        let link = Arc::clone(&self.inner.link);
        let timeout = config.request_timeout;
        let topic = topic.to_owned();
        self.inner
            .worker
            .run(move || -> Result<Vec<(i32, u64)>> {
                // The admin client's: asking must not create the topic (see `connect`).
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| KafkaError::request("topic metadata", e))?;
                link.up();
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                drop(metadata);
                let mut marks = Vec::with_capacity(partitions.len());
                for &p in &partitions {
                    let (low, high) = admin
                        .inner()
                        .fetch_watermarks(&topic, p, timeout)
                        .map_err(|e| KafkaError::request("watermarks", e))?;
                    marks.push((p, low, high));
                }
                let mut tpl = TopicPartitionList::new();
                for &p in &partitions {
                    tpl.add_partition(&topic, p);
                }
                let committed = match &member {
                    Some(member) => committed_offsets(member, tpl, timeout)?,
                    None => {
                        let asked: BaseConsumer = settings
                            .create_with_context(DefaultConsumerContext)
                            .map_err(KafkaError::Config)?;
                        committed_offsets(&asked, tpl, timeout)?
                    }
                };
                Ok(marks
                    .into_iter()
                    .map(|(p, low, high)| {
                        let (committed, metadata) =
                            committed.get(&p).cloned().unwrap_or((None, String::new()));
                        let mut from = committed.unwrap_or(low).max(low);
                        let mut done = committed
                            .map_or_else(Default::default, |c| offsets::decode(c, &metadata));
                        if let Some((base, mine)) = local.remove(&p) {
                            from = from.max(base);
                            done.extend(mine);
                        }
                        let done = done.range(from..high).count() as i64;
                        (p, (high - from - done).max(0) as u64)
                    })
                    .collect())
            })
            .await?
    }
}

/// The committed offset (if any) and metadata of each partition in `tpl`, as owned values: a
/// list from the consumer outliving it hangs its drop.
fn committed_offsets<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: TopicPartitionList,
    timeout: Duration,
) -> Result<HashMap<i32, (Option<i64>, String)>> {
    Ok(consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| KafkaError::request("committed offsets", e))?
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), (offset, e.metadata().to_owned()))
        })
        .collect())
}

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
impl Publisher for KafkaTransport {
    async fn publish(&self, message: Message) -> Result<()> {
        self.check_open()?;
        self.ensure_topic(message.topic()).await?;
        let producer = self.producer()?;
        let delivery = self.send(&producer, &message).await?;
        self.confirm(&message, delivery).await
    }

    /// Queues every message, then waits for all the delivery reports (pipelined).
    async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        let producer = self.producer()?;
        let mut deliveries = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            if i == 0 || message.topic() != messages[i - 1].topic() {
                self.ensure_topic(message.topic()).await?;
            }
            deliveries.push(self.send(&producer, message).await?);
        }
        let mut first_error = None;
        for (message, delivery) in messages.iter().zip(deliveries) {
            if let Err(e) = self.confirm(message, delivery).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[async_trait::async_trait]
impl Subscriber for KafkaTransport {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started> {
        self.check_open()?;
        let config = &self.inner.config;
        let topic = request.topic().to_owned();
        let group = request.group().to_owned();
        self.ensure_topic(&topic).await?;
        let c = &config.consumer;
        let mut settings = BTreeMap::from([
            ("group.id".to_owned(), config.group_id(&topic, &group)),
            ("enable.auto.commit".to_owned(), "false".to_owned()),
            ("enable.auto.offset.store".to_owned(), "false".to_owned()),
            ("auto.offset.reset".to_owned(), "earliest".to_owned()),
            ("enable.partition.eof".to_owned(), "false".to_owned()),
            ("session.timeout.ms".to_owned(), millis(c.session_timeout)),
            (
                "heartbeat.interval.ms".to_owned(),
                millis(c.heartbeat_interval),
            ),
            (
                "max.poll.interval.ms".to_owned(),
                millis(c.max_poll_interval),
            ),
            // librdkafka's prefetch per partition (64 MB by default): keep it small, the
            // bus buffers what matters.
            ("queued.max.messages.kbytes".to_owned(), "4096".to_owned()),
            ("fetch.wait.max.ms".to_owned(), "100".to_owned()),
        ]);
        settings.extend(config.consumer_settings.clone());
        let shared = Shared::new(topic.clone());
        let context = KafkaContext {
            shared: Arc::clone(&shared),
            link: Arc::clone(&self.inner.link),
            revoke_timeout: c.revoke_timeout,
            request_timeout: config.request_timeout,
        };
        let mut consumer: BaseConsumer<KafkaContext> = client_config(config, &settings)
            .create_with_context(context)
            .map_err(KafkaError::Config)?;
        {
            let shared = Arc::clone(&shared);
            consumer.set_nonempty_callback(move || shared.wake());
        }
        if let Err(e) = consumer.subscribe(&[&topic]) {
            drop_blocking(consumer).await;
            return Err(KafkaError::request("subscribe", e).into());
        }
        let consumer = Arc::new(consumer);
        let for_lag = Arc::downgrade(&consumer);
        let capacity = c.prefetch.min(request.max_buffered()).max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let commit_interval = c.commit_interval;
        let for_thread = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("eventbus-kafka-consumer".into())
            .spawn(move || {
                consumer::poll_loop(consumer, tx, &for_thread, commit_interval);
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::transport(NAME, e))?;
        {
            let mut consumers = lock(&self.inner.consumers);
            // Forget the threads of subscriptions that ended (they were joined by exiting).
            consumers.retain(|r| !r.thread.is_finished());
            consumers.push(Running {
                group_id: config.group_id(&topic, &group),
                consumer: for_lag,
                stop: Arc::clone(&stop),
                shared: Arc::clone(&shared),
                done,
                thread,
            });
        }
        // Joining takes a rebalance; messages published after `subscribe` returns must not
        // reach a member that is about to be revoked (its handlers would hold up the
        // rebalance), so wait for the first assignment, bounded: a broker that is down makes
        // the consumer go on trying in the background.
        if tokio::time::timeout(config.request_timeout, shared.assigned())
            .await
            .is_err()
        {
            tracing::warn!(%topic, %group, "no partition assignment yet; consuming once the group assigns");
        }
        let stream = KafkaStream::new(rx, shared, stop, c);
        Ok(request.start(stream))
    }
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
