//! The conformance suite against a real Kafka-protocol broker (tansu, sqlite storage): each
//! check gets a private broker (its own port and store directory, removed afterwards), so
//! `reconnect` can kill and restart it.

mod support;

use std::sync::{Arc, Mutex};

use eventbus_core::EventBus;
use eventbus_kafka::KafkaTransport;
use eventbus_testkit::conformance::Harness;
use support::PrivateBroker;

fn harness() -> Harness {
    let broker = Arc::new(Mutex::new(PrivateBroker::start()));
    let brokers = broker.lock().unwrap_or_else(|e| e.into_inner()).brokers();
    let capabilities = KafkaTransport::CAPABILITIES.with_broker_restart();
    let for_restart = Arc::clone(&broker);
    Harness::new("kafka", capabilities, move |options| {
        let brokers = brokers.clone();
        async move {
            let transport = KafkaTransport::connect(support::config(&brokers))
                .await
                .unwrap_or_else(|e| panic!("connect to the private tansu: {e}"));
            EventBus::builder(transport).options(options).build()
        }
    })
    .with_restart(move || {
        let broker = Arc::clone(&for_restart);
        async move {
            // SIGKILL and start again on the same port and store, as a crash would.
            tokio::task::spawn_blocking(move || {
                broker.lock().unwrap_or_else(|e| e.into_inner()).restart()
            })
            .await
            .map_err(|e| eventbus_core::Error::transport("kafka", e))
        }
    })
}

eventbus_testkit::conformance_tests!(harness());
