//! Dead letters: where a message goes after its last attempt, and how to replay it.
//!
//! A subscription publishes a message that failed for good (its last attempt used, or a
//! [`Permanent`](crate::Permanent) error) to its dead-letter topic, `<topic>.dlq` unless
//! configured otherwise (per bus, [`EventBusBuilder::dead_letter`](crate::EventBusBuilder::dead_letter),
//! or per subscription, [`SubscribeOptions::dead_letter`](crate::SubscribeOptions::dead_letter);
//! [`DeadLetter::off`] for none), with [`header`]s saying why; only once the broker has the
//! letter is the original acked, and its key moves on. If the letter cannot be published, the
//! original is left unacked, for redelivery: nothing is lost.
//!
//! ```
//! use eventbus_core::{EventBus, SubscribeOptions, RetryPolicy, DeadLetter, handler_fn, Delivery, BoxError};
//! # async fn demo(bus: EventBus) -> eventbus_core::Result<()> {
//! let options = SubscribeOptions::new()
//!     .retry(RetryPolicy::default().max_attempts(5))
//!     .dead_letter(DeadLetter::to("orders.poison")); // instead of "orders.dlq"
//! let sub = bus
//!     .subscribe_with("orders", "billing", options, handler_fn(|_d: Delivery| async move {
//!         Err::<(), BoxError>("always fails".into())
//!     }))
//!     .await?;
//! // Later, once the cause is fixed: send the letters back to "orders".
//! let replay = bus.replay_dead_letters("orders.poison", "replayer").await?;
//! # sub.close().await; replay.close().await;
//! # Ok(()) }
//! ```

use std::time::SystemTime;

use crate::error::{BoxError, Result};
use crate::message::{Headers, Message};
use crate::validate::validate_topic;

/// Headers a dead letter carries besides the original message's own.
pub mod header {
    /// The last error, as text (at most 1 KiB, control characters replaced by spaces).
    pub const ERROR: &str = "eb-dlq-error";
    /// Handler calls made.
    pub const ATTEMPTS: &str = "eb-dlq-attempts";
    /// The topic the message came from (where a replay sends it back).
    pub const TOPIC: &str = "eb-dlq-topic";
    /// The consumer group whose handler gave up.
    pub const GROUP: &str = "eb-dlq-group";
    /// The original message id (the letter has an id of its own).
    pub const MESSAGE_ID: &str = "eb-dlq-message-id";
    /// When the first attempt failed (RFC 3339).
    pub const FIRST_FAILURE: &str = "eb-dlq-first-failure";
    /// When the last attempt failed (RFC 3339).
    pub const LAST_FAILURE: &str = "eb-dlq-last-failure";
    /// Prefix of all of them: a replay removes headers with it.
    pub const PREFIX: &str = "eb-dlq-";
    /// Set on a replayed message: the id of the message first dead-lettered.
    pub const REPLAYED_FROM: &str = "eb-replayed-from";
}

/// Where a subscription's messages go after their last attempt.
///
/// On by default: a message that failed for good goes to `<topic>.dlq`, so a poison message
/// costs its key a bounded number of attempts, never its order and never the message.
/// [`DeadLetter::off`] hands such a message back to the transport as failed instead (it is
/// redelivered later, and later messages of its key may be handled before it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeadLetter {
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Target {
    #[default]
    Suffixed,
    Topic(String),
    Off,
}

impl DeadLetter {
    /// To `<topic>.dlq` (the default).
    pub fn new() -> Self {
        Self::default()
    }
    /// To the given topic.
    pub fn to(topic: impl Into<String>) -> Self {
        DeadLetter {
            target: Target::Topic(topic.into()),
        }
    }
    /// Nowhere: a message that failed for good is handed back to the transport as failed.
    pub fn off() -> Self {
        DeadLetter {
            target: Target::Off,
        }
    }
    /// Whether messages are dead-lettered at all.
    pub fn is_on(&self) -> bool {
        self.target != Target::Off
    }
    /// The dead-letter topic for messages of `topic` (`None` when [`off`](Self::off));
    /// validated like any topic, and never `topic` itself (a letter would come back to the
    /// handler that gave up on it).
    pub fn topic_for(&self, topic: &str) -> Result<Option<String>> {
        let dlq = match &self.target {
            Target::Off => return Ok(None),
            Target::Topic(t) => t.clone(),
            Target::Suffixed => format!("{topic}.dlq"),
        };
        validate_topic(&dlq)?;
        if dlq == topic {
            return Err(crate::Error::InvalidTopic {
                topic: dlq,
                reason: crate::NameError::DeadLetterLoop,
            });
        }
        Ok(Some(dlq))
    }
}

