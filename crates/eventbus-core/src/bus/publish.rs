//! The one publish path: user publishes, dead letters and replays all go through it, so each
//! is validated, bounded by the publish timeout, traced and counted the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tracing::Instrument;

use crate::clock::Stamp;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::propagation;
use crate::telemetry::PublishMetrics;
use crate::transport::publisher::{PublishFuture, Publisher};
use crate::validate::{Limits, validate_header, validate_key, validate_topic};

#[derive(Clone)]
pub(crate) struct Outlet {
    /// The transport, as a publisher.
    pub(crate) transport: Arc<dyn Publisher>,
    /// Its name, for errors and reports.
    pub(crate) transport_name: &'static str,
    pub(crate) limits: Limits,
    pub(crate) timeout: Duration,
    pub(crate) stats: Arc<PublishStats>,
}

/// What the publisher backlog monitor reads.
#[derive(Default)]
pub(crate) struct PublishStats {
    /// Publish calls waiting for the broker now.
    pub(crate) queued: AtomicUsize,
    /// The slowest publish since the monitor last looked, in microseconds.
    pub(crate) slowest_us: AtomicU64,
    /// Letters published to dead-letter topics (their originals then acked).
    pub(crate) dead_lettered: AtomicU64,
    /// The topics published to, each validated when first seen, with its metric handles.
    topics: RwLock<HashMap<String, Arc<PublishMetrics>, foldhash::fast::RandomState>>,
}

impl PublishStats {
    /// The metric handles of `topic`; the first time it is seen, its name is validated. A
    /// topic is in the map only if valid, so its name is checked once, not on every publish.
    fn topic(&self, topic: &str) -> Result<Arc<PublishMetrics>> {
        if let Some(m) = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
        {
            return Ok(Arc::clone(m));
        }
        validate_topic(topic)?;
        let mut all = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(
            all.entry(topic.to_owned())
                .or_insert_with(|| Arc::new(PublishMetrics::new(topic))),
        ))
    }
}

/// Times a publish and records how it went.
struct InFlight<'a> {
    stats: &'a PublishStats,
    started: Stamp,
}

impl<'a> InFlight<'a> {
    fn start(stats: &'a PublishStats) -> Self {
        InFlight {
            stats,
            started: Stamp::now(),
        }
    }
    fn finish(self, metrics: &PublishMetrics, messages: u64, result: &Result<()>) {
        let took = self.started.elapsed();
        metrics.duration.record(took);
        match result {
            Ok(()) => metrics.published.increment(messages),
            Err(_) => metrics.failed.increment(messages),
        }
        // Read first: every publishing task shares this counter, and it only rarely grows.
        let took_us = took.as_micros() as u64;
        if took_us > self.stats.slowest_us.load(Ordering::Relaxed) {
            self.stats.slowest_us.fetch_max(took_us, Ordering::Relaxed);
        }
    }
}

/// Counts a publish in [`PublishStats::queued`] while it waits for the broker.
struct Queued<'a>(&'a PublishStats);

impl<'a> Queued<'a> {
    fn new(stats: &'a PublishStats) -> Self {
        stats.queued.fetch_add(1, Ordering::Relaxed);
        Queued(stats)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet")
            .field("transport", &self.transport_name)
            .finish_non_exhaustive()
    }
}

impl Outlet {
    /// Checks `message` for publishing; returns its topic's metric handles.
    fn validate(&self, message: &Message) -> Result<Arc<PublishMetrics>> {
        let topic = self.stats.topic(message.topic())?;
        self.check(message)?;
        Ok(topic)
    }

    /// Checks what [`validate`](Self::validate) checks besides the topic.
    fn check(&self, message: &Message) -> Result<()> {
        if let Some(key) = message.key() {
            validate_key(key.as_str())?;
        }
        for (name, value) in message.headers().iter() {
            validate_header(name, value)?;
        }
        self.limits.check_size(message.encoded_len())
    }

    /// Waits for `publish`, which did not finish on the spot: counted as queued meanwhile, and
    /// bounded by the publish timeout.
    async fn wait(&self, mut publish: PublishFuture<'_>) -> Result<()> {
        let _queued = Queued::new(&self.stats);
        let after = self.timeout;
        // Many finish on their first poll (the memory broker's batches, a pipelined client's
        // sends): only arm a timer for those that wait.
        if let Some(done) = futures::FutureExt::now_or_never(&mut publish) {
            return done;
        }
        tokio::time::timeout(after, publish)
            .await
            .map_err(|_| Error::Timeout {
                operation: "publish",
                after,
            })?
    }

    pub(crate) async fn publish(&self, mut message: Message) -> Result<()> {
        let metrics = self.validate(&message)?;
        let span = tracing::info_span!(
            "eventbus.publish",
            topic = message.topic(),
            key = message.key().map(|k| k.as_str()),
            message_id = %message.id(),
        );
        propagation::inject(&span, &mut message);
        let publishing = InFlight::start(&self.stats);
        // The transport takes the message here, where it is, rather than moved into one more
        // future; most publishes then finish on the spot, and a result the transport had at
        // once is taken as it is, with no poll and no timeout (see also `wait`). The span is
        // entered around each step, and not at all when no subscriber records it.
        let mut publish = span.in_scope(|| self.transport.publish(message));
        let result = match publish.take_ready() {
            Some(result) => result,
            None if span.is_disabled() => self.wait(publish).await,
            None => self.wait(publish).instrument(span).await,
        };
        publishing.finish(&metrics, 1, &result);
        result
    }

    pub(crate) async fn publish_batch(&self, mut messages: Vec<Message>) -> Result<()> {
        // All checked before any is sent. A batch usually targets one topic; its figures are
        // counted on the first message's, and a topic is looked up once per run of it.
        let mut metrics = None;
        let mut checked: Option<&str> = None;
        for message in &messages {
            if checked != Some(message.topic()) {
                let topic = self.stats.topic(message.topic())?;
                metrics.get_or_insert(topic);
                checked = Some(message.topic());
            }
            self.check(message)?;
        }
        let (Some(metrics), Some(first)) = (metrics, messages.first()) else {
            return Ok(());
        };
        let span = tracing::info_span!(
            "eventbus.publish",
            topic = first.topic(),
            messages = messages.len(),
        );
        for message in &mut messages {
            propagation::inject(&span, message);
        }
        async {
            let n = messages.len() as u64;
            let publishing = InFlight::start(&self.stats);
            let mut publish = self.transport.publish_batch(messages);
            let result = match publish.take_ready() {
                Some(result) => result,
                None => self.wait(publish).await,
            };
            publishing.finish(&metrics, n, &result);
            result
        }
        .instrument(span)
        .await
    }
}
