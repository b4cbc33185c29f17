//! What the Kafka tests share: the brokers and test settings (`eventbus_kafka::testing`),
//! unique names and a thread count.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub use eventbus_kafka::testing::{PrivateBroker, SharedBroker, config};

pub fn unique(prefix: &str) -> String {
    eventbus_testkit::conformance::unique(prefix)
}

/// OS threads of this process. Only meaningful when the test has the process to itself, as
/// under cargo-nextest (which sets `NEXTEST`); `None` otherwise.
pub fn threads() -> Option<usize> {
    std::env::var_os("NEXTEST")
        .map(|_| std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count))
}
