//! NATS security against real servers: TLS with user/password and with nkeys. Each test starts
//! a private nats-server of its own requiring TLS, with certificates made for it in a
//! directory of its own.
//!
//! The right credentials carry a message end to end. A wrong password, an unknown nkey, a seed
//! that does not parse, an unknown CA and a client without TLS options each come back as a
//! typed error ([`ConnectErrorKind`]); the wait is bounded by [`HANG`], so a hang fails the
//! test instead of stalling it, and the time taken is printed, not asserted. A failed connect
//! leaves no thread behind. No password or seed reaches a log line, a `Debug` output or an
//! error.

// The shared server's guard, which `support` re-exports, is not used here.
#[allow(unused_imports)]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use bytes::Bytes;
use eventbus_core::{BoxError, Delivery, Error, EventBus, Message, handler_fn};
use eventbus_nats::{ConnectErrorKind, NatsConfig, NatsError, NatsTransport};
use eventbus_testkit::tls::TestCertificates;
use support::{PrivateServer, unique};

/// How long a connect may take before the test calls it a hang. Not a pass criterion: the
/// default connect timeout (5 s) ends every connect well before it.
const HANG: Duration = Duration::from_secs(15);

/// A TLS setup for one test: fresh certificates in a directory of its own, deleted after a
/// passing test (kept, with its path printed, after a failing one).
struct Tls {
    dir: PathBuf,
    certs: TestCertificates,
}

impl Tls {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join("eventbus-tls").join(unique(test));
        let certs = TestCertificates::create(&dir)
            .unwrap_or_else(|e| panic!("certificates in {}: {e}", dir.display()));
        Tls { dir, certs }
    }

    /// A nats-server requiring TLS with the test certificate, plus `extra` arguments.
    fn server(&self, extra: &[&str]) -> PrivateServer {
        let cert = path(&self.certs.server_cert());
        let key = path(&self.certs.server_key());
        let mut args = vec!["--tls", "--tlscert", &cert, "--tlskey", &key];
        args.extend_from_slice(extra);
        PrivateServer::start(&args)
    }

    /// A nats-server requiring TLS whose users are `users` (entries of a configuration
    /// file's `authorization { users = [...] }`).
    fn server_with_users(&self, users: &[String]) -> PrivateServer {
        let conf = self.dir.join("server.conf");
        let text = format!(
            "authorization {{\n  users = [\n    {}\n  ]\n}}\n",
            users.join("\n    ")
        );
        std::fs::write(&conf, text).expect("server configuration written");
        self.server(&["-c", &path(&conf)])
    }

    /// Client options trusting the CA that signed the server's certificate, TLS required.
    fn trusting_the_ca(&self) -> ConnectOptions {
        ConnectOptions::new()
            .add_root_certificates(self.certs.ca())
            .require_tls(true)
    }

    /// Client options trusting only a CA that signed nothing here, TLS required.
    fn trusting_an_unknown_ca(&self) -> ConnectOptions {
        ConnectOptions::new()
            .add_root_certificates(self.certs.unknown_ca())
            .require_tls(true)
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "certificates of the failed test kept: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temporary path").to_owned()
}

/// A random string, so a leak check cannot be fooled by text that happens to be elsewhere.
fn secret(prefix: &str) -> String {
    // A fresh key pair's public key is 56 random base32 characters after its type prefix.
    format!(
        "{prefix}{}",
        &nkeys::KeyPair::new_user().public_key()[1..25]
    )
}

/// `nkey`'s seed with one character changed: a typo, which the seed's checksum catches.
fn mistyped(seed: &str) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

fn user_entry(user: &str, password: &str) -> String {
    format!("{{ user: \"{user}\", password: \"{password}\" }}")
}

fn nkey_entry(key: &nkeys::KeyPair) -> String {
    format!("{{ nkey: \"{}\" }}", key.public_key())
}

