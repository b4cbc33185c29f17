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
use crate::tls::TestCertificates;

/// The cluster id of every test broker (16 bytes, URL-safe base64 without padding:
/// "eventbus-test-ka").
const CLUSTER_ID: &str = "ZXZlbnRidXMtdGVzdC1rYQ";

/// A single-node broker for tests: replication 1, few partitions for the internal topics, no
/// wait before the first rebalance of a group, and the consumer group protocol's (KIP-848)
/// session and heartbeat set by the broker as short as the classic groups' the tests ask for
/// (its defaults, 45 s and 5 s, would make every leave or kill test wait 45 s).
///
/// With `sasl_ssl`, a third listener, `SASL_SSL` on its own port, takes clients with TLS and
/// SASL PLAIN (see [`SaslSsl`]); the controller, the broker's own traffic and the readiness
/// probe ([`answers`]) keep the `PLAINTEXT` ones.
fn properties(
    port: u16,
    controller_port: u16,
    node: u32,
    store: &Path,
    sasl_ssl: Option<(&SaslSsl, &Path)>,
    extra: &[String],
) -> String {
    let mut listeners =
        format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}");
    let mut advertised = format!("PLAINTEXT://127.0.0.1:{port}");
    let mut protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_owned();
    let mut security = String::new();
    if let Some((listener, keystore)) = sasl_ssl {
        let secure = format!(",SASL_SSL://127.0.0.1:{}", listener.port);
        listeners.push_str(&secure);
        advertised.push_str(&secure);
        protocols.push_str(",SASL_SSL:SASL_SSL");
        security = listener.properties(keystore);
    }
    format!(
        "process.roles=broker,controller
node.id={node}
controller.quorum.voters={node}@127.0.0.1:{controller_port}
listeners={listeners}
advertised.listeners={advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map={protocols}
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
{security}{extra}",
        store = store.display(),
        // Last: a property given twice takes its last value.
        extra = extra
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>(),
    )
}

/// A `SASL_SSL` listener of a private test broker
/// ([`ServerProcess::kafka_sasl_ssl`](super::ServerProcess::kafka_sasl_ssl), which says why
/// `PLAIN`): TLS with the server certificate of a [`TestCertificates`] (clients trust its
/// CA), then SASL `PLAIN` with one user. Its `Debug` hides the password.
#[derive(Clone)]
pub(super) struct SaslSsl {
    pub(super) port: u16,
    certificates: TestCertificates,
    user: String,
    password: String,
}

impl std::fmt::Debug for SaslSsl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslSsl")
            .field("port", &self.port)
            .field("certificates", &self.certificates)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl SaslSsl {
    /// The listener on `port` for `user` with `password`: both go into a JAAS line of the
    /// properties file, so they are limited to characters that need no quoting there.
    pub(super) fn new(
        port: u16,
        certificates: &TestCertificates,
        user: &str,
        password: &str,
    ) -> std::io::Result<Self> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.+@!#%*".contains(c))
        };
        if !plain(user) || !plain(password) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a test broker's SASL user and password are ASCII letters, digits and -_.+@!#%*",
            ));
        }
        Ok(SaslSsl {
            port,
            certificates: certificates.clone(),
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Writes the listener's PEM key store (private key, then the certificate chain: what
    /// Kafka's `ssl.keystore.type=PEM` reads from one file) to `path`.
    pub(super) fn write_keystore(&self, path: &Path) -> std::io::Result<()> {
        let mut pem = std::fs::read_to_string(self.certificates.server_key())?;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&std::fs::read_to_string(self.certificates.server_cert())?);
        std::fs::write(path, pem)
    }

    /// The listener's settings: a PEM key store with an unencrypted key (no password set), no
    /// client certificate asked for, SASL `PLAIN` with the one user.
    fn properties(&self, keystore: &Path) -> String {
        format!(
            "listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{user}=\"{password}\";
",
            keystore = keystore.display(),
            user = self.user,
            password = self.password,
        )
    }
}

/// Writes `dir/server.properties` (and the key store of a `SASL_SSL` listener) and, unless
/// `store` exists (a restart), copies the template store there; returns
/// `java … kafka.Kafka dir/server.properties`.
pub(super) fn command(
    port: u16,
    controller_port: u16,
    node: u32,
    dir: &Path,
    store: &Path,
    sasl_ssl: Option<&SaslSsl>,
    extra: &[String],
) -> std::io::Result<Command> {
    let libs = kafka_libs()?;
    let keystore = dir.join("sasl-ssl-keystore.pem");
    if let Some(listener) = sasl_ssl {
        listener.write_keystore(&keystore)?;
    }
    let config = dir.join("server.properties");
    std::fs::write(
        &config,
        properties(
            port,
            controller_port,
            node,
            store,
            sasl_ssl.map(|l| (l, keystore.as_path())),
            extra,
        ),
    )?;
    if !store.exists() {
        copy_dir(&template(node)?, store)?;
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

/// The formatted store every broker with `node.id` `node` starts from, made on first use (the
/// store records its node's id).
fn template(node: u32) -> std::io::Result<PathBuf> {
    let template = match node {
        1 => kafka_home().join("template"),
        n => kafka_home().join(format!("template-node-{n}")),
    };
    if template.join("meta.properties").is_file() {
        return Ok(template);
    }
    // Formatted beside it and renamed into place: concurrent tests may all get here first.
    let staging = kafka_home().join(format!(".template-{node}.{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let store = staging.join("store");
    let config = staging.join("server.properties");
    // The ports are not recorded in the store (static quorum): any will do.
    std::fs::write(&config, properties(9092, 9093, node, &store, None, &[]))?;
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

/// How many brokers a broker on `port` lists in its metadata (all of a cluster's, once it is
/// whole).
pub(super) fn brokers_listed(port: u16) -> std::io::Result<i32> {
    metadata_brokers(port)
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
