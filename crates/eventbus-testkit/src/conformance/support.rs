//! What checks are written with: the harness, unique names, exact set comparison, waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventbus_core::{
    BoxError, BusOptions, Capabilities, Delivery, Error, EventBus, Message, MessageId, RetryPolicy,
    Subscription, handler_fn,
};
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::Service;

type MakeBus = dyn Fn(BusOptions) -> BoxFuture<'static, EventBus> + Send + Sync;
type Restart = dyn Fn() -> BoxFuture<'static, Result<(), Error>> + Send + Sync;

/// Message counts: `Full` as in `docs/conformance.md`, `Quick` shrinks them (about 10×) for fast
/// local runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Full size.
    Full,
    /// Shrunk.
    Quick,
}

/// How the suite reaches one transport: it makes buses (every bus it makes talks to the same
/// broker, like processes sharing one), declares capabilities, and, for out-of-process brokers,
/// restarts the broker.
#[derive(Clone)]
pub struct Harness {
    name: &'static str,
    capabilities: Capabilities,
    make: Arc<MakeBus>,
    restart: Option<Arc<Restart>>,
    once_across_restarts: bool,
    scale: Scale,
    timeout: Duration,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness for transport `name` with `capabilities`, making buses with `make(options)`.
    pub fn new<F, Fut>(name: &'static str, capabilities: Capabilities, make: F) -> Self
    where
        F: Fn(BusOptions) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = EventBus> + Send + 'static,
    {
        Harness {
            name,
            capabilities,
            make: Arc::new(move |o| Box::pin(make(o))),
            restart: None,
            once_across_restarts: false,
            scale: Scale::Full,
            timeout: Duration::from_secs(60),
        }
    }

    /// How to restart the broker (for the check `reconnect`: a harness without it has no
    /// broker to restart).
    pub fn with_restart<F, Fut>(mut self, restart: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.restart = Some(Arc::new(move || Box::pin(restart())));
        self
    }

    /// Promises that a subscription living across broker restarts handles each message once
    /// (the check `reconnect` then counts a second call as a failure, not as a redelivery).
    pub fn once_across_restarts_promised(mut self) -> Self {
        self.once_across_restarts = true;
        self
    }

    /// Whether [`once_across_restarts_promised`](Self::once_across_restarts_promised) was.
    pub fn once_across_restarts(&self) -> bool {
        self.once_across_restarts
    }

    /// Message counts to use.
    pub fn with_scale(mut self, scale: Scale) -> Self {
        self.scale = scale;
        self
    }

    /// How long a check waits for something before failing (default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The transport's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Declared capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    /// The scale.
    pub fn scale(&self) -> Scale {
        self.scale
    }
    /// How long waits last.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `full` at full scale, about a tenth of it (at least 10) when quick.
    pub fn count(&self, full: usize) -> usize {
        match self.scale {
            Scale::Full => full,
            Scale::Quick => (full / 10).max(10).min(full),
        }
    }

    /// A bus with default options, but a short drain timeout so failing checks end quickly.
    pub async fn bus(&self) -> EventBus {
        self.bus_with(Self::default_options()).await
    }

    /// The options [`bus`](Self::bus) uses; start from these to change one.
    pub fn default_options() -> BusOptions {
        let mut o = BusOptions::default();
        o.drain_timeout = Duration::from_secs(10);
        o.publish_timeout = Duration::from_secs(10);
        // Checks that hand failures back to the transport wait this long per redelivery.
        o.redelivery_delay = Duration::from_millis(200);
        o
    }

    /// A bus with `options`.
    pub async fn bus_with(&self, options: BusOptions) -> EventBus {
        (self.make)(options).await
    }

    /// Whether [`restart_broker`](Self::restart_broker) can restart the broker.
    pub fn can_restart_broker(&self) -> bool {
        self.restart.is_some()
    }

    /// Restarts the broker, as a crash would (`Error::Unsupported` without a way to).
    pub async fn restart_broker(&self) -> Result<(), Error> {
        match &self.restart {
            Some(restart) => restart().await,
            None => Err(Error::Unsupported {
                transport: self.name,
                capability: "broker restart",
            }),
        }
    }

    /// Waits for `fut` up to the harness timeout; panics with `what` when it does not finish.
    pub async fn within<T>(&self, what: &str, fut: impl Future<Output = T>) -> T {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(v) => v,
            Err(_) => panic!(
                "{}: timed out after {:?} waiting for {what}",
                self.name, self.timeout
            ),
        }
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name no other check, run or process uses: `<prefix>-<pid>-<n>-<nanos>`, valid as a topic and
/// as a group.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Panics unless `got` holds each of `expected` exactly once, listing what is missing,
/// unexpected and duplicated.
pub fn assert_exactly_once(what: &str, expected: &BTreeSet<String>, got: &[String]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in got {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|id| !expected.contains(**id))
        .collect();
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && duplicated.is_empty(),
        "{what}: expected {} ids exactly once, got {} deliveries; missing {}: {:?}; unexpected {}: {:?}; duplicated {}: {:?}",
        expected.len(),
        got.len(),
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(10).collect::<Vec<_>>(),
        duplicated.len(),
        duplicated.iter().take(10).collect::<Vec<_>>(),
    );
}

/// Panics unless every expected id was received at least once (redeliveries allowed), listing
/// what is missing and unexpected.
pub fn assert_all_received(what: &str, expected: &BTreeSet<String>, got: &[String]) {
    let got: BTreeSet<&str> = got.iter().map(String::as_str).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !got.contains(id.as_str()))
        .collect();
    let unexpected: Vec<_> = got.iter().filter(|id| !expected.contains(**id)).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{what}: expected all {} ids; missing {}: {:?}; unexpected {}: {:?}",
        expected.len(),
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(10).collect::<Vec<_>>(),
    );
}

