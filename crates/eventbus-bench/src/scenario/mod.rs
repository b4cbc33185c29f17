//! Load scenarios: messages over several topics, published by one sender per topic, checked for
//! loss, duplicates and order, timed to the last receipt (never by fixed sleeps); and the raw
//! `tokio::sync::mpsc` baseline doing the same work with nothing of ours in between.
//!
//! The Go SDK's two harnesses (see [`crate::load`] for its levels) are two [`Shape`]s:
//! - **A** ([`Shape::Unkeyed`]): raw messages without a key, payload = 8-byte send timestamp +
//!   100 bytes; one sender per topic sends `count / 5`. Unkeyed messages carry no order
//!   promise, so only loss and duplicates are checked.
//! - **B** ([`Shape::Envelope`]): envelopes of aggregates `aggregate-i` (aggregate `i` on topic
//!   `i % topics`), versions `1..=n` published in order per aggregate; the order checker counts
//!   every delivery whose version is not greater than the last one seen for its aggregate.
//!
//! Every payload starts with the send timestamp: nanoseconds since the run's epoch (an
//! [`Instant`] shared by senders and handlers), `u64` little-endian, so end-to-end latency is
//! measured per delivery.
//!
//! # What a delivery costs the harness
//! The same small, bounded work in the bus's handler and in the raw baseline's loop: decode,
//! one bit in a "seen" bitmap (duplicates and loss), the aggregate's last version (order; keyed
//! shapes only), one bucket of a fixed-size latency [`Histogram`]. Everything the harness
//! records into is allocated before the start snapshot, so heap figures are the bus's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use eventbus_core::{BoxError, Delivery, DispatcherStats, Envelope, EventBus, Message, handler_fn};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use eventbus_testkit::leak::Usage;
use eventbus_testkit::order::VersionTracker;

mod histogram;
mod timeline;

pub use histogram::{Histogram, Latency};
pub use timeline::{Sample, Timeline};
use timeline::{Sampler, Sampling};

/// Bytes of the send timestamp at the start of every payload.
pub const STAMP_LEN: usize = 8;
/// Bytes of version (`u64` LE) and aggregate (`u32` LE) after the stamp in raw payloads.
const ID_LEN: usize = 12;

/// What each message looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// A raw keyed message (key `aggregate-i`): payload = send timestamp + version (u64 LE) +
    /// aggregate (u32 LE) + padding; decoding is trivial.
    Raw,
    /// The Go SDK's scenario A: a raw message without a key, payload = send timestamp +
    /// [`Load::payload`] bytes (whose first 12 carry sender and sequence number, to count loss
    /// and duplicates). Unkeyed messages run concurrently: there is no order to check.
    Unkeyed,
    /// The Go SDK's scenario B: a domain-event envelope (headers carry aggregate id and version;
    /// the body is the send timestamp + padding); handlers decode the envelope.
    Envelope,
}

impl Shape {
    /// Whether messages carry a key, so per-key order is promised and checked.
    pub fn keyed(self) -> bool {
        !matches!(self, Shape::Unkeyed)
    }
}

/// A load: `aggregates` numbered `0..aggregates`, aggregate `i` on topic `i % topics`, each
/// publishing versions `1..=versions` in order; one sender per topic goes round its
/// aggregates, one version at a time.
///
/// Scenario A is `aggregates == topics` with [`Shape::Unkeyed`]: each sender publishes its own
/// sequence `1..=versions`.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Topics.
    pub topics: usize,
    /// Aggregates (keys), over all topics.
    pub aggregates: usize,
    /// Versions per aggregate.
    pub versions: u64,
    /// Payload bytes after the 8-byte send timestamp (raw shapes use at least 12).
    pub payload: usize,
    /// Message shape.
    pub shape: Shape,
    /// Give up waiting for receipts after this long.
    pub deadline: Duration,
    /// Print a progress line to stderr this often while waiting for receipts (`None`: quiet).
    pub progress: Option<Duration>,
    /// One more aggregate, [`STALLED`], whose handling stalls (the head-of-line scenario).
    pub stall: Option<Stall>,
}

