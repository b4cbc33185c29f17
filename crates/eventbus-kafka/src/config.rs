//! Options of the Kafka transport: brokers, raw librdkafka settings, topics and consumers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How topics are provisioned: the core's strategy. On Kafka, `CreateOrUpdate` adds partitions up
/// to the configured count and sets the configured retention (Kafka cannot remove partitions or
/// change the replication factor this way: such a difference is logged and left);
/// `ValidateOnly` reports a missing topic, or one whose partitions, replication factor or
/// retention differ, as [`Error::TopicMissing`](eventbus_core::Error::TopicMissing) /
/// [`Error::SettingsMismatch`](eventbus_core::Error::SettingsMismatch); `Skip` lets a broker with
/// auto-creation create it.
pub use eventbus_core::transport::Provision;

/// Settings of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicOptions {
    /// Partitions (default 4). Messages of one key always go to one partition, so this bounds
    /// how many members of one group share a topic's work.
    pub partitions: i32,
    /// Replication factor (default 1, for a single broker).
    pub replication: i32,
    /// `retention.ms` (`None`: the broker's default).
    pub retention: Option<Duration>,
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            partitions: 4,
            replication: 1,
            retention: None,
        }
    }
}

impl TopicOptions {
    /// Sets the partition count.
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n.max(1);
        self
    }
    /// Sets the replication factor.
    pub fn replication(mut self, n: i32) -> Self {
        self.replication = n.max(1);
        self
    }
    /// Sets the retention.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }
}

/// Which consumer group protocol the consumers speak (`group.protocol`).
///
/// Under both, a rebalance moves only the partitions that change owner (incremental), and a
/// partition's new owner starts only after its old owner's handlers of it finished (up to
/// [`ConsumerOptions::revoke_timeout`]) and its offsets were committed: per-key order holds
/// across the hand-over, and a steady group handles each message once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GroupProtocol {
    /// KIP-848 (`group.protocol=consumer`), generally available from Apache Kafka 4.0: the
    /// broker computes assignments and moves partitions one member at a time, without a
    /// group-wide barrier. Session and heartbeat are broker settings
    /// (`group.consumer.session.timeout.ms`, 45 s by default, and
    /// `group.consumer.heartbeat.interval.ms`), so [`ConsumerOptions::session_timeout`] and
    /// [`ConsumerOptions::heartbeat_interval`] are not sent. The default: the README's
    /// "Kafka group protocols" gives the figures it was chosen on.
    #[default]
    Consumer,
    /// The classic protocol, for brokers before 4.0 (or with the new one turned off): the
    /// group's leader assigns with the `cooperative-sticky` assignor, so a rebalance revokes
    /// only the partitions that move (the eager assignors revoke every partition of every
    /// member and hand them all out again). Another assignor can be set with
    /// `set_consumer("partition.assignment.strategy", …)`; the eager ones work too.
    Classic,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Consumer => "consumer",
            GroupProtocol::Classic => "classic",
        }
    }
}