// ---------------------------------------------------------------------------------------------
// Building blocks of the checks (crate-internal).
// ---------------------------------------------------------------------------------------------

/// Header carrying the suite's own id of a message (`<check>-<n>`), so failures name messages
/// readably and a transport that loses or rewrites [`Message::id`] still gets a fair report.
pub(crate) const ID_HEADER: &str = "conformance-id";
/// Header carrying a message's position in its key's sequence, from 0.
pub(crate) const SEQ_HEADER: &str = "conformance-seq";

/// The result of a handler.
pub(crate) type HandlerResult = Result<(), BoxError>;

/// A message on `topic` whose payload and [`ID_HEADER`] are `id`.
pub(crate) fn message(topic: &str, id: &str) -> Message {
    Message::new(topic, id.to_owned()).with_header(ID_HEADER, id)
}

/// A message of `key` at position `seq` of its key.
pub(crate) fn keyed(topic: &str, id: &str, key: &str, seq: u64) -> Message {
    message(topic, id)
        .with_key(key)
        .with_header(SEQ_HEADER, seq.to_string())
}

/// The suite's id of a message (or a placeholder naming its message id, when the header was
/// lost: it then shows up as unexpected).
pub(crate) fn id_of(m: &Message) -> String {
    match m.headers().get(ID_HEADER) {
        Some(id) => id.to_owned(),
        None => format!("<no {ID_HEADER} header; message id {}>", m.id()),
    }
}

/// A message's key and position in its key, when it has both.
pub(crate) fn key_seq(m: &Message) -> Option<(String, u64)> {
    let key = m.key()?.as_str().to_owned();
    let seq = m.headers().get(SEQ_HEADER)?.parse().ok()?;
    Some((key, seq))
}

/// The headers checks compare: all but the W3C trace context (`traceparent`, `tracestate`),
/// which trace propagation adds to every message published inside a traced span. Check 30
/// turns the OpenTelemetry bridge on only while it runs, but a runner that runs checks at once
/// (the `conformance` runner's `--stress`) may have it on during another check.
pub(crate) fn user_headers(m: &Message) -> Vec<(&str, &str)> {
    use eventbus_core::propagation::{TRACEPARENT, TRACESTATE};
    m.headers()
        .iter()
        .filter(|(name, _)| *name != TRACEPARENT && *name != TRACESTATE)
        .collect()
}

/// The set of ids of `messages`.
pub(crate) fn ids(messages: &[Message]) -> BTreeSet<String> {
    messages.iter().map(id_of).collect()
}

/// A handler from a closure over shared state: `f(state, delivery)`.
pub(crate) fn handler<S, F, Fut>(
    state: &Arc<S>,
    f: F,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future = Fut> + Clone + Send + Sync + 'static
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    let state = Arc::clone(state);
    handler_fn(move |d: Delivery| f(Arc::clone(&state), d))
}

/// A handler that records every delivery in `record` and succeeds.
pub(crate) fn recorder(
    record: &Arc<Record>,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future = impl Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    handler(record, |record, d| async move {
        record.push(&d);
        Ok(())
    })
}

/// A counter that can be awaited.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    n: AtomicUsize,
    changed: Notify,
}

impl Counter {
    /// Adds one; returns the new count.
    pub(crate) fn add(&self) -> usize {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.notify_waiters();
        n
    }
    /// The count.
    pub(crate) fn get(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }
    /// Resolves once the count reaches `at_least` (no deadline: for handlers, which must not
    /// panic; wrap it in a timeout).
    pub(crate) async fn until(&self, at_least: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.get() >= at_least {
                return;
            }
            changed.await;
        }
    }
    /// Waits until the count reaches `at_least`; panics with `what` and the count reached when
    /// the harness timeout passes first.
    pub(crate) async fn wait_for(&self, h: &Harness, at_least: usize, what: &str) {
        let reached = tokio::time::timeout(h.timeout(), self.until(at_least)).await;
        if reached.is_err() {
            panic!(
                "{}: timed out after {:?} waiting for {what}: expected {at_least}, got {}",
                h.name(),
                h.timeout(),
                self.get()
            );
        }
    }
}

