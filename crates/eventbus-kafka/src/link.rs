//! What the clients say about the connection to the brokers.
//!
//! librdkafka has no connection event: it reports errors (all brokers down, a broker's
//! transport failing) through the client context and reconnects on its own. The transport
//! counts itself disconnected from "all brokers down" until a broker answers again (a
//! delivery report, a metadata or offset answer, a fetched message).

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
}

impl Link {
    pub(crate) fn error(&self, error: &RdError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka error");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((SystemTime::now(), format!("{error}: {reason}")));
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.down.store(true, Ordering::Release);
        }
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
        log(level, facility, message);
    }

    fn error(&self, error: RdError, reason: &str) {
        self.0.error(&error, reason);
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
