//! The conformance suite against nats-server: every check runs on the shared server (streams
//! of this process deleted afterwards), but `reconnect`, which kills and restarts its server,
//! on a private one.

use eventbus_nats::testing::{private_harness as private, shared_harness as shared};

eventbus_testkit::conformance_tests!(shared = shared(), private = private());

/// Arbitrary header names and values, keys and payloads through every publish path (fewer
/// cases than in memory: each is a round trip to the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_arbitrary_input() {
    eventbus_testkit::conformance::publish_arbitrary(&shared(), 1_000).await;
}

/// The group checks again with [`Sharing::Any`](eventbus_nats::Sharing::Any): one consumer per
/// group, pulled by every instance (no key affinity, so `scale_out` checks order within each
/// instance only).
mod sharing_any {
    use eventbus_nats::Sharing;
    use eventbus_nats::testing::shared_harness_with;
    use eventbus_testkit::conformance;

    macro_rules! on_any {
        ($($check:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    conformance::$check(&shared_harness_with(Sharing::Any)).await;
                }
            )*
        };
    }

    on_any!(
        consumer_groups,
        concurrent_subscribe,
        continue_after_subscription_close,
        concurrent_close,
        scale_out,
    );
}