/// Every message a handler was given, in the order the calls recorded them.
#[derive(Debug, Default)]
pub(crate) struct Record {
    recorded: Mutex<Recorded>,
    /// How many were recorded.
    pub(crate) count: Counter,
    /// How many different messages (by message id) were recorded.
    distinct: Counter,
}

#[derive(Debug, Default)]
struct Recorded {
    messages: Vec<Arc<Message>>,
    ids: BTreeSet<MessageId>,
}

impl Record {
    /// Records a delivery.
    pub(crate) fn push(&self, d: &Delivery) -> usize {
        let new = {
            let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
            recorded.messages.push(Arc::clone(d.message_arc()));
            recorded.ids.insert(d.message().id().clone())
        };
        if new {
            self.distinct.add();
        }
        self.count.add()
    }
    /// How many were recorded.
    pub(crate) fn len(&self) -> usize {
        self.count.get()
    }
    /// The recorded messages.
    pub(crate) fn messages(&self) -> Vec<Arc<Message>> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .messages
            .clone()
    }
    /// The suite ids of the recorded messages, in order.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.messages().iter().map(|m| id_of(m)).collect()
    }
    /// Waits until `n` different messages were recorded. Duplicates do not count, so a check
    /// that then asserts "exactly once" reports them as duplicates, not as messages missing
    /// because the duplicates made up the count early.
    pub(crate) async fn wait_for(&self, h: &Harness, n: usize, what: &str) {
        self.distinct.wait_for(h, n, what).await;
    }
}

/// A gate handlers wait at until the check opens it.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    opened: Notify,
}

impl Gate {
    /// Opens the gate for every waiter, now and later.
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.opened.notify_waiters();
    }
    /// Whether it is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }
    /// Waits until it is open.
    pub(crate) async fn wait(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.is_open() {
                return;
            }
            opened.await;
        }
    }
}

/// One handler call in a per-key order log: its key and position, and logical start and end
/// times from one clock shared by every instance of a check.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// Which instance (bus or subscription) made the call, as the check numbers them.
    pub(crate) tag: usize,
    pub(crate) key: String,
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Records handler calls with logical start/end times, to check per-key order and that calls
/// of one key never overlap.
#[derive(Debug, Default)]
pub(crate) struct OrderLog {
    clock: AtomicU64,
    calls: Mutex<Vec<Call>>,
    /// Calls recorded.
    pub(crate) count: Counter,
}

impl OrderLog {
    /// A tick of the shared clock: call when a handler starts.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
    /// Records a call by instance `tag` that started at `start` and ends now.
    pub(crate) fn finish(&self, tag: usize, d: &Delivery, start: u64) -> usize {
        let end = self.tick();
        let (key, seq) = key_seq(d.message()).unwrap_or_else(|| ("<no key or seq>".into(), 0));
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Call {
                tag,
                key,
                seq,
                id: id_of(d.message()),
                start,
                end,
            });
        self.count.add()
    }
    /// The calls recorded.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Panics unless, for every key, `calls` hold positions `0..per_key[key]` exactly once, in
