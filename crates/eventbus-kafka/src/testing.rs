//! The Kafka transport's conformance harnesses, test brokers and test settings, written once
//! for its own tests and for the suite's runner (feature `testing`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::EventBus;
use eventbus_core::transport::Capabilities;
use eventbus_testkit::brokers::{ServerProcess, shared};
use eventbus_testkit::conformance::Harness;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{ConsumerOptions, GroupProtocol, KafkaConfig, KafkaTransport};

/// The shared broker (`cargo xtask brokers up`; `EVENTBUS_KAFKA_BROKERS` names another). When
/// dropped (also when the test fails) it deletes the topics and groups whose names this
/// process made (every [`unique`](eventbus_testkit::conformance::unique) name holds the process id).
#[derive(Debug)]
pub struct SharedBroker {
    brokers: String,
}

impl SharedBroker {
    /// The shared broker's address, with the clean-up guard.
    pub fn get() -> Self {
        SharedBroker {
            brokers: shared::kafka_brokers(),
        }
    }

    /// Its address.
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
#[derive(Debug)]
pub struct PrivateBroker(ServerProcess);

impl PrivateBroker {
    /// Starts Apache Kafka on free ports with a fresh store.
    pub fn start() -> Self {
        Self::with(&[])
    }

    /// Starts Apache Kafka like [`start`](Self::start) with `properties` (`name=value`) added
    /// to its configuration.
    pub fn with(properties: &[&str]) -> Self {
        PrivateBroker(
            ServerProcess::kafka_with(properties).unwrap_or_else(|e| {
                panic!("cannot start a private Kafka (see DEVELOPERS.md): {e}")
            }),
        )
    }

    /// Its address.
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
/// is noticed in seconds; under KIP-848 the test brokers set the same), fast redelivery of
/// failed messages, frequent commits. The revoke
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

/// [`config`] with the consumers on `protocol`.
pub fn config_with(brokers: &str, protocol: GroupProtocol) -> KafkaConfig {
    let config = config(brokers);
    let consumer = config.consumer.clone().group_protocol(protocol);
    config.consumer(consumer)
}

/// Buses on `brokers`; `keep` lives as long as the harness.
fn harness_on<K>(
    brokers: String,
    protocol: GroupProtocol,
    capabilities: Capabilities,
    keep: Arc<K>,
) -> Harness
where
    K: Send + Sync + 'static,
{
    Harness::new("kafka", capabilities, move |options| {
        let brokers = brokers.clone();
        let _keep = Arc::clone(&keep);
        async move {
            let transport = KafkaTransport::connect(config_with(&brokers, protocol))
                .await
                .unwrap_or_else(|e| panic!("connect to Kafka at {brokers}: {e}"));
            EventBus::builder(transport).options(options).build()
        }
    })
}

/// The conformance harness on the shared broker: every check but `reconnect`.
pub fn shared_harness() -> Harness {
    shared_harness_on(GroupProtocol::default())
}

/// [`shared_harness`] with the consumers on `protocol`.
pub fn shared_harness_on(protocol: GroupProtocol) -> Harness {
    let broker = SharedBroker::get();
    harness_on(
        broker.brokers(),
        protocol,
        KafkaTransport::CAPABILITIES,
        Arc::new(broker),
    )
}

/// The conformance harness on a private broker it can kill and restart: `reconnect`.
pub fn private_harness() -> Harness {
    let broker = Arc::new(Mutex::new(PrivateBroker::start()));
    let brokers = broker.lock().unwrap_or_else(|e| e.into_inner()).brokers();
    let capabilities = KafkaTransport::CAPABILITIES;
    harness_on(
        brokers,
        GroupProtocol::default(),
        capabilities,
        Arc::clone(&broker),
    )
    .with_restart(move || {
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
