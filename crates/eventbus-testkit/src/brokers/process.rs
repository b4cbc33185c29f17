//! One broker as a child process: its own ports and directory (store and log), stopped by its
//! pid. Dropped after a passing test it takes its directory with it; dropped while the test
//! panics it keeps the directory and prints where it is, so a failure leaves evidence.

use std::fs::OpenOptions;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{kafka, nats};
use crate::tls::TestCertificates;

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// nats-server with JetStream.
    Nats,
    /// Apache Kafka in KRaft mode, one node that is broker and controller.
    Kafka,
}

impl ServerKind {
    /// Its name, as in paths and messages.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Nats => "nats",
            ServerKind::Kafka => "kafka",
        }
    }

    /// How long a start may take before it counts as failed (a JVM on a busy 2-core machine
    /// takes seconds).
    fn start_timeout(self) -> Duration {
        match self {
            ServerKind::Nats => Duration::from_secs(10),
            ServerKind::Kafka => Duration::from_secs(90),
        }
    }

    /// The line its log has once it listens on `port` (it binds a port only then).
    fn listening_line(self, port: u16) -> String {
        match self {
            ServerKind::Nats => format!("Listening for client connections on 127.0.0.1:{port}"),
            ServerKind::Kafka => format!("Awaiting socket connections on 127.0.0.1:{port}."),
        }
    }
}

/// Most starts of a private broker on fresh ports when one of its ports was taken (see
/// [`ServerProcess::private`]).
const PORT_ATTEMPTS: u32 = 5;

/// A broker process on `127.0.0.1`.
#[derive(Debug)]
pub struct ServerProcess {
    kind: ServerKind,
    extra: Vec<String>,
    port: u16,
    /// Kafka's controller listener (unused by NATS).
    controller_port: u16,
    /// Kafka's `node.id` (1 unless it is a node of a [`Cluster`](super::Cluster)).
    node: u32,
    /// Kafka's `SASL_SSL` listener, if it has one (its `Debug` hides the password).
    sasl_ssl: Option<kafka::SaslSsl>,
    dir: PathBuf,
    child: Option<Child>,
    /// Left running when this is dropped (a shared broker).
    detached: bool,
    /// Its directory is kept when this is dropped, as after a failed test.
    keep: bool,
    /// How long its log was when it was last launched: what follows is that run's.
    log_from: u64,
}

impl ServerProcess {
    /// A private nats-server with JetStream on a free port, plus `extra` arguments (e.g.
    /// `--auth secret`).
    pub fn nats(extra: &[&str]) -> std::io::Result<Self> {
        Self::private(ServerKind::Nats, extra, None)
    }

    /// A private Kafka broker on free ports, its store copied from the formatted template.
    pub fn kafka() -> std::io::Result<Self> {
        Self::private(ServerKind::Kafka, &[], None)
    }

    /// A private Kafka broker like [`kafka`](Self::kafka) with `properties` (`name=value`
    /// lines) added to its configuration, overriding the test defaults (e.g.
    /// `group.coordinator.rebalance.protocols=classic`, a broker without KIP-848).
    pub fn kafka_with(properties: &[&str]) -> std::io::Result<Self> {
        Self::private(ServerKind::Kafka, properties, None)
    }

    /// A private Kafka broker like [`kafka`](Self::kafka) with a third listener, `SASL_SSL` on
    /// a free port of its own ([`sasl_ssl_port`](Self::sasl_ssl_port)): TLS with
    /// `certificates`' server certificate (for `127.0.0.1` and `localhost`; clients trust
    /// [`TestCertificates::ca`]), then SASL `PLAIN`, which accepts `user` with `password` and
    /// nobody else. [`port`](Self::port) stays the `PLAINTEXT` listener (the broker's own
    /// traffic and the readiness probe use it).
    ///
    /// `user` and `password` are limited to ASCII letters, digits and `-_.+@!#%*` (they are
    /// written unquoted into a JAAS line). `PLAIN`, not `SCRAM-SHA-512`: SCRAM users live in
    /// the broker's metadata log, written either at format time (`--add-scram`: a store of
    /// its own instead of a copy of the template, one more JVM start per broker) or by an
    /// `AlterUserScramCredentials` request after start (a Kafka tool, another JVM start, or
    /// salted hashes written by hand here); `PLAIN` users are a line of its properties. The
    /// client side (librdkafka's SASL over TLS) differs only in the mechanism's exchange.
    pub fn kafka_sasl_ssl(
        certificates: &TestCertificates,
        user: &str,
        password: &str,
    ) -> std::io::Result<Self> {
        // Its port is picked with the others, by `private`.
        let listener = kafka::SaslSsl::new(0, certificates, user, password)?;
        Self::private(ServerKind::Kafka, &[], Some(listener))
    }

