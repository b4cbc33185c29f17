//! The one error type of eventbus.

use std::time::Duration;

/// A boxed error, as tower and handlers use it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with eventbus's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in eventbus. Each variant says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The topic name cannot be used on every transport: fix the name.
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected name.
        topic: String,
        /// Why it was rejected.
        reason: NameError,
    },
    /// The consumer group name cannot be used on every transport: fix the name.
    #[error("invalid consumer group name {group:?}: {reason}")]
    InvalidGroup {
        /// The rejected name.
        group: String,
        /// Why it was rejected.
        reason: NameError,
    },
    /// The message key (aggregate id) is not valid: fix the id.
    #[error("invalid message key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: NameError,
    },
    /// A header of the message cannot be carried by every transport, or is one the
    /// transports use for their own purposes: fix or rename the header.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name (truncated to 64 characters).
        name: String,
        /// Why it was rejected.
        reason: HeaderError,
    },
    /// The message is larger than the configured limit: split it, or raise
    /// [`Limits::max_message_bytes`](crate::Limits) (and the broker's limit).
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Encoded size of the message (payload, key and headers).
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A message that claims to be an envelope cannot be decoded: fix the producer.
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(#[from] EnvelopeError),
    /// A typed event could not be serialized (see [`Event`](crate::Event)).
    #[error("cannot serialize event {event_type}: {source}")]
    Serialize {
        /// The event's type name.
        event_type: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The bus, subscription or dispatcher was closed: nothing more can go through it.
    #[error("the event bus is closed")]
    Closed,
    /// An operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// The broker's side of a topic (a NATS stream, a Kafka topic) does not exist, and
    /// provisioning may not create it ([`Provision::ValidateOnly`](crate::Provision::ValidateOnly)),
    /// or it did not appear in time after being created.
    #[error("{transport}: {resource} for topic {topic} does not exist")]
    TopicMissing {
        /// Which transport.
        transport: &'static str,
        /// The topic.
        topic: String,
        /// What is missing on the broker (`stream ORDERS`, `topic orders`).
        resource: String,
    },
    /// The broker's side of a topic or group runs with other settings than configured, and
    /// provisioning may not change them (or cannot: the broker refused).
    #[error("{transport}: {resource}: {setting} is {actual}, configured {expected}")]
    SettingsMismatch {
        /// Which transport.
        transport: &'static str,
        /// What differs on the broker (`stream ORDERS`, `consumer billing on stream ORDERS`,
        /// `topic orders`).
        resource: String,
        /// The differing setting.
        setting: &'static str,
        /// The configured value.
        expected: String,
        /// The value on the broker.
        actual: String,
    },
    /// The transport (broker, connection, credentials) failed; the source says how.
    #[error("{transport} transport error: {source}")]
    Transport {
        /// Which transport.
        transport: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The transport does not offer this capability: use another transport or option.
    #[error("{transport} does not support {capability}")]
    Unsupported {
        /// Which transport.
        transport: &'static str,
        /// The missing capability.
        capability: &'static str,
    },
}

impl Error {
    /// Wraps a transport's own error.
    pub fn transport(transport: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Transport {
            transport,
            source: source.into(),
        }
    }
}

/// Why a topic, group or key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty names are not allowed.
    #[error("it is empty")]
    Empty,
    /// Too long for the strictest transport.
    #[error("it is {len} characters long, at most {max} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("character {ch:?} at byte {at} is not allowed (allowed: {allowed})")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
        /// The allowed set, for the message.
        allowed: &'static str,
    },
    /// A NATS subject token would be empty (leading, trailing or doubled `.`).
    #[error("it has an empty token (leading, trailing or doubled '.')")]
    EmptyToken,
    /// `.` and `..` are reserved by Kafka.
    #[error("'.' and '..' are reserved names")]
    Reserved,
    /// A dead-letter topic must differ from the topic it serves (its letters would come back
    /// to the handler that gave up on them).
    #[error("a dead-letter topic must differ from the topic it serves")]
    DeadLetterLoop,
}

/// Why a message header was rejected (see [`validate_header`](crate::validate::validate_header)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The name is empty.
    #[error("its name is empty")]
    EmptyName,
    /// The name is too long.
    #[error("its name is {len} bytes long, at most {max} are allowed")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The name has a character outside the HTTP token set (RFC 9110), which NATS and Kafka
    /// both carry.
    #[error(
        "its name has character {ch:?} at byte {at} (allowed: letters, digits and !#$%&'*+-.^_`|~)"
    )]
    InvalidNameChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The value is too long.
    #[error("its value is {len} bytes long, at most {max} are allowed")]
    ValueTooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The value has a CR, LF or NUL, which end a header on NATS.
    #[error("its value has character {ch:?} at byte {at} (CR, LF and NUL are not allowed)")]
    InvalidValueChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The value starts or ends with whitespace (Unicode's), which the NATS client strips.
    #[error("its value starts or ends with whitespace, which NATS strips")]
    ValueEdgeWhitespace,
    /// A transport writes this header for its own purposes; a user value would be dropped or
    /// would change how the message is routed.
    #[error("it is reserved: {purpose}")]
    Reserved {
        /// What the transports use it for.
        purpose: &'static str,
    },
}

/// Why an envelope could not be decoded from a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required header is missing.
    #[error("header {0:?} is missing")]
    MissingHeader(&'static str),
    /// A header is present but its value is not valid.
    #[error("header {header:?} has invalid value {value:?}: {reason}")]
    InvalidHeader {
        /// Header name.
        header: &'static str,
        /// The value found (truncated to 64 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The envelope schema version is one this library does not know.
    #[error("unsupported envelope schema {0:?}")]
    UnsupportedSchema(String),
    /// The message has no key, or its key differs from the aggregate id header.
    #[error("message key {key:?} does not match aggregate id {aggregate_id:?}")]
    KeyMismatch {
        /// The message key.
        key: Option<String>,
        /// The aggregate id header.
        aggregate_id: String,
    },
    /// The body of a format that carries the envelope in its body (the Go SDK's JSON) does not
    /// parse; the parser's message says where.
    #[error("the envelope body is not valid: {0}")]
    MalformedBody(String),
    /// A required field of such a body is missing.
    #[error("field {0:?} is missing")]
    MissingField(&'static str),
    /// A field is present but its value is not valid (or cannot be written in the format).
    #[error("field {field:?} has invalid value {value:?}: {reason}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// The value found (truncated to 64 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}
