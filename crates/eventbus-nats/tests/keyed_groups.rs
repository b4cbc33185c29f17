//! Keyed groups on a real server: the partitioned stream layout and its refusals, and a group
//! whose instances join and leave under keyed load with per-key order kept across them.

// `support` re-exports a private server, which this file does not start.
#[allow(unused_imports)]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use eventbus_core::{BoxError, Delivery, Error, EventBus, Message, handler_fn};
use eventbus_nats::{NatsConfig, NatsTransport, StreamOptions};
use support::{SharedServer, unique};

fn refused_for_partitions(result: eventbus_core::Result<()>) -> String {
    match result {
        Err(Error::SettingsMismatch {
            setting: "partitions",
            actual,
            ..
        }) => actual,
        other => panic!("expected SettingsMismatch(partitions), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_the_earlier_layout_or_another_partition_count_is_refused() {
    let shared = SharedServer::get();
    let config = NatsConfig::new(shared.url());
    let t = NatsTransport::connect(config.clone()).await.unwrap();
    let js = t.jetstream().clone();

    // An earlier version's stream: one subject, the topic itself.
    let old = unique("earlier");
    js.create_stream(jetstream::stream::Config {
        name: config.stream_name(&old),
        subjects: vec![config.subject(&old)],
        ..Default::default()
    })
    .await
    .unwrap();
    let actual = refused_for_partitions(t.ensure_stream(&old).await);
    assert!(actual.contains("earlier version"), "{actual}");
    let bus = EventBus::new(t.clone());
    let published = bus.publish(Message::new(&old, "x").with_key("k")).await;
    refused_for_partitions(published);

    // Made with 4 partitions, used with 8: a key would change partitions.
    let topic = unique("four");
    let four = NatsTransport::connect(
        config
            .clone()
            .topic(&topic, StreamOptions::default().partitions(4)),
    )
    .await
    .unwrap();
    four.ensure_stream(&topic).await.unwrap();
    let eight =
        NatsTransport::connect(config.topic(&topic, StreamOptions::default().partitions(8)))
            .await
            .unwrap();
    let actual = refused_for_partitions(eight.ensure_stream(&topic).await);
    assert!(actual.starts_with("4 "), "{actual}");

    for t in [&four, &eight] {
        eventbus_core::transport::Transport::close(t).await.unwrap();
    }
    let _ = js.delete_stream(four.config().stream_name(&topic)).await;
    let _ = js.delete_stream(four.config().stream_name(&old)).await;
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_messages_all_go_to_one_partition_subject() {
    let shared = SharedServer::get();
    let config = NatsConfig::new(shared.url());
    let t = NatsTransport::connect(config.clone()).await.unwrap();
    let js = t.jetstream().clone();
    let bus = EventBus::new(t);
    let topic = unique("subjects");
    let messages: Vec<Message> = (0..200)
        .map(|i| Message::new(&topic, format!("{i}")).with_key(format!("order.{}", i % 20)))
        .collect();
    bus.publish_batch(messages).await.unwrap();
    let stream = js.get_stream(config.stream_name(&topic)).await.unwrap();
    let mut subject_of: HashMap<String, String> = HashMap::new();
    for seq in 1..=200 {
        let m = stream.get_raw_message(seq).await.unwrap();
        let key = m.headers.get("eb-key").unwrap().to_string();
        let partition = m
            .subject
            .strip_prefix(&format!("{topic}."))
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("not a partition subject: {}", m.subject));
        assert!(partition < 16);
        let first = subject_of
            .entry(key.clone())
            .or_insert(m.subject.to_string());
        assert_eq!(*first, m.subject.as_str(), "key {key} on two subjects");
    }
    let partitions: std::collections::HashSet<_> = subject_of.values().collect();
    assert!(
        partitions.len() > 4,
        "20 keys on {} partitions",
        partitions.len()
    );
    bus.close().await.unwrap();
    let _ = js.delete_stream(config.stream_name(&topic)).await;
}

/// One handler call: key, sequence within the key, instance, start and end (clock ticks).
type Call = (String, u64, usize, u64, u64);

/// What the instances handled.
#[derive(Default)]
struct Handled {
    clock: std::sync::atomic::AtomicU64,
    calls: Mutex<Vec<Call>>,
}

impl Handled {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }
}

async fn wait_for(handled: &Handled, n: u64) {
    let count = || handled.calls.lock().unwrap().len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} handled after 60 s",
            count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn member(
    handled: Arc<Handled>,
    instance: usize,
) -> impl tower::Service<
    Delivery,
    Response = (),
    Error = BoxError,
    Future = impl Future<Output = Result<(), BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    handler_fn(move |d: Delivery| {
        let handled = Arc::clone(&handled);
        async move {
            let start = handled.tick();
            // Work, so handlers are in flight when the group changes.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let key = d.message().key().map(|k| k.to_string()).unwrap_or_default();
            let seq: u64 = std::str::from_utf8(d.message().payload())?.parse()?;
            let end = handled.tick();
            handled
                .calls
                .lock()
                .unwrap()
                .push((key, seq, instance, start, end));
            Ok(())
        }
    })
}