/// Most bytes of error text a letter carries.
const MAX_ERROR_LEN: usize = 1024;

/// The letter for `original`, which `group` gave up on after `attempts` calls.
pub(crate) fn letter(
    original: &Message,
    dlq_topic: &str,
    group: &str,
    attempts: u32,
    error: &BoxError,
    first_failure: SystemTime,
) -> Message {
    let mut headers = original.headers().clone();
    headers.insert(header::ERROR, error_text(error));
    headers.insert(header::ATTEMPTS, attempts.to_string());
    headers.insert(header::TOPIC, original.topic());
    headers.insert(header::GROUP, group);
    headers.insert(header::MESSAGE_ID, original.id().as_str());
    headers.insert(header::FIRST_FAILURE, rfc3339(first_failure));
    headers.insert(header::LAST_FAILURE, rfc3339(SystemTime::now()));
    // A fresh id: brokers that deduplicate by id (NATS) must not drop the letter of a second
    // group that gave up on the same message.
    Message::from_parts(
        crate::MessageId::new(),
        dlq_topic,
        original.key().cloned(),
        headers,
        original.payload().clone(),
        original.timestamp(),
    )
}

/// The message a letter came from, to publish back on its topic: same key, payload and
/// headers (without the `eb-dlq-*` ones), a fresh id and [`header::REPLAYED_FROM`] set.
/// `None` when `letter` carries no [`header::TOPIC`] (it is not a dead letter).
pub fn original_of(letter: &Message) -> Option<Message> {
    let topic = letter.headers().get(header::TOPIC)?.to_owned();
    let origin_id = letter.headers().get(header::MESSAGE_ID).map(str::to_owned);
    let mut headers: Headers = letter
        .headers()
        .iter()
        .filter(|(name, _)| !name.starts_with(header::PREFIX))
        .collect();
    if let Some(id) = origin_id {
        headers.insert(header::REPLAYED_FROM, id);
    }
    Some(Message::from_parts(
        crate::MessageId::new(),
        topic,
        letter.key().cloned(),
        headers,
        letter.payload().clone(),
        SystemTime::now(),
    ))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The error and its sources, on one line: header values may not hold line breaks (NATS).
fn error_text(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_and_replay_round_trip() {
        let original = Message::new("orders", "payload")
            .with_key("order-1")
            .with_header("user", "kept");
        let error: BoxError = "line one\nline two".into();
        let at = SystemTime::UNIX_EPOCH;
        let l = letter(&original, "orders.dlq", "billing", 3, &error, at);
        assert_eq!(l.topic(), "orders.dlq");
        assert_ne!(l.id(), original.id());
        let h = l.headers();
        assert_eq!(h.get(header::ERROR), Some("line one line two"));
        assert_eq!(h.get(header::ATTEMPTS), Some("3"));
        assert_eq!(h.get(header::TOPIC), Some("orders"));
        assert_eq!(h.get(header::GROUP), Some("billing"));
        assert_eq!(h.get(header::MESSAGE_ID), Some(original.id().as_str()));
        assert_eq!(
            h.get(header::FIRST_FAILURE),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert!(h.get(header::LAST_FAILURE).is_some());

        let back = original_of(&l).expect("a letter");
        assert_eq!(back.topic(), "orders");
        assert_eq!(back.key(), original.key());
        assert_eq!(back.payload(), original.payload());
        assert_eq!(back.headers().get("user"), Some("kept"));
        assert_eq!(
            back.headers().get(header::REPLAYED_FROM),
            Some(original.id().as_str())
        );
        assert!(
            back.headers()
                .iter()
                .all(|(n, _)| !n.starts_with(header::PREFIX))
        );
        assert!(original_of(&original).is_none(), "not a letter");
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let error: BoxError = "é".repeat(MAX_ERROR_LEN).into();
        let text = error_text(&error);
        assert!(text.len() <= MAX_ERROR_LEN && text.len() >= MAX_ERROR_LEN - 1);
    }

    #[test]
    fn topic_defaults_and_checks() {
        assert_eq!(
            DeadLetter::new().topic_for("orders").unwrap().as_deref(),
            Some("orders.dlq")
        );
        assert_eq!(
            DeadLetter::to("poison")
                .topic_for("orders")
                .unwrap()
                .as_deref(),
            Some("poison")
        );
        assert_eq!(DeadLetter::off().topic_for("orders").unwrap(), None);
        assert!(DeadLetter::to("orders").topic_for("orders").is_err());
        assert!(DeadLetter::to("bad topic").topic_for("orders").is_err());
    }
}
