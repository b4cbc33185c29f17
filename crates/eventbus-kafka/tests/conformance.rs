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

/// The checks that make a group rebalance (members joining, leaving and closing while messages
/// flow), again with the consumers on the classic protocol; the suite above runs the default,
/// KIP-848.
mod classic_protocol {
    use eventbus_kafka::GroupProtocol;
    use eventbus_kafka::testing::shared_harness_on;
    use eventbus_testkit::conformance;

    macro_rules! on_classic {
        ($($check:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    eventbus_testkit::log_to_test_output();
                    conformance::$check(&shared_harness_on(GroupProtocol::Classic)).await;
                }
            )*
        };
    }

    on_classic!(
        concurrent_subscribe,
        concurrent_subscribe_multiple_topics,
        continue_after_subscription_close,
        concurrent_close,
        scale_out,
    );
}