    /// A broker on free ports, in a directory of its own.
    ///
    /// A free port is one the system handed out and took back: until the broker binds it,
    /// seconds later for a JVM, another process (the broker of a test running beside this
    /// one) may get the same port. The broker that binds second then exits ("address already
    /// in use"), and the port answers, but for the other broker; so readiness also asks the
    /// broker's own log ([`listens`](Self::listens)), and a broker that lost a port is
    /// started again on fresh ports, up to [`PORT_ATTEMPTS`] times.
    fn private(
        kind: ServerKind,
        extra: &[&str],
        sasl_ssl: Option<kafka::SaslSsl>,
    ) -> std::io::Result<Self> {
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            let controller_port = free_port()?;
            let mut listener = sasl_ssl.clone();
            if let Some(listener) = &mut listener {
                listener.port = free_port()?;
            }
            let dir = std::env::temp_dir().join("eventbus-brokers").join(format!(
                "{}-{}-{port}",
                kind.name(),
                std::process::id()
            ));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            match Self::start(
                kind,
                extra,
                port,
                controller_port,
                dir.clone(),
                false,
                listener,
            ) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < PORT_ATTEMPTS => {
                    eprintln!("{e}; starting it again on other ports");
                    let _ = std::fs::remove_dir_all(&dir);
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    /// Node `node` of a cluster, launched on the given ports and directory but not waited for:
    /// a KRaft node answers only once a quorum of its controllers runs, so a cluster launches
    /// all of them and then waits ([`await_ready`](Self::await_ready)).
    pub(super) fn launch_node(
        kind: ServerKind,
        node: u32,
        extra: &[String],
        port: u16,
        controller_port: u16,
        dir: PathBuf,
    ) -> std::io::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut server = ServerProcess {
            kind,
            extra: extra.to_vec(),
            port,
            controller_port,
            node,
            sasl_ssl: None,
            dir,
            child: None,
            detached: false,
            keep: false,
            log_from: 0,
        };
        server.launch()?;
        Ok(server)
    }

    /// Starts `kind` on the given ports with `dir` for its store and log (a store already there
    /// is used as it is), and waits until it answers.
    pub(super) fn start(
        kind: ServerKind,
        extra: &[&str],
        port: u16,
        controller_port: u16,
        dir: PathBuf,
        detached: bool,
        sasl_ssl: Option<kafka::SaslSsl>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut server = ServerProcess {
            kind,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            port,
            controller_port,
            node: 1,
            sasl_ssl,
            dir,
            child: None,
            detached,
            keep: false,
            log_from: 0,
        };
        if let Err(e) = server.spawn() {
            // `spawn` has stopped the process; what it logged is the evidence: keep it.
            server.detached = true;
            return Err(e);
        }
        Ok(server)
    }

    /// Which broker it is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Its client port (Kafka's broker listener, NATS's client port).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kafka's `SASL_SSL` listener port, for a broker started by
    /// [`kafka_sasl_ssl`](Self::kafka_sasl_ssl).
    pub fn sasl_ssl_port(&self) -> Option<u16> {
        self.sasl_ssl.as_ref().map(|l| l.port)
    }

    /// Its directory: the store (`store/`) and the log (`server.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its store directory.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Its log: everything the process wrote, across restarts.
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        self.launch()?;
        self.await_ready()
    }