/// The aggregate id (and key) of [`Stall`]'s messages.
pub const STALLED: &str = "stalled";

/// An aggregate whose every message takes `sleep` to handle: `messages` versions of
/// [`STALLED`], which topic 0's sender publishes before anything else. They are not part of
/// the load's figures: loss, order, latency and the time to the last receipt count the other
/// aggregates only, which is what head-of-line blocking would hurt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// Messages of the stalled aggregate.
    pub messages: u64,
    /// How long handling each of them takes (an async sleep).
    pub sleep: Duration,
}

impl Load {
    /// Messages in the load.
    pub fn messages(&self) -> u64 {
        self.aggregates as u64 * self.versions
    }

    /// The message of `aggregate` at `version`, stamped with the time since `epoch`.
    fn message(&self, topic: &str, aggregate: usize, version: u64, epoch: Instant) -> Message {
        let sent = nanos_since(epoch);
        if aggregate == usize::MAX {
            // The stalled aggregate: its key is all a handler looks at.
            return Message::new(topic, sent.to_le_bytes().to_vec()).with_key(STALLED);
        }
        match self.shape {
            Shape::Raw | Shape::Unkeyed => {
                let len = STAMP_LEN + self.payload.max(ID_LEN);
                let mut b = BytesMut::with_capacity(len);
                b.put_u64_le(sent);
                b.put_u64_le(version);
                b.put_u32_le(aggregate as u32);
                b.resize(len, 0);
                let message = Message::new(topic, b.freeze());
                if self.shape == Shape::Raw {
                    message.with_key(format!("aggregate-{aggregate}"))
                } else {
                    message
                }
            }
            Shape::Envelope => {
                let mut b = BytesMut::with_capacity(STAMP_LEN + self.payload);
                b.put_u64_le(sent);
                b.resize(STAMP_LEN + self.payload, b'x');
                Envelope::new(
                    format!("aggregate-{aggregate}"),
                    "Tick",
                    version,
                    b.freeze(),
                )
                .map(|e| e.to_message(topic))
                .unwrap_or_else(|e| panic!("load builds valid envelopes: {e}"))
            }
        }
    }

