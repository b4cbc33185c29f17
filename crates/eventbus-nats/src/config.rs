//! Options of the NATS transport: connection, streams (per topic) and consumers.

use std::collections::HashMap;
use std::time::Duration;

/// How streams are provisioned: the core's strategy. On NATS, `CreateOrUpdate` updates a stream
/// whose settings differ, and `ValidateOnly` reports a missing stream or one whose settings differ
/// as [`Error::TopicMissing`](eventbus_core::Error::TopicMissing) /
/// [`Error::SettingsMismatch`](eventbus_core::Error::SettingsMismatch).
pub use eventbus_core::transport::Provision;

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (the default): survives a server restart.
    #[default]
    File,
    /// In memory.
    Memory,
}

/// When a stream drops messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// At the limits (age, bytes, count) only (the default): new consumer groups can read
    /// old messages.
    #[default]
    Limits,
    /// Once every consumer group has acked them.
    Interest,
}

/// Settings of the stream behind one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Storage.
    pub storage: Storage,
    /// Retention.
    pub retention: Retention,
    /// Oldest message kept (`None`: no limit).
    pub max_age: Option<Duration>,
    /// Most bytes kept (`None`: no limit).
    pub max_bytes: Option<i64>,
    /// Most messages kept (`None`: no limit).
    pub max_messages: Option<i64>,
    /// Replicas (1 on a single server).
    pub replicas: usize,
    /// Window in which a publish with an already seen message id is dropped as a duplicate
    /// (default 2 minutes): a retried publish is stored once.
    pub duplicate_window: Duration,
    /// Partitions of the topic (default 16, at least 1): the stream holds one subject per
    /// partition, `<subject>.<n>`, and a message goes to partition `fnv1a(key) % partitions`
    /// (a message without a key, by its id). A keyed group ([`Sharing::ByKey`]) has one pinned
    /// consumer per partition, so this is also the most instances of a group that get work.
    /// Fixed for a stream's life: a stream with another count is refused.
    pub partitions: u16,
    /// Bind the topic to an existing stream of this name, made by another program (the Go
    /// SDK's, which names its streams itself and publishes to the topic as the subject):
    /// - messages are published to the topic's subject as it is, with no partition number;
    /// - the stream is never created or changed, whatever the [`Provision`] (its settings are
    ///   its owner's): it must exist, with a subject that matches the topic's
    ///   ([`Error::TopicMissing`](eventbus_core::Error::TopicMissing) or
    ///   [`Error::SettingsMismatch`](eventbus_core::Error::SettingsMismatch) otherwise), and
    ///   the other settings here are not used;
    /// - the topic has one partition: a keyed group ([`Sharing::ByKey`]) is one pinned consumer,
    ///   so one instance at a time consumes the topic, in stream order (keys cannot be spread
    ///   over partitions that the stream's owner does not publish to).
    ///
    /// Messages that arrive without a key (the Go SDK's NATS messages carry the aggregate id in
    /// their body) are keyed by the topic's codec
    /// ([`Codec::GoSdk`](eventbus_core::Codec::GoSdk)).
    pub bind: Option<String>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            storage: Storage::File,
            retention: Retention::Limits,
            max_age: None,
            max_bytes: None,
            max_messages: None,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            partitions: 16,
            bind: None,
        }
    }
}

impl StreamOptions {
    /// Sets the storage.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }
    /// Sets the retention.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }
    /// Sets the maximum age.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }
    /// Sets the maximum bytes.
    pub fn max_bytes(mut self, bytes: i64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }
    /// Sets the maximum message count.
    pub fn max_messages(mut self, n: i64) -> Self {
        self.max_messages = Some(n);
        self
    }
    /// Sets the replica count.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }
    /// Sets the duplicate window.
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }
    /// Sets the partition count (at least 1).
    pub fn partitions(mut self, n: u16) -> Self {
        self.partitions = n.max(1);
        self
    }
    /// Binds the topic to the existing stream `stream` (see [`bind`](Self::bind)).
    pub fn bind(mut self, stream: impl Into<String>) -> Self {
        self.bind = Some(stream.into());
        self
    }
}

