//! Name and size rules shared by every transport.
//!
//! A topic valid here is valid as a NATS subject (a sequence of non-empty tokens, no wildcards)
//! and as a Kafka topic name, so moving between transports never renames anything.

use crate::error::{Error, HeaderError, NameError};

/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_LEN: usize = 249;
/// Longest consumer group name.
pub const MAX_GROUP_LEN: usize = 128;
/// Longest message key / aggregate id.
pub const MAX_KEY_LEN: usize = 256;

/// The bytes a kind of name may hold, as a table: keys are checked on every publish, and a
/// table costs one load per byte.
struct Charset {
    allowed: [bool; 256],
    described: &'static str,
}

impl Charset {
    /// ASCII letters and digits, and `extra`.
    const fn new(extra: &[u8], described: &'static str) -> Self {
        let mut allowed = [false; 256];
        let mut b = 0;
        while b < 256 {
            allowed[b] = (b as u8).is_ascii_alphanumeric();
            b += 1;
        }
        let mut i = 0;
        while i < extra.len() {
            allowed[extra[i] as usize] = true;
            i += 1;
        }
        Charset { allowed, described }
    }
}

const TOPIC_CHARS: Charset = Charset::new(b"._-", "letters, digits, '.', '_', '-'");
const GROUP_CHARS: Charset = Charset::new(b"_-", "letters, digits, '_', '-'");
const KEY_CHARS: Charset = Charset::new(b":_-./", "letters, digits, ':', '_', '-', '.', '/'");

fn check(name: &str, max: usize, chars: &Charset) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    // Every allowed byte is ASCII, so the first refused byte starts a character.
    if let Some(at) = name.bytes().position(|b| !chars.allowed[usize::from(b)]) {
        let ch = name[at..]
            .chars()
            .next()
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        return Err(NameError::InvalidChar {
            ch,
            at,
            allowed: chars.described,
        });
    }
    Ok(())
}

/// Checks a topic name: 1 to 249 of `[A-Za-z0-9._-]`, and every `.`-separated token non-empty.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    let res = check(topic, MAX_TOPIC_LEN, &TOPIC_CHARS).and_then(|()| {
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
    check(group, MAX_GROUP_LEN, &GROUP_CHARS).map_err(|reason| Error::InvalidGroup {
        group: group.to_owned(),
        reason,
    })
}

/// Checks a message key (aggregate id): 1 to 256 of `[A-Za-z0-9:_\-./]`.
pub fn validate_key(key: &str) -> Result<(), Error> {
    check(key, MAX_KEY_LEN, &KEY_CHARS).map_err(|reason| Error::InvalidKey {
        key: key.to_owned(),
        reason,
    })
}

/// Longest header name.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest header value.
pub const MAX_HEADER_VALUE_LEN: usize = 16 * 1024;

/// Header names the transports write on the wire for their own purposes, with what for. A
/// message may not carry them as user headers: [`validate_header`] refuses them.
pub const RESERVED_HEADERS: &[(&str, &str)] = &[
    ("eb-id", "the message id on Kafka"),
    ("eb-key", "the message key on NATS"),
];

/// Prefixes of reserved header names (compared ignoring ASCII case), with what for.
pub const RESERVED_HEADER_PREFIXES: &[(&str, &str)] = &[(
    "Nats-",
    "NATS JetStream acts on `Nats-*` headers (`Nats-Msg-Id` is the message id)",
)];

/// What the reserved prefix that `name` starts with is for, if it starts with one (ignoring
/// ASCII case): a transport that receives such headers from other clients keeps them from
/// handlers, since the broker acts on them.
pub fn reserved_prefix(name: &str) -> Option<&'static str> {
    RESERVED_HEADER_PREFIXES
        .iter()
        .find(|(p, _)| {
            name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        })
        .map(|&(_, purpose)| purpose)
}

/// Checks a message header, as every publish does before anything is sent: a name of 1 to 256
/// HTTP token characters (RFC 9110: letters, digits and ``!#$%&'*+-.^_`|~``), not reserved
/// ([`RESERVED_HEADERS`], [`RESERVED_HEADER_PREFIXES`]); a value of at most 16 KiB without CR,
/// LF or NUL, not starting or ending with whitespace. What passes is carried intact by every
/// transport.
pub fn validate_header(name: &str, value: &str) -> Result<(), Error> {
    header_rule(name, value).map_err(|reason| Error::InvalidHeader {
        name: name.chars().take(64).collect(),
        reason,
    })
}

