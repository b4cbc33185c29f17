//! How an Apache Kafka broker is started and when it counts as up.
//!
//! One node is broker and controller (KRaft) with a static quorum of itself
//! (`controller.quorum.voters`): the store then records no listener address, so a store
//! formatted once (the template, in the cache) is copied for every new broker whatever its
//! ports: formatting costs a JVM start, seconds on 2 cores.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::install::{kafka_home, kafka_libs};
use super::process::run_quietly;

/// The cluster id of every test broker (16 bytes, URL-safe base64 without padding:
/// "eventbus-test-ka").
const CLUSTER_ID: &str = "ZXZlbnRidXMtdGVzdC1rYQ";

/// A single-node broker for tests: replication 1, few partitions for the internal topics, no
/// wait before the first rebalance of a group, and the consumer group protocol's (KIP-848)
/// session and heartbeat set by the broker as short as the classic groups' the tests ask for
/// (its defaults, 45 s and 5 s, would make every leave or kill test wait 45 s).
fn properties(port: u16, controller_port: u16, store: &Path) -> String {
    format!(
        "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={store}
num.partitions=1
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=1000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=100
group.consumer.heartbeat.interval.ms=500
",
        store = store.display()
    )
}

/// Writes `dir/server.properties` and, unless `store` exists (a restart), copies the template
/// store there; returns `java … kafka.Kafka dir/server.properties`.
pub(super) fn command(
    port: u16,
    controller_port: u16,
    dir: &Path,
    store: &Path,
) -> std::io::Result<Command> {
    let libs = kafka_libs()?;
    let config = dir.join("server.properties");
    std::fs::write(&config, properties(port, controller_port, store))?;
    if !store.exists() {
        copy_dir(&template()?, store)?;
    }
    let mut command = java();
    command
        // The heap of `kafka-server-start.sh` is 1 GiB; tests need far less.
        .args([
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
        ])
        .args(["-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"])
        .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
        .arg("-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS")
        .arg("-cp")
        .arg(libs.join("*"))
        .arg("kafka.Kafka")
        .arg(&config);
    Ok(command)
}

fn java() -> Command {
    match std::env::var_os("JAVA_HOME") {
        Some(home) => Command::new(PathBuf::from(home).join("bin").join("java")),
        None => Command::new("java"),
    }
}

/// The formatted store every broker starts from, made on first use.
fn template() -> std::io::Result<PathBuf> {
    let template = kafka_home().join("template");
    if template.join("meta.properties").is_file() {
        return Ok(template);
    }
    // Formatted beside it and renamed into place: concurrent tests may all get here first.
    let staging = kafka_home().join(format!(".template.{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let store = staging.join("store");
    let config = staging.join("server.properties");
    // The ports are not recorded in the store (static quorum): any will do.
    std::fs::write(&config, properties(9092, 9093, &store))?;
    run_quietly(
        java()
            .arg("-cp")
            .arg(kafka_libs()?.join("*"))
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(&config),
    )?;
    let renamed = std::fs::rename(&store, &template);
    let _ = std::fs::remove_dir_all(&staging);
    match renamed {
        Ok(()) => Ok(template),
        Err(_) if template.join("meta.properties").is_file() => Ok(template),
        Err(e) => Err(e),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Whether a broker on `port` answers a metadata request and lists at least one broker (so it
/// has joined its own cluster), by a Metadata v4 request written by hand: the testkit does not
/// link a Kafka client.
pub(super) fn answers(port: u16) -> bool {
    metadata_brokers(port).is_ok_and(|brokers| brokers > 0)
}

fn metadata_brokers(port: u16) -> std::io::Result<i32> {
    const CLIENT: &[u8] = b"eventbus-testkit";
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    request.extend_from_slice(&3i16.to_be_bytes()); // api key: Metadata
    request.extend_from_slice(&4i16.to_be_bytes()); // version 4 (4.x accepts 4 and up)
    request.extend_from_slice(&1i32.to_be_bytes()); // correlation id
    request.extend_from_slice(&(CLIENT.len() as i16).to_be_bytes());
    request.extend_from_slice(CLIENT);
    request.extend_from_slice(&(-1i32).to_be_bytes()); // topics: null, i.e. all
    request.push(0); // allow_auto_topic_creation: false
    stream.write_all(&(request.len() as i32).to_be_bytes())?;
    stream.write_all(&request)?;
    // size, correlation id, throttle time, then the brokers' count.
    let mut head = [0u8; 16];
    stream.read_exact(&mut head)?;
    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if correlation != 1 {
        return Err(std::io::Error::other("not a Kafka metadata response"));
    }
    Ok(i32::from_be_bytes([head[12], head[13], head[14], head[15]]))
}
