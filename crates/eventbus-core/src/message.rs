//! The transport-level message: what every broker carries.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// A message as it travels through a broker.
///
/// Cheap to clone: the payload is [`Bytes`], and the topic, key and id are reference counted.
/// Topic, key and size are validated when the message is published, not when it is built,
/// so building never fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    id: MessageId,
    /// Shared, not a `String`, and headers boxed on demand: a message is moved through several
    /// queues, and kept at 104 bytes its `Arc` fits the allocator's small-chunk lists.
    topic: TopicName,
    key: Option<Key>,
    headers: Headers,
    payload: Bytes,
    timestamp: SystemTime,
}

impl Message {
    /// A new message for `topic` with a fresh, time-ordered id (UUIDv7) and the current time.
    /// A [`TopicName`] (or an `Arc<str>`) is shared with the message; a `&str` or `String` is
    /// copied into one.
    pub fn new(topic: impl Into<TopicName>, payload: impl Into<Bytes>) -> Self {
        Message {
            id: MessageId::new(),
            topic: topic.into(),
            key: None,
            headers: Headers::default(),
            payload: payload.into(),
            timestamp: SystemTime::now(),
        }
    }

    /// A message with every field given, as a transport rebuilds one it received (no id is
    /// generated and no clock is read). A transport naming every message it receives with its
    /// subscription's topic passes that topic's [`TopicName`]: no copy per message.
    pub fn from_parts(
        id: MessageId,
        topic: impl Into<TopicName>,
        key: Option<Key>,
        headers: Headers,
        payload: impl Into<Bytes>,
        timestamp: SystemTime,
    ) -> Self {
        Message {
            id,
            topic: topic.into(),
            key,
            headers,
            payload: payload.into(),
            timestamp,
        }
    }

    /// Sets the key (aggregate id): messages with one key are handled one at a time, in order.
    pub fn with_key(mut self, key: impl Into<Key>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces the id (to publish an outbox row with its own id, say). Brokers that
    /// deduplicate (NATS `Nats-Msg-Id`) use it.
    pub fn with_id(mut self, id: impl Into<MessageId>) -> Self {
        self.id = id.into();
        self
    }

    /// Replaces the timestamp.
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The message id, unique per published message (a redelivery keeps it).
    pub fn id(&self) -> &MessageId {
        &self.id
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }
    /// The topic, to share with other messages.
    pub fn topic_name(&self) -> &TopicName {
        &self.topic
    }
    /// The key (aggregate id), if any.
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }
    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// Mutable headers.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// When the message was created.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// Size on the wire, roughly: payload, key, id and headers. Limits and the dispatcher's
    /// byte budget are counted in this unit.
    pub fn encoded_len(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.id.0.len()
            + self.headers.encoded_len()
    }
}

/// A message id. New ids are UUIDv7 strings, so they sort by creation time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Arc<str>);

impl MessageId {
    /// A fresh UUIDv7 id.
    pub fn new() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        MessageId(Arc::from(
            &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf),
        ))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl From<&str> for MessageId {
    fn from(s: &str) -> Self {
        MessageId(Arc::from(s))
    }
}
impl From<String> for MessageId {
    fn from(s: String) -> Self {
        MessageId(Arc::from(s))
    }
}

/// A topic's name, reference counted: a message's clone, or each message a transport receives
/// on one subscription, shares it instead of copying the string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl From<&str> for TopicName {
    fn from(s: &str) -> Self {
        TopicName(Arc::from(s))
    }
}
impl From<String> for TopicName {
    fn from(s: String) -> Self {
        TopicName(Arc::from(s))
    }
}
impl From<&String> for TopicName {
    fn from(s: &String) -> Self {
        TopicName(Arc::from(s.as_str()))
    }
}
impl From<Box<str>> for TopicName {
    fn from(s: Box<str>) -> Self {
        TopicName(Arc::from(s))
    }
}
impl From<std::borrow::Cow<'_, str>> for TopicName {
    fn from(s: std::borrow::Cow<'_, str>) -> Self {
        TopicName(Arc::from(s))
    }
}
impl From<Arc<str>> for TopicName {
    fn from(s: Arc<str>) -> Self {
        TopicName(s)
    }
}
impl From<&TopicName> for TopicName {
    fn from(t: &TopicName) -> Self {
        t.clone()
    }
}

