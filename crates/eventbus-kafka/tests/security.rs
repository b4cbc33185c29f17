//! Kafka with TLS and SASL, for real: a private broker with a `SASL_SSL` listener (SASL
//! `PLAIN`, see `ServerProcess::kafka_sasl_ssl`) and certificates made by the test
//! (`TestCertificates`: a CA, the broker's certificate, an unknown CA).
//!
//! The right credentials publish and consume end to end; a wrong password, an unknown CA and
//! a client of the wrong security protocol each fail `connect` with a typed error, printed
//! with the time it took (`cargo nextest run -p eventbus-kafka --test security
//! --no-capture`), bounded by `WAIT` so that a hang fails; no credential reaches a log line or
//! a `Debug` output. Each test starts its own broker: nextest runs every test in a process of
//! its own, so a broker in a `static` would not be shared anyway.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::Error;
use eventbus_core::transport::Transport;
use eventbus_kafka::{KafkaConfig, KafkaError, KafkaTransport};
use eventbus_testkit::brokers::ServerProcess;
use eventbus_testkit::tls::TestCertificates;
use support::{SharedBroker, unique};

const USER: &str = "eventbus-test";
const PASSWORD: &str = "Right-pw-7f3a2c";
const WRONG_PASSWORD: &str = "Wrong-pw-91cd4e";
/// The bound on every wait: a connect or a delivery that takes longer fails the test.
const WAIT: Duration = Duration::from_secs(20);

/// Certificates in a directory of their own and a private broker with a `SASL_SSL` listener
/// that serves them and accepts [`USER`] with [`PASSWORD`]. Dropped, it kills the broker by
/// pid and deletes the certificates (the broker keeps its log if the test failed).
struct SecureBroker {
    certificates: TestCertificates,
    dir: PathBuf,
    broker: ServerProcess,
}