/// Connects, failing the test if it neither succeeds nor fails within [`HANG`].
async fn connect(config: NatsConfig) -> (Result<NatsTransport, Error>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, NatsTransport::connect(config))
        .await
        .unwrap_or_else(|_| panic!("connect neither succeeded nor failed within {HANG:?}"));
    (result, started.elapsed())
}

/// Connects with `config`, which must fail with `kind`; prints the error and how long it took,
/// checks that the failed connect left no thread behind, and returns the error.
async fn refused(case: &str, config: NatsConfig, kind: ConnectErrorKind) -> Error {
    let threads = support::threads();
    let (result, took) = connect(config).await;
    let err = match result {
        Ok(transport) => panic!("{case}: connected ({transport:?}), expected {kind:?}"),
        Err(err) => err,
    };
    eprintln!("{case}: failed after {took:?}: {err}");
    let nats = NatsError::of(&err).unwrap_or_else(|| panic!("{case}: not a NatsError: {err:?}"));
    assert!(
        matches!(nats, NatsError::Connect { .. }),
        "{case}: {nats:?}"
    );
    assert_eq!(nats.connect_kind(), Some(kind), "{case}: {err}");
    no_thread_left(threads, &format!("{case}: after a failed connect")).await;
    err
}

/// Asserts that the process has `threads` threads again (`when`: after what).
async fn no_thread_left(threads: Option<usize>, when: &str) {
    assert_eq!(
        support::threads_after_close(threads).await,
        threads,
        "threads left {when}: {:?}",
        support::thread_names()
    );
}

