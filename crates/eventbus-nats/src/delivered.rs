//! What a JetStream delivery's ack subject says about it: its stream and consumer sequences,
//! how often it was delivered, and when the stream stored it.
//!
//! Read from every delivery (copy recognition needs the stream sequence, the message's
//! timestamp is the store time), so read lean: async-nats's `Message::info` reads every field,
//! the stream and consumer names and the pending count too, into its own date type, and cost
//! about 2,000 instructions per message, a twentieth of all the NATS bus spends on one.

use std::time::{Duration, SystemTime};

/// What a delivery's ack subject says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) stream_sequence: u64,
    pub(crate) consumer_sequence: u64,
    /// 1 for a first delivery.
    pub(crate) delivered: u64,
    /// When the stream stored the message.
    pub(crate) published: SystemTime,
}

/// Where the fields this reads start among an ack subject's tokens (after `$JS.ACK.`), by
/// format (ADR-15): the original 7 tokens, `<stream>.<consumer>.<delivered>.<stream seq>.
/// <consumer seq>.<time>.<pending>`; and 9 or more, with `<domain>.<account hash>` in front
/// (tokens past the ninth are ignored, as the ADR allows more).
fn first_field(tokens: usize) -> Option<usize> {
    match tokens {
        7 => Some(2),
        n if n >= 9 => Some(4),
        _ => None,
    }
}

/// How one consumer's deliveries are read: the start of its ack subjects in the original
/// format, `$JS.ACK.<stream>.<consumer>.`, is known, so a subject that starts with it has its
/// numbers right after, and no dot is looked for through the names (which make up most of the
/// subject). About 550 instructions per delivery against [`Delivered::parse`]'s 830.
#[derive(Debug, Clone)]
pub(crate) struct AckSubjects {
    prefix: String,
}

impl AckSubjects {
    pub(crate) fn new(stream: &str, consumer: &str) -> Self {
        AckSubjects {
            prefix: format!("$JS.ACK.{stream}.{consumer}."),
        }
    }

    /// Of a delivery, if it has an ack subject in a known format.
    pub(crate) fn read(&self, msg: &async_nats::jetstream::Message) -> Option<Delivered> {
        self.read_subject(msg.reply.as_ref()?.as_str())
    }

    fn read_subject(&self, subject: &str) -> Option<Delivered> {
        // Any other subject (the format with a domain and account hash, which a server in a
        // JetStream domain sends) is read the general way.
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|numbers| Delivered::numbers(numbers.as_bytes()))
            .or_else(|| Delivered::parse(subject))
    }
}

impl Delivered {
    /// The original format's tokens after the consumer's name: `<delivered>.<stream seq>.
    /// <consumer seq>.<time>.<pending>`, and no more.
    fn numbers(rest: &[u8]) -> Option<Self> {
        // One pass: each byte is a digit of the current field or the dot that ends it.
        let mut fields = [0u64; 4];
        let (mut field, mut digits) = (0, 0);
        let mut bytes = rest.iter();
        for &b in bytes.by_ref() {
            if b == b'.' {
                if digits == 0 {
                    return None;
                }
                field += 1;
                digits = 0;
                if field == fields.len() {
                    break;
                }
                continue;
            }
            let digit = b.wrapping_sub(b'0');
            // More than 19 digits could overflow (see `decimal`).
            if digit > 9 || digits == 19 {
                return None;
            }
            fields[field] = fields[field] * 10 + u64::from(digit);
            digits += 1;
        }
        // The fifth token (pending) is the last.
        if field < fields.len() || bytes.as_slice().contains(&b'.') {
            return None;
        }
        let [delivered, stream_sequence, consumer_sequence, time] = fields;
        Some(Delivered {
            delivered,
            stream_sequence,
            consumer_sequence,
            published: SystemTime::UNIX_EPOCH + Duration::from_nanos(time),
        })
    }

    /// Reads an ack subject (`$JS.ACK.…`).
    pub(crate) fn parse(subject: &str) -> Option<Self> {
        let rest = subject.strip_prefix("$JS.ACK.")?.as_bytes();
        // The dots found with `memchr` (a vector compare over the stream and consumer names,
        // which make up most of the subject), all counted and the first `DOTS` kept. About
        // 770 instructions per delivery, `memchr`'s included; a byte-by-byte scan cost 1,030,
        // `str::split` and `str::parse` 1,400, async-nats's `Message::info` 2,000.
        let mut dots = [0; DOTS];
        let mut count = 0;
        for at in memchr::memchr_iter(b'.', rest) {
            if let Some(dot) = dots.get_mut(count) {
                *dot = at;
            }
            count += 1;
        }
        let first = first_field(count + 1)?;
        // Token `i` runs from after dot `i - 1` to dot `i` (or the end).
        let token = |i: usize| {
            let from = if i == 0 { 0 } else { dots[i - 1] + 1 };
            let to = if i < count { dots[i] } else { rest.len() };
            decimal(&rest[from..to])
        };
        Some(Delivered {
            delivered: token(first)?,
            stream_sequence: token(first + 1)?,
            consumer_sequence: token(first + 2)?,
            published: SystemTime::UNIX_EPOCH + Duration::from_nanos(token(first + 3)?),
        })
    }
}

/// The dots kept: enough to end the last field read in either format (the time, at most the
/// eighth token, which the eighth dot ends).
const DOTS: usize = 8;

