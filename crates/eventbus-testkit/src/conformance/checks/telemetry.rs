//! The process's global tracing subscriber: the OpenTelemetry bridge, on only while check 30
//! runs, and events to the test output for `crate::log_to_test_output`.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

/// Installs, once per process, a global tracing subscriber bridged to OpenTelemetry and the W3C
/// propagator (handlers run on the runtime's worker threads, so a thread-local one would not
/// see them).
pub(super) fn install_otel() -> OtelOn {
    install_global_subscriber(None);
    OTEL.store(true, SeqCst);
    OtelOn
}

/// The OpenTelemetry bridge is on while this lives (check 30), off again when it is dropped,
/// also when the check fails: checks run after it see no trace headers appear.
pub(super) struct OtelOn;

impl Drop for OtelOn {
    fn drop(&mut self) {
        OTEL.store(false, SeqCst);
    }
}

/// Whether the OpenTelemetry bridge is on: only while check 30 runs, since it adds trace
/// headers to every message published in a span (which other checks compare).
static OTEL: AtomicBool = AtomicBool::new(false);

/// The process's global subscriber, installed once: OpenTelemetry's bridge (on for check 30)
/// and, given a filter, events to the test output (`crate::log_to_test_output`).
pub(crate) fn install_global_subscriber(log: Option<String>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use opentelemetry::trace::TracerProvider;
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let output = log.map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        let subscriber = tracing_subscriber::registry().with(output).with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("conformance"))
                .with_filter(tracing_subscriber::filter::filter_fn(|_| OTEL.load(SeqCst))),
        );
        // A runner that installed its own subscriber keeps it; the check then says so.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}