fn header_rule(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(HeaderError::NameTooLong {
            len: name.len(),
            max: MAX_HEADER_NAME_LEN,
        });
    }
    let token = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '!' | '#'
                    | '$'
                    | '%'
                    | '&'
                    | '\''
                    | '*'
                    | '+'
                    | '-'
                    | '.'
                    | '^'
                    | '_'
                    | '`'
                    | '|'
                    | '~'
            )
    };
    if let Some((at, ch)) = name.char_indices().find(|&(_, c)| !token(c)) {
        return Err(HeaderError::InvalidNameChar { ch, at });
    }
    if let Some(&(_, purpose)) = RESERVED_HEADERS.iter().find(|(n, _)| *n == name) {
        return Err(HeaderError::Reserved { purpose });
    }
    if let Some(purpose) = reserved_prefix(name) {
        return Err(HeaderError::Reserved { purpose });
    }
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(HeaderError::ValueTooLong {
            len: value.len(),
            max: MAX_HEADER_VALUE_LEN,
        });
    }
    if let Some((at, ch)) = value
        .char_indices()
        .find(|&(_, c)| matches!(c, '\r' | '\n' | '\0'))
    {
        return Err(HeaderError::InvalidValueChar { ch, at });
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(HeaderError::ValueEdgeWhitespace);
    }
    Ok(())
}

/// Size limits checked before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    /// With the largest encoded message a publish accepts.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }
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
    fn headers() {
        for (name, value) in [
            ("x-trace", "abc"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("a!#$%&'*+-.^_`|~9", "tab\tand é"),
            ("eb-event-type", ""),
            ("EB-KEY", "case differs: not reserved"),
        ] {
            assert!(validate_header(name, value).is_ok(), "{name:?}: {value:?}");
        }
        let reason = |name: &str, value: &str| match validate_header(name, value) {
            Err(Error::InvalidHeader { reason, .. }) => reason,
            other => panic!("{name:?}: expected InvalidHeader, got {other:?}"),
        };
        assert_eq!(reason("", "v"), HeaderError::EmptyName);
        assert_eq!(
            reason("a b", "v"),
            HeaderError::InvalidNameChar { ch: ' ', at: 1 }
        );
        assert_eq!(
            reason("a:", "v"),
            HeaderError::InvalidNameChar { ch: ':', at: 1 }
        );
        assert_eq!(
            reason("a ", "v"),
            HeaderError::InvalidNameChar { ch: ' ', at: 1 }
        );
        assert_eq!(
            reason("é", "v"),
            HeaderError::InvalidNameChar { ch: 'é', at: 0 }
        );
        assert!(matches!(
            reason(&"n".repeat(MAX_HEADER_NAME_LEN + 1), "v"),
            HeaderError::NameTooLong { .. }
        ));
        for bad in ["a\rb", "a\nb", "a\0b"] {
            assert!(
                matches!(
                    reason("n", bad),
                    HeaderError::InvalidValueChar { at: 1, .. }
                ),
                "{bad:?}"
            );
        }
        for edge in [" v", "v ", "\tv", "v\t", "\u{b}v", "v\u{a0}"] {
            assert_eq!(
                reason("n", edge),
                HeaderError::ValueEdgeWhitespace,
                "{edge:?}"
            );
        }
        assert!(matches!(
            reason("n", &"v".repeat(MAX_HEADER_VALUE_LEN + 1)),
            HeaderError::ValueTooLong { .. }
        ));
        for reserved in [
            "eb-id",
            "eb-key",
            "Nats-Msg-Id",
            "nats-expected-stream",
            "NATS-x",
        ] {
            assert!(
                matches!(reason(reserved, "v"), HeaderError::Reserved { .. }),
                "{reserved}"
            );
        }
    }

    proptest! {
        /// Whatever passes is what the NATS client accepts without panicking (its own rule:
        /// printable ASCII names without ':', values without CR or LF).
        #[test]
        fn valid_headers_are_valid_for_nats(name in "(?s).{0,12}", value in "(?s).{0,12}") {
            if validate_header(&name, &value).is_ok() {
                prop_assert!(!name.is_empty());
                prop_assert!(name.chars().all(|c| c.is_ascii_graphic() && c != ':'));
                prop_assert!(!value.contains(['\r', '\n']));
            }
        }
    }

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

    /// The refused character is reported whole, at its byte offset, also after multi-byte
    /// text and when it is not ASCII.
    #[test]
    fn the_first_refused_character_is_named_at_its_offset() {
        let refused = |e| match e {
            Err(Error::InvalidKey {
                reason: NameError::InvalidChar { ch, at, .. },
                ..
            }) => (ch, at),
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(validate_key("order-ä1")), ('ä', 6));
        assert_eq!(refused(validate_key("ab cd")), (' ', 2));
        assert_eq!(refused(validate_key("日本")), ('日', 0));
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