/// Connects with `options`, publishes one message and consumes it, closes; no thread left.
async fn round_trip(case: &str, url: String, options: ConnectOptions) {
    let threads = support::threads();
    let (result, took) = connect(NatsConfig::new(url).connect_options(options)).await;
    let transport = result.unwrap_or_else(|e| panic!("{case}: {e}"));
    eprintln!("{case}: connected after {took:?}");
    let bus = EventBus::new(transport);
    let topic = unique("secure");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let handler = handler_fn(move |d: Delivery| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(d.message().payload().clone());
            Ok::<_, BoxError>(())
        }
    });
    let sub = bus.subscribe(&topic, "g", handler).await.unwrap();
    bus.publish(Message::new(&topic, "over TLS").with_key("k"))
        .await
        .unwrap_or_else(|e| panic!("{case}: publish: {e}"));
    let got = tokio::time::timeout(HANG, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{case}: nothing delivered within {HANG:?}"))
        .expect("the handler lives as long as the subscription");
    assert_eq!(got, Bytes::from_static(b"over TLS"), "{case}");
    sub.close().await;
    bus.close().await.unwrap();
    drop(bus);
    no_thread_left(threads, &format!("{case}: after close")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_user_and_password_carries_a_message() {
    let tls = Tls::new("userpass");
    let password = secret("pw");
    let server = tls.server(&["--user", "alice", "--pass", &password]);
    let options = tls
        .trusting_the_ca()
        .user_and_password("alice".into(), password);
    round_trip("TLS + user/password", server.url(), options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_nkey_carries_a_message() {
    let tls = Tls::new("nkey");
    let key = nkeys::KeyPair::new_user();
    let server = tls.server_with_users(&[nkey_entry(&key)]);
    let options = tls.trusting_the_ca().nkey(key.seed().unwrap());
    round_trip("TLS + nkey", server.url(), options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unauthorized() {
    let tls = Tls::new("wrongpass");
    let password = secret("pw");
    let server = tls.server(&["--user", "alice", "--pass", &password]);
    let wrong = secret("wrong");
    let config = NatsConfig::new(server.url()).connect_options(
        tls.trusting_the_ca()
            .user_and_password("alice".into(), wrong.clone()),
    );
    let err = refused("wrong password", config, ConnectErrorKind::Unauthorized).await;
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(&wrong) && !shown.contains(&password),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_is_a_tls_error() {
    let tls = Tls::new("unknownca");
    let password = secret("pw");
    let server = tls.server(&["--user", "alice", "--pass", &password]);
    // The right credentials: only the certificate check can fail.
    let config = NatsConfig::new(server.url()).connect_options(
        tls.trusting_an_unknown_ca()
            .user_and_password("alice".into(), password),
    );
    let err = refused("unknown CA", config, ConnectErrorKind::Tls).await;
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

/// A client given no TLS option at all, against a server that requires TLS: the server's
/// greeting says TLS is required, so async-nats upgrades by itself and checks the server's
/// certificate against the system's roots, which do not hold the test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_tls_options_against_a_tls_server_is_a_tls_error() {
    let tls = Tls::new("plaintext");
    let password = secret("pw");
    let server = tls.server(&["--user", "alice", "--pass", &password]);
    let config = NatsConfig::new(server.url()).connect_options(
        ConnectOptions::with_user_and_password("alice".into(), password),
    );
    refused("no TLS options", config, ConnectErrorKind::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_nkey_is_unauthorized() {
    let tls = Tls::new("unknownnkey");
    let known = nkeys::KeyPair::new_user();
    let server = tls.server_with_users(&[nkey_entry(&known)]);
    // A valid seed of a key the server does not list.
    let stranger = nkeys::KeyPair::new_user();
    let config = NatsConfig::new(server.url())
        .connect_options(tls.trusting_the_ca().nkey(stranger.seed().unwrap()));
    refused("unknown nkey", config, ConnectErrorKind::Unauthorized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_that_does_not_parse_is_invalid_credentials() {
    let tls = Tls::new("badseed");
    let key = nkeys::KeyPair::new_user();
    let server = tls.server_with_users(&[nkey_entry(&key)]);
    let typo = mistyped(&key.seed().unwrap());
    let config = NatsConfig::new(server.url()).connect_options(tls.trusting_the_ca().nkey(typo));
    refused(
        "mistyped nkey seed",
        config,
        ConnectErrorKind::InvalidCredentials,
    )
    .await;
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every `tracing` event of the process, at every level, across failing and succeeding
/// connects with a password and with nkeys: no password or seed (right, wrong or mistyped) in
/// it, nor in the configurations' and the transport's `Debug` output or the errors.
///
/// The subscriber is the process's global one: async-nats logs from the transport's own I/O
/// thread, which a subscriber set for the test's thread only would not see (nextest runs each
/// test in a process of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_in_logs_debug_output_or_errors() {
    let log = Captured::default();
    let writer = log.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only global subscriber of this process");

    let tls = Tls::new("nosecret");
    let password = secret("pw");
    let wrong = secret("wrong");
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().unwrap();
    let stranger_seed = nkeys::KeyPair::new_user().seed().unwrap();
    let typo = mistyped(&seed);
    let server = tls.server_with_users(&[user_entry("alice", &password), nkey_entry(&key)]);
    let secrets = [&password, &wrong, &seed, &stranger_seed, &typo];
    let mut shown = Vec::new();

    let with = |options: ConnectOptions| NatsConfig::new(server.url()).connect_options(options);
    let failing = [
        (
            "wrong password",
            with(
                tls.trusting_the_ca()
                    .user_and_password("alice".into(), wrong.clone()),
            ),
            ConnectErrorKind::Unauthorized,
        ),
        (
            "unknown CA",
            with(
                tls.trusting_an_unknown_ca()
                    .user_and_password("alice".into(), password.clone()),
            ),
            ConnectErrorKind::Tls,
        ),
        (
            "unknown nkey",
            with(tls.trusting_the_ca().nkey(stranger_seed.clone())),
            ConnectErrorKind::Unauthorized,
        ),
        (
            "mistyped seed",
            with(tls.trusting_the_ca().nkey(typo.clone())),
            ConnectErrorKind::InvalidCredentials,
        ),
    ];
    for (case, config, kind) in failing {
        shown.push(format!("{config:?}"));
        let err = refused(case, config, kind).await;
        shown.push(format!("{err}"));
        shown.push(format!("{err:?}"));
    }
    for (case, config) in [
        (
            "user/password",
            with(
                tls.trusting_the_ca()
                    .user_and_password("alice".into(), password.clone()),
            ),
        ),
        ("nkey", with(tls.trusting_the_ca().nkey(seed.clone()))),
    ] {
        shown.push(format!("{config:?}"));
        let (result, _) = connect(config).await;
        let transport = result.unwrap_or_else(|e| panic!("{case}: {e}"));
        shown.push(format!("{transport:?}"));
        shown.push(format!("{:?}", transport.config()));
        eventbus_core::Transport::close(&transport).await.unwrap();
    }
    round_trip(
        "user/password, logged",
        server.url(),
        tls.trusting_the_ca()
            .user_and_password("alice".into(), password.clone()),
    )
    .await;

    let logged = log.text();
    // The capture saw the client's own lines, from its I/O thread: the CONNECT it wrote (with
    // the password in it, redacted), the server's refusals and the successful connects.
    for expected in [
        "write operation: CONNECT",
        "authorization violation",
        "connected successfully",
    ] {
        assert!(
            logged.contains(expected),
            "no {expected:?} in the log:\n{logged}"
        );
    }
    for (i, secret) in secrets.iter().enumerate() {
        assert!(
            !logged.contains(secret.as_str()),
            "secret #{i} in the log:\n{logged}"
        );
        for text in &shown {
            assert!(!text.contains(secret.as_str()), "secret #{i} in {text}");
        }
    }
    eprintln!(
        "{} log lines and {} Debug/Display texts checked",
        logged.lines().count(),
        shown.len()
    );
}

/// With async-nats's `retry_on_initial_connect`, its connect returns before the first
/// connection and retries for ever, a refused password included: the transport waits for the
/// first connection within its connect timeout, then fails, rather than blaming JetStream after
/// async-nats's request timeout. The right password still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_initial_connect_fails_within_the_connect_timeout() {
    let tls = Tls::new("retry");
    let password = secret("pw");
    let server = tls.server(&["--user", "alice", "--pass", &password]);
    let config = |password: String| {
        NatsConfig::new(server.url())
            .connect_options(
                tls.trusting_the_ca()
                    .user_and_password("alice".into(), password)
                    .retry_on_initial_connect(),
            )
            .connect_timeout(Duration::from_secs(2))
    };

    let threads = support::threads();
    let (result, took) = connect(config(secret("wrong"))).await;
    let err = result.expect_err("a wrong password never connects");
    eprintln!("wrong password, retry_on_initial_connect: failed after {took:?}: {err}");
    assert!(
        matches!(
            NatsError::of(&err),
            Some(NatsError::ConnectTimeout { after, .. }) if *after == Duration::from_secs(2)
        ),
        "{err}"
    );
    no_thread_left(threads, "after a failed connect").await;

    let (result, _) = connect(config(password)).await;
    let transport = result.unwrap_or_else(|e| panic!("the right password: {e}"));
    eventbus_core::Transport::close(&transport).await.unwrap();
}

/// A server that accepts the TCP connection and never greets (here a listener nobody
/// accepts on: the kernel completes the handshake): async-nats's own timeout, set to the
/// connect timeout, comes back as [`NatsError::ConnectTimeout`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_connect_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let threads = support::threads();
    let (result, took) =
        connect(NatsConfig::new(url).connect_timeout(Duration::from_secs(1))).await;
    let err = result.expect_err("nothing answers");
    eprintln!("silent server: failed after {took:?}: {err}");
    assert!(
        matches!(
            NatsError::of(&err),
            Some(NatsError::ConnectTimeout { after, .. }) if *after == Duration::from_secs(1)
        ),
        "{err}"
    );
    no_thread_left(threads, "after a failed connect").await;
}