/// How the instances (subscriptions, in any process) of one group share a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Sharing {
    /// Each partition is consumed by one instance at a time (a durable consumer per partition,
    /// pinned to one client), so a key's messages are handled in order across instances.
    /// Partitions are spread over the live instances; membership lives in a JetStream
    /// key-value bucket (see the crate docs, *Scaling out*).
    #[default]
    ByKey,
    /// One durable consumer for the group, pulled by every instance: an elastic worker pool,
    /// with **no order across instances** (within one instance, a key's messages are still
    /// handled in order).
    Any,
}

/// Settings of the durable pull consumer behind each (topic, group). They are verified through
/// consumer info after creation, so the consumer that runs is the one configured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// How long the server waits for an ack before redelivering (default 30 s).
    pub ack_wait: Duration,
    /// Most deliveries of one message (`None`: unlimited, the default; the bus retries in place
    /// and redelivers only what it did not finish).
    pub max_deliver: Option<i64>,
    /// Most unacked messages the server lets this group have out (default 10,000).
    pub max_ack_pending: i64,
    /// Redelivery delays for unacked messages (empty: `ack_wait` each time). The server
    /// requires `max_deliver` above its length and `ack_wait == backoff[0]`; connecting checks.
    pub backoff: Vec<Duration>,
    /// How a group's instances share its topic (default [`Sharing::ByKey`]).
    pub sharing: Sharing,
    /// For [`Sharing::ByKey`]: how long an instance that stopped answering (crashed, cut off)
    /// keeps its partitions before the others take them over (default 5 s). Instances renew
    /// their membership every third of it.
    pub member_timeout: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            max_ack_pending: 10_000,
            backoff: Vec::new(),
            sharing: Sharing::ByKey,
            member_timeout: Duration::from_secs(5),
        }
    }
}

impl ConsumerOptions {
    /// Sets the ack wait.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
    /// Sets the delivery limit.
    pub fn max_deliver(mut self, n: i64) -> Self {
        self.max_deliver = Some(n);
        self
    }
    /// Sets the most unacked messages out.
    pub fn max_ack_pending(mut self, n: i64) -> Self {
        self.max_ack_pending = n;
        self
    }
    /// Sets the redelivery backoff of unacked messages.
    pub fn backoff(mut self, delays: Vec<Duration>) -> Self {
        self.backoff = delays;
        self
    }
    /// Sets how a group's instances share a topic.
    pub fn sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        self
    }
    /// Sets how long a silent instance keeps its partitions (at least 1 s).
    pub fn member_timeout(mut self, d: Duration) -> Self {
        self.member_timeout = d.max(Duration::from_secs(1));
        self
    }
}

impl ConsumerOptions {
    /// Checks what the server would refuse or silently change: with `backoff`, the server needs
    /// `max_deliver` above its length and uses `backoff[0]` as the ack wait.
    pub(crate) fn validate(&self) -> Result<(), eventbus_core::Error> {
        if let Some(first) = self.backoff.first() {
            let enough = self
                .max_deliver
                .is_some_and(|n| n > self.backoff.len() as i64);
            if !enough {
                return Err(eventbus_core::Error::transport(
                    "nats",
                    crate::NatsError::InvalidConfig(format!(
                        "consumer backoff of {} delays needs max_deliver above {}",
                        self.backoff.len(),
                        self.backoff.len()
                    )),
                ));
            }
            if *first != self.ack_wait {
                return Err(eventbus_core::Error::transport(
                    "nats",
                    crate::NatsError::InvalidConfig(format!(
                        "with a backoff the server waits backoff[0] ({first:?}) for the first ack: set ack_wait to it (it is {:?})",
                        self.ack_wait
                    )),
                ));
            }
        }
        Ok(())
    }