/// A token of decimal digits as a number (`str::parse` handles signs, radixes and overflow
/// per digit, several times the work for these).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        // More than 19 digits could overflow; no field read here has them before 2286.
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        (digit < 10).then(|| n * 10 + u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::{AckSubjects, Delivered};
    use std::time::{Duration, SystemTime};

    fn at(nanos: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    #[test]
    fn reads_the_original_format() {
        assert_eq!(
            Delivered::parse("$JS.ACK.ORDERS.billing.1.42.7.1733480000123456789.0"),
            Some(Delivered {
                delivered: 1,
                stream_sequence: 42,
                consumer_sequence: 7,
                published: at(1_733_480_000_123_456_789),
            })
        );
    }

    #[test]
    fn reads_the_format_with_domain_and_account_and_ignores_later_tokens() {
        let want = Some(Delivered {
            delivered: 3,
            stream_sequence: 1_000_000,
            consumer_sequence: 999,
            published: at(1_733_480_000_000_000_001),
        });
        let v2 = "$JS.ACK._.ACCHASH.ORDERS.billing.3.1000000.999.1733480000000000001.12";
        assert_eq!(Delivered::parse(v2), want);
        assert_eq!(Delivered::parse(&format!("{v2}.token")), want);
        assert_eq!(Delivered::parse(&format!("{v2}.token.more")), want);
    }

    /// A consumer's own reading agrees with the general one on every subject: its own, those
    /// of another consumer, the format with a domain (even one named as its stream and an
    /// account hash named as it), and subjects neither format reads.
    #[test]
    fn a_consumers_reading_agrees_with_the_general_one() {
        let acks = AckSubjects::new("ORDERS", "billing");
        let subjects = [
            "$JS.ACK.ORDERS.billing.1.42.7.1733480000123456789.0",
            "$JS.ACK.ORDERS.billing.3.1000000.999.1733480000000000001.12345",
            "$JS.ACK.ORDERS.shipping.1.42.7.1733480000123456789.0",
            "$JS.ACK._.ACCHASH.ORDERS.billing.3.1000000.999.1733480000000000001.12",
            "$JS.ACK.ORDERS.billing.ORDERS.billing.3.1000000.999.1733480000000000001.12",
            "$JS.ACK.ORDERS.billing.3.1000000.999.1733480000000000001.12.token",
            "",
            "$JS.ACK.",
            "$JS.ACK.ORDERS.billing.",
            "$JS.ACK.ORDERS.billing.1.42.7.1733480000123456789",
            "$JS.ACK.ORDERS.billing.1.42.7.1733480000123456789.0.x",
            "$JS.ACK.ORDERS.billing.1.42",
            "$JS.ACK.ORDERS.billing.one.42.7.1733480000123456789.0",
            "$JS.ACK.ORDERS.billing.1.-42.7.1733480000123456789.0",
            "$JS.ACK.ORDERS.billing.1.42.7..0",
        ];
        for subject in subjects {
            assert_eq!(
                acks.read_subject(subject),
                Delivered::parse(subject),
                "{subject}"
            );
        }
        assert!(acks.read_subject(subjects[0]).is_some());
        assert!(acks.read_subject(subjects[4]).is_some());
    }

    #[test]
    fn numbers_are_decimal_digits_only() {
        use super::decimal;
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(
            decimal(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1a",
            b" 1",
            b"10000000000000000000",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn anything_else_is_not_read() {
        for subject in [
            "",
            "_INBOX.abc",
            "$JS.ACK.",
            // 8 tokens: neither format.
            "$JS.ACK.ORDERS.billing.1.42.7.1733480000123456789.0.x",
            "$JS.ACK.ORDERS.billing.1.42",
            "$JS.ACK.ORDERS.billing.one.42.7.1733480000123456789.0",
            "$JS.ACK.ORDERS.billing.1.-42.7.1733480000123456789.0",
            "$JS.ACK.ORDERS.billing.1.42.7..0",
        ] {
            assert_eq!(Delivered::parse(subject), None, "{subject}");
        }
    }

    /// The subjects a real server sends read the same as with async-nats's own parser.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_a_real_servers_subjects_as_async_nats_does() {
        use async_nats::jetstream::{self, consumer::pull, stream};
        use futures::StreamExt;
        // Deletes this process's streams when dropped, also if the test fails.
        let server = crate::testing::SharedServer::get();
        let client = async_nats::connect(server.url())
            .await
            .expect("the shared NATS server (`cargo xtask brokers up`)");
        let js = jetstream::new(client);
        let name = eventbus_testkit::conformance::unique("delivered");
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![name.clone()],
                ..Default::default()
            })
            .await
            .expect("stream");
        for _ in 0..3 {
            js.publish(name.clone(), "x".into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("reader".into()),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer
            .fetch()
            .max_messages(3)
            .messages()
            .await
            .expect("fetch");
        let mut seen = 0;
        while let Some(m) = messages.next().await {
            let m = m.expect("message");
            let theirs = m.info().expect("async-nats reads it");
            let ours = AckSubjects::new(&name, "reader")
                .read(&m)
                .expect("we read it");
            assert_eq!(
                Delivered::parse(m.reply.as_deref().expect("an ack subject")),
                Some(ours),
                "the general reading agrees"
            );
            assert_eq!(
                ours,
                Delivered {
                    stream_sequence: theirs.stream_sequence,
                    consumer_sequence: theirs.consumer_sequence,
                    delivered: u64::try_from(theirs.delivered).expect("positive"),
                    published: SystemTime::from(theirs.published),
                },
                "{:?}",
                m.reply
            );
            seen += 1;
        }
        assert_eq!(seen, 3);
        js.delete_stream(&name).await.expect("delete");
    }
}
