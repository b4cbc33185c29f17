//! Trace context through message headers (feature `opentelemetry`).
//!
//! On publish, the context of the current [`tracing`] span (as the `tracing-opentelemetry`
//! bridge sees it) is written into the message's headers by OpenTelemetry's global text-map
//! propagator (with `opentelemetry_sdk::propagation::TraceContextPropagator` installed: W3C
//! `traceparent` and `tracestate`), unless the message already carries a `traceparent` (a
//! relayed or replayed message keeps its origin's). On consume, the same propagator reads them
//! back and makes that context the parent of the `eventbus.handle` span, so the consumer's
//! spans join the producer's trace with no code of yours.
//!
//! ```
//! # #[cfg(feature = "opentelemetry")] {
//! use opentelemetry::trace::TracerProvider;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! // Once, at startup: the W3C propagator and a tracing subscriber bridged to OpenTelemetry.
//! opentelemetry::global::set_text_map_propagator(
//!     opentelemetry_sdk::propagation::TraceContextPropagator::new(),
//! );
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("orders-service")));
//! tracing::subscriber::set_global_default(subscriber).unwrap();
//! // From here on, `bus.publish(..)` inside a span carries `traceparent`, and handlers of the
//! // message run in a span whose parent is that one.
//! # }
//! ```
//!
//! Without the feature both steps compile to nothing.

use crate::message::Message;

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header with vendor trace state.
pub const TRACESTATE: &str = "tracestate";

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::propagation::{Extractor, Injector};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::message::{Headers, Message};

    struct Inject<'a>(&'a mut Headers);
    impl Injector for Inject<'_> {
        fn set(&mut self, key: &str, value: String) {
            // The W3C propagator writes `tracestate` even when there is no vendor state; an
            // empty header says nothing and is not sent.
            if !value.is_empty() {
                self.0.insert(key, value);
            }
        }
    }

    struct Extract<'a>(&'a Headers);
    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k).collect()
        }
    }

    pub(super) fn inject(span: &tracing::Span, message: &mut Message) {
        // A span no subscriber records has no trace context to write.
        if span.is_disabled() || message.headers().get(super::TRACEPARENT).is_some() {
            return;
        }
        let cx = span.context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut Inject(message.headers_mut()));
        });
    }

    pub(super) fn restore_parent(span: &tracing::Span, message: &Message) {
        if span.is_disabled() || message.headers().get(super::TRACEPARENT).is_none() {
            return;
        }
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&Extract(message.headers()))
        });
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s trace context into `message`'s headers (see the module docs).
#[inline]
pub(crate) fn inject(span: &tracing::Span, message: &mut Message) {
    #[cfg(feature = "opentelemetry")]
    otel::inject(span, message);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, message);
}

/// Makes the trace context in `message`'s headers the parent of `span`.
#[inline]
pub(crate) fn restore_parent(span: &tracing::Span, message: &Message) {
    #[cfg(feature = "opentelemetry")]
    otel::restore_parent(span, message);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, message);
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Inside a traced span a message gets `traceparent`, and no `tracestate` when there is no
    /// vendor state (the propagator hands an empty one over).
    #[test]
    fn injects_traceparent_and_no_empty_tracestate() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let mut message = Message::new("orders", "x");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("producer");
            inject(&span, &mut message);
        });
        assert!(
            message.headers().get(TRACEPARENT).is_some(),
            "{:?}",
            message.headers()
        );
        assert_eq!(
            message.headers().get(TRACESTATE),
            None,
            "an empty tracestate is not sent"
        );
    }
}