impl SecureBroker {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("eventbus-certs"));
        let certificates = TestCertificates::create(&dir).expect("test certificates");
        let broker = ServerProcess::kafka_sasl_ssl(&certificates, USER, PASSWORD)
            .unwrap_or_else(|e| panic!("cannot start a Kafka with SASL_SSL: {e}"));
        SecureBroker {
            certificates,
            dir,
            broker,
        }
    }

    /// The `SASL_SSL` listener.
    fn secure(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.broker.sasl_ssl_port().expect("SASL_SSL")
        )
    }

    /// The test settings with `SASL_SSL`, user [`USER`], `password`, and `ca` trusted.
    fn config(&self, password: &str, ca: &Path) -> KafkaConfig {
        sasl_ssl(&self.secure(), password, ca)
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sasl_ssl(brokers: &str, password: &str, ca: &Path) -> KafkaConfig {
    support::config(brokers)
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", USER)
        .set("sasl.password", password)
        .set("ssl.ca.location", ca.display().to_string())
}

fn kafka_error(e: &Error) -> &KafkaError {
    KafkaError::of(e).unwrap_or_else(|| panic!("not a KafkaError: {e:?}"))
}

/// Connects with `config`, which must fail within [`WAIT`]; prints how long it took and
/// checks that no thread is left.
async fn refused(case: &str, config: KafkaConfig) -> Error {
    let threads = support::threads();
    let started = Instant::now();
    let result = tokio::time::timeout(WAIT, KafkaTransport::connect(config))
        .await
        .unwrap_or_else(|_| panic!("{case}: connect still waiting after {WAIT:?}"));
    let elapsed = started.elapsed();
    let Err(err) = result else {
        panic!("{case}: connected")
    };
    eprintln!(
        "{case}: failed after {:.3} s with {:?}: {err}",
        elapsed.as_secs_f64(),
        variant(kafka_error(&err))
    );
    assert_eq!(
        support::threads(),
        threads,
        "{case}: threads left after a failed connect"
    );
    err
}

fn variant(e: &KafkaError) -> &'static str {
    match e {
        KafkaError::Authentication { .. } => "KafkaError::Authentication",
        KafkaError::Tls { .. } => "KafkaError::Tls",
        KafkaError::ProtocolMismatch { .. } => "KafkaError::ProtocolMismatch",
        KafkaError::Connect { .. } => "KafkaError::Connect",
        _ => "another KafkaError",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_credentials_publish_and_consume_over_sasl_ssl() {
    let broker = SecureBroker::start();
    let threads = support::threads();
    let config = broker.config(PASSWORD, &broker.certificates.ca());
    drop(support::publish_and_consume(config, WAIT).await);
    assert_eq!(support::threads(), threads, "threads left after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_authentication_error() {
    let broker = SecureBroker::start();
    let config = broker.config(WRONG_PASSWORD, &broker.certificates.ca());
    let err = refused("wrong password", config).await;
    let KafkaError::Authentication { brokers, reason } = kafka_error(&err) else {
        panic!("expected KafkaError::Authentication: {err:?}")
    };
    assert_eq!(brokers, &broker.secure());
    assert!(reason.contains("SASL authentication"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_is_a_tls_error() {
    let broker = SecureBroker::start();
    let config = broker.config(PASSWORD, &broker.certificates.unknown_ca());
    let err = refused("unknown CA", config).await;
    let KafkaError::Tls { reason, .. } = kafka_error(&err) else {
        panic!("expected KafkaError::Tls: {err:?}")
    };
    assert!(reason.contains("certificate verify failed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_the_tls_listener_is_a_protocol_mismatch() {
    let broker = SecureBroker::start();
    // librdkafka's default security.protocol: plaintext.
    let err = refused(
        "plaintext client on the SASL_SSL listener",
        support::config(&broker.secure()),
    )
    .await;
    let KafkaError::ProtocolMismatch { protocol, .. } = kafka_error(&err) else {
        panic!("expected KafkaError::ProtocolMismatch: {err:?}")
    };
    assert_eq!(protocol, "plaintext");
}

/// The other way round, on the shared broker's plaintext listener: no broker to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_on_a_plaintext_listener_is_a_protocol_mismatch() {
    let shared = SharedBroker::get();
    let dir = std::env::temp_dir().join(unique("eventbus-certs"));
    let certificates = TestCertificates::create(&dir).expect("test certificates");
    let err = refused(
        "SASL_SSL client on a plaintext listener",
        sasl_ssl(&shared.brokers(), PASSWORD, &certificates.ca()),
    )
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    let KafkaError::ProtocolMismatch { protocol, .. } = kafka_error(&err) else {
        panic!("expected KafkaError::ProtocolMismatch: {err:?}")
    };
    assert_eq!(protocol, "SASL_SSL");
}

/// Everything the code under test logs, librdkafka's lines included (events of target
/// `librdkafka`), as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A failing connect (wrong password) and a succeeding one (publish, consume, close), every
/// `tracing` event kept (trace level) and librdkafka debugging every context (`debug=all`,
/// its configuration dump included): neither password is in the output, nor in the `Debug`
/// or `Display` of the configuration, the transport, its connection state or the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_in_logs_errors_or_debug_output() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let broker = SecureBroker::start();
    let ca = broker.certificates.ca();

    let wrong = broker.config(WRONG_PASSWORD, &ca).set("debug", "all");
    let wrong_debug = format!("{wrong:?}");
    let err = refused("wrong password, debug=all", wrong).await;
    assert!(
        matches!(kafka_error(&err), KafkaError::Authentication { .. }),
        "{err:?}"
    );

    // The consumer's log lines come through the queue its poller thread polls, one line a
    // turn: every context would hold up the group's join past `WAIT`. Its connections' SASL
    // and TLS (`security`) are what matters here.
    let right = broker
        .config(PASSWORD, &ca)
        .set("debug", "all")
        .set_consumer("debug", "security");
    let right_debug = format!("{right:?}");
    let transport = support::publish_and_consume(right, WAIT).await;

    let log = captured.text();
    let outputs = [
        ("the log", log.clone()),
        ("Debug of the wrong configuration", wrong_debug),
        ("Debug of the right configuration", right_debug),
        ("Debug of the error", format!("{err:?}")),
        ("Display of the error", err.to_string()),
        ("Debug of the transport", format!("{transport:?}")),
        (
            "Debug of its connection",
            format!("{:?}", transport.connection()),
        ),
    ];
    for (what, text) in &outputs {
        for password in [PASSWORD, WRONG_PASSWORD] {
            assert!(!text.contains(password), "{password} in {what}");
        }
    }
    // The log did see the clients at work, where a password would show included: librdkafka
    // dumps its configuration (`debug=conf`), secrets as `[redacted]`.
    for expected in [
        " librdkafka:",
        "sasl.password = [redacted]",
        "SASL authentication error",
    ] {
        assert!(log.contains(expected), "{expected:?} not in the log");
    }
    eprintln!(
        "{} log lines, {} of them librdkafka's: no password",
        log.lines().count(),
        log.lines().filter(|l| l.contains(" librdkafka:")).count()
    );
}
