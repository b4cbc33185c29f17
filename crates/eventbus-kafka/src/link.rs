//! What the clients say about the connection to the brokers.
//!
//! librdkafka has no connection event: it reports errors (all brokers down, a broker's
//! transport failing) through the client context and reconnects on its own. The transport
//! counts itself disconnected from "all brokers down" until a broker answers again (a
//! delivery report, a metadata or offset answer, a fetched message).
//!
//! # Refusals
//! Some failures are answers, not silence: retrying will not change them, so
//! [`KafkaTransport::connect`](crate::KafkaTransport::connect) stops waiting for a broker
//! once one is seen (see [`Refusal`]). librdkafka reports them as it reports any broker
//! failure and keeps reconnecting; the [`Link`] keeps the first one:
//! - SASL refused the credentials: the error callback's `__AUTHENTICATION`.
//! - TLS failed (a certificate not trusted or not for the host): `__SSL`.
//! - The listener speaks another security protocol than the client:
//!   - a TLS client on a plaintext listener: `__TRANSPORT` with librdkafka's hint
//!     "connecting to a PLAINTEXT broker listener?";
//!   - a plaintext client on a TLS listener: the broker hangs up while the client waits for
//!     the answer to its first request (ApiVersion). librdkafka logs this ("Disconnected ...
//!     in state APIVERSION_QUERY", facility `FAIL`) at level info and sends no error to the
//!     error callback (a close with one request in flight is not an error to it), so the
//!     [`Link`] reads it from the log line, for clients that do not use TLS, as librdkafka's
//!     own comment on that state does ("typically means we're connecting to a SSL-listener
//!     as PLAINTEXT"). The probing client's librdkafka log level is therefore at least info
//!     ([`probe_log_level`]); with `log.connection.close=false` librdkafka logs no close and
//!     this case waits for the request timeout like an unreachable broker.
//!
//! The texts matched are librdkafka 2.12's; `tests/security.rs` checks each case against a
//! real broker, so a librdkafka that words them differently fails there.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};

/// The connection as the clients report it.
#[derive(Debug, Default)]
pub(crate) struct Link {
    down: AtomicBool,
    reconnects: AtomicU64,
    last_error: Mutex<Option<(SystemTime, String)>>,
    /// The clients' `security.protocol` has no TLS (`plaintext`, `sasl_plaintext`): a hang-up
    /// during the first request then means a TLS listener.
    plaintext: bool,
    /// The first refusal reported.
    refusal: Mutex<Option<Refusal>>,
}

/// A broker's answer that retrying will not change: see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) kind: RefusalKind,
    /// What librdkafka said (its error reason or log line: no credential in it).
    pub(crate) reason: String,
}

/// Which refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// SASL refused the credentials.
    Authentication,
    /// The TLS handshake failed.
    Tls,
    /// The listener speaks another security protocol.
    ProtocolMismatch,
}

impl Link {
    /// The link of clients whose `security.protocol` is `protocol` (librdkafka's names, any
    /// case; librdkafka's default is `plaintext`).
    pub(crate) fn new(protocol: &str) -> Self {
        let protocol = protocol.to_ascii_lowercase();
        Link {
            plaintext: protocol == "plaintext" || protocol == "sasl_plaintext",
            ..Link::default()
        }
    }

    pub(crate) fn error(&self, error: &RdError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka error");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((SystemTime::now(), format!("{error}: {reason}")));
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.down.store(true, Ordering::Release);
        }
        if let Some(kind) = code.and_then(|code| refusal_of_error(code, reason)) {
            self.refuse(kind, reason);
        }
    }

    /// A librdkafka log line of one of this link's clients: logged, and read for the refusal
    /// the error callback does not report.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log(level, facility, message);
        if self.plaintext && is_hang_up_at_first_request(facility, message) {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((SystemTime::now(), message.to_owned()));
            self.refuse(RefusalKind::ProtocolMismatch, message);
        }
    }

    fn refuse(&self, kind: RefusalKind, reason: &str) {
        let mut refusal = self.refusal.lock().unwrap_or_else(|e| e.into_inner());
        if refusal.is_none() {
            *refusal = Some(Refusal {
                kind,
                reason: reason.to_owned(),
            });
        }
    }

    /// The first refusal reported, if any.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A broker answered.
    pub(crate) fn up(&self) {
        // Relaxed check first: this runs for every delivery.
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The context of the producer and admin client: errors go to the [`Link`].
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkContext(pub(crate) std::sync::Arc<Link>);

impl ClientContext for LinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: RdError, reason: &str) {
        self.0.error(&error, reason);
    }
}

/// The refusal an error callback's code and reason tell, if any.
fn refusal_of_error(code: RDKafkaErrorCode, reason: &str) -> Option<RefusalKind> {
    match code {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some(RefusalKind::Authentication)
        }
        RDKafkaErrorCode::SSL => Some(RefusalKind::Tls),
        // A TLS handshake the peer hung up on: librdkafka's own guess, worded as a question.
        RDKafkaErrorCode::BrokerTransportFailure
            if reason.contains("connecting to a PLAINTEXT broker listener") =>
        {
            Some(RefusalKind::ProtocolMismatch)
        }
        _ => None,
    }
}

