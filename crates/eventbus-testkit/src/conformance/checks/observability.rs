//! Observability (beyond the shared list): health as the broker reports it, and W3C trace
//! context carried through the broker (checks 29, 30).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::{Error, EventBus};

use super::helpers::lock;
use super::telemetry::install_otel;
use crate::conformance::support::{
    Counter, Gate, Record, close_bus, close_subs, handler, message, publish_all, subscribe,
};
use crate::conformance::{Harness, unique};

// 29 -----------------------------------------------------------------------------------------

/// Check 29, `health_reports` (beyond the shared list: operations that depend on the broker):
/// `bus.health()` shows the transport connected and ready, each open subscription running
/// with its lag as the broker reports it (3 while its handler holds 3 messages, 0 once they are
/// handled; `None` only for a transport without lag), drops a closed subscription, and is not
/// ready once the bus closed.
pub async fn health_reports(h: &Harness) {
    let topic = unique("health");
    let group = unique("g");
    let bus = h.bus().await;
    let gate = Arc::new(Gate::default());
    let handled = Arc::new(Record::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&handled, {
            let gate = Arc::clone(&gate);
            move |handled, d| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.wait().await;
                    handled.push(&d);
                    Ok(())
                }
            }
        }),
    )
    .await;
    publish_all(
        h,
        &bus,
        (0..3).map(|i| message(&topic, &format!("h-{i}"))).collect(),
    )
    .await;
    let lag_supported = !matches!(
        bus.lag(&topic, &group).await,
        Err(Error::Unsupported { .. })
    );
    let expect = |lag: u64| if lag_supported { Some(lag) } else { None };
    let health = until_health(h, &bus, "lag 3 while held", |health| {
        health.subscriptions.len() == 1 && health.subscriptions[0].lag == expect(3)
    })
    .await;
    assert!(health.is_ready(), "expected ready: {health:?}");
    assert_eq!(health.transport, h.name());
    assert_eq!(
        health.connection.state,
        eventbus_core::ConnectionState::Connected
    );
    let s = &health.subscriptions[0];
    assert_eq!(
        (s.topic.as_str(), s.group.as_str()),
        (topic.as_str(), group.as_str())
    );
    assert!(s.running, "{s:?}");

    gate.open();
    handled.wait_for(h, 3, "the held messages").await;
    until_health(h, &bus, "lag 0 once handled", |health| {
        health.subscriptions.first().map(|s| s.lag) == Some(expect(0))
    })
    .await;
    close_subs(h, vec![sub]).await;
    let health = h.within("health", bus.health()).await;
    assert!(
        health.subscriptions.is_empty(),
        "a closed subscription is not reported: {health:?}"
    );
    close_bus(h, &bus).await;
    let health = h.within("health", bus.health()).await;
    assert!(
        health.closed && !health.is_ready(),
        "after close: {health:?}"
    );
}

/// Polls `bus.health()` until `cond` holds (lag is broker state: no notification).
async fn until_health(
    h: &Harness,
    bus: &EventBus,
    what: &str,
    mut cond: impl FnMut(&eventbus_core::Health) -> bool,
) -> eventbus_core::Health {
    let deadline = tokio::time::Instant::now() + h.timeout();
    loop {
        let health = h.within("health", bus.health()).await;
        if cond(&health) {
            return health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: timed out after {:?} waiting for health with {what}; last: {health:?}",
            h.name(),
            h.timeout()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// 30 -----------------------------------------------------------------------------------------

/// Check 30, `trace_propagation` (beyond the shared list): a message published inside a traced
/// span carries a W3C `traceparent` through the broker, and the handler's span is in the
/// producer's trace (the `tracing-opentelemetry` bridge links them with no glue code).
pub async fn trace_propagation(h: &Harness) {
    use opentelemetry::trace::TraceContextExt;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let _otel = install_otel();
    let topic = unique("traced");
    let group = unique("g");
    let bus = h.bus().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Counter::default());
    let sub = subscribe(
        &bus,
        &topic,
        &group,
        handler(&seen, {
            let got = Arc::clone(&got);
            move |seen, d| {
                let got = Arc::clone(&got);
                async move {
                    let trace = tracing::Span::current()
                        .context()
                        .span()
                        .span_context()
                        .trace_id();
                    let header = d.message().headers().get("traceparent").map(str::to_owned);
                    lock(&seen).push((trace, header));
                    got.add();
                    Ok(())
                }
            }
        }),
    )
    .await;
    let producer = tracing::info_span!("conformance.producer");
    let trace = producer.context().span().span_context().trace_id();
    assert_ne!(
        trace,
        opentelemetry::trace::TraceId::INVALID,
        "the producer span has no trace: another global tracing subscriber is installed"
    );
    let m = message(&topic, "traced-0");
    h.within("publish", bus.publish(m).instrument(producer))
        .await
        .unwrap_or_else(|e| panic!("publish: expected Ok, got {e:?}"));
    got.wait_for(h, 1, "the traced message").await;
    let (consumer_trace, header) = lock(&seen)[0].clone();
    let header = header.unwrap_or_else(|| panic!("{}: no traceparent header arrived", h.name()));
    assert!(
        header.contains(&trace.to_string()),
        "traceparent {header:?} should name trace {trace}"
    );
    assert_eq!(
        consumer_trace, trace,
        "the handler's span should be in the producer's trace"
    );
    close_subs(h, vec![sub]).await;
    close_bus(h, &bus).await;
}
