//! How a broker transport makes the broker's side of a topic (a NATS stream, a Kafka topic) when
//! the topic is first used: one strategy for every transport.

/// How the broker's side of a topic (a JetStream stream, a Kafka topic) is provisioned when
/// the topic is first used. Each broker transport documents what "differ" and "update" mean
/// for it (NATS: the stream's settings; Kafka: partitions, replication and retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provision {
    /// Create what is missing; leave what exists as it is.
    CreateOnly,
    /// Create what is missing; update what exists with other settings, as far as the broker
    /// allows (the default).
    #[default]
    CreateOrUpdate,
    /// Never create or change: a missing topic, or one whose settings differ, is an error.
    ValidateOnly,
    /// Assume it is there; check nothing.
    Skip,
}
