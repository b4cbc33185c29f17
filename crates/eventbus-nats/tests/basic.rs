//! The NATS transport against a real server: publishing, provisioning, consumers, faults, close.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventbus_core::{BoxError, Delivery, Error, EventBus, Limits, Message, handler_fn};
use eventbus_nats::{
    ConsumerOptions, NatsConfig, NatsError, NatsTransport, Provision, Sharing, Storage,
    StreamOptions,
};
use support::{PrivateServer, SharedServer, unique};

fn nats_error(e: &Error) -> &NatsError {
    match e {
        Error::Transport { source, .. } => source
            .downcast_ref::<NatsError>()
            .unwrap_or_else(|| panic!("not a NatsError: {source}")),
        other => panic!("expected a transport error, got {other}"),
    }
}

fn counting() -> (
    Arc<AtomicUsize>,
    impl tower::Service<
        Delivery,
        Response = (),
        Error = BoxError,
        Future = impl Future<Output = Result<(), BoxError>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static,
) {
    let n = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&n);
    (
        n,
        handler_fn(move |_d: Delivery| {
            let m = Arc::clone(&m);
            async move {
                m.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        }),
    )
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_close_leaves_nothing() {
    let shared = SharedServer::get();
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let threads = support::threads();
    let t = NatsTransport::connect(NatsConfig::new(shared.url()))
        .await
        .unwrap();
    let js = t.jetstream().clone();
    let config = t.config().clone();
    let bus = EventBus::new(t);
    let topic = unique("basic");
    let (n, handler) = counting();
    let sub = bus.subscribe(&topic, "g", handler).await.unwrap();
    for i in 0..500 {
        bus.publish(Message::new(&topic, format!("m{i}")).with_key(format!("k{}", i % 10)))
            .await
            .unwrap();
    }
    wait_for("500 deliveries", || n.load(Ordering::SeqCst) >= 500).await;
    sub.close().await;
    // Closing has sent every ack, but JetStream applies acks on a queue of the consumer's own
    // (nats-server's `processInboundAcks`), so a consumer-info request right after them may be
    // answered first: the lag reaches 0, not at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let lag = bus.lag(&topic, "g").await.unwrap();
        if lag == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "every message acked: lag still {lag}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bus.close().await.unwrap();
    drop(bus);
    let mut after = usize::MAX;
    for _ in 0..1000 {
        after = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if after <= before {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(after, before, "tasks left after close");
    assert_eq!(
        support::threads_after_close(threads).await,
        threads,
        "threads left after close: {:?}",
        support::thread_names()
    );
    // Clean up the stream (it is file-backed on the shared server).
    let _ = js.delete_stream(config.stream_name(&topic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_publish_is_deduplicated_by_message_id() {
    let shared = SharedServer::get();
    let t = NatsTransport::connect(NatsConfig::new(shared.url()))
        .await
        .unwrap();
    let js = t.jetstream().clone();
    let name = t.config().stream_name("x");
    let bus = EventBus::new(t);
    let topic = unique("dedup");
    let m = Message::new(&topic, "once").with_id("fixed-id-1");
    bus.publish(m.clone()).await.unwrap();
    bus.publish(m).await.unwrap();
    let stream_name = name.replacen("x", &topic.replace('_', "__").replace('.', "_D"), 1);
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    bus.close().await.unwrap();
    let _ = js.delete_stream(&stream_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_runs_with_the_configured_settings() {
    let shared = SharedServer::get();
    let consumer = ConsumerOptions::default()
        .ack_wait(Duration::from_secs(7))
        .max_ack_pending(123)
        .max_deliver(9);
    let config = NatsConfig::new(shared.url()).consumer(consumer);
    let t = NatsTransport::connect(config.clone()).await.unwrap();
    let js = t.jetstream().clone();
    let bus = EventBus::new(t);
    let topic = unique("settings");
    let (_, handler) = counting();
    let sub = bus.subscribe(&topic, "verified", handler).await.unwrap();
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    // A keyed group (the default): one consumer per partition, on its subject, pinned.
    for p in 0..16 {
        let info = stream.consumer_info(format!("verified={p}")).await.unwrap();
        let c = &info.config;
        assert_eq!(c.ack_wait, Duration::from_secs(7));
        assert_eq!(c.max_ack_pending, 123);
        assert_eq!(c.max_deliver, 9);
        assert_eq!(c.durable_name, Some(format!("verified={p}")));
        assert_eq!(c.filter_subject, format!("{topic}.{p}"));
        assert_eq!(
            c.priority_policy,
            async_nats::jetstream::consumer::PriorityPolicy::PinnedClient
        );
        assert_eq!(c.priority_timeout, Duration::from_secs(5));
    }
    sub.close().await;
    bus.close().await.unwrap();

    // `Sharing::Any`: one consumer for the group, on the whole stream.
    let any = config.clone().consumer(
        ConsumerOptions::default()
            .ack_wait(Duration::from_secs(7))
            .sharing(Sharing::Any),
    );
    let t = NatsTransport::connect(any).await.unwrap();
    let js = t.jetstream().clone();
    let bus = EventBus::new(t);
    let (_, handler) = counting();
    let sub = bus.subscribe(&topic, "pool", handler).await.unwrap();
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    let info = stream.consumer_info("pool").await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(7));
    assert_eq!(info.config.filter_subject, "");
    assert_eq!(
        info.config.priority_policy,
        async_nats::jetstream::consumer::PriorityPolicy::None
    );
    sub.close().await;
    bus.close().await.unwrap();
    let _ = js.delete_stream(config.stream_name(&topic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_reports_missing_and_mismatched_streams() {
    let shared = SharedServer::get();
    let topic = unique("validate");
    let strict = NatsConfig::new(shared.url()).provision(Provision::ValidateOnly);
    let t = NatsTransport::connect(strict.clone()).await.unwrap();
    let err = t.ensure_stream(&topic).await.unwrap_err();
    assert!(
        matches!(&err, Error::TopicMissing { transport: "nats", topic: t, .. } if *t == topic),
        "{err}"
    );

    // Created with file storage by a default transport...
    let creator = NatsTransport::connect(NatsConfig::new(shared.url()))
        .await
        .unwrap();
    creator.ensure_stream(&topic).await.unwrap();
    // ...then validated against memory storage.
    let t2 = NatsTransport::connect(
        strict.topic(&topic, StreamOptions::default().storage(Storage::Memory)),
    )
    .await
    .unwrap();
    let err = t2.ensure_stream(&topic).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::SettingsMismatch {
                transport: "nats",
                setting: "storage",
                ..
            }
        ),
        "{err}"
    );
    // Publishing through the validating transport fails the same way: no silent fallback.
    let bus = EventBus::new(t2);
    assert!(bus.publish(Message::new(&topic, "x")).await.is_err());
    let js = creator.jetstream().clone();
    let _ = js.delete_stream(creator.config().stream_name(&topic)).await;
    use eventbus_core::Transport;
    bus.close().await.unwrap();
    t.close().await.unwrap();
    creator.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_a_typed_error_before_sending() {
    let shared = SharedServer::get();
    let t = NatsTransport::connect(NatsConfig::new(shared.url()))
        .await
        .unwrap();
    // Let the bus accept it, so the server's max_payload (1 MB by default) is what refuses.
    let bus = EventBus::builder(t)
        .limits(Limits::default().max_message_bytes(64 << 20))
        .build();
    let topic = unique("big");
    let err = bus
        .publish(Message::new(&topic, vec![0u8; 2 << 20]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_fast_with_a_typed_error() {
    let server = PrivateServer::start(&["--auth", "right-token"]);
    let started = std::time::Instant::now();
    let err = NatsTransport::connect(
        NatsConfig::new(server.url())
            .connect_options(async_nats::ConnectOptions::with_token("wrong-token".into()))
            .connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(nats_error(&err), NatsError::Connect { .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    // The right token works.
    let ok = NatsTransport::connect(
        NatsConfig::new(server.url())
            .connect_options(async_nats::ConnectOptions::with_token("right-token".into())),
    )
    .await
    .unwrap();
    use eventbus_core::Transport;
    ok.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_connect_is_a_typed_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = NatsTransport::connect(
        NatsConfig::new(format!("nats://127.0.0.1:{port}")).connect_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            nats_error(&err),
            NatsError::Connect { .. } | NatsError::ConnectTimeout { .. }
        ),
        "{err}"
    );
}

/// A publish made while the server is down goes through once it is back: the transport makes
/// it again with the same message id (within `publish_retry`) after async-nats's ack timeout
/// (5 s) ran out, and the stream's duplicate window keeps one copy if an earlier attempt got
/// there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_while_the_server_is_down_goes_through_once_it_is_back() {
    let mut server = PrivateServer::start(&[]);
    let config = NatsConfig::new(server.url());
    let t = NatsTransport::connect(config.clone()).await.unwrap();
    let js = t.jetstream().clone();
    let bus = EventBus::new(t);
    let topic = unique("outage");
    bus.publish(Message::new(&topic, "before")).await.unwrap();
    server.kill();
    let publishing = tokio::spawn({
        let (bus, topic) = (bus.clone(), topic.clone());
        async move {
            bus.publish(Message::new(&topic, "during").with_id("during"))
                .await
        }
    });
    // Longer than the ack timeout: the first attempt fails.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!publishing.is_finished(), "{:?}", publishing.await);
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    publishing.await.unwrap().unwrap();
    let mut stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    bus.close().await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_the_server_dead_leaves_no_task_or_thread() {
    let mut server = PrivateServer::start(&[]);
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let threads = support::threads();
    let t = NatsTransport::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let bus = EventBus::builder(t)
        .drain_timeout(Duration::from_secs(2))
        .build();
    let topic = unique("dead");
    let (_, handler) = counting();
    let sub = bus.subscribe(&topic, "g", handler).await.unwrap();
    bus.publish(Message::new(&topic, "x")).await.unwrap();
    server.kill(); // the client is now reconnecting, forever by default
    sub.close().await;
    bus.close().await.unwrap();
    drop(bus);
    let mut after = usize::MAX;
    for _ in 0..1000 {
        after = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if after <= before {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(after, before, "tasks left after close");
    assert_eq!(
        support::threads_after_close(threads).await,
        threads,
        "threads left after close: {:?}",
        support::thread_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_still_being_handled_is_not_redelivered_after_ack_wait() {
    let shared = SharedServer::get();
    // One partition: its consumer (`<group>=0`) is the group's only one.
    let config = NatsConfig::new(shared.url())
        .stream(StreamOptions::default().partitions(1))
        .consumer(ConsumerOptions::default().ack_wait(Duration::from_secs(1)));
    let t = NatsTransport::connect(config.clone()).await.unwrap();
    let js = t.jetstream().clone();
    let bus = EventBus::new(t);
    let topic = unique("progress");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let sub = bus
        .subscribe(
            &topic,
            "slow",
            handler_fn(move |_d: Delivery| {
                let c = Arc::clone(&c);
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    // Three ack waits of work.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    bus.publish(Message::new(&topic, "slow")).await.unwrap();
    wait_for("the handler to finish", || bus.stats().handled >= 1).await;
    // Closing sends every ack; JetStream applies them on a queue of the consumer's own, so
    // the consumer's info shows the ack a moment later.
    sub.close().await;
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let info = loop {
        let info = stream.consumer_info("slow=0").await.unwrap().clone();
        if info.num_ack_pending == 0 {
            break info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acked once done: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(info.num_redelivered, 0, "redelivered while still ours");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    bus.close().await.unwrap();
    let _ = js.delete_stream(config.stream_name(&topic)).await;
}

/// Messages the client received while the bus was full sit outside it past the ack wait, so
/// the server sends them again; the copies are dropped (the first copy is still in the bus, or
/// was already handled and acked), so each message is handled once, in its key's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_redelivered_while_waiting_outside_a_full_bus_are_dropped() {
    let shared = SharedServer::get();
    const N: u64 = 12;
    // One partition: its consumer (`<group>=0`) is the group's only one.
    let config = NatsConfig::new(shared.url())
        .stream(StreamOptions::default().partitions(1))
        .consumer(ConsumerOptions::default().ack_wait(Duration::from_secs(1)));
    let transport = NatsTransport::connect(config.clone()).await.unwrap();
    let js = transport.jetstream().clone();
    // Room for 4: the pull batch is 2, so up to 2 more wait in the client, unseen by the bus.
    let bus = EventBus::builder(transport.clone())
        .max_in_flight(1)
        .max_buffered(4)
        .build();
    let topic = unique("stale");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let sub = bus
        .subscribe(
            &topic,
            "slow",
            handler_fn(move |d: Delivery| {
                let s = Arc::clone(&s);
                async move {
                    let seq: u64 = std::str::from_utf8(d.payload())?.parse()?;
                    // The first keeps the bus full for three ack waits; the others take long
                    // enough that a copy arrives while its first copy is still in the bus.
                    let work = if seq == 0 { 3_000 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(work)).await;
                    s.lock().unwrap().push(seq);
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let batch: Vec<_> = (0..N)
        .map(|i| Message::new(&topic, format!("{i}")).with_key("one-aggregate"))
        .collect();
    bus.publish_batch(batch).await.unwrap();
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    // What waited in the client past the ack wait is redelivered once the puller asks for more
    // (a pull consumer redelivers only into a pull request); wait until everything is acked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = stream.consumer_info("slow=0").await.unwrap();
        if seen.lock().unwrap().len() as u64 >= N
            && info.num_ack_pending == 0
            && info.num_pending == 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all acked: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redelivered = transport.copies_dropped();
    sub.close().await;
    assert_eq!(
        *seen.lock().unwrap(),
        (0..N).collect::<Vec<_>>(),
        "each message once, in order"
    );
    assert!(
        redelivered > 0,
        "no redelivered copy reached the puller: nothing tested"
    );
    bus.close().await.unwrap();
    let _ = js.delete_stream(config.stream_name(&topic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_never_exceed_what_the_bus_can_buffer() {
    let shared = SharedServer::get();
    // One partition: its consumer (`<group>=0`) is the group's only one.
    let config = NatsConfig::new(shared.url()).stream(StreamOptions::default().partitions(1));
    let t = NatsTransport::connect(config.clone()).await.unwrap();
    let js = t.jetstream().clone();
    let bus = EventBus::builder(t)
        .max_in_flight(2)
        .max_buffered(10)
        .build();
    let topic = unique("nooverfetch");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    let sub = bus
        .subscribe(
            &topic,
            "gated",
            handler_fn(move |_d: Delivery| {
                let g = Arc::clone(&g);
                async move {
                    g.acquire().await?.forget();
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let batch: Vec<_> = (0..200)
        .map(|i| Message::new(&topic, format!("{i}")))
        .collect();
    bus.publish_batch(batch).await.unwrap();
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    wait_for("the bus to fill", || bus.stats().buffered >= 10).await;
    let info = stream.consumer_info("gated=0").await.unwrap();
    // Pulled = buffered in the bus (10) + at most one pull of 10 waiting to be taken.
    assert!(
        info.num_ack_pending <= 20,
        "over-fetched: {} out",
        info.num_ack_pending
    );
    assert!(info.num_pending >= 180, "{info:?}");
    gate.add_permits(1000);
    wait_for("all handled", || bus.stats().handled >= 200).await;
    sub.close().await;
    bus.close().await.unwrap();
    let _ = js.delete_stream(config.stream_name(&topic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_other_settings_is_updated_or_refused() {
    let shared = SharedServer::get();
    let topic = unique("reconfigure");
    let with_ack_wait = |secs, provision| {
        NatsConfig::new(shared.url())
            .provision(provision)
            .consumer(ConsumerOptions::default().ack_wait(Duration::from_secs(secs)))
    };
    let first = EventBus::new(
        NatsTransport::connect(with_ack_wait(7, Provision::CreateOrUpdate))
            .await
            .unwrap(),
    );
    let (_, handler) = counting();
    first
        .subscribe(&topic, "g", handler.clone())
        .await
        .unwrap()
        .close()
        .await;
    first.close().await.unwrap();

    // Looks at the server through a connection of its own, open until the end.
    let inspector = NatsTransport::connect(NatsConfig::new(shared.url()))
        .await
        .unwrap();
    let js = inspector.jetstream().clone();
    let stream_name = inspector.config().stream_name(&topic);

    // Another process configured differently, allowed to update: the consumer changes.
    let second = EventBus::new(
        NatsTransport::connect(with_ack_wait(9, Provision::CreateOrUpdate))
            .await
            .unwrap(),
    );
    second
        .subscribe(&topic, "g", handler.clone())
        .await
        .unwrap()
        .close()
        .await;
    let stream = js.get_stream(&stream_name).await.unwrap();
    assert_eq!(
        stream.consumer_info("g=0").await.unwrap().config.ack_wait,
        Duration::from_secs(9)
    );
    second.close().await.unwrap();

    // Only validating: a typed error naming the setting, and the consumer is left alone.
    let third = EventBus::new(
        NatsTransport::connect(with_ack_wait(11, Provision::ValidateOnly))
            .await
            .unwrap(),
    );
    let err = third.subscribe(&topic, "g", handler).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::SettingsMismatch {
                setting: "ack_wait",
                resource,
                ..
            } if resource.starts_with("consumer g=0 ")
        ),
        "{err}"
    );
    assert_eq!(
        stream.consumer_info("g=0").await.unwrap().config.ack_wait,
        Duration::from_secs(9)
    );
    third.close().await.unwrap();
    let _ = js.delete_stream(&stream_name).await;
    use eventbus_core::Transport;
    inspector.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_the_server_would_refuse_or_rewrite_is_a_typed_error() {
    let shared = SharedServer::get();
    let backoff = vec![Duration::from_secs(1), Duration::from_secs(5)];
    // No max_deliver: the server refuses a backoff.
    let err = NatsTransport::connect(
        NatsConfig::new(shared.url()).consumer(ConsumerOptions::default().backoff(backoff.clone())),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(nats_error(&err), NatsError::InvalidConfig(_)),
        "{err}"
    );
    // ack_wait different from backoff[0]: the server would silently use backoff[0].
    let err = NatsTransport::connect(
        NatsConfig::new(shared.url()).consumer(
            ConsumerOptions::default()
                .backoff(backoff.clone())
                .max_deliver(5),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(nats_error(&err), NatsError::InvalidConfig(_)),
        "{err}"
    );
    // Consistent: the consumer runs with it.
    let config = NatsConfig::new(shared.url()).consumer(
        ConsumerOptions::default()
            .backoff(backoff.clone())
            .max_deliver(5)
            .ack_wait(backoff[0]),
    );
    let t = NatsTransport::connect(config.clone()).await.unwrap();
    let js = t.jetstream().clone();
    let bus = EventBus::new(t);
    let topic = unique("backoff");
    let (_, handler) = counting();
    let sub = bus.subscribe(&topic, "g", handler).await.unwrap();
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    assert_eq!(
        stream.consumer_info("g=0").await.unwrap().config.backoff,
        backoff
    );
    let _ = js.delete_stream(config.stream_name(&topic)).await;
    sub.close().await;
    bus.close().await.unwrap();
}

/// A message read back from the stream after a reconnect (see the crate docs on messages lost
/// on the way) is recognised when the server sends it again by its stream sequence, id and
/// store time: the time a delivery carries (its timestamp) and the one a read-back gives must
/// be the same, to the nanosecond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_and_a_read_back_agree_on_the_store_time() {
    let shared = SharedServer::get();
    let config = NatsConfig::new(shared.url());
    let transport = NatsTransport::connect(config.clone()).await.unwrap();
    let js = transport.jetstream().clone();
    let bus = EventBus::new(transport);
    let topic = unique("store-time");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            &topic,
            "g",
            handler_fn(move |d: Delivery| {
                let sent = tx.send(d.message().timestamp());
                async move { sent.map_err(BoxError::from) }
            }),
        )
        .await
        .unwrap();
    bus.publish(Message::new(&topic, "x")).await.unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the message to be delivered")
        .unwrap();
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    let read_back = stream.get_raw_message(1).await.unwrap();
    assert_eq!(delivered, std::time::SystemTime::from(read_back.time));
    sub.close().await;
    bus.close().await.unwrap();
    let _ = js.delete_stream(config.stream_name(&topic)).await;
}

/// A password in the server's URL appears in no error and no `Debug` output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_is_never_printed() {
    // Port 1: nothing listens there, so connecting fails at once.
    let config =
        NatsConfig::new("nats://user:s3cret@127.0.0.1:1").connect_timeout(Duration::from_secs(2));
    assert!(!format!("{config:?}").contains("s3cret"));
    let err = NatsTransport::connect(config).await.unwrap_err();
    let shown = format!("{err} / {err:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("<redacted>@127.0.0.1:1"), "{shown}");
}