    /// The shortest time the server waits for an ack before redelivering.
    pub(crate) fn shortest_redelivery_wait(&self) -> Duration {
        self.backoff
            .iter()
            .copied()
            .chain([self.ack_wait])
            .min()
            .unwrap_or(self.ack_wait)
    }
}

/// Options of a [`NatsTransport`](crate::NatsTransport).
///
/// Its `Debug` output (and every error and log line naming the server) shows the address
/// without the credentials a URL may carry (`nats://user:password@host` or
/// `nats://token@host` become `nats://<redacted>@host`); async-nats's own options print no
/// credential either.
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server address, e.g. `nats://127.0.0.1:4222`, or a cluster's, comma-separated
    /// (`nats://a:4222,nats://b:4222`): the client connects to one of them and reconnects to
    /// another (or to one the cluster announced) when it goes away.
    pub url: String,
    /// Client options: authentication (token, user/password, nkey, credentials file), TLS,
    /// name, ... passed to async-nats as they are (the transport sets its event callback and
    /// its connection timeout to [`connect_timeout`](Self::connect_timeout)); see the crate
    /// docs, section *Security*.
    pub connect: async_nats::ConnectOptions,
    /// How long connecting may take; a refused or wrong credential fails within it.
    pub connect_timeout: Duration,
    /// How streams are provisioned.
    pub provision: Provision,
    /// Stream settings for topics without their own.
    pub stream: StreamOptions,
    /// Stream settings per topic.
    pub topics: HashMap<String, StreamOptions>,
    /// Consumer settings.
    pub consumer: ConsumerOptions,
    /// Prefix of stream names (default `EB_`).
    pub stream_prefix: String,
    /// Prefix of subjects (default none: a topic's subject is the topic itself).
    pub subject_prefix: Option<String>,
    /// Most messages one pull asks for (default 256; at most half what the bus can buffer, and
    /// in a keyed group at most each partition's share of that half).
    pub fetch_batch: usize,
    /// How long a publish is made again, with the same message id, after a failure that a
    /// cluster's failover explains: no stream leader answered (one is being elected), the ack
    /// did not come (the leader died before sending it), the connection broke (the client
    /// reconnects to another server). Default 20 s: nats-server elects a new leader 4 to 9 s
    /// after the last one fell silent, and the bus's publish timeout (30 s) still bounds the
    /// whole. The stream's duplicate window drops a copy it already holds. `Duration::ZERO`:
    /// fail at once.
    pub publish_retry: Duration,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redacted_url(&self.url))
            .field("connect", &self.connect)
            .field("connect_timeout", &self.connect_timeout)
            .field("provision", &self.provision)
            .field("stream", &self.stream)
            .field("topics", &self.topics)
            .field("consumer", &self.consumer)
            .field("stream_prefix", &self.stream_prefix)
            .field("subject_prefix", &self.subject_prefix)
            .field("fetch_batch", &self.fetch_batch)
            .field("publish_retry", &self.publish_retry)
            .finish()
    }
}

