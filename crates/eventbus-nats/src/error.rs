//! NATS-specific failures, carried as the source of [`eventbus_core::Error::Transport`].

/// What went wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// Connecting failed (server down, refused, wrong credentials, TLS).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The address.
        url: String,
        /// What async-nats said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Connecting did not finish within the connect timeout.
    #[error("connecting to {url} timed out after {after:?}")]
    ConnectTimeout {
        /// The address.
        url: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The configuration cannot work with the server; the text says what to change.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// JetStream is not enabled on the server, or the account has no access.
    #[error("JetStream is not available: {0}")]
    JetStreamUnavailable(String),
    /// A JetStream request or publish failed.
    #[error("{operation} failed: {source}")]
    Request {
        /// What was attempted.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl NatsError {
    pub(crate) fn request(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        NatsError::Request {
            operation,
            source: Box::new(source),
        }
    }
}

impl From<NatsError> for eventbus_core::Error {
    fn from(e: NatsError) -> Self {
        eventbus_core::Error::transport("nats", e)
    }
}

#[derive(Debug)]
pub(crate) struct ErrorText(pub(crate) String);
impl std::fmt::Display for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ErrorText {}
