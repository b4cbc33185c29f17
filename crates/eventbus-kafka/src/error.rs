//! Kafka-specific failures, carried as the source of [`eventbus_core::Error::Transport`].

/// What went wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// librdkafka refused a setting (unknown key, bad value, a feature not built in).
    #[error("invalid librdkafka configuration: {0}")]
    Config(#[source] rdkafka::error::KafkaError),
    /// No broker answered a metadata request within the request timeout.
    #[error("cannot reach the brokers {brokers}: {source}")]
    Connect {
        /// `bootstrap.servers`.
        brokers: String,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker did not confirm a message (delivery report with an error, or timed out).
    #[error("delivery to {topic} failed: {source}")]
    Delivery {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A request (admin, metadata, offsets) failed.
    #[error("{operation} failed: {source}")]
    Request {
        /// What was attempted.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The group's consumer failed for good, e.g. the broker does not speak the
    /// [`GroupProtocol`](crate::GroupProtocol) asked for (KIP-848 before Kafka 4.0, or turned
    /// off on the broker): choose `GroupProtocol::Classic` there.
    #[error("the consumer of group {group} failed: {reason}")]
    Group {
        /// The Kafka group (`<group>.<topic>`).
        group: String,
        /// What librdkafka said.
        reason: String,
    },
    /// The transport's worker thread is gone (the transport closed meanwhile).
    #[error("the Kafka worker thread stopped")]
    WorkerStopped,
}

impl KafkaError {
    pub(crate) fn request(operation: &'static str, source: rdkafka::error::KafkaError) -> Self {
        KafkaError::Request { operation, source }
    }
}

impl From<KafkaError> for eventbus_core::Error {
    fn from(e: KafkaError) -> Self {
        eventbus_core::Error::transport("kafka", e)
    }
}