/// `url` (one or several, comma-separated) without the user information of each address:
/// a password or token must not reach a log line, an error or `Debug` output.
pub(crate) fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let rest_at = one.find("://").map_or(0, |i| i + 3);
            let host_end = one[rest_at..].find('/').map_or(one.len(), |i| rest_at + i);
            match one[rest_at..host_end].rfind('@') {
                Some(at) => format!("{}<redacted>{}", &one[..rest_at], &one[rest_at + at..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsConfig {
    /// Defaults for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            connect: async_nats::ConnectOptions::new(),
            connect_timeout: Duration::from_secs(5),
            provision: Provision::default(),
            stream: StreamOptions::default(),
            topics: HashMap::new(),
            consumer: ConsumerOptions::default(),
            stream_prefix: "EB_".into(),
            subject_prefix: None,
            fetch_batch: 256,
            publish_retry: Duration::from_secs(20),
        }
    }
    /// Sets how long a publish is made again after a failover's failure (see
    /// [`publish_retry`](Self::publish_retry)).
    pub fn publish_retry(mut self, d: Duration) -> Self {
        self.publish_retry = d;
        self
    }
    /// Sets the client options (authentication, TLS, ...).
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.connect = options;
        self
    }
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets the provisioning strategy.
    pub fn provision(mut self, p: Provision) -> Self {
        self.provision = p;
        self
    }
    /// Sets the default stream settings.
    pub fn stream(mut self, s: StreamOptions) -> Self {
        self.stream = s;
        self
    }
    /// Sets one topic's stream settings.
    pub fn topic(mut self, topic: impl Into<String>, s: StreamOptions) -> Self {
        self.topics.insert(topic.into(), s);
        self
    }
    /// Sets the consumer settings.
    pub fn consumer(mut self, c: ConsumerOptions) -> Self {
        self.consumer = c;
        self
    }
    /// Sets the stream name prefix.
    pub fn stream_prefix(mut self, p: impl Into<String>) -> Self {
        self.stream_prefix = p.into();
        self
    }
    /// Sets the subject prefix.
    pub fn subject_prefix(mut self, p: impl Into<String>) -> Self {
        self.subject_prefix = Some(p.into());
        self
    }
    /// Sets the pull batch size.
    pub fn fetch_batch(mut self, n: usize) -> Self {
        self.fetch_batch = n.max(1);
        self
    }

    pub(crate) fn stream_for(&self, topic: &str) -> &StreamOptions {
        self.topics.get(topic).unwrap_or(&self.stream)
    }

    /// How `topic`'s stream is split into partitions.
    pub(crate) fn layout(&self, topic: &str) -> crate::partition::Layout {
        let options = self.stream_for(topic);
        crate::partition::Layout::new(
            self.subject(topic),
            options.partitions,
            options.bind.is_some(),
        )
    }

    /// The subject a topic's messages are published on.
    pub fn subject(&self, topic: &str) -> String {
        match &self.subject_prefix {
            Some(p) => format!("{p}.{topic}"),
            None => topic.to_owned(),
        }
    }

    /// The stream behind a topic: the prefix, then the topic with `_` written `__` and `.`
    /// written `_D`. Every `_` after the prefix starts a two-character escape, so distinct topics
    /// never share a stream (`a.b` → `EB_a_Db`, `a_b` → `EB_a__b`).
    pub fn stream_name(&self, topic: &str) -> String {
        if let Some(bound) = &self.stream_for(topic).bind {
            return bound.clone();
        }
        let mut name = String::with_capacity(self.stream_prefix.len() + topic.len() + 8);
        name.push_str(&self.stream_prefix);
        for c in topic.chars() {
            match c {
                '_' => name.push_str("__"),
                '.' => name.push_str("_D"),
                c => name.push(c),
            }
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_collision_free() {
        let c = NatsConfig::new("x");
        let topics = [
            "a.b", "a_b", "a__b", "a_Db", "a._b", "a_.b", "aDb", "a.b.c", "a_D.b",
        ];
        let names: std::collections::HashSet<_> = topics.iter().map(|t| c.stream_name(t)).collect();
        assert_eq!(names.len(), topics.len(), "{names:?}");
        assert_eq!(c.stream_name("orders.created"), "EB_orders_Dcreated");
        assert_eq!(c.subject("orders.created"), "orders.created");
        assert_eq!(c.clone().subject_prefix("app").subject("t"), "app.t");
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redacted_url("nats://user:s3cret@host:4222"),
            "nats://<redacted>@host:4222"
        );
        assert_eq!(redacted_url("nats://t0ken@host"), "nats://<redacted>@host");
        assert_eq!(
            redacted_url("tls://a:b@h1:4222,nats://h2:4222"),
            "tls://<redacted>@h1:4222,nats://h2:4222"
        );
        assert_eq!(redacted_url("127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(redacted_url("u:p@host"), "<redacted>@host");
        let debug = format!("{:?}", NatsConfig::new("nats://user:s3cret@host:4222"));
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("<redacted>@host:4222"), "{debug}");
    }
}
