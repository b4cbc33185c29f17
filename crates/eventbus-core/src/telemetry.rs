//! Metrics and tracing.
//!
//! # Metrics
//! Recorded through the [`metrics`] façade, so any exporter (Prometheus, StatsD, ...) picks them
//! up: install its recorder *before* building the bus (handles are registered when a
//! subscription or topic is first used). With no recorder installed they cost next to nothing.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `eventbus_published_total` | counter | topic | messages the broker took |
//! | `eventbus_publish_failed_total` | counter | topic | publishes that returned an error |
//! | `eventbus_publish_duration_seconds` | histogram | topic | publish call to broker ack |
//! | `eventbus_handled_total` | counter | topic, group | messages handled (then acked) |
//! | `eventbus_failed_total` | counter | topic, group | messages that failed for good |
//! | `eventbus_retried_total` | counter | topic, group | retries scheduled |
//! | `eventbus_dead_lettered_total` | counter | topic, group | messages sent to a dead-letter topic |
//! | `eventbus_panicked_total` | counter | topic, group | handler panics caught |
//! | `eventbus_cancelled_total` | counter | topic, group | messages left unacked at shutdown |
//! | `eventbus_handler_duration_seconds` | histogram | topic, group | one handler call |
//! | `eventbus_in_flight` | gauge | | handler calls running (sampled by the [backlog monitor](crate::backlog)) |
//! | `eventbus_buffered_messages` | gauge | | messages in the dispatcher (sampled) |
//! | `eventbus_buffered_bytes` | gauge | | their bytes (sampled) |
//! | `eventbus_publish_backlog` | gauge | | publishes waiting for the broker (sampled) |
//! | `eventbus_consumer_lag` | gauge | topic, group | messages not yet acked (sampled) |
//!
//! ```
//! use eventbus_core::telemetry::names;
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//!
//! // Any `metrics` recorder works (a Prometheus exporter, say); install it before the bus.
//! let recorder = DebuggingRecorder::new();
//! let snapshot = recorder.snapshotter();
//! recorder.install().unwrap();
//! // ... build the bus, subscribe, publish ...
//! # metrics::counter!(names::HANDLED, "topic" => "orders", "group" => "billing").increment(1);
//! let handled: u64 = snapshot
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .filter(|(key, ..)| key.key().name() == names::HANDLED)
//!     .map(|(.., value)| match value { DebugValue::Counter(n) => n, _ => 0 })
//!     .sum();
//! assert_eq!(handled, 1);
//! ```
//!
//! # Tracing
//! Every publish runs in a span `eventbus.publish` (topic, key, message id) and every handler
//! call in a span `eventbus.handle` (topic, group, key, message id, attempt), so a handler's own
//! events carry them. With the `opentelemetry` feature, the W3C `traceparent` / `tracestate`
//! headers of the current span's context are added on publish and restored as the parent of
//! `eventbus.handle` on consume (see [`propagation`](crate::propagation)).

use metrics::{Counter, Histogram, counter, histogram};

/// Metric names (see the [module docs](self)).
pub mod names {
    /// Messages the broker took.
    pub const PUBLISHED: &str = "eventbus_published_total";
    /// Publishes that failed.
    pub const PUBLISH_FAILED: &str = "eventbus_publish_failed_total";
    /// Publish latency.
    pub const PUBLISH_DURATION: &str = "eventbus_publish_duration_seconds";
    /// Messages handled.
    pub const HANDLED: &str = "eventbus_handled_total";
    /// Messages failed for good.
    pub const FAILED: &str = "eventbus_failed_total";
    /// Retries scheduled.
    pub const RETRIED: &str = "eventbus_retried_total";
    /// Messages dead-lettered.
    pub const DEAD_LETTERED: &str = "eventbus_dead_lettered_total";
    /// Handler panics.
    pub const PANICKED: &str = "eventbus_panicked_total";
    /// Messages cancelled at shutdown.
    pub const CANCELLED: &str = "eventbus_cancelled_total";
    /// Handler call latency.
    pub const HANDLER_DURATION: &str = "eventbus_handler_duration_seconds";
    /// Handler calls running.
    pub const IN_FLIGHT: &str = "eventbus_in_flight";
    /// Messages in the dispatcher.
    pub const BUFFERED_MESSAGES: &str = "eventbus_buffered_messages";
    /// Bytes in the dispatcher.
    pub const BUFFERED_BYTES: &str = "eventbus_buffered_bytes";
    /// Publishes waiting for the broker.
    pub const PUBLISH_BACKLOG: &str = "eventbus_publish_backlog";
    /// Consumer lag.
    pub const CONSUMER_LAG: &str = "eventbus_consumer_lag";
}

/// A subscription's metric handles, registered once so the per-message cost is an atomic add.
pub(crate) struct RouteMetrics {
    pub(crate) handled: Counter,
    pub(crate) failed: Counter,
    pub(crate) retried: Counter,
    pub(crate) panicked: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) duration: Histogram,
}

impl RouteMetrics {
    pub(crate) fn new(topic: &str, group: &str) -> Self {
        let labels = [("topic", topic.to_owned()), ("group", group.to_owned())];
        RouteMetrics {
            handled: counter!(names::HANDLED, &labels),
            failed: counter!(names::FAILED, &labels),
            retried: counter!(names::RETRIED, &labels),
            panicked: counter!(names::PANICKED, &labels),
            cancelled: counter!(names::CANCELLED, &labels),
            duration: histogram!(names::HANDLER_DURATION, &labels),
        }
    }
}

/// A topic's publish metric handles.
pub(crate) struct PublishMetrics {
    pub(crate) published: Counter,
    pub(crate) failed: Counter,
    pub(crate) duration: Histogram,
}

impl PublishMetrics {
    pub(crate) fn new(topic: &str) -> Self {
        let labels = [("topic", topic.to_owned())];
        PublishMetrics {
            published: counter!(names::PUBLISHED, &labels),
            failed: counter!(names::PUBLISH_FAILED, &labels),
            duration: histogram!(names::PUBLISH_DURATION, &labels),
        }
    }
}
