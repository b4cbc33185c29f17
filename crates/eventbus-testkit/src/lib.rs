//! Test kit for eventbus transports: the conformance suite, leak snapshots (and the counting
//! allocator they read heap figures from), an order checker, and the real brokers the tests run.
//! The load scenarios and every other measuring tool are in `eventbus-bench`.
//!
//! This is a kit for implementations and their CI, not a semver-stable API.
//!
//! ```
//! use eventbus_testkit::leak::Snapshot;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let before = Snapshot::take();
//! // build, load and close a bus here
//! let after = Snapshot::take();
//! assert_eq!(after.tasks, before.tasks);
//! # }
//! ```
#![warn(missing_docs)]

pub mod brokers;
pub mod conformance;
pub mod leak;
pub mod order;
pub mod tls;

/// Sends the `tracing` events of the code under test to the test's captured output (shown
/// for a failed test), filtered by the `EVENTBUS_LOG` variable, a `tracing` filter such as
/// `eventbus_kafka=debug`; does nothing when it is unset. The conformance tests call it.
pub fn log_to_test_output() {
    if let Ok(filter) = std::env::var("EVENTBUS_LOG") {
        conformance::checks::install_global_subscriber(Some(filter));
    }
}
