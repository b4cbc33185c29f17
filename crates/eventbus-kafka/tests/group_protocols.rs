//! The group protocols against brokers that lack one: a consumer asking for KIP-848 where the
//! broker has it turned off fails `subscribe` with a typed error, at once; the classic
//! protocol works there.

mod support;

use std::time::{Duration, Instant};

use eventbus_core::{BoxError, Delivery, EventBus, handler_fn};
use eventbus_kafka::{GroupProtocol, KafkaError, KafkaTransport, testing::config_with};
use support::{PrivateBroker, unique};

/// A broker that speaks only the classic group protocol, as every Kafka before 4.0 does.
fn classic_only_broker() -> PrivateBroker {
    PrivateBroker::with(&["group.coordinator.rebalance.protocols=classic"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip_848_on_a_broker_without_it_fails_subscribe_with_a_typed_error() {
    eventbus_testkit::log_to_test_output();
    let broker = classic_only_broker();
    let brokers = broker.brokers();
    let transport = KafkaTransport::connect(config_with(&brokers, GroupProtocol::Consumer))
        .await
        .expect("connect");
    let bus = EventBus::new(transport);
    let topic = unique("no-kip848");
    let started = Instant::now();
    let subscribed = tokio::time::timeout(
        Duration::from_secs(30),
        bus.subscribe(
            &topic,
            "g",
            handler_fn(|_d: Delivery| async { Ok::<_, BoxError>(()) }),
        ),
    )
    .await
    .expect("subscribe returned");
    let err = subscribed.expect_err("KIP-848 on a classic-only broker must fail");
    eprintln!("failed after {:?}: {err}", started.elapsed());
    let source = KafkaError::of(&err).unwrap_or_else(|| panic!("a KafkaError as source: {err:?}"));
    assert!(
        matches!(source, KafkaError::Group { group, .. } if group.contains(&topic)),
        "{source:?}"
    );
    bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_protocol_works_on_a_broker_without_kip_848() {
    eventbus_testkit::log_to_test_output();
    let broker = classic_only_broker();
    let brokers = broker.brokers();
    drop(
        support::publish_and_consume(
            config_with(&brokers, GroupProtocol::Classic),
            Duration::from_secs(30),
        )
        .await,
    );
}
