//! Dead-lettering when the dead-letter topic refuses the letter: the original stays unacked
//! and comes back, and is dead-lettered once the topic takes it; nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use eventbus_core::transport::{
    Capabilities, PublishFuture, Publisher, Started, SubscribeRequest, Subscriber, Transport,
};
use eventbus_core::{
    BoxError, DeadLetter, Delivery, Error, EventBus, Message, Result, RetryPolicy,
    SubscribeOptions, Subscription, handler_fn,
};
use eventbus_memory::MemoryTransport;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// The memory broker, except that publishing to `*.dlq` fails while `refuse` is set.
struct RefusingDlq {
    inner: MemoryTransport,
    refuse: Arc<AtomicBool>,
    refused: Arc<AtomicU32>,
}

impl Publisher for RefusingDlq {
    fn publish(&self, message: Message) -> PublishFuture<'_> {
        if message.topic().ends_with(".dlq") && self.refuse.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return PublishFuture::ready(Err(Error::transport(
                "memory",
                "dead-letter topic refused (test)",
            )));
        }
        self.inner.publish(message)
    }
}

#[async_trait::async_trait]
impl Subscriber for RefusingDlq {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started> {
        self.inner.subscribe(request).await
    }
}

#[async_trait::async_trait]
impl Transport for RefusingDlq {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        Transport::lag(&self.inner, topic, group).await
    }
}