    /// What sender `t` publishes, in order; the stalled aggregate is `usize::MAX`.
    fn plan(self, t: usize) -> impl Iterator<Item = (usize, u64)> {
        let stalled = match self.stall {
            Some(stall) if t == 0 => stall.messages,
            _ => 0,
        };
        (1..=stalled)
            .map(|version| (usize::MAX, version))
            .chain((1..=self.versions).flat_map(move |version| {
                (t..self.aggregates)
                    .step_by(self.topics)
                    .map(move |aggregate| (aggregate, version))
            }))
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a handler reads from a message.
struct Decoded {
    aggregate: usize,
    version: u64,
    sent_ns: u64,
}

/// Decodes a message the way a handler of `shape` would.
fn decode(shape: Shape, message: &Message) -> Result<Decoded, BoxError> {
    match shape {
        Shape::Raw | Shape::Unkeyed => {
            let mut p: &[u8] = message.payload();
            if p.len() < STAMP_LEN + ID_LEN {
                return Err("short payload".into());
            }
            let sent_ns = p.get_u64_le();
            let version = p.get_u64_le();
            Ok(Decoded {
                aggregate: p.get_u32_le() as usize,
                version,
                sent_ns,
            })
        }
        Shape::Envelope => {
            let env = Envelope::from_message(message)?;
            let aggregate = env
                .aggregate_id
                .as_str()
                .strip_prefix("aggregate-")
                .and_then(|i| i.parse().ok())
                .ok_or("unexpected aggregate id")?;
            let mut p: &[u8] = &env.payload;
            if p.len() < STAMP_LEN {
                return Err("short payload".into());
            }
            Ok(Decoded {
                aggregate,
                version: env.event_version.get(),
                sent_ns: p.get_u64_le(),
            })
        }
    }
}

/// One bit per message of the load: which arrived, how many twice.
struct Seen {
    bits: Box<[AtomicU64]>,
    distinct: AtomicU64,
    duplicates: AtomicU64,
}

impl Seen {
    fn new(messages: u64) -> Self {
        Seen {
            bits: (0..messages.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            distinct: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// Marks message `index`; returns the distinct messages seen so far if it is new.
    fn mark(&self, index: u64) -> Option<u64> {
        let bit = 1 << (index % 64);
        if self.bits[(index / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.distinct.fetch_add(1, Ordering::AcqRel) + 1)
    }
}

/// What handlers record into; allocated before the start snapshot.
struct Recorder {
    load: Load,
    epoch: Instant,
    seen: Seen,
    order: Option<VersionTracker>,
    e2e: Histogram,
    /// Publish latency, one histogram per sender (no contention), merged into the last.
    publish: Vec<Histogram>,
    done: Notify,
    finished_at: Mutex<Option<Instant>>,
}

impl Recorder {
    fn new(load: Load, epoch: Instant) -> Self {
        Recorder {
            load,
            epoch,
            seen: Seen::new(load.messages()),
            order: load
                .shape
                .keyed()
                .then(|| VersionTracker::new(load.aggregates)),
            e2e: Histogram::new(),
            publish: (0..=load.topics).map(|_| Histogram::new()).collect(),
            done: Notify::new(),
            finished_at: Mutex::new(None),
        }
    }

    /// The handler's work for one delivery: [`Recorder::observe`], or a sleep for a message
    /// of the stalled aggregate. The recording happens before the future is returned, so the
    /// future holds nothing of the recorder (no reference count per message).
    fn handle(&self, message: &Message) -> impl Future<Output = Result<(), BoxError>> + use<> {
        let stall = self
            .load
            .stall
            .filter(|_| message.key().is_some_and(|k| k.as_str() == STALLED));
        let handled = match stall {
            Some(_) => Ok(()),
            None => self.observe(message),
        };
        async move {
            if let Some(stall) = stall {
                tokio::time::sleep(stall.sleep).await;
            }
            handled
        }
    }

    /// Records one delivery of the load.
    fn observe(&self, message: &Message) -> Result<(), BoxError> {
        let d = decode(self.load.shape, message)?;
        self.e2e
            .record_ns(nanos_since(self.epoch).saturating_sub(d.sent_ns));
        if d.aggregate >= self.load.aggregates || d.version == 0 || d.version > self.load.versions {
            return Err("a message this load never sent".into());
        }
        if let Some(order) = &self.order {
            order.observe(d.aggregate, d.version);
        }
        let index = d.aggregate as u64 * self.load.versions + (d.version - 1);
        if self.seen.mark(index) == Some(self.load.messages()) {
            *self
                .finished_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            self.done.notify_one();
        }
        Ok(())
    }

    fn distinct(&self) -> u64 {
        self.seen.distinct.load(Ordering::Acquire)
    }
    fn duplicates(&self) -> u64 {
        self.seen.duplicates.load(Ordering::Acquire)
    }
    fn finished_at(&self) -> Option<Instant> {
        *lock(&self.finished_at)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// What ran.
    pub label: String,
    /// The load.
    pub load: Load,
    /// Messages published (publish returned `Ok`).
    pub published: u64,
    /// Deliveries received (duplicates included).
    pub received: u64,
    /// Published messages never received.
    pub lost: u64,
    /// Deliveries of a message already received.
    pub duplicates: u64,
    /// Deliveries whose version was not greater than the last one seen for their aggregate
    /// (duplicates of keyed messages included); 0 when not checked (see `ordered`).
    pub order_violations: u64,
    /// Whether order was checked (keyed shapes).
    pub ordered: bool,
    /// Every message received before the deadline.
    pub completed: bool,
    /// First publish to last receipt (or to the deadline).
    pub elapsed: Duration,
    /// First publish to the last publish returning.
    pub publish_elapsed: Duration,
    /// Publish latency (call to return).
    pub publish_latency: Latency,
    /// End-to-end latency (send timestamp to the handler reading it), per delivery.
    pub e2e_latency: Latency,
    /// Tasks, threads, fds and heap at start, peak and after close.
    pub usage: Usage,
    /// Tasks, threads and heap over the run.
    pub timeline: Timeline,
    /// Dispatcher counters at the end (bus runs only).
    pub dispatcher: Option<DispatcherStats>,
    /// Failed publishes (a sender stops at its first failure).
    pub errors: Vec<String>,
}

impl Report {
    /// Received messages per second, first publish to last receipt.
    pub fn throughput(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Published messages per second, first publish to the last publish returning.
    pub fn send_throughput(&self) -> f64 {
        self.published as f64 / self.publish_elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one sender did (its latencies are in the recorder).
#[derive(Default)]
struct Sent {
    count: u64,
    last: Option<Instant>,
    error: Option<String>,
}

/// Everything a run allocates for the harness, before its start snapshot; kept until after
/// the after-close snapshot, so the heap figures are the bus's alone.
struct Prepared {
    recorder: Arc<Recorder>,
    topics: Vec<String>,
}

fn prepare(load: Load) -> Prepared {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    assert!(
        load.topics > 0 && load.aggregates >= load.topics,
        "a load needs topics and at least one aggregate per topic"
    );
    Prepared {
        recorder: Arc::new(Recorder::new(load, Instant::now())),
        topics: (0..load.topics)
            .map(|t| format!("load-{}-{run}-{t}", std::process::id()))
            .collect(),
    }
}

/// Joins the senders: total published, merged latency, when the last publish returned, errors.
/// One sender: publishes topic `t`'s part of `load`, in order, through `send`, timing each
/// call; the bus and the raw baseline share it, so both do the same work around the send.
async fn send_plan(
    load: Load,
    t: usize,
    topic: String,
    recorder: Arc<Recorder>,
    mut send: impl AsyncFnMut(Message) -> Result<(), String>,
) -> Sent {
    let (mut sent, latency) = (Sent::default(), &recorder.publish[t]);
    for (aggregate, version) in load.plan(t) {
        let message = load.message(&topic, aggregate, version, recorder.epoch);
        let at = Instant::now();
        if let Err(e) = send(message).await {
            sent.error = Some(format!("sending on {topic} failed: {e}"));
            break;
        }
        let now = Instant::now();
        latency.record(now - at);
        // The stalled aggregate is outside the load's figures (see `Stall`).
        sent.count += u64::from(aggregate != usize::MAX);
        sent.last = Some(now);
    }
    sent
}

async fn join_senders(
    recorder: &Recorder,
    senders: Vec<tokio::task::JoinHandle<Sent>>,
    started: Instant,
) -> (u64, Latency, Duration, Vec<String>) {
    let (mut published, mut last, mut errors) = (0, started, Vec::new());
    for s in senders {
        match s.await {
            Ok(sent) => {
                published += sent.count;
                last = last.max(sent.last.unwrap_or(started));
                errors.extend(sent.error);
            }
            Err(e) => errors.push(format!("sender panicked: {e}")),
        }
    }
    let (all, senders) = recorder
        .publish
        .split_last()
        .unwrap_or_else(|| unreachable!("one histogram per sender and one for all"));
    senders.iter().for_each(|h| all.merge(h));
    (published, all.summary(), last - started, errors)
}

fn report(
    label: &str,
    recorder: &Recorder,
    sampler: Sampler,
    started: Instant,
    finished: Option<Instant>,
    sent: (u64, Latency, Duration, Vec<String>),
    dispatcher: Option<DispatcherStats>,
) -> Report {
    let (published, publish_latency, publish_elapsed, errors) = sent;
    let distinct = recorder.distinct();
    let duplicates = recorder.duplicates();
    Report {
        label: label.to_owned(),
        load: recorder.load,
        published,
        received: distinct + duplicates,
        lost: published.saturating_sub(distinct),
        duplicates,
        order_violations: recorder
            .order
            .as_ref()
            .map_or(0, VersionTracker::violations),
        ordered: recorder.order.is_some(),
        completed: finished.is_some(),
        elapsed: finished.unwrap_or(started + recorder.load.deadline) - started,
        publish_elapsed,
        publish_latency,
        e2e_latency: recorder.e2e.summary(),
        usage: sampler.usage,
        timeline: sampler.timeline,
        dispatcher,
        errors,
    }
}

/// Runs `load` through a bus built by `build` (usage is measured from before it is built, so a
/// transport's connection and threads count, to after it is closed). One subscription per
/// topic, one publishing task per topic.
pub async fn run_bus<F, Fut>(label: &str, load: Load, build: F) -> Report
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = EventBus>,
{
    let Prepared { recorder, topics } = prepare(load);
    let sampling = Sampling::start(Sampler::begin(), label, &recorder);
    let bus = build().await;
    let mut subs = Vec::new();
    for topic in &topics {
        let recorder = Arc::clone(&recorder);
        let handler = handler_fn(move |d: Delivery| recorder.handle(d.message()));
        match bus.subscribe(topic, "load", handler).await {
            Ok(sub) => subs.push(sub),
            Err(e) => panic!("subscribe failed: {e}"),
        }
    }
    sampling.mark(|t| &mut t.publishing_us);

    let started = Instant::now();
    let senders: Vec<_> = topics
        .iter()
        .cloned()
        .enumerate()
        .map(|(t, topic)| {
            let bus = bus.clone();
            let recorder = Arc::clone(&recorder);
            tokio::spawn(send_plan(load, t, topic, recorder, async move |m| {
                bus.publish(m).await.map_err(|e| e.to_string())
            }))
        })
        .collect();
    let finished = sampling.wait(&recorder).await;
    let sent = join_senders(&recorder, senders, started).await;
    let dispatcher = bus.stats();
    sampling.mark(|t| &mut t.closing_us);
    for sub in subs {
        sub.close().await;
    }
    if let Err(e) = bus.close().await {
        panic!("close failed: {e}");
    }
    drop(bus);
    let mut sampler = sampling.stop();
    sampler.finish().await;
    report(
        label,
        &recorder,
        sampler,
        started,
        finished,
        sent,
        Some(dispatcher),
    )
}

/// The baseline: the same messages and handler work through one bounded `tokio::sync::mpsc`
/// (capacity 1024) per topic, each drained by one task calling the handler in a loop.
pub async fn run_raw_mpsc(label: &str, load: Load) -> Report {
    let Prepared { recorder, topics } = prepare(load);
    let sampling = Sampling::start(Sampler::begin(), label, &recorder);
    let mut consumers = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..load.topics {
        let (tx, mut rx) = mpsc::channel::<Arc<Message>>(1024);
        channels.push(tx);
        let recorder = Arc::clone(&recorder);
        consumers.push(tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                if let Err(e) = recorder.handle(&message).await {
                    panic!("raw handler failed: {e}");
                }
            }
        }));
    }
    sampling.mark(|t| &mut t.publishing_us);

    let started = Instant::now();
    let senders: Vec<_> = topics
        .iter()
        .cloned()
        .zip(channels)
        .enumerate()
        .map(|(t, (topic, tx))| {
            let recorder = Arc::clone(&recorder);
            tokio::spawn(send_plan(load, t, topic, recorder, async move |m| {
                tx.send(Arc::new(m))
                    .await
                    .map_err(|_| "the raw consumer is gone".to_owned())
            }))
        })
        .collect();
    let finished = sampling.wait(&recorder).await;
    let sent = join_senders(&recorder, senders, started).await;
    sampling.mark(|t| &mut t.closing_us);
    for c in consumers {
        let _ = c.await;
    }
    let mut sampler = sampling.stop();
    sampler.finish().await;
    report(label, &recorder, sampler, started, finished, sent, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_aggregate_is_handled_and_left_out_of_the_figures() {
        let load = Load {
            topics: 2,
            aggregates: 10,
            versions: 5,
            payload: 16,
            shape: Shape::Envelope,
            deadline: Duration::from_secs(30),
            progress: None,
            stall: Some(Stall {
                messages: 3,
                sleep: Duration::from_millis(10),
            }),
        };
        let report = crate::runtime().block_on(run_bus("stall", load, || async {
            EventBus::builder(eventbus_memory::MemoryTransport::new()).build()
        }));
        // The figures count the other aggregates only.
        assert!(report.completed, "{:?}", report.errors);
        assert_eq!((report.published, report.received), (50, 50));
        assert_eq!(
            (report.lost, report.duplicates, report.order_violations),
            (0, 0, 0)
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        // A stalled message recorded as one of the load's would not decode, and its handler
        // would fail it at once (published first, it is handled long before the last other).
        let stats = report.dispatcher.expect("the bus's stats");
        assert_eq!((stats.failed, stats.retried, stats.panicked), (0, 0, 0));
    }

    #[test]
    fn seen_counts_duplicates() {
        let s = Seen::new(130);
        assert_eq!(s.mark(0), Some(1));
        assert_eq!(s.mark(129), Some(2));
        assert_eq!(s.mark(0), None);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn plans_cover_every_message_in_order() {
        let load = Load {
            topics: 5,
            aggregates: 12,
            versions: 3,
            payload: 100,
            shape: Shape::Envelope,
            deadline: Duration::from_secs(1),
            progress: None,
            stall: None,
        };
        let mut all: Vec<_> = (0..5).flat_map(|t| load.plan(t)).collect();
        assert_eq!(all.len() as u64, load.messages());
        // Per aggregate, versions in order within its sender.
        for t in 0..5 {
            let mut last = [0; 12];
            for (a, v) in load.plan(t) {
                assert_eq!(a % 5, t);
                assert!(v > last[a]);
                last[a] = v;
            }
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len() as u64, load.messages());
    }

    #[test]
    fn messages_decode_with_their_stamp() {
        let epoch = Instant::now();
        for shape in [Shape::Raw, Shape::Unkeyed, Shape::Envelope] {
            let load = Load {
                topics: 1,
                aggregates: 8,
                versions: 9,
                payload: 100,
                shape,
                deadline: Duration::from_secs(1),
                progress: None,
                stall: None,
            };
            let m = load.message("t", 7, 9, epoch);
            assert_eq!(m.key().is_some(), shape.keyed());
            if shape != Shape::Envelope {
                assert_eq!(m.payload().len(), STAMP_LEN + 100);
            }
            let d = decode(shape, &m).unwrap();
            assert_eq!((d.aggregate, d.version), (7, 9));
            assert!(d.sent_ns <= nanos_since(epoch));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_baseline_counts_everything() {
        for shape in [Shape::Unkeyed, Shape::Envelope] {
            let load = Load {
                topics: 5,
                aggregates: if shape.keyed() { 50 } else { 5 },
                versions: if shape.keyed() { 20 } else { 200 },
                payload: 100,
                shape,
                deadline: Duration::from_secs(30),
                progress: None,
                stall: None,
            };
            let r = run_raw_mpsc("raw", load).await;
            assert!(r.completed);
            assert_eq!((r.published, r.received), (1000, 1000));
            assert_eq!((r.lost, r.duplicates, r.order_violations), (0, 0, 0));
            assert_eq!(r.ordered, shape.keyed());
            assert_eq!(r.e2e_latency.count, 1000);
            assert_eq!(r.publish_latency.count, 1000);
            assert!(r.timeline.samples.len() >= 4);
            assert!(r.errors.is_empty());
        }
    }
}