/// order, each call starting after the previous one of its key ended (strict FIFO, one at a
/// time).
pub(crate) fn assert_key_order(what: &str, per_key: &BTreeMap<String, u64>, calls: &[Call]) {
    let mut by_key: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for c in calls {
        by_key.entry(c.key.as_str()).or_default().push(c);
    }
    let unexpected: Vec<_> = by_key
        .keys()
        .filter(|k| !per_key.contains_key(**k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{what}: calls for unexpected keys {unexpected:?}"
    );
    for (key, &n) in per_key {
        let mut calls = by_key.remove(key.as_str()).unwrap_or_default();
        calls.sort_by_key(|c| c.start);
        let seqs: Vec<u64> = calls.iter().map(|c| c.seq).collect();
        let want: Vec<u64> = (0..n).collect();
        assert!(
            seqs == want,
            "{what}: key {key:?} expected positions 0..{n} once each in order, got {} calls in start order: {}",
            seqs.len(),
            abbreviate(&seqs)
        );
        if let Some(w) = calls.windows(2).find(|w| w[1].start < w[0].end) {
            panic!(
                "{what}: key {key:?}: {} (position {}) started before {} (position {}) returned: two calls of one key overlapped",
                w[1].id, w[1].seq, w[0].id, w[0].seq
            );
        }
    }
}

/// Panics unless, for every key, the positions of `calls` in start order increase strictly and
/// no two calls of one key overlap (order within one consumer that got a subset of the
/// messages).
pub(crate) fn assert_increasing_per_key(what: &str, calls: &[Call]) {
    let mut by_key: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for c in calls {
        by_key.entry(c.key.as_str()).or_default().push(c);
    }
    for (key, mut calls) in by_key {
        calls.sort_by_key(|c| c.start);
        if let Some(w) = calls.windows(2).find(|w| w[1].seq <= w[0].seq) {
            let seqs: Vec<u64> = calls.iter().map(|c| c.seq).collect();
            panic!(
                "{what}: key {key:?}: expected increasing positions, got {} (position {}) after {} (position {}); positions in start order: {}",
                w[1].id,
                w[1].seq,
                w[0].id,
                w[0].seq,
                abbreviate(&seqs)
            );
        }
        if let Some(w) = calls.windows(2).find(|w| w[1].start < w[0].end) {
            panic!(
                "{what}: key {key:?}: {} started before {} returned: two calls of one key overlapped",
                w[1].id, w[0].id
            );
        }
    }
}

/// Up to 40 items of a list, for messages.
pub(crate) fn abbreviate<T: std::fmt::Debug>(items: &[T]) -> String {
    if items.len() <= 40 {
        format!("{items:?}")
    } else {
        format!("{:?} ... ({} more)", &items[..40], items.len() - 40)
    }
}

/// Panics if an id is in both `a` and `b`, listing them.
pub(crate) fn assert_disjoint(what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>) {
    let both: Vec<_> = a.intersection(b).collect();
    assert!(
        both.is_empty(),
        "{what}: expected no id in both, got {}: {}",
        both.len(),
        abbreviate(&both)
    );
}

/// Awaits every task of `set`; a task's panic is resumed here, so its message is the check's.
pub(crate) async fn join_all<T: 'static>(h: &Harness, what: &str, mut set: JoinSet<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(set.len());
    h.within(what, async {
        while let Some(done) = set.join_next().await {
            match done {
                Ok(v) => out.push(v),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("{what}: a task was cancelled: {e}"),
            }
        }
    })
    .await;
    out
}

/// Publishes `messages` one by one; panics on the first error.
pub(crate) async fn publish_all(h: &Harness, bus: &EventBus, messages: Vec<Message>) {
    h.within("publishing", async {
        for m in messages {
            let id = id_of(&m);
            if let Err(e) = bus.publish(m).await {
                panic!("publishing {id}: expected Ok, got {e:?}");
            }
        }
    })
    .await;
}

/// Closes subscriptions (all at once).
pub(crate) async fn close_subs(h: &Harness, subs: Vec<Subscription>) {
    h.within(
        "subscriptions to close",
        futures::future::join_all(subs.into_iter().map(Subscription::close)),
    )
    .await;
}

/// Closes a bus; panics unless it closes cleanly in time.
pub(crate) async fn close_bus(h: &Harness, bus: &EventBus) {
    if let Err(e) = h.within("the bus to close", bus.close()).await {
        panic!("closing the bus: expected Ok, got {e:?}");
    }
}

/// Subscribes; panics on error.
pub(crate) async fn subscribe<H>(
    bus: &EventBus,
    topic: &str,
    group: &str,
    handler: H,
) -> Subscription
where
    H: eventbus_core::Handler,
{
    match bus.subscribe(topic, group, handler).await {
        Ok(sub) => sub,
        Err(e) => panic!("subscribing to {topic:?} as {group:?}: expected Ok, got {e:?}"),
    }
}

/// Waits until the broker reports `group`'s lag on `topic` as `expected` (acks may reach a
/// remote broker a moment after the subscription settled them). Transports without lag
/// reporting ([`Error::Unsupported`]) are not checked here.
pub(crate) async fn assert_lag(
    h: &Harness,
    bus: &EventBus,
    topic: &str,
    group: &str,
    expected: u64,
) {
    let deadline = tokio::time::Instant::now() + h.timeout();
    loop {
        match bus.lag(topic, group).await {
            Err(Error::Unsupported { .. }) => return,
            Err(e) => panic!("lag of {group:?} on {topic:?}: expected Ok({expected}), got {e:?}"),
            Ok(lag) if lag == expected => return,
            Ok(lag) if tokio::time::Instant::now() > deadline => panic!(
                "{}: lag of {group:?} on {topic:?}: expected {expected} unacked, got {lag} after {:?}",
                h.name(),
                h.timeout()
            ),
            // Broker state has no notification: poll it.
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Options with `max_in_flight` and `max_buffered` set.
pub(crate) fn bounded(max_in_flight: usize, max_buffered: usize) -> BusOptions {
    let mut o = Harness::default_options();
    o.dispatcher.max_in_flight = max_in_flight;
    o.dispatcher.max_buffered = max_buffered;
    o
}

/// A retry policy with short, fixed-growth delays.
pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
        .jitter(false)
}