/// A message key: the aggregate id whose messages must be handled in order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the key is empty (an empty key is rejected at publish).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(Arc::from(s))
    }
}
impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(Arc::from(s))
    }
}
impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Key(Arc::from(s.as_str()))
    }
}

/// Message headers: string names to string values, sorted by name.
///
/// Strings because NATS headers are text; Kafka headers carry the UTF-8 bytes.
#[derive(Clone, Default)]
#[expect(
    clippy::box_collection,
    reason = "the box keeps a message without headers one word wide here, not three"
)]
pub struct Headers(
    /// Made on the first insert: most messages carry none, and an empty map still costs its
    /// size in every message and a call to drop.
    Option<Box<BTreeMap<String, String>>>,
);

impl Headers {
    /// Sets a header, replacing any value it had.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0
            .get_or_insert_default()
            .insert(name.into(), value.into())
    }
    /// A header's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.as_ref()?.get(name).map(String::as_str)
    }
    /// Removes a header.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.as_mut()?.remove(name)
    }
    /// All headers, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|map| map.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn encoded_len(&self) -> usize {
        self.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        // No map and an emptied one are the same headers.
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Entries<'a>(&'a Headers);
        impl fmt::Debug for Entries<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter()).finish()
            }
        }
        f.debug_tuple("Headers").field(&Entries(self)).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let map: BTreeMap<String, String> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Headers((!map.is_empty()).then(|| Box::new(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::{Headers, Message, TopicName};

    /// Messages made with one topic name, and a message's clones, share its string; a name
    /// given as text is copied once, into the message.
    #[test]
    fn messages_share_their_topic_name() {
        let topic = TopicName::from("orders");
        let a = Message::new(&topic, "a");
        let b = Message::from_parts(
            a.id().clone(),
            topic.clone(),
            None,
            Headers::default(),
            "b",
            a.timestamp(),
        );
        let c = a.clone();
        for m in [&a, &b, &c] {
            assert_eq!(m.topic(), "orders");
            assert!(std::ptr::eq(m.topic(), topic.as_str()));
        }
        let d = Message::new(String::from("orders"), "d");
        assert_eq!(d.topic_name(), &topic);
        assert!(!std::ptr::eq(d.topic(), topic.as_str()));
    }

    #[test]
    fn a_message_and_its_arc_stay_small_enough_for_the_allocators_small_chunk_lists() {
        // glibc serves chunks up to 128 bytes (120 usable) from lists with no coalescing; an
        // `Arc<Message>` (two counts and the message) is made and freed per message by the
        // transports, and costed in `cargo xtask cost`.
        assert!(size_of::<Message>() <= 104, "{}", size_of::<Message>());
    }

    #[test]
    fn headers_compare_by_content_made_or_not() {
        let mut emptied = Headers::default();
        emptied.insert("a", "1");
        assert_eq!(emptied.remove("a").as_deref(), Some("1"));
        assert_eq!(emptied, Headers::default());
        assert!(emptied.is_empty());
        let m = Message::new("t", "x")
            .with_header("b", "2")
            .with_header("a", "1");
        assert_eq!(
            m.headers().iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2")]
        );
        assert_eq!(m.headers().len(), 2);
        assert_eq!(
            format!("{:?}", m.headers()),
            r#"Headers({"a": "1", "b": "2"})"#
        );
        assert_eq!(
            [("b", "2"), ("a", "1")].into_iter().collect::<Headers>(),
            *m.headers()
        );
    }
}
