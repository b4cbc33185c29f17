//! Middleware and operations over the memory bus: stock tower layers on handlers, dedup,
//! typed events, metrics, tracing spans and trace propagation, health and backlog monitoring.
//!
//! Waits are on channels, counters or broker state, each bounded by [`WAIT`]; reaching it only
//! fails the test.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::backlog::{BacklogEvent, BacklogOptions};
use eventbus_core::dedup::{DedupLayer, DedupStore};
use eventbus_core::{
    BoxError, ConnectionState, DeadLetter, Delivery, Event, EventBus, Message, Permanent,
    RetryPolicy, SubscribeOptions, event_handler, handler_fn,
};
use eventbus_memory::MemoryTransport;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tower::ServiceBuilder;

const WAIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .jitter(false)
}

/// A gate handlers wait at until the test opens it.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    opened: Notify,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.opened.notify_waiters();
    }
    async fn wait(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

fn publish_n(topic: &str, n: usize, keyed: bool) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let m = Message::new(topic, format!("{i}"));
            if keyed {
                m.with_key(format!("k{i}"))
            } else {
                m
            }
        })
        .collect()
}

// Tower layers, as they are ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_timeout_cancels_the_handler_and_the_message_is_retried() {
    let bus = EventBus::builder(MemoryTransport::new())
        .retry(fast_retry())
        .build();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let d2 = Arc::clone(&dropped);
    let handler = ServiceBuilder::new()
        .timeout(Duration::from_millis(20))
        .service(handler_fn(move |d: Delivery| {
            let dropped = Arc::clone(&d2);
            let done = done_tx.clone();
            async move {
                if d.attempt() == 1 {
                    // Stuck: the timeout drops this future, which is its cancellation.
                    struct OnDrop(Arc<AtomicUsize>);
                    impl Drop for OnDrop {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let _guard = OnDrop(dropped);
                    std::future::pending::<()>().await;
                }
                done.send(d.attempt())?;
                Ok::<_, BoxError>(())
            }
        }));
    let sub = bus.subscribe("timeouts", "g", handler).await.unwrap();
    bus.publish(Message::new("timeouts", "x").with_key("k"))
        .await
        .unwrap();
    assert_eq!(within("the retried attempt", done.recv()).await, Some(2));
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the timed-out call was dropped"
    );
    assert_eq!(bus.stats().retried, 1);
    sub.close().await;
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_concurrency_limit_bounds_running_calls() {
    const N: usize = 20;
    let bus = EventBus::builder(MemoryTransport::new())
        .max_in_flight(64)
        .build();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::default());
    let (r, p, h, g) = (
        Arc::clone(&running),
        Arc::clone(&peak),
        Arc::clone(&handled),
        Arc::clone(&gate),
    );
    let handler = ServiceBuilder::new()
        .concurrency_limit(2)
        .service(handler_fn(move |_d: Delivery| {
            let (running, peak, handled, gate) = (
                Arc::clone(&r),
                Arc::clone(&p),
                Arc::clone(&h),
                Arc::clone(&g),
            );
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                gate.wait().await;
                running.fetch_sub(1, Ordering::SeqCst);
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        }));
    let sub = bus.subscribe("limited", "g", handler).await.unwrap();
    bus.publish_batch(publish_n("limited", N, false))
        .await
        .unwrap();
    // Every message is in a dispatcher call (waiting in the layer's poll_ready or running)...
    eventually("all calls started", || bus.stats().in_flight == N).await;
    // ...yet only two run the handler.
    assert_eq!(running.load(Ordering::SeqCst), 2);
    gate.open();
    eventually("all handled", || handled.load(Ordering::SeqCst) == N).await;
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    sub.close().await;
    bus.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn tower_rate_limit_spaces_calls() {
    let bus = EventBus::new(MemoryTransport::new());
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    // RateLimit keeps its state per instance and is not Clone: a buffer in front makes one
    // shared instance (tower's own advice), as the bus clones handlers per call.
    let handler = ServiceBuilder::new()
        .buffer(64)
        .rate_limit(5, Duration::from_secs(1))
        .service(handler_fn(move |_d: Delivery| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        }));
    let start = tokio::time::Instant::now();
    let sub = bus.subscribe("rated", "g", handler).await.unwrap();
    bus.publish_batch(publish_n("rated", 12, false))
        .await
        .unwrap();
    eventually("all handled", || handled.load(Ordering::SeqCst) == 12).await;
    // 5 per second: the 12th call is in the third window.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    sub.close().await;
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_load_shed_rejections_are_retried_not_lost() {
    const N: usize = 30;
    // Without limit: with 1–5 ms backoff, ten attempts could all be shed.
    let bus = EventBus::builder(MemoryTransport::new())
        .retry(fast_retry().unlimited())
        .build();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&handled);
    let handler = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(handler_fn(move |d: Delivery| {
            let h = Arc::clone(&h);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                h.lock().unwrap().push(d.payload().clone());
                Ok::<_, BoxError>(())
            }
        }));
    let sub = bus.subscribe("shed", "g", handler).await.unwrap();
    bus.publish_batch(publish_n("shed", N, true)).await.unwrap();
    eventually("all handled", || handled.lock().unwrap().len() == N).await;
    let mut got: Vec<_> = handled.lock().unwrap().clone();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), N, "each message handled once");
    assert!(
        bus.stats().retried > 0,
        "some calls were shed and retried: {:?}",
        bus.stats()
    );
    sub.close().await;
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_buffer_works_and_its_worker_ends_with_the_bus() {
    let bus = EventBus::new(MemoryTransport::new());
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let handler = ServiceBuilder::new()
        .buffer(8)
        .service(handler_fn(move |_d: Delivery| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        }));
    let sub = bus.subscribe("buffered", "g", handler).await.unwrap();
    bus.publish_batch(publish_n("buffered", 50, true))
        .await
        .unwrap();
    eventually("all handled", || handled.load(Ordering::SeqCst) == 50).await;
    sub.close().await;
    bus.close().await.unwrap();
    // The buffer's worker task belongs to the layer; it ends once the bus dropped the handler.
    let metrics = tokio::runtime::Handle::current().metrics();
    eventually("the buffer worker to end", || {
        metrics.num_alive_tasks() == 0
    })
    .await;
}

