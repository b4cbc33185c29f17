//! What the Kafka tests share: a private tansu broker per test, test-friendly settings, unique
//! names and a thread count.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use eventbus_kafka::{ConsumerOptions, KafkaConfig};
use eventbus_testkit::process::ServerProcess;

/// A private tansu broker (its own port and sqlite store), stopped by pid on drop.
pub struct PrivateBroker(ServerProcess);

impl PrivateBroker {
    /// Starts `tansu broker` on a free port with sqlite storage in a fresh directory.
    pub fn start() -> Self {
        PrivateBroker(
            ServerProcess::tansu(&[])
                .unwrap_or_else(|e| panic!("cannot start tansu (see DEVELOPERS.md): {e}")),
        )
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.0.port())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.0
            .restart()
            .unwrap_or_else(|e| panic!("cannot restart tansu: {e}"));
    }
}

/// Settings that keep tests quick: short group timeouts (a member that left without a word
/// is noticed in seconds), fast redelivery of failed messages, frequent commits. The revoke
/// wait stays long: with 50 subscriptions on one bus (`concurrent_subscribe`), handlers of a
/// revoked partition were seen to need more than 5 s, and a shorter wait hands their
/// messages to the next owner again.
///
/// `EVENTBUS_KAFKA_DEBUG` sets the consumers' librdkafka `debug` contexts (`cgrp` for the
/// group protocol): their lines are `tracing` events of target `librdkafka`, which
/// `EVENTBUS_LOG=librdkafka=debug` shows.
pub fn config(brokers: &str) -> KafkaConfig {
    let config = KafkaConfig::new(brokers);
    let config = match std::env::var("EVENTBUS_KAFKA_DEBUG") {
        Ok(contexts) => config.set_consumer("debug", contexts),
        Err(_) => config,
    };
    config
        .consumer(
            ConsumerOptions::default()
                .session_timeout(Duration::from_secs(6))
                .heartbeat_interval(Duration::from_millis(500))
                .redelivery_delay(Duration::from_millis(200))
                .commit_interval(Duration::from_millis(50))
                .revoke_timeout(Duration::from_secs(30)),
        )
        // Reconnect quickly after a broker restart.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
}

pub fn unique(prefix: &str) -> String {
    eventbus_testkit::conformance::unique(prefix)
}

/// OS threads of this process. Only meaningful when the test has the process to itself, as
/// under cargo-nextest (which sets `NEXTEST`); `None` otherwise.
pub fn threads() -> Option<usize> {
    std::env::var_os("NEXTEST")
        .map(|_| std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count))
}
