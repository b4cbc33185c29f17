//! What the Kafka tests share: the shared broker (with a guard that cleans up after this
//! process), a private broker for tests that kill theirs, test-friendly settings, unique names
//! and a thread count.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use eventbus_kafka::{ConsumerOptions, KafkaConfig};
use eventbus_testkit::brokers::{ServerProcess, shared};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The shared broker (`cargo xtask brokers up`; `EVENTBUS_KAFKA_BROKERS` names another). When
/// dropped (also when the test fails) it deletes the topics and groups whose names this
/// process made (every [`unique`] name holds the process id).
pub struct SharedBroker {
    brokers: String,
}

impl SharedBroker {
    pub fn get() -> Self {
        SharedBroker {
            brokers: shared::kafka_brokers(),
        }
    }

    pub fn brokers(&self) -> String {
        self.brokers.clone()
    }
}

impl Drop for SharedBroker {
    fn drop(&mut self) {
        // rdkafka's futures complete on its own threads; a thread of our own blocks on them
        // without blocking a runtime this may be dropped in.
        let brokers = self.brokers.clone();
        let _ = std::thread::spawn(move || delete_this_process_names(&brokers)).join();
    }
}

fn delete_this_process_names(brokers: &str) {
    let mine = format!("-{}-", std::process::id());
    let timeout = Duration::from_secs(10);
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    let Ok(consumer) = config.create::<BaseConsumer>() else {
        return;
    };
    let Ok(admin) = config.create::<AdminClient<DefaultClientContext>>() else {
        return;
    };
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    if let Ok(groups) = consumer.fetch_group_list(None, timeout) {
        let groups: Vec<String> = groups
            .groups()
            .iter()
            .map(|g| g.name().to_owned())
            .filter(|g| g.contains(&mine))
            .collect();
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        if !groups.is_empty() {
            let _ = futures::executor::block_on(admin.delete_groups(&groups, &options));
        }
    }
    if let Ok(metadata) = consumer.fetch_metadata(None, timeout) {
        let topics: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|t| t.contains(&mine))
            .collect();
        if !topics.is_empty() {
            let _ = futures::executor::block_on(admin.delete_topics(&topics, &options));
        }
    }
}

/// A private broker (its own ports and store), for tests that kill or restart it; stopped by
/// pid on drop, its log and store kept if the test failed.
pub struct PrivateBroker(ServerProcess);

impl PrivateBroker {
    /// Starts Apache Kafka on free ports with a fresh store.
    pub fn start() -> Self {
        PrivateBroker(
            ServerProcess::kafka().unwrap_or_else(|e| {
                panic!("cannot start a private Kafka (see DEVELOPERS.md): {e}")
            }),
        )
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.0.port())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same ports and store.
    pub fn restart(&mut self) {
        self.0
            .restart()
            .unwrap_or_else(|e| panic!("cannot restart Kafka: {e}"));
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
