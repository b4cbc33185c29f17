//! The conformance suite (`eventbus_testkit::conformance`) over the in-memory broker: one test
//! per check, on the harness of `eventbus_memory::testing` (every bus a connection to one shared
//! broker, like processes sharing a broker).
//!
//! `zero_leaks` reads process-wide figures (threads, descriptors, heap): run it in a process of
//! its own, as `cargo nextest` does for every test.

use eventbus_memory::testing::harness;

// Heap figures for `zero_leaks`.
eventbus_testkit::install_heap_counter!();

eventbus_testkit::conformance_tests!(harness());

/// Arbitrary header names and values, keys and payloads through every publish path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_arbitrary_input() {
    eventbus_testkit::conformance::publish_arbitrary(&harness(), 10_000).await;
}