    /// Starts the process, its output appended to its log.
    fn launch(&mut self) -> std::io::Result<()> {
        self.log_from = std::fs::metadata(self.log()).map_or(0, |m| m.len());
        let store = self.store();
        let mut command = match self.kind {
            ServerKind::Nats => nats::command(self.port, &store, &self.extra)?,
            ServerKind::Kafka => kafka::command(
                self.port,
                self.controller_port,
                self.node,
                &self.dir,
                &store,
                self.sasl_ssl.as_ref(),
                &self.extra,
            )?,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.detached {
            // Its own process group: a Ctrl-C meant for the command that started it does not
            // reach it.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let child = command.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start {}: {e}", self.kind.name()))
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the launched process answers on its port; kills it if it does not within
    /// its start timeout, or reports that it exited.
    pub(super) fn await_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + self.kind.start_timeout();
        let failure = loop {
            let answers = match self.kind {
                ServerKind::Nats => nats::answers(self.port),
                // A `SASL_SSL` listener is opened with the others; that it takes connections
                // is checked too (a TLS handshake here would need a TLS client).
                ServerKind::Kafka => {
                    kafka::answers(self.port)
                        && self
                            .sasl_ssl_port()
                            .is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok())
                }
            };
            // What answers on a port may be another process that took it (see `private`).
            if answers && self.listens() {
                return Ok(());
            }
            let Some(child) = self.child.as_mut() else {
                break ("is not running".to_owned(), std::io::ErrorKind::Other);
            };
            if let Some(status) = child.try_wait()? {
                let kind = if self.lost_a_port() {
                    std::io::ErrorKind::AddrInUse
                } else {
                    std::io::ErrorKind::Other
                };
                break (format!("exited ({status}) before it answered"), kind);
            }
            if Instant::now() > deadline {
                break (
                    format!("did not answer within {:?}", self.kind.start_timeout()),
                    std::io::ErrorKind::Other,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (failure, kind) = failure;
        self.kill();
        // What it logged is the evidence: keep it.
        self.keep = true;
        let taken = if kind == std::io::ErrorKind::AddrInUse {
            " (another process took one of its ports)"
        } else {
            ""
        };
        Err(std::io::Error::new(
            kind,
            format!(
                "{} on port {} {failure}{taken}; its log: {}",
                self.kind.name(),
                self.port,
                self.log().display()
            ),
        ))
    }

    /// The ports it listens on: the client port, and Kafka's controller and `SASL_SSL` ones.
    fn ports(&self) -> Vec<u16> {
        let mut ports = vec![self.port];
        if self.kind == ServerKind::Kafka {
            ports.push(self.controller_port);
            ports.extend(self.sasl_ssl_port());
        }
        ports
    }

    /// Whether its log says it listens on each of its ports (since it was last launched).
    fn listens(&self) -> bool {
        let log = self.log_since_launch();
        self.ports()
            .into_iter()
            .all(|port| log.contains(&self.kind.listening_line(port)))
    }

    /// Whether it failed to bind one of its ports since it was last launched.
    fn lost_a_port(&self) -> bool {
        self.log_since_launch()
            .to_ascii_lowercase()
            .contains("address already in use")
    }

    /// What it wrote to its log since it was last launched.
    fn log_since_launch(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = Vec::new();
        if let Ok(mut log) = std::fs::File::open(self.log())
            && log.seek(SeekFrom::Start(self.log_from)).is_ok()
        {
            let _ = log.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same ports and store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Keeps its directory (log and store) when this is dropped, as a failed test does: for a
    /// tool that failed without panicking.
    pub fn keep_on_drop(&mut self) {
        self.keep = true;
    }

    /// Leaves it running after this is dropped; returns its pid.
    pub(crate) fn detach(mut self) -> Option<u32> {
        self.detached = true;
        let pid = self.pid();
        // Not waited for: it outlives this process, and init reaps it.
        drop(self.child.take());
        pid
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.kill();
        if self.keep || std::thread::panicking() {
            eprintln!(
                "{} broker of the failed run kept: log {}, store {}",
                self.kind.name(),
                self.log().display(),
                self.store().display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(super) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A command whose output is its error message when it fails.
pub(super) fn run_quietly(command: &mut Command) -> std::io::Result<()> {
    let out = command.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{:?} failed ({}): {}{}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Another process holds the broker's port (it took the port between its choice and the
    /// broker's bind): the broker exits, and what answers on the port is the other process.
    /// That is no started broker, and the error says the port was taken.
    #[test]
    fn a_broker_whose_port_another_process_holds_is_not_taken_for_started() {
        // The other process: a server on the port greeting clients as nats-server does.
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        other.set_nonblocking(true).expect("nonblocking");
        let port = other.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let greeter = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match other.accept() {
                        Ok((mut client, _)) => {
                            let _ = client.write_all(b"INFO {}\r\n");
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            }
        });
        let dir = std::env::temp_dir()
            .join("eventbus-brokers")
            .join(format!("nats-port-taken-{}", std::process::id()));
        let started =
            ServerProcess::start(ServerKind::Nats, &[], port, 0, dir.clone(), false, None);
        stop.store(true, Ordering::Relaxed);
        greeter.join().expect("greeter");
        let _ = std::fs::remove_dir_all(&dir);
        let err = started.expect_err("a broker that could not bind its port counted as started");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    }
}
