//! The conformance suite against Apache Kafka: every check runs on the shared broker (topics
//! and groups of this process deleted afterwards), but `reconnect`, which kills and restarts
//! its broker, on a private one.

use eventbus_kafka::testing::{private_harness as private, shared_harness as shared};

eventbus_testkit::conformance_tests!(shared = shared(), private = private());

/// Arbitrary header names and values, keys and payloads through every publish path (fewer
/// cases than in memory: each is a round trip to the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_arbitrary_input() {
    eventbus_testkit::conformance::publish_arbitrary(&shared(), 1_000).await;
}
