//! Arbitrary input through every publish path: header names and values, keys and payloads
//! drawn by proptest (characters that end a header, separators, non-ASCII, the reserved names,
//! overlong strings), published one by one, as a batch of one, and after a valid message in a
//! batch. A publish never panics; it succeeds exactly when the core's rules accept the message,
//! and fails otherwise with the typed error for what is wrong, having sent nothing; what
//! succeeds arrives intact (key, headers, payload).
//!
//! Not one of the numbered checks: transports run it with their own case count (many in
//! memory, fewer against a real broker).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use eventbus_core::validate::{
    MAX_HEADER_NAME_LEN, RESERVED_HEADER_PREFIXES, RESERVED_HEADERS, validate_header, validate_key,
};
use eventbus_core::{Error, Message};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};

use super::support::{
    Harness, ID_HEADER, Record, close_bus, close_subs, id_of, recorder, subscribe, unique,
    user_headers,
};

/// A drawn message: key, headers and payload.
#[derive(Debug, Clone)]
struct Case {
    key: Option<String>,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

fn name() -> impl Strategy<Value = String> {
    let reserved: Vec<String> = RESERVED_HEADERS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .chain(
            RESERVED_HEADER_PREFIXES
                .iter()
                .map(|(p, _)| format!("{p}Msg-Id")),
        )
        .collect();
    prop_oneof![
        4 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
        3 => "(?s).{0,12}",
        1 => proptest::sample::select(reserved),
        1 => Just("x".repeat(MAX_HEADER_NAME_LEN + 1)),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[ -~]{0,16}", 3 => "(?s).{0,16}", 1 => "[a-z]{0,4}[\r\n\0][a-z]{0,4}"]
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::option::of(prop_oneof!["[A-Za-z0-9:_./-]{1,12}", "(?s).{0,12}"]),
        proptest::collection::vec((name(), value()), 0..4),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(key, headers, payload)| Case {
            key,
            headers,
            payload,
        })
}

impl Case {
    fn message(&self, topic: &str, id: usize) -> Message {
        let mut m = Message::new(topic, Bytes::from(self.payload.clone()))
            .with_header(ID_HEADER, format!("arbitrary-{id}"));
        if let Some(key) = &self.key {
            m = m.with_key(key.as_str());
        }
        for (name, value) in &self.headers {
            m = m.with_header(name.as_str(), value.as_str());
        }
        m
    }

    /// Whether the core's rules accept it (the last value of a repeated name is the one sent).
    fn valid(&self, message: &Message) -> bool {
        self.key.as_deref().is_none_or(|k| validate_key(k).is_ok())
            && message
                .headers()
                .iter()
                .all(|(n, v)| validate_header(n, v).is_ok())
    }
}

/// Publishes `cases` drawn messages to a fresh topic (see the module docs); panics on the
/// first publish that panics, succeeds where it should not, fails where it should not or with
/// an untyped error, and on any message that arrives changed or not at all.
pub async fn publish_arbitrary(h: &Harness, cases: usize) {
    let topic = unique("arbitrary");
    let group = unique("g");
    let bus = h.bus().await;
    let record = Arc::new(Record::default());
    let sub = subscribe(&bus, &topic, &group, recorder(&record)).await;
    // The same draws on every run: a failure is reproduced by running the test again.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = case();
    let mut sent: BTreeMap<String, Message> = BTreeMap::new();
    for i in 0..cases {
        let case = strategy
            .new_tree(&mut runner)
            .expect("a strategy that always draws")
            .current();
        let message = case.message(&topic, i);
        let valid = case.valid(&message);
        let result = match i % 3 {
            0 => bus.publish(message.clone()).await,
            1 => bus.publish_batch(vec![message.clone()]).await,
            // After a valid message: a batch is refused whole or sent whole.
            _ => {
                let companion = Message::new(&topic, "companion")
                    .with_header(ID_HEADER, format!("companion-{i}"));
                let result = bus
                    .publish_batch(vec![companion.clone(), message.clone()])
                    .await;
                if result.is_ok() {
                    sent.insert(id_of(&companion), companion);
                }
                result
            }
        };
        match (valid, result) {
            (true, Ok(())) => {
                sent.insert(id_of(&message), message);
            }
            (false, Err(Error::InvalidKey { .. } | Error::InvalidHeader { .. })) => {}
            (true, Err(e)) => panic!(
                "{}: case {i} ({case:?}) is valid, yet publishing it failed: {e:?}",
                h.name()
            ),
            (false, Ok(())) => panic!(
                "{}: case {i} ({case:?}) breaks the core's rules, yet it was published",
                h.name()
            ),
            (false, Err(e)) => panic!(
                "{}: case {i} ({case:?}): expected InvalidKey or InvalidHeader, got {e:?}",
                h.name()
            ),
        }
    }
    // The draws cover both sides of the rules, or the check proves little.
    let published = sent
        .keys()
        .filter(|id| id.starts_with("arbitrary-"))
        .count();
    assert!(
        published >= cases / 10 && cases - published >= cases / 10,
        "{}: of {cases} drawn messages {published} were valid: the draws must cover both sides",
        h.name()
    );
    record
        .wait_for(h, sent.len(), "every published arbitrary message")
        .await;
    close_subs(h, vec![sub]).await;
    close_bus(h, &bus).await;
    let mut got: BTreeMap<String, Arc<Message>> = BTreeMap::new();
    for m in record.messages() {
        got.insert(id_of(&m), m);
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>(),
        "{}: the messages received (left) are the ones published (right)",
        h.name()
    );
    for (id, m) in &sent {
        let g = &got[id];
        assert_eq!(g.key(), m.key(), "{}: key of {id}", h.name());
        assert_eq!(g.payload(), m.payload(), "{}: payload of {id}", h.name());
        assert_eq!(
            user_headers(g),
            user_headers(m),
            "{}: headers of {id} (left: got, right: sent)",
            h.name()
        );
    }
}