/// Three instances of one group (three connections, as three processes) share a keyed load;
/// one closes mid-way and a fourth joins. Per key, every message is handled exactly once (hand-
/// overs are clean), in publish order, and each starts after the previous one of its key ended,
/// whichever instances handled them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_keep_each_keys_order_across_them() {
    const KEYS: u64 = 100;
    const PER_KEY: u64 = 30;
    let shared = SharedServer::get();
    let config = NatsConfig::new(shared.url());
    let topic = unique("keyed");
    let group = "workers";
    let publisher = EventBus::new(NatsTransport::connect(config.clone()).await.unwrap());
    let js = NatsTransport::connect(config.clone()).await.unwrap();
    let handled = Arc::new(Handled::default());
    let mut instances = Vec::new();
    let mut subs = Vec::new();
    for i in 0..3 {
        let bus = EventBus::new(NatsTransport::connect(config.clone()).await.unwrap());
        subs.push(Some(
            bus.subscribe(&topic, group, member(Arc::clone(&handled), i))
                .await
                .unwrap(),
        ));
        instances.push(bus);
    }
    let publish = |from: u64, to: u64| {
        let publisher = publisher.clone();
        let topic = topic.clone();
        async move {
            for seq in from..to {
                let batch: Vec<Message> = (0..KEYS)
                    .map(|k| Message::new(&topic, seq.to_string()).with_key(format!("k.{k}")))
                    .collect();
                publisher.publish_batch(batch).await.unwrap();
            }
        }
    };
    publish(0, 10).await;
    wait_for(&handled, 5 * KEYS).await;
    // One leaves mid-load (its handlers in flight), and the load goes on.
    let leaving = subs[1].take().unwrap();
    let (_, ()) = tokio::join!(leaving.close(), publish(10, 20));
    wait_for(&handled, 15 * KEYS).await;
    // A fourth joins mid-load.
    let bus = EventBus::new(NatsTransport::connect(config.clone()).await.unwrap());
    subs.push(Some(
        bus.subscribe(&topic, group, member(Arc::clone(&handled), 3))
            .await
            .unwrap(),
    ));
    instances.push(bus);
    publish(20, PER_KEY).await;
    wait_for(&handled, KEYS * PER_KEY).await;

    let calls = handled.calls.lock().unwrap().clone();
    let mut per_key: BTreeMap<String, Vec<(u64, usize, u64, u64)>> = BTreeMap::new();
    for (key, seq, instance, start, end) in &calls {
        per_key
            .entry(key.clone())
            .or_default()
            .push((*seq, *instance, *start, *end));
    }
    assert_eq!(per_key.len() as u64, KEYS);
    for (key, mut calls) in per_key {
        calls.sort_by_key(|c| c.2);
        let seqs: Vec<u64> = calls.iter().map(|c| c.0).collect();
        assert_eq!(
            seqs,
            (0..PER_KEY).collect::<Vec<_>>(),
            "key {key}: handled (in start order) {calls:?}"
        );
        for pair in calls.windows(2) {
            assert!(
                pair[1].2 > pair[0].3,
                "key {key}: {:?} started before {:?} ended",
                pair[1],
                pair[0]
            );
        }
    }
    let mut per_instance = [0u64; 4];
    for c in &calls {
        per_instance[c.2] += 1;
    }
    assert!(
        per_instance.iter().all(|&n| n > 0),
        "every instance handles a share: {per_instance:?}"
    );

    for sub in subs.into_iter().flatten() {
        sub.close().await;
    }
    for bus in instances {
        bus.close().await.unwrap();
    }
    publisher.close().await.unwrap();
    let stream_name = js.config().stream_name(&topic);
    let _ = js.jetstream().delete_stream(stream_name).await;
    eventbus_core::transport::Transport::close(&js)
        .await
        .unwrap();
}