/// A subscription to `orders.dlq` and the letters it receives.
async fn letters_of(bus: &EventBus) -> (Subscription, mpsc::UnboundedReceiver<Message>) {
    let (letter_tx, letters) = mpsc::unbounded_channel();
    let reader = bus
        .subscribe(
            "orders.dlq",
            "reader",
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
    (reader, letters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_letter_leaves_the_message_unacked_until_it_is_taken() {
    let refuse = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicU32::new(0));
    let bus = EventBus::builder(RefusingDlq {
        inner: MemoryTransport::new(),
        refuse: Arc::clone(&refuse),
        refused: Arc::clone(&refused),
    })
    .redelivery_delay(Duration::from_millis(10))
    .build();
    let (reader, mut letters) = letters_of(&bus).await;
    let deliveries = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&deliveries);
    let options = SubscribeOptions::new()
        .retry(RetryPolicy::never())
        .dead_letter(DeadLetter::default());
    let sub = bus
        .subscribe_with(
            "orders",
            "billing",
            options,
            handler_fn(move |_d: Delivery| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), BoxError>("poison".into()) }
            }),
        )
        .await
        .unwrap();
    bus.publish(Message::new("orders", "p").with_key("k"))
        .await
        .unwrap();

    // Refused letters: the message is not acked, so it comes back and fails again.
    tokio::time::timeout(WAIT, async {
        while refused.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("three refused letters");
    assert!(deliveries.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        bus.lag("orders", "billing").await.unwrap(),
        1,
        "still unacked"
    );
    assert_eq!(bus.dead_lettered(), 0);

    refuse.store(false, Ordering::SeqCst);
    let letter = tokio::time::timeout(WAIT, letters.recv())
        .await
        .expect("the letter, once the topic takes it")
        .unwrap();
    assert_eq!(&letter.payload()[..], b"p");
    assert_eq!(
        letter
            .headers()
            .get(eventbus_core::dead_letter::header::ATTEMPTS),
        Some("1")
    );
    tokio::time::timeout(WAIT, async {
        while bus.lag("orders", "billing").await.unwrap() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the original acked once its letter was taken");
    assert_eq!(bus.dead_lettered(), 1);
    sub.close().await;
    reader.close().await;
    bus.close().await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_topic_is_validated_at_subscribe() {
    let bus = EventBus::new(MemoryTransport::new());
    let noop = handler_fn(|_d: Delivery| async { Ok::<_, BoxError>(()) });
    for bad in [DeadLetter::to("orders"), DeadLetter::to("bad topic")] {
        let err = bus
            .subscribe_with(
                "orders",
                "g",
                SubscribeOptions::new().dead_letter(bad),
                noop,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTopic { .. }), "{err:?}");
    }
    bus.close().await.unwrap();
}

/// The README's handler (`d.envelope()?`) given a message that is not an envelope, with the
/// default retry policy and `DeadLetter::default()`: the decode error is permanent, so the
/// message is dead-lettered after one call, and a valid envelope of the same key after it is
/// handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_envelope_is_dead_lettered_at_once() {
    use std::sync::atomic::AtomicUsize;

    let bus = EventBus::new(MemoryTransport::new());
    let (reader, mut letters) = letters_of(&bus).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let (event_tx, mut events) = mpsc::unbounded_channel();
    let sub = {
        let calls = Arc::clone(&calls);
        // The defaults: dead-lettering is on.
        bus.subscribe(
            "orders",
            "billing",
            handler_fn(move |d: Delivery| {
                let (calls, event_tx) = (Arc::clone(&calls), event_tx.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let event = d.envelope()?;
                    event_tx.send(event.event_type)?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap()
    };
    bus.publish(Message::new("orders", "x").with_key("k"))
        .await
        .unwrap();
    bus.publish_envelope(
        "orders",
        &eventbus_core::Envelope::new("k", "OrderPlaced", 1, "{}").unwrap(),
    )
    .await
    .unwrap();
    let letter = tokio::time::timeout(WAIT, letters.recv())
        .await
        .expect("the malformed message to be dead-lettered")
        .unwrap();
    assert_eq!(letter.payload().as_ref(), b"x");
    let handled = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("the valid envelope of the same key to be handled")
        .unwrap();
    assert_eq!(handled, "OrderPlaced");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one call each, no retry");
    sub.close().await;
    reader.close().await;
    bus.close().await.unwrap();
}

/// The defaults, whole (retry policy and dead-lettering): a message whose handler keeps failing
/// with an error that is not permanent is called `RetryPolicy::DEFAULT_MAX_ATTEMPTS` times,
/// named by `health()` while it holds its key, then dead-lettered, and the next message of its
/// key is handled after it: bounded, in order, nothing lost. Runs on paused time, so the
/// minute of backoff passes at once.
#[tokio::test(start_paused = true)]
async fn a_message_that_keeps_failing_is_dead_lettered_under_the_defaults() {
    let bus = EventBus::new(MemoryTransport::new());
    let (reader, mut letters) = letters_of(&bus).await;
    let (call_tx, mut calls) = mpsc::unbounded_channel::<(String, u32)>();
    let sub = bus
        .subscribe(
            "orders",
            "billing",
            handler_fn(move |d: Delivery| {
                let body = String::from_utf8_lossy(d.message().payload()).into_owned();
                let sent = call_tx.send((body.clone(), d.attempt()));
                async move {
                    sent?;
                    if body == "poison" {
                        return Err::<(), BoxError>("the database is down".into());
                    }
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let poison = Message::new("orders", "poison").with_key("k");
    let poison_id = poison.id().clone();
    bus.publish(poison).await.unwrap();
    bus.publish(Message::new("orders", "next").with_key("k"))
        .await
        .unwrap();

    // After the first failure the message backs off, holding its key, and health says so.
    assert_eq!(calls.recv().await.unwrap(), ("poison".to_owned(), 1));
    let retrying = loop {
        let health = bus.health().await;
        let listed: Vec<_> = health
            .retrying()
            .map(|(t, g, r)| (t.to_owned(), g.to_owned(), r.clone()))
            .collect();
        if !listed.is_empty() {
            break listed;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(retrying.len(), 1, "{retrying:?}");
    let (topic, group, r) = &retrying[0];
    assert_eq!((topic.as_str(), group.as_str()), ("orders", "billing"));
    assert_eq!(r.key.as_ref().map(|k| k.as_str()), Some("k"));
    assert_eq!(r.message_id, poison_id);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.last_error, "the database is down");

    let letter = tokio::time::timeout(Duration::from_secs(600), letters.recv())
        .await
        .expect("the failing message to be dead-lettered")
        .unwrap();
    assert_eq!(letter.payload().as_ref(), b"poison");
    let attempts = RetryPolicy::DEFAULT_MAX_ATTEMPTS;
    assert_eq!(
        letter
            .headers()
            .get(eventbus_core::dead_letter::header::ATTEMPTS),
        Some(attempts.to_string().as_str())
    );
    let mut order = Vec::new();
    while order.last().is_none_or(|(body, _)| body != "next") {
        let call = tokio::time::timeout(Duration::from_secs(600), calls.recv())
            .await
            .expect("the next message of the key to be handled");
        order.extend(call);
    }
    let expected: Vec<_> = (2..=attempts)
        .map(|a| ("poison".to_owned(), a))
        .chain([("next".to_owned(), 1)])
        .collect();
    assert_eq!(
        order, expected,
        "every retry, then the next message of the key"
    );
    let health = bus.health().await;
    assert_eq!(health.retrying().count(), 0, "{health:?}");
    assert_eq!(health.dead_lettered, 1);
    sub.close().await;
    reader.close().await;
    bus.close().await.unwrap();
}
