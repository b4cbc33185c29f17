//! NATS-specific failures, carried as the source of [`eventbus_core::Error::Transport`].
//!
//! Connect failures follow async-nats's `Error<Kind>` shape: one variant,
//! [`NatsError::Connect`], whose [`ConnectErrorKind`] says what to fix; the kind is this
//! crate's own because async-nats reports a refused TLS handshake (an unknown CA, a name the
//! certificate does not hold) as a plain I/O error.

/// What went wrong talking to NATS.
///
/// Every error of the transport reaches users as
/// [`eventbus_core::Error::Transport`] with a `NatsError` as its source;
/// [`NatsError::of`] finds it, [`NatsError::connect_kind`] says why connecting failed:
///
/// ```
/// use eventbus_nats::{ConnectErrorKind, NatsError};
///
/// fn advice(err: &eventbus_core::Error) -> &'static str {
///     match NatsError::of(err).and_then(NatsError::connect_kind) {
///         Some(ConnectErrorKind::Unauthorized) => "check the user, password or nkey",
///         Some(ConnectErrorKind::Tls) => "check the CA and the server's certificate",
///         _ => "see the error's text",
///     }
/// }
/// # let _ = advice;
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// Connecting failed: [`kind`](ConnectErrorKind) says why (credentials refused, TLS, the
    /// server not reachable, ...).
    #[error("cannot connect to {url}: {kind} ({source})")]
    #[non_exhaustive]
    Connect {
        /// The address, without the credentials a URL may carry.
        url: String,
        /// Why, in this crate's terms.
        kind: ConnectErrorKind,
        /// What async-nats said.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Connecting did not finish within the connect timeout (a server that accepts the TCP
    /// connection but never answers, or one that is unreachable without a refusal).
    #[error("connecting to {url} timed out after {after:?}")]
    ConnectTimeout {
        /// The address, without the credentials a URL may carry.
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

/// Why connecting failed ([`NatsError::Connect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The server refused the credentials: a wrong password or token, an unknown user or
    /// nkey, or none given where the server requires one (the server's `Authorization
    /// Violation`).
    Unauthorized,
    /// The client could not use its own credentials, so nothing was sent: an nkey seed that
    /// does not parse, a signing or auth callback that failed.
    InvalidCredentials,
    /// TLS failed: the server's certificate is not trusted (unknown CA, a name it does not
    /// hold, expired), the handshake was refused, or the client's TLS setup could not be
    /// loaded (a CA file missing or unreadable, no system roots). A client without TLS
    /// options that meets a server requiring TLS upgrades to TLS by itself and checks the
    /// server against the system's roots, so it gets this kind too.
    Tls,
    /// The server could not be reached or closed the connection during the handshake
    /// (refused, reset, the name not resolved).
    Io,
    /// Anything else: an address that does not parse, a server error other than an
    /// authorization violation, the client's reconnect limit reached.
    Other,
}

impl std::fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectErrorKind::Unauthorized => "the server refused the credentials",
            ConnectErrorKind::InvalidCredentials => "the client cannot use its credentials",
            ConnectErrorKind::Tls => "TLS failed",
            ConnectErrorKind::Io => "the server cannot be reached",
            ConnectErrorKind::Other => "connecting failed",
        })
    }
}

impl ConnectErrorKind {
    /// Classifies what async-nats said. A TLS handshake failure comes from async-nats as
    /// [`Io`](async_nats::ConnectErrorKind::Io) carrying the rustls error: it is found in the
    /// source chain.
    pub(crate) fn of(error: &async_nats::ConnectError) -> Self {
        use async_nats::ConnectErrorKind as Nats;
        match error.kind() {
            Nats::AuthorizationViolation => ConnectErrorKind::Unauthorized,
            Nats::Authentication => ConnectErrorKind::InvalidCredentials,
            Nats::Tls => ConnectErrorKind::Tls,
            Nats::Io if caused_by_tls(error) => ConnectErrorKind::Tls,
            Nats::Io | Nats::Dns => ConnectErrorKind::Io,
            // Mapped to `NatsError::ConnectTimeout` before this is asked; kept here so the
            // match stays exhaustive.
            Nats::TimedOut => ConnectErrorKind::Io,
            Nats::ServerParse | Nats::MaxReconnects => ConnectErrorKind::Other,
        }
    }
}

/// Whether a rustls error is somewhere in `error`'s source chain. An `io::Error` wrapping one
/// does not list it as its `source()` (it forwards to the inner error's own source), so each
/// `io::Error` of the chain is opened with `get_ref`.
fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<async_nats::rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        next = e.source();
    }
    false
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

    /// The connect failure for `url` (already redacted): an async-nats timeout becomes
    /// [`NatsError::ConnectTimeout`], everything else [`NatsError::Connect`] with its kind.
    pub(crate) fn connect(
        url: String,
        after: std::time::Duration,
        source: async_nats::ConnectError,
    ) -> Self {
        if source.kind() == async_nats::ConnectErrorKind::TimedOut {
            return NatsError::ConnectTimeout { url, after };
        }
        NatsError::Connect {
            url,
            kind: ConnectErrorKind::of(&source),
            source,
        }
    }

    /// The `NatsError` an [`eventbus_core::Error`] carries, if it is one: the source of
    /// [`Error::Transport`](eventbus_core::Error::Transport) from this transport.
    pub fn of(error: &eventbus_core::Error) -> Option<&NatsError> {
        match error {
            eventbus_core::Error::Transport { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }

    /// Why connecting failed, for [`NatsError::Connect`]; `None` for every other variant
    /// ([`NatsError::ConnectTimeout`] included).
    pub fn connect_kind(&self) -> Option<ConnectErrorKind> {
        match self {
            NatsError::Connect { kind, .. } => Some(*kind),
            _ => None,
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
