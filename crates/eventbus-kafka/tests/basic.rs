//! The Kafka transport against Apache Kafka (the shared broker; a private one where a test
//! kills it): publishing, provisioning, commits that never pass a failed message, faults,
//! close.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::{
    BoxError, DeadLetter, Delivery, Error, EventBus, Limits, Message, RetryPolicy,
    SubscribeOptions, handler_fn,
};
use eventbus_kafka::{KafkaConfig, KafkaError, KafkaTransport, Provision, TopicOptions};
use support::{PrivateBroker, SharedBroker, unique};

fn kafka_error(e: &Error) -> &KafkaError {
    match e {
        Error::Transport { source, .. } => source
            .downcast_ref::<KafkaError>()
            .unwrap_or_else(|| panic!("not a KafkaError: {source}")),
        other => panic!("expected a transport error, got {other}"),
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_lag(bus: &EventBus, topic: &str, group: &str, expected: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lag = bus.lag(topic, group).await.unwrap();
        if lag == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag of {group} on {topic}: expected {expected}, got {lag}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn tasks_back_to(before: usize) -> usize {
    let mut after = usize::MAX;
    for _ in 0..1000 {
        after = alive_tasks();
        if after <= before {
            break;
        }
        tokio::task::yield_now().await;
    }
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_close_leaves_nothing() {
    let broker = SharedBroker::get();
    let before = alive_tasks();
    let threads = support::threads();
    let transport = KafkaTransport::connect(support::config(&broker.brokers()))
        .await
        .unwrap();
    let bus = EventBus::new(transport);
    let topic = unique("basic");
    let n = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&n);
    let sub = bus
        .subscribe(
            &topic,
            "g",
            handler_fn(move |_d: Delivery| {
                let m = Arc::clone(&m);
                async move {
                    m.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let messages: Vec<Message> = (0..200)
        .map(|i| Message::new(&topic, format!("m{i}")).with_key(format!("k{}", i % 10)))
        .collect();
    bus.publish_batch(messages).await.unwrap();
    wait_for("200 deliveries", || n.load(Ordering::SeqCst) >= 200).await;
    sub.close().await;
    wait_for_lag(&bus, &topic, "g", 0).await;
    bus.close().await.unwrap();
    drop(bus);
    assert_eq!(
        tasks_back_to(before).await,
        before,
        "tasks left after close"
    );
    assert_eq!(support::threads(), threads, "threads left after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_the_broker_dead_leaves_no_task_or_thread() {
    let mut broker = PrivateBroker::start();
    let before = alive_tasks();
    let threads = support::threads();
    let transport = KafkaTransport::connect(support::config(&broker.brokers()))
        .await
        .unwrap();
    let bus = EventBus::new(transport);
    let topic = unique("dead");
    let sub = bus
        .subscribe(
            &topic,
            "g",
            handler_fn(|_d: Delivery| async { Ok::<_, BoxError>(()) }),
        )
        .await
        .unwrap();
    bus.publish(Message::new(&topic, "x").with_key("k"))
        .await
        .unwrap();
    broker.kill();
    sub.close().await;
    bus.close().await.unwrap();
    drop(bus);
    assert_eq!(
        tasks_back_to(before).await,
        before,
        "tasks left after close"
    );
    assert_eq!(support::threads(), threads, "threads left after close");
}

/// One partition, ten messages of ten keys; the handler fails the sixth for good every time.
/// The others are handled, but the committed offset stays at the failed one: after a restart
/// (a new bus in the group) it comes back, and nothing below it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_is_never_committed_past() {
    let broker = SharedBroker::get();
    let topic = unique("failed-middle");
    let group = "g";
    let config =
        support::config(&broker.brokers()).topic(&topic, TopicOptions::default().partitions(1));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let first = EventBus::new(KafkaTransport::connect(config.clone()).await.unwrap());
    let sub = {
        let (seen, failures) = (Arc::clone(&seen), Arc::clone(&failures));
        first
            .subscribe_with(
                &topic,
                group,
                SubscribeOptions::new()
                    .retry(RetryPolicy::never())
                    .dead_letter(DeadLetter::off()),
                handler_fn(move |d: Delivery| {
                    let (seen, failures) = (Arc::clone(&seen), Arc::clone(&failures));
                    async move {
                        let body = String::from_utf8_lossy(d.message().payload()).into_owned();
                        if body == "m5" {
                            failures.fetch_add(1, Ordering::SeqCst);
                            return Err::<(), BoxError>("deliberate failure".into());
                        }
                        seen.lock().unwrap().push(body);
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap()
    };
    let messages: Vec<Message> = (0..10)
        .map(|i| Message::new(&topic, format!("m{i}")).with_key(format!("k{i}")))
        .collect();
    first.publish_batch(messages).await.unwrap();
    wait_for("the nine other messages", || {
        seen.lock().unwrap().len() >= 9
    })
    .await;
    // Failed for good, and delivered again (and failed again) in the same subscription.
    wait_for("the failed message to come back", || {
        failures.load(Ordering::SeqCst) >= 3
    })
    .await;
    sub.close().await;
    let lag = first.lag(&topic, group).await.unwrap();
    assert!(
        lag >= 1,
        "the failed message must stay uncommitted, lag {lag}"
    );
    first.close().await.unwrap();

    let again = Arc::new(Mutex::new(Vec::<String>::new()));
    let second = EventBus::new(KafkaTransport::connect(config).await.unwrap());
    let sub = {
        let again = Arc::clone(&again);
        second
            .subscribe(
                &topic,
                group,
                handler_fn(move |d: Delivery| {
                    let again = Arc::clone(&again);
                    async move {
                        let body = String::from_utf8_lossy(d.message().payload()).into_owned();
                        again.lock().unwrap().push(body);
                        Ok::<_, BoxError>(())
                    }
                }),
            )
            .await
            .unwrap()
    };
    wait_for("the failed message after the restart", || {
        again.lock().unwrap().iter().any(|m| m == "m5")
    })
    .await;
    wait_for_lag(&second, &topic, group, 0).await;
    sub.close().await;
    let again: BTreeSet<String> = again.lock().unwrap().iter().cloned().collect();
    for done in ["m0", "m1", "m2", "m3", "m4"] {
        assert!(
            !again.contains(done),
            "{done} was committed before the failed m5, yet delivered again: {again:?}"
        );
    }
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_a_typed_error_before_sending() {
    let broker = SharedBroker::get();
    let transport =
        KafkaTransport::connect(support::config(&broker.brokers()).max_message_bytes(1024))
            .await
            .unwrap();
    // Let the bus accept it, so the transport's limit is what refuses.
    let bus = EventBus::builder(transport)
        .limits(Limits::default().max_message_bytes(64 << 20))
        .build();
    let topic = unique("big");
    let message = Message::new(&topic, vec![0u8; 2000]).with_key("k");
    let size = message.encoded_len();
    match bus.publish(message).await {
        Err(Error::PayloadTooLarge { size: s, limit }) => assert_eq!((s, limit), (size, 1024)),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_reports_missing_and_mismatched_topics() {
    let broker = SharedBroker::get();
    let topic = unique("validate");
    let validating = KafkaTransport::connect(
        support::config(&broker.brokers()).provision(Provision::ValidateOnly),
    )
    .await
    .unwrap();
    let err = validating.ensure_topic(&topic).await.unwrap_err();
    assert!(
        matches!(&err, Error::TopicMissing { transport: "kafka", topic: t, .. } if *t == topic),
        "{err}"
    );
    // Asking did not create it: the broker auto-creates topics a metadata request names
    // (Kafka's default), with its default partition count.
    let err = validating.ensure_topic(&topic).await.unwrap_err();
    assert!(
        matches!(&err, Error::TopicMissing { .. }),
        "validating a missing topic created it: {err}"
    );
    let creating = KafkaTransport::connect(
        support::config(&broker.brokers()).topic(&topic, TopicOptions::default().partitions(2)),
    )
    .await
    .unwrap();
    creating.ensure_topic(&topic).await.unwrap();
    let err = validating.ensure_topic(&topic).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::SettingsMismatch { setting: "partitions", expected, actual, .. }
                if expected == "4" && actual == "2"
        ),
        "{err}"
    );
    let matching = KafkaTransport::connect(
        support::config(&broker.brokers())
            .provision(Provision::ValidateOnly)
            .topic(&topic, TopicOptions::default().partitions(2)),
    )
    .await
    .unwrap();
    matching.ensure_topic(&topic).await.unwrap();
    for t in [validating, creating, matching] {
        eventbus_core::transport::Transport::close(&t)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_connect_is_a_typed_error_and_leaves_no_thread() {
    let threads = support::threads();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config =
        KafkaConfig::new(format!("127.0.0.1:{port}")).request_timeout(Duration::from_secs(2));
    let err = KafkaTransport::connect(config).await.unwrap_err();
    assert!(
        matches!(kafka_error(&err), KafkaError::Connect { .. }),
        "{err}"
    );
    assert_eq!(
        support::threads(),
        threads,
        "threads left after a failed connect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_librdkafka_setting_is_a_config_error() {
    let config = KafkaConfig::new("127.0.0.1:1").set("no.such.setting", "1");
    let err = KafkaTransport::connect(config).await.unwrap_err();
    assert!(matches!(kafka_error(&err), KafkaError::Config(_)), "{err}");
}

/// One partition; the handler of m3 is still running when the subscription closes (it stops
/// on cancellation: not done), the others finish. The committed offset stays at m3, but the
/// next subscription of the group receives m3 alone: the finished offsets above it are
/// handed over in the commit metadata, which Kafka keeps with the offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_messages_above_an_unfinished_one_are_not_redelivered() {
    let broker = SharedBroker::get();
    let topic = unique("gap");
    let group = "g";
    let config =
        support::config(&broker.brokers()).topic(&topic, TopicOptions::default().partitions(1));
    let bus = EventBus::new(KafkaTransport::connect(config).await.unwrap());
    let done = Arc::new(Mutex::new(Vec::<String>::new()));
    let sub = {
        let done = Arc::clone(&done);
        bus.subscribe(
            &topic,
            group,
            handler_fn(move |d: Delivery| {
                let done = Arc::clone(&done);
                async move {
                    let body = String::from_utf8_lossy(d.message().payload()).into_owned();
                    if body == "m3" {
                        d.cancellation().cancelled().await;
                        return Err::<(), BoxError>("stopped by the close".into());
                    }
                    done.lock().unwrap().push(body);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap()
    };
    let messages: Vec<Message> = (0..10)
        .map(|i| Message::new(&topic, format!("m{i}")).with_key(format!("k{i}")))
        .collect();
    bus.publish_batch(messages).await.unwrap();
    wait_for("the nine other messages", || {
        done.lock().unwrap().len() >= 9
    })
    .await;
    sub.close().await;
    wait_for_lag(&bus, &topic, group, 1).await;

    let again = Arc::new(Mutex::new(Vec::<String>::new()));
    let sub = {
        let again = Arc::clone(&again);
        bus.subscribe(
            &topic,
            group,
            handler_fn(move |d: Delivery| {
                let again = Arc::clone(&again);
                async move {
                    let body = String::from_utf8_lossy(d.message().payload()).into_owned();
                    again.lock().unwrap().push(body);
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap()
    };
    wait_for("m3 again", || !again.lock().unwrap().is_empty()).await;
    wait_for_lag(&bus, &topic, group, 0).await;
    sub.close().await;
    assert_eq!(
        *again.lock().unwrap(),
        ["m3"],
        "what the second subscription got"
    );
    bus.close().await.unwrap();
}

/// `lag` of a group this process subscribes asks that subscription's consumer for the
/// committed offsets: no client of its own (a client is four librdkafka threads and two
/// connections, and a health probe asks for every subscription's lag). A group with no
/// subscription here gets a client for the query only, gone when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_opens_no_client_for_a_group_subscribed_here() {
    let broker = SharedBroker::get();
    let transport = KafkaTransport::connect(support::config(&broker.brokers()))
        .await
        .unwrap();
    let bus = EventBus::new(transport);
    let topic = unique("lag-client");
    let (n, handler) = {
        let n = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&n);
        (
            n,
            handler_fn(move |_d: Delivery| {
                m.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(()) }
            }),
        )
    };
    let sub = bus.subscribe(&topic, "g", handler).await.unwrap();
    bus.publish(Message::new(&topic, "m").with_key("k"))
        .await
        .unwrap();
    wait_for("the delivery", || n.load(Ordering::SeqCst) >= 1).await;
    let threads = support::threads();
    wait_for_lag(&bus, &topic, "g", 0).await;
    assert_eq!(
        support::threads(),
        threads,
        "lag of a subscribed group made a client"
    );
    // A group nobody here subscribes: its whole topic is its lag, and its client is gone.
    assert_eq!(bus.lag(&topic, "other").await.unwrap(), 1);
    assert_eq!(
        support::threads(),
        threads,
        "the query's client outlived it"
    );
    sub.close().await;
    bus.close().await.unwrap();
}