/// Settings of the consumer behind each (topic, group).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The group protocol (default [`GroupProtocol::Consumer`]).
    pub group_protocol: GroupProtocol,
    /// `session.timeout.ms` (default 10 s): how long the group waits for a silent member.
    /// Classic protocol only (under KIP-848 the broker sets it).
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms` (default 1 s). Classic protocol only.
    pub heartbeat_interval: Duration,
    /// `max.poll.interval.ms` (default 5 min). The transport polls all the time, also while
    /// the bus is full (leaving messages in librdkafka), so only a revoke waiting for handlers
    /// comes near it; keep it above [`revoke_timeout`](Self::revoke_timeout).
    pub max_poll_interval: Duration,
    /// On a revoke, how long to wait for the handlers of the revoked partitions before
    /// committing what is done and letting the rebalance go on (default 30 s). Messages
    /// still running after it are handled again by the next owner; their queue in the bus
    /// counts, so with many subscriptions on one bus a short wait means duplicates.
    pub revoke_timeout: Duration,
    /// How often finished offsets are committed while consuming (default 200 ms); they are
    /// also committed on every revoke and at close.
    pub commit_interval: Duration,
    /// Most messages polled from librdkafka and not yet taken by the bus (default 256, and
    /// never more than the bus's `max_buffered`); past it, messages stay in librdkafka.
    pub prefetch: usize,
    /// How long `subscribe` waits for the group to give the new member its partitions
    /// (default 5 s), so that what is published after it returns is not taken by a member
    /// about to give the partition up. A classic group always answers, with an empty
    /// assignment if there are more members than partitions; a KIP-848 group says nothing to
    /// a member it gives no partition, so that one returns after this wait. A broker that is
    /// down makes it return after this wait too; the member joins once it can.
    pub join_wait: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            group_protocol: GroupProtocol::default(),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            max_poll_interval: Duration::from_secs(300),
            revoke_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_millis(200),
            prefetch: 256,
            join_wait: Duration::from_secs(5),
        }
    }
}

impl ConsumerOptions {
    /// Sets the group protocol.
    pub fn group_protocol(mut self, protocol: GroupProtocol) -> Self {
        self.group_protocol = protocol;
        self
    }
    /// Sets the session timeout.
    pub fn session_timeout(mut self, d: Duration) -> Self {
        self.session_timeout = d;
        self
    }
    /// Sets the heartbeat interval.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }
    /// Sets the maximum poll interval.
    pub fn max_poll_interval(mut self, d: Duration) -> Self {
        self.max_poll_interval = d;
        self
    }
    /// Sets the revoke timeout.
    pub fn revoke_timeout(mut self, d: Duration) -> Self {
        self.revoke_timeout = d;
        self
    }
    /// Sets the commit interval.
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.commit_interval = d;
        self
    }
    /// Sets the prefetch bound.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }
    /// Sets how long `subscribe` waits for the member's first partitions.
    pub fn join_wait(mut self, d: Duration) -> Self {
        self.join_wait = d;
        self
    }
}

/// Configuration of a [`KafkaTransport`](crate::KafkaTransport).
///
/// # Security
/// SASL and TLS are librdkafka settings passed through as they are, with
/// [`set`](Self::set) (every client), e.g. `security.protocol=SASL_SSL`,
/// `sasl.mechanism=PLAIN` or `SCRAM-SHA-512`, `sasl.username`, `sasl.password`,
/// `ssl.ca.location`. librdkafka is built with TLS against the system's OpenSSL (rdkafka's
/// `ssl` feature; building needs `libssl-dev` and `pkg-config`), which brings SASL PLAIN,
/// SCRAM and OAUTHBEARER; GSSAPI/Kerberos (rdkafka's `sasl` feature) is not built in, and a
/// setting librdkafka lacks fails [`KafkaTransport::connect`](crate::KafkaTransport::connect)
/// with [`KafkaError::Config`](crate::KafkaError::Config). A refused password, an untrusted
/// certificate or a listener of another security protocol fails `connect` at once with
/// [`KafkaError::Authentication`](crate::KafkaError::Authentication),
/// [`KafkaError::Tls`](crate::KafkaError::Tls) or
/// [`KafkaError::ProtocolMismatch`](crate::KafkaError::ProtocolMismatch).
///
/// Its `Debug` output shows every setting but the secrets' values (passwords, private keys,
/// OAuth secrets), which it prints as `<redacted>`.
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Raw librdkafka settings for every client (security, client id, ...).
    pub client: BTreeMap<String, String>,
    /// Raw librdkafka settings for the producer only (`linger.ms`, `compression.type`, ...).
    pub producer: BTreeMap<String, String>,
    /// Raw librdkafka settings for consumers only (`fetch.wait.max.ms`, ...).
    pub consumer_settings: BTreeMap<String, String>,
    /// How topics are provisioned.
    pub provision: Provision,
    /// Settings of topics not listed in [`topics`](Self::topics).
    pub topic_defaults: TopicOptions,
    /// Settings per topic.
    pub topics: HashMap<String, TopicOptions>,
    /// Consumers.
    pub consumer: ConsumerOptions,
    /// Largest message accepted for publishing ([`Message::encoded_len`](eventbus_core::Message::encoded_len);
    /// default 1,000,000 bytes, the broker's default `message.max.bytes`): a larger one is
    /// refused with [`Error::PayloadTooLarge`](eventbus_core::Error::PayloadTooLarge) before
    /// anything is sent.
    pub max_message_bytes: usize,
    /// Bound on admin, metadata and offset requests, and on connecting (default 10 s).
    pub request_timeout: Duration,
    /// `delivery.timeout.ms`: how long the producer keeps retrying a message before its publish
    /// fails (default 30 s).
    pub delivery_timeout: Duration,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client", &Redacted(&self.client))
            .field("producer", &Redacted(&self.producer))
            .field("consumer_settings", &Redacted(&self.consumer_settings))
            .field("provision", &self.provision)
            .field("topic_defaults", &self.topic_defaults)
            .field("topics", &self.topics)
            .field("consumer", &self.consumer)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish()
    }
}

/// Raw librdkafka settings as `Debug` shows them: a secret's value (a password, a private key,
/// an OAuth client secret or configuration) is `<redacted>`, so no credential reaches a log
/// line.
struct Redacted<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, value)| {
                let shown = if is_secret(name) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (name, shown)
            }))
            .finish()
    }
}

/// Whether a librdkafka setting holds a secret (its value must not be printed).
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password")
        || name.contains("secret")
        || name == "ssl.key.pem"
        || name == "sasl.oauthbearer.config"
        || name == "sasl.jaas.config"
}

impl KafkaConfig {
    /// Brokers as `host:port[,host:port...]`, everything else default.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            client: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer_settings: BTreeMap::new(),
            provision: Provision::default(),
            topic_defaults: TopicOptions::default(),
            topics: HashMap::new(),
            consumer: ConsumerOptions::default(),
            max_message_bytes: 1_000_000,
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
        }
    }
    /// Sets a raw librdkafka setting on every client.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.insert(key.into(), value.into());
        self
    }
    /// Sets a raw librdkafka setting on the producer.
    pub fn set_producer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer.insert(key.into(), value.into());
        self
    }
    /// Sets a raw librdkafka setting on consumers.
    pub fn set_consumer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_settings.insert(key.into(), value.into());
        self
    }
    /// Sets the provisioning strategy.
    pub fn provision(mut self, provision: Provision) -> Self {
        self.provision = provision;
        self
    }
    /// Sets the settings of topics without their own.
    pub fn topic_defaults(mut self, options: TopicOptions) -> Self {
        self.topic_defaults = options;
        self
    }
    /// Sets one topic's settings.
    pub fn topic(mut self, topic: impl Into<String>, options: TopicOptions) -> Self {
        self.topics.insert(topic.into(), options);
        self
    }
    /// Sets the consumer options.
    pub fn consumer(mut self, options: ConsumerOptions) -> Self {
        self.consumer = options;
        self
    }
    /// Sets the largest message accepted.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }
    /// Sets the request timeout.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }
    /// Sets the delivery timeout.
    pub fn delivery_timeout(mut self, d: Duration) -> Self {
        self.delivery_timeout = d;
        self
    }

    /// The settings of `topic`.
    pub fn topic_for(&self, topic: &str) -> &TopicOptions {
        self.topics.get(topic).unwrap_or(&self.topic_defaults)
    }

    /// The Kafka consumer group of a bus group on a topic: `<group>.<topic>`, one Kafka group
    /// per (topic, group), so a rebalance of one topic never stops another. Unambiguous, as
    /// bus group names cannot hold a dot.
    pub fn group_id(&self, topic: &str, group: &str) -> String {
        format!("{group}.{topic}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let config = KafkaConfig::new("127.0.0.1:9092")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.username", "alice")
            .set("sasl.password", "s3cret")
            .set("ssl.key.password", "k3y-pass")
            .set("sasl.oauthbearer.client.secret", "0auth")
            .set_consumer("sasl.password", "s3cret");
        let debug = format!("{config:?}");
        for secret in ["s3cret", "k3y-pass", "0auth"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(
            debug.contains("alice") && debug.contains("SASL_SSL"),
            "{debug}"
        );
        assert!(
            debug.contains("\"sasl.password\": \"<redacted>\""),
            "{debug}"
        );
    }
}
