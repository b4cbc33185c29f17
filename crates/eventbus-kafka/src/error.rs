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
    /// A broker refused the credentials (SASL: a wrong user or password, or a mechanism the
    /// listener does not enable). [`KafkaTransport::connect`](crate::KafkaTransport::connect)
    /// returns it as soon as librdkafka reports it, without waiting for the request timeout.
    #[error("the brokers {brokers} refused the credentials: {reason}")]
    Authentication {
        /// `bootstrap.servers`.
        brokers: String,
        /// What librdkafka said (it names no credential).
        reason: String,
    },
    /// TLS with a broker failed: its certificate is not signed by a CA the client trusts
    /// (`ssl.ca.location`), is not for the host connected to, or the handshake failed
    /// otherwise. Returned by [`KafkaTransport::connect`](crate::KafkaTransport::connect) as
    /// soon as librdkafka reports it.
    #[error("TLS with the brokers {brokers} failed: {reason}")]
    Tls {
        /// `bootstrap.servers`.
        brokers: String,
        /// What librdkafka said.
        reason: String,
    },
    /// The broker's listener speaks another security protocol than the client's
    /// `security.protocol`: a client without TLS on a TLS listener (the broker hangs up on its
    /// first request), or a TLS client on a plaintext listener (the broker hangs up on the
    /// handshake). Returned by [`KafkaTransport::connect`](crate::KafkaTransport::connect) as
    /// soon as librdkafka reports it.
    #[error(
        "the brokers {brokers} hung up on security.protocol {protocol}: their listener likely \
         expects another protocol: {reason}"
    )]
    ProtocolMismatch {
        /// `bootstrap.servers`.
        brokers: String,
        /// The client's `security.protocol` (librdkafka's default: `plaintext`).
        protocol: String,
        /// What librdkafka said.
        reason: String,
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
    /// The `KafkaError` an [`eventbus_core::Error`] carries, if it is one: the source of
    /// [`Error::Transport`](eventbus_core::Error::Transport) from this transport.
    pub fn of(error: &eventbus_core::Error) -> Option<&KafkaError> {
        match error {
            eventbus_core::Error::Transport { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }

    pub(crate) fn request(operation: &'static str, source: rdkafka::error::KafkaError) -> Self {
        KafkaError::Request { operation, source }
    }
}

impl From<KafkaError> for eventbus_core::Error {
    fn from(e: KafkaError) -> Self {
        eventbus_core::Error::transport("kafka", e)
    }
}
