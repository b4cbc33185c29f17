//! The conformance suite against Apache Kafka: every check runs on the shared broker (topics
//! and groups of this process deleted afterwards), but `reconnect`, which kills and restarts
//! its broker, on a private one.

mod support;

use std::sync::{Arc, Mutex};

use eventbus_core::EventBus;
use eventbus_core::transport::Capabilities;
use eventbus_kafka::KafkaTransport;
use eventbus_testkit::conformance::Harness;
use support::{PrivateBroker, SharedBroker};

/// Buses on `brokers`; `keep` lives as long as the harness.
fn harness_on<K>(brokers: String, capabilities: Capabilities, keep: Arc<K>) -> Harness
where
    K: Send + Sync + 'static,
{
    Harness::new("kafka", capabilities, move |options| {
        let brokers = brokers.clone();
        let _keep = Arc::clone(&keep);
        async move {
            let transport = KafkaTransport::connect(support::config(&brokers))
                .await
                .unwrap_or_else(|e| panic!("connect to Kafka at {brokers}: {e}"));
            EventBus::builder(transport).options(options).build()
        }
    })
}

fn shared() -> Harness {
    let broker = SharedBroker::get();
    harness_on(
        broker.brokers(),
        KafkaTransport::CAPABILITIES,
        Arc::new(broker),
    )
}

fn private() -> Harness {
    let broker = Arc::new(Mutex::new(PrivateBroker::start()));
    let brokers = broker.lock().unwrap_or_else(|e| e.into_inner()).brokers();
    let capabilities = KafkaTransport::CAPABILITIES;
    harness_on(brokers, capabilities, Arc::clone(&broker)).with_restart(move || {
        let broker = Arc::clone(&broker);
        async move {
            // SIGKILL and start again on the same ports and store, as a crash would.
            tokio::task::spawn_blocking(move || {
                broker.lock().unwrap_or_else(|e| e.into_inner()).restart()
            })
            .await
            .map_err(|e| eventbus_core::Error::transport("kafka", e))
        }
    })
}

eventbus_testkit::conformance_tests!(shared = shared(), private = private());

/// Arbitrary header names and values, keys and payloads through every publish path (fewer
/// cases than in memory: each is a round trip to the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_arbitrary_input() {
    eventbus_testkit::conformance::publish_arbitrary(&shared(), 1_000).await;
}