// Dedup -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_skips_a_redelivered_id() {
    let bus = EventBus::new(MemoryTransport::new());
    let store = DedupStore::new(1_000, Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handler = ServiceBuilder::new()
        .layer(DedupLayer::with_store(store.clone()))
        .service(handler_fn(move |_d: Delivery| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        }));
    let sub = bus.subscribe("dedup", "g", handler).await.unwrap();
    let m = Message::new("dedup", "once").with_key("k");
    // The same id twice, as a publisher's retry would send it.
    bus.publish(m.clone()).await.unwrap();
    bus.publish(m.clone()).await.unwrap();
    bus.publish(Message::new("dedup", "other").with_key("k"))
        .await
        .unwrap();
    eventually("both seen", || {
        calls.load(Ordering::SeqCst) + store.skipped() as usize == 3
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(store.skipped(), 1);
    assert!(store.contains("g", m.id()));
    sub.close().await;
    bus.close().await.unwrap();
}

// Typed events ------------------------------------------------------------------------------

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct OrderPlaced {
    total_cents: u64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "OrderPlaced";
    const SCHEMA_VERSION: u32 = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_round_trip_and_wrong_types_are_dead_lettered() {
    let bus = EventBus::new(MemoryTransport::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (letter_tx, mut letters) = mpsc::unbounded_channel();
    let reader = bus
        .subscribe(
            "typed.dlq",
            "r",
            handler_fn(move |d: Delivery| {
                let tx = letter_tx.clone();
                async move {
                    tx.send(d.message().clone())?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let sub = bus
        .subscribe_with(
            "typed",
            "g",
            SubscribeOptions::new().dead_letter(DeadLetter::default()),
            event_handler(move |e: OrderPlaced, d: Delivery| {
                let tx = tx.clone();
                async move {
                    let env = d.envelope()?;
                    tx.send((e, env.event_version.get(), env.metadata))?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    for (v, total) in [(1, 100), (2, 250)] {
        bus.publish_event("typed", "order-7", v, &OrderPlaced { total_cents: total })
            .await
            .unwrap();
    }
    // Not an OrderPlaced: fails for good at once (no retry) and goes to the dead letters.
    bus.publish(Message::new("typed", "{}").with_key("order-8"))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(within("typed events", rx.recv()).await.unwrap());
    }
    assert_eq!(got[0].0, OrderPlaced { total_cents: 100 });
    assert_eq!(got[1].0, OrderPlaced { total_cents: 250 });
    assert_eq!((got[0].1, got[1].1), (1, 2), "aggregate versions");
    assert_eq!(
        got[0].2.get("schema-version").map(String::as_str),
        Some("2")
    );
    let letter = within("the letter", letters.recv()).await.unwrap();
    assert_eq!(
        letter
            .headers()
            .get(eventbus_core::dead_letter::header::ATTEMPTS),
        Some("1")
    );
    assert!(
        letter
            .headers()
            .get(eventbus_core::dead_letter::header::ERROR)
            .unwrap()
            .contains("malformed envelope")
            || letter
                .headers()
                .get(eventbus_core::dead_letter::header::ERROR)
                .unwrap()
                .contains("missing"),
        "{:?}",
        letter.headers()
    );
    assert_eq!(bus.stats().retried, 0, "decode failures are not retried");
    sub.close().await;
    reader.close().await;
    bus.close().await.unwrap();
}

#[test]
fn retry_predicate_is_honoured() {
    #[derive(Debug, thiserror::Error)]
    #[error("invalid")]
    struct Invalid;
    let p = RetryPolicy::default().retry_if(|e: &BoxError| !e.is::<Invalid>());
    assert!(!p.is_retryable(&(Box::new(Invalid) as BoxError)));
    assert!(p.is_retryable(&BoxError::from("transient")));
    assert!(!p.is_retryable(&(Box::new(Permanent::new("bad")) as BoxError)));
}

// Metrics -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    use eventbus_core::telemetry::names;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // One recorder per process (nextest runs each test in its own).
    let _ = recorder.install();

    let bus = EventBus::builder(MemoryTransport::new())
        .retry(fast_retry().max_attempts(2))
        .build();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let handler = handler_fn(move |d: Delivery| {
        let done = done_tx.clone();
        async move {
            match (&d.payload()[..], d.attempt()) {
                (b"flaky", 1) => return Err::<(), BoxError>("once".into()),
                (b"panics", 1) => panic!("deliberate"),
                (b"poison", _) => return Err("always".into()),
                _ => {}
            }
            done.send(())?;
            Ok(())
        }
    });
    let sub = bus
        .subscribe_with(
            "metered",
            "g",
            SubscribeOptions::new().dead_letter(DeadLetter::default()),
            handler,
        )
        .await
        .unwrap();
    for (i, p) in ["a", "flaky", "panics", "poison", "b"]
        .into_iter()
        .enumerate()
    {
        bus.publish(Message::new("metered", p).with_key(format!("k{i}")))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        within("handled", done.recv()).await;
    }
    eventually("the letter", || bus.dead_lettered() == 1).await;
    // A backlog sample sets the gauges: a held message on another topic makes that sample
    // report a crossing, so the test knows when it happened.
    let gate = Arc::new(Gate::default());
    let g = Arc::clone(&gate);
    let held = bus
        .subscribe(
            "metered-held",
            "g",
            handler_fn(move |_d: Delivery| {
                let g = Arc::clone(&g);
                async move {
                    g.wait().await;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    bus.publish(Message::new("metered-held", "x"))
        .await
        .unwrap();
    let mut monitor = bus.monitor_backlog(
        BacklogOptions::default()
            .interval(Duration::from_millis(5))
            .lag_threshold(0),
    );
    let sampled = within("a backlog sample", monitor.next()).await;
    assert!(
        matches!(&sampled, Some(BacklogEvent::ConsumerLag { topic, above: true, .. }) if topic == "metered-held"),
        "{sampled:?}"
    );
    gate.open();
    held.close().await;
    sub.close().await;
    bus.close().await.unwrap();

    let mut values: BTreeMap<(String, String), DebugValue> = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        values.insert((key.name().to_owned(), labels.join(",")), value);
    }
    let counter = |name: &str, labels: &str| match values.get(&(name.to_owned(), labels.to_owned()))
    {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}{{{labels}}}: expected a counter, got {other:?}; all: {values:?}"),
    };
    let tg = "topic=metered,group=g";
    assert_eq!(counter(names::HANDLED, tg), 4);
    assert_eq!(counter(names::FAILED, tg), 1);
    assert_eq!(
        counter(names::RETRIED, tg),
        3,
        "flaky, panics, poison once each"
    );
    assert_eq!(counter(names::PANICKED, tg), 1);
    assert_eq!(counter(names::DEAD_LETTERED, tg), 1);
    assert_eq!(counter(names::PUBLISHED, "topic=metered"), 5);
    assert_eq!(counter(names::PUBLISHED, "topic=metered.dlq"), 1);
    match values.get(&(names::HANDLER_DURATION.to_owned(), tg.to_owned())) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 8, "one per call"),
        other => panic!("handler duration: {other:?}"),
    }
    match values.get(&(names::CONSUMER_LAG.to_owned(), tg.to_owned())) {
        Some(DebugValue::Gauge(lag)) => assert_eq!(lag.into_inner(), 0.0),
        other => panic!("consumer lag gauge: {other:?}"),
    }
    for gauge in [
        names::IN_FLIGHT,
        names::BUFFERED_MESSAGES,
        names::PUBLISH_BACKLOG,
    ] {
        assert!(
            matches!(
                values.get(&(gauge.to_owned(), String::new())),
                Some(DebugValue::Gauge(_))
            ),
            "{gauge}: {values:?}"
        );
    }
}

// Tracing -----------------------------------------------------------------------------------

/// Records the spans created: name and fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SpanRecord>>>);

/// A span's name and fields.
type SpanRecord = (String, BTreeMap<String, String>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields(BTreeMap<String, String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_owned(), format!("{value:?}"));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().to_owned(), value.to_owned());
            }
        }
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields.0));
    }
}

// Current-thread runtime: the thread-local subscriber sees every task.
#[tokio::test]
async fn spans_per_publish_and_per_handler_call() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

    let bus = EventBus::builder(MemoryTransport::new())
        .retry(fast_retry())
        .build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            "traced",
            "g",
            handler_fn(move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    if d.attempt() == 1 {
                        return Err::<(), BoxError>("retry me".into());
                    }
                    tx.send(())?;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let m = Message::new("traced", "x").with_key("order-1");
    let id = m.id().to_string();
    bus.publish(m).await.unwrap();
    within("handled", rx.recv()).await;
    sub.close().await;
    bus.close().await.unwrap();

    let spans = spans.0.lock().unwrap().clone();
    let publish: Vec<_> = spans
        .iter()
        .filter(|(n, _)| n == "eventbus.publish")
        .collect();
    assert_eq!(publish.len(), 1, "{spans:?}");
    assert_eq!(publish[0].1["topic"], "traced");
    assert_eq!(publish[0].1["message_id"], id);
    let handle: Vec<_> = spans
        .iter()
        .filter(|(n, _)| n == "eventbus.handle")
        .collect();
    assert_eq!(handle.len(), 2, "one per attempt: {spans:?}");
    for (i, (_, f)) in handle.iter().enumerate() {
        assert_eq!(f["topic"], "traced");
        assert_eq!(f["group"], "g");
        assert_eq!(f["message_id"], id);
        assert_eq!(f["attempt"], format!("{}", i + 1));
        assert!(f["key"].contains("order-1"), "{f:?}");
    }
}

#[tokio::test]
async fn trace_context_links_consumer_to_producer() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let bus = EventBus::new(MemoryTransport::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            "linked",
            "g",
            handler_fn(move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let cx = tracing::Span::current().context();
                    let trace = cx.span().span_context().trace_id();
                    tx.send((
                        trace,
                        d.message().headers().get("traceparent").map(str::to_owned),
                    ))?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let producer = tracing::info_span!("producer");
    let trace = producer.context().span().span_context().trace_id();
    bus.publish(Message::new("linked", "x").with_key("k"))
        .instrument(producer)
        .await
        .unwrap();
    let (consumer_trace, traceparent) = within("handled", rx.recv()).await.unwrap();
    assert_ne!(trace, opentelemetry::trace::TraceId::INVALID);
    assert_eq!(
        consumer_trace, trace,
        "the handler's span is in the producer's trace"
    );
    let traceparent = traceparent.expect("a traceparent header");
    assert!(
        traceparent.contains(&trace.to_string()),
        "{traceparent} names trace {trace}"
    );
    sub.close().await;
    bus.close().await.unwrap();
}

// Health and backlog ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_connection_subscriptions_and_lag() {
    let bus = EventBus::new(MemoryTransport::new());
    let gate = Arc::new(Gate::default());
    let g = Arc::clone(&gate);
    let sub = bus
        .subscribe(
            "healthy",
            "g",
            handler_fn(move |_d: Delivery| {
                let g = Arc::clone(&g);
                async move {
                    g.wait().await;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    bus.publish_batch(publish_n("healthy", 3, false))
        .await
        .unwrap();
    let health = bus.health().await;
    assert!(health.is_ready(), "{health:?}");
    assert_eq!(health.transport, "memory");
    assert_eq!(health.connection.state, ConnectionState::Connected);
    assert_eq!(health.subscriptions.len(), 1);
    let s = &health.subscriptions[0];
    assert_eq!((s.topic.as_str(), s.group.as_str()), ("healthy", "g"));
    assert!(s.running);
    assert_eq!(s.lag, Some(3), "nothing acked yet");
    assert!(health.last_error().is_none());

    gate.open();
    sub.close().await;
    let health = bus.health().await;
    assert!(
        health.subscriptions.is_empty(),
        "closed subscriptions leave: {health:?}"
    );
    bus.close().await.unwrap();
    let health = bus.health().await;
    assert!(!health.is_ready());
    assert!(health.closed);
    assert_eq!(health.connection.state, ConnectionState::Closed);
}

/// A publish waiting for room in a full topic is in the publisher's backlog for as long as it
/// waits, and leaves it once the broker takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waiting_for_room_is_in_the_publisher_backlog_until_taken() {
    let bus = EventBus::new(MemoryTransport::with_config(
        eventbus_memory::MemoryConfig::default().topic_capacity(1),
    ));
    bus.publish(Message::new("full", "1")).await.unwrap();
    let mut monitor = bus.monitor_backlog(
        BacklogOptions::default()
            .interval(Duration::from_millis(2))
            .publish_backlog_threshold(0),
    );
    let waiting = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish(Message::new("full", "2")).await }
    });
    let up = within("the backlog up", monitor.next()).await;
    assert!(
        matches!(
            up,
            Some(BacklogEvent::PublisherBacklog {
                queued: 1,
                above: true,
                ..
            })
        ),
        "{up:?}"
    );
    assert!(!waiting.is_finished(), "the topic is full");
    // A consumer makes room: the waiting publish goes through.
    let sub = bus
        .subscribe(
            "full",
            "g",
            handler_fn(|_d: Delivery| async { Ok::<_, BoxError>(()) }),
        )
        .await
        .unwrap();
    within("the waiting publish", waiting)
        .await
        .unwrap()
        .unwrap();
    let down = within("the backlog down", monitor.next()).await;
    assert!(
        matches!(
            down,
            Some(BacklogEvent::PublisherBacklog {
                queued: 0,
                above: false,
                ..
            })
        ),
        "{down:?}"
    );
    sub.close().await;
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_crossings_as_a_stream_and_a_callback() {
    let bus = EventBus::new(MemoryTransport::new());
    let gate = Arc::new(Gate::default());
    let g = Arc::clone(&gate);
    let sub = bus
        .subscribe(
            "lagging",
            "g",
            handler_fn(move |_d: Delivery| {
                let g = Arc::clone(&g);
                async move {
                    g.wait().await;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let options = BacklogOptions::default()
        .interval(Duration::from_millis(2))
        .lag_threshold(5);
    let mut changes = bus.monitor_backlog(options.clone());
    // A second monitor, independent of the first.
    let mut callback = bus.monitor_backlog(options);
    bus.publish_batch(publish_n("lagging", 20, true))
        .await
        .unwrap();
    // Both monitors must see the lag above before the handler lets it drain.
    let up = within("lag above", changes.next()).await.unwrap();
    assert!(
        matches!(&up, BacklogEvent::ConsumerLag { topic, group, lag, above: true } if topic == "lagging" && group == "g" && *lag > 5),
        "{up:?}"
    );
    let cb_up = within("callback up", callback.next()).await.unwrap();
    assert!(
        matches!(cb_up, BacklogEvent::ConsumerLag { above: true, .. }),
        "{cb_up:?}"
    );
    gate.open();
    let down = within("lag back down", changes.next()).await.unwrap();
    assert!(
        matches!(down, BacklogEvent::ConsumerLag { above: false, .. }),
        "{down:?}"
    );
    let cb_down = within("callback down", callback.next()).await.unwrap();
    assert!(
        matches!(cb_down, BacklogEvent::ConsumerLag { above: false, .. }),
        "{cb_down:?}"
    );
    sub.close().await;
    bus.close().await.unwrap();
    assert!(
        within("the stream to end with the bus", changes.next())
            .await
            .is_none(),
        "the monitor ended"
    );
    let metrics = tokio::runtime::Handle::current().metrics();
    eventually("no task left", || metrics.num_alive_tasks() == 0).await;
}
