//! Name and size rules shared by every transport.
//!
//! A topic valid here is valid as a NATS subject (a sequence of non-empty tokens, no wildcards)
//! and as a Kafka topic name, so moving between transports never renames anything.

use crate::error::{Error, NameError};

/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_LEN: usize = 249;
/// Longest consumer group name.
pub const MAX_GROUP_LEN: usize = 128;
/// Longest message key / aggregate id.
pub const MAX_KEY_LEN: usize = 256;

const TOPIC_CHARS: &str = "letters, digits, '.', '_', '-'";
const GROUP_CHARS: &str = "letters, digits, '_', '-'";
const KEY_CHARS: &str = "letters, digits, ':', '_', '-', '.', '/'";

fn check(
    name: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(u8) -> bool,
) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    if let Some((at, ch)) = name
        .char_indices()
        .find(|&(_, c)| !c.is_ascii() || !ok(c as u8))
    {
        return Err(NameError::InvalidChar { ch, at, allowed });
    }
    Ok(())
}

/// Checks a topic name: 1 to 249 of `[A-Za-z0-9._-]`, and every `.`-separated token non-empty.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    let res = check(topic, MAX_TOPIC_LEN, TOPIC_CHARS, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    })
    .and_then(|()| {
        if topic.split('.').any(str::is_empty) {
            Err(NameError::EmptyToken)
        } else {
            Ok(())
        }
    });
    res.map_err(|reason| Error::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

/// Checks a consumer group name: 1 to 128 of `[A-Za-z0-9_-]` (a NATS durable name has no `.`).
pub fn validate_group(group: &str) -> Result<(), Error> {
    check(group, MAX_GROUP_LEN, GROUP_CHARS, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
    })
    .map_err(|reason| Error::InvalidGroup {
        group: group.to_owned(),
        reason,
    })
}

/// Checks a message key (aggregate id): 1 to 256 of `[A-Za-z0-9:_\-./]`.
pub fn validate_key(key: &str) -> Result<(), Error> {
    check(key, MAX_KEY_LEN, KEY_CHARS, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.' | b'/')
    })
    .map_err(|reason| Error::InvalidKey {
        key: key.to_owned(),
        reason,
    })
}

/// Size limits checked before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message (payload + key + headers) a publish accepts.
    /// Default 1 MiB, NATS's default `max_payload`.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
        }
    }
}

impl Limits {
    /// Checks an encoded size against [`Limits::max_message_bytes`].
    pub fn check_size(&self, size: usize) -> Result<(), Error> {
        if size > self.max_message_bytes {
            Err(Error::PayloadTooLarge {
                size,
                limit: self.max_message_bytes,
            })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topics() {
        for ok in ["orders", "orders.created", "a-b_c.D9", &"x".repeat(249)] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a*",
            "a.>",
            "ä",
            "a/b",
            &"x".repeat(250),
        ] {
            assert!(
                matches!(validate_topic(bad), Err(Error::InvalidTopic { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_and_groups() {
        assert!(validate_key("order:42/line-1.a_b").is_ok());
        assert!(validate_key(&"k".repeat(257)).is_err());
        assert!(validate_key("a b").is_err());
        assert!(validate_group("billing-v2_x").is_ok());
        assert!(validate_group("billing.v2").is_err());
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_message_bytes: 10,
        };
        assert!(limits.check_size(10).is_ok());
        assert!(matches!(
            limits.check_size(11),
            Err(Error::PayloadTooLarge {
                size: 11,
                limit: 10
            })
        ));
    }

    proptest! {
        // Any string gives Ok or a typed error, never a panic; accepted topics obey the rules.
        #[test]
        fn topic_validation_total(s in any::<String>()) {
            match validate_topic(&s) {
                Ok(()) => {
                    prop_assert!(!s.is_empty() && s.len() <= MAX_TOPIC_LEN);
                    prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
                    prop_assert!(s.split('.').all(|t| !t.is_empty()));
                }
                Err(Error::InvalidTopic { topic, .. }) => prop_assert_eq!(topic, s),
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        #[test]
        fn key_validation_total(s in "\\PC{0,300}") {
            match validate_key(&s) {
                Ok(()) => prop_assert!(!s.is_empty() && s.len() <= MAX_KEY_LEN),
                Err(Error::InvalidKey { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        #[test]
        fn topic_like_strings(s in "[a-z.*> -]{0,20}") {
            let _ = validate_topic(&s);
            let _ = validate_group(&s);
        }
    }
}