/// Whether a log line says a broker hung up while the client waited for the answer to its
/// first request (ApiVersion), e.g. `127.0.0.1:9093/bootstrap: Disconnected: connection
/// closed by peer: receive 0 after POLLIN (after 6ms in state APIVERSION_QUERY)`.
fn is_hang_up_at_first_request(facility: &str, message: &str) -> bool {
    facility == "FAIL"
        && message.contains("Disconnected")
        && message.contains("in state APIVERSION_QUERY")
}

/// librdkafka's log level for the client whose metadata request tells whether a broker
/// answers: [`log_level`], but at least info, so that the line telling a plaintext client's
/// hang-up on a TLS listener reaches [`Link::log`] (`tracing` still drops the info lines its
/// filter does not keep). librdkafka logs little at info: connection closes and failures.
pub(crate) fn probe_log_level() -> RDKafkaLogLevel {
    match log_level() {
        RDKafkaLogLevel::Debug => RDKafkaLogLevel::Debug,
        _ => RDKafkaLogLevel::Info,
    }
}

/// librdkafka's log lines, as `tracing` events of target `librdkafka` (rdkafka sends them to
/// the `log` crate, which a `tracing` subscriber does not see). Its `debug` setting (such as
/// `cgrp` for the consumer group) chooses what it logs at debug level.
pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// The most verbose level the `tracing` subscriber keeps for target `librdkafka`.
pub(crate) fn log_level() -> RDKafkaLogLevel {
    use tracing::Level;
    if tracing::enabled!(target: "librdkafka", Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", Level::INFO) {
        RDKafkaLogLevel::Info
    } else if tracing::enabled!(target: "librdkafka", Level::WARN) {
        RDKafkaLogLevel::Warning
    } else {
        RDKafkaLogLevel::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reasons and log lines as librdkafka 2.12.1 gave them against Kafka 4.4 (tests/security.rs).
    const WRONG_PASSWORD: &str = "sasl_ssl://127.0.0.1:33737/bootstrap: SASL authentication \
        error: Authentication failed: Invalid username or password (after 310ms in state AUTH_REQ)";
    const UNKNOWN_CA: &str = "sasl_ssl://127.0.0.1:33737/bootstrap: SSL handshake failed: \
        error:0A000086:SSL routines::certificate verify failed: broker certificate could not be \
        verified (after 5ms in state SSL_HANDSHAKE)";
    const TLS_ON_PLAINTEXT: &str = "sasl_ssl://127.0.0.1:41717/bootstrap: SSL handshake \
        failed: Disconnected: SSL connection closed by peer: connecting to a PLAINTEXT broker \
        listener? (after 7ms in state SSL_HANDSHAKE)";
    const PLAINTEXT_ON_TLS: &str = "127.0.0.1:33737/bootstrap: Disconnected: connection closed \
        by peer: receive 0 after POLLIN (after 6ms in state APIVERSION_QUERY)";
    const REFUSED: &str =
        "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused";

    fn global(code: RDKafkaErrorCode) -> RdError {
        RdError::Global(code)
    }

    #[test]
    fn refusals_are_told_apart_from_silence() {
        let cases = [
            (
                RDKafkaErrorCode::Authentication,
                WRONG_PASSWORD,
                Some(RefusalKind::Authentication),
            ),
            (RDKafkaErrorCode::SSL, UNKNOWN_CA, Some(RefusalKind::Tls)),
            (
                RDKafkaErrorCode::BrokerTransportFailure,
                TLS_ON_PLAINTEXT,
                Some(RefusalKind::ProtocolMismatch),
            ),
            (RDKafkaErrorCode::BrokerTransportFailure, REFUSED, None),
            (
                RDKafkaErrorCode::AllBrokersDown,
                "1/1 brokers are down",
                None,
            ),
        ];
        for (code, reason, expected) in cases {
            let link = Link::new("SASL_SSL");
            link.error(&global(code), reason);
            assert_eq!(link.refusal().map(|r| r.kind), expected, "{reason}");
        }
    }

    #[test]
    fn a_hang_up_at_the_first_request_is_a_mismatch_for_plaintext_clients_only() {
        let plaintext = Link::new("PLAINTEXT");
        plaintext.log(RDKafkaLogLevel::Info, "FAIL", PLAINTEXT_ON_TLS);
        assert_eq!(
            plaintext.refusal(),
            Some(Refusal {
                kind: RefusalKind::ProtocolMismatch,
                reason: PLAINTEXT_ON_TLS.to_owned()
            })
        );
        // A TLS client hung up on there is not told a mismatch (librdkafka: an old broker).
        let tls = Link::new("ssl");
        tls.log(RDKafkaLogLevel::Info, "FAIL", PLAINTEXT_ON_TLS);
        assert_eq!(tls.refusal(), None);
        let other = Link::new("plaintext");
        other.log(RDKafkaLogLevel::Info, "FAIL", REFUSED);
        assert_eq!(other.refusal(), None);
    }

    #[test]
    fn the_first_refusal_is_kept() {
        let link = Link::new("sasl_ssl");
        link.error(&global(RDKafkaErrorCode::SSL), UNKNOWN_CA);
        link.error(&global(RDKafkaErrorCode::Authentication), WRONG_PASSWORD);
        assert_eq!(link.refusal().map(|r| r.kind), Some(RefusalKind::Tls));
    }
}
