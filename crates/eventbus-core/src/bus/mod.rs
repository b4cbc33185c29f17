//! The bus users hold: one transport, one dispatcher, any number of subscriptions.

mod builder;
mod consume;
mod options;
mod publish;
mod subscribed;
pub(crate) mod subscription;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use builder::EventBusBuilder;
pub use options::{BusOptions, SubscribeOptions};
use publish::Outlet;
use subscribed::Subscribed;
use subscription::SubscribeRequest;
pub use subscription::Subscription;

use crate::backlog::{self, BacklogMonitor, BacklogOptions};
use crate::dead_letter::DeadLetter;
use crate::dispatch::{Dispatcher, DispatcherStats, Route};
use crate::envelope::Envelope;
use crate::error::{BoxError, Error, Result};
use crate::handler::{Delivery, Handler};
use crate::health::{Health, SubscriptionHealth};
use crate::message::Message;
use crate::telemetry;
use crate::transport::{Capabilities, Transport};
use crate::validate::{validate_group, validate_topic};

/// The event bus: publish messages and envelopes, subscribe handlers, close.
///
/// Cheap to clone; clones share everything. Every subscription feeds the bus's one
/// [`Dispatcher`], so the bounds hold for the bus as a whole.
///
/// # Closing
/// [`close`](Self::close) stops intake everywhere, lets running handlers finish for up to
/// [`drain_timeout`](BusOptions::drain_timeout), then drops the rest (their messages stay
/// unacked, for redelivery), closes the transport, and returns once every task the bus
/// started has ended.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    outlet: Outlet,
    /// Open subscriptions, for health and backlog reports (pruned as they end).
    subscriptions: Mutex<Vec<Registered>>,
    dispatcher: Dispatcher,
    options: BusOptions,
    tracker: TaskTracker,
    closing: CancellationToken,
    abort: CancellationToken,
    /// Set by the first `close`, before it cancels `closing`.
    close_started: AtomicBool,
    closed: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle went without `close()`: stop intake so subscriptions drain and every
        // task the bus started ends on its own (without the drain deadline; call `close()` for
        // that and for the transport's close).
        self.closing.cancel();
        self.dispatcher.close();
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("transport", &self.inner.transport.name())
            .field("options", &self.inner.options)
            .field("closing", &self.inner.closing.is_cancelled())
            .finish()
    }
}

impl EventBus {
    /// A bus over `transport` with default options.
    pub fn new<T: Transport>(transport: T) -> Self {
        Self::builder(transport).build()
    }

    /// A builder over `transport`.
    pub fn builder<T: Transport>(transport: T) -> EventBusBuilder<T> {
        EventBusBuilder {
            transport,
            options: BusOptions::default(),
        }
    }

    /// The transport's name.
    pub fn transport_name(&self) -> &'static str {
        self.inner.transport.name()
    }
    /// What the transport can do.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.transport.capabilities()
    }
    /// The options in force.
    pub fn options(&self) -> &BusOptions {
        &self.inner.options
    }
    /// The dispatcher's counters.
    pub fn stats(&self) -> DispatcherStats {
        self.inner.dispatcher.stats()
    }
    /// Messages published to a dead-letter topic (and then acked) since the bus started.
    pub fn dead_lettered(&self) -> u64 {
        self.inner
            .outlet
            .stats
            .dead_lettered
            .load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<()> {
        // The flag `close` sets before it cancels `closing` (the only other canceller is the
        // last handle's drop): the same answer as the token's, without the lock the token
        // takes to answer, which every publish of every task would share.
        if self.inner.close_started.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Publishes a message; returns once the transport has it (the broker's ack, where there is
    /// one). Invalid topics or keys and oversized messages fail before anything is sent.
    pub async fn publish(&self, message: Message) -> Result<()> {
        self.check_open()?;
        self.inner.outlet.publish(message).await
    }

    /// Publishes an envelope on `topic`, keyed by its aggregate id, in the topic's
    /// [`Codec`](crate::Codec) ([`BusOptions::codec_for`]).
    pub async fn publish_envelope(&self, topic: &str, envelope: &Envelope) -> Result<()> {
        let message = self
            .inner
            .options
            .codec_for(topic)
            .encode(envelope, topic)?;
        self.publish(message).await
    }

    /// Publishes a typed event as version `aggregate_version` of `aggregate_id` (see
    /// [`Event`](crate::Event)).
    pub async fn publish_event<E: crate::Event>(
        &self,
        topic: &str,
        aggregate_id: &str,
        aggregate_version: u64,
        event: &E,
    ) -> Result<()> {
        let envelope = Envelope::of(aggregate_id, aggregate_version, event)?;
        self.publish_envelope(topic, &envelope).await
    }

    /// Publishes messages in order; returns once the transport has all of them. Every message
    /// is validated first: if one is invalid, none is sent.
    pub async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        self.inner.outlet.publish_batch(messages).await
    }

    /// Subscribes `handler` to `topic` as a member of `group`, with the bus's retry policy.
    ///
    /// ```
    /// # use eventbus_core::*;
    /// # async fn demo(bus: EventBus) -> Result<()> {
    /// let sub = bus
    ///     .subscribe("orders", "billing", handler_fn(|d: Delivery| async move {
    ///         println!("{:?}", d.message().key());
    ///         Ok::<_, BoxError>(())
    ///     }))
    ///     .await?;
    /// sub.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<H>(&self, topic: &str, group: &str, handler: H) -> Result<Subscription>
    where
        H: Handler,
    {
        self.subscribe_with(topic, group, SubscribeOptions::new(), handler)
            .await
    }

    /// Like [`subscribe`](Self::subscribe), with per-subscription options (retry policy,
    /// dead-lettering).
    pub async fn subscribe_with<H>(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription>
    where
        H: Handler,
    {
        self.check_open()?;
        validate_topic(topic)?;
        validate_group(group)?;
        let dead_letter = options
            .dead_letter
            .as_ref()
            .unwrap_or(&self.inner.options.dead_letter)
            .topic_for(topic)?;
        let route = Route::builder(topic, group, handler)
            .retry(options.retry.unwrap_or(self.inner.options.retry))
            .codec(self.inner.options.codec_for(topic))
            .closing(self.inner.closing.child_token())
            .abort(self.inner.abort.child_token())
            .build();
        let subscribed = Arc::new(Subscribed::new(Arc::new(route), dead_letter));
        let request = SubscribeRequest {
            subscribed: Arc::clone(&subscribed),
            redelivery_delay: options
                .redelivery_delay
                .unwrap_or(self.inner.options.redelivery_delay),
            dispatcher: self.inner.dispatcher.clone(),
            tracker: self.inner.tracker.clone(),
            outlet: self.inner.outlet.clone(),
        };
        let started = self.inner.transport.subscribe(request).await?;
        self.inner.register(&subscribed, &started.0);
        Ok(Subscription {
            route: Arc::clone(&subscribed.route),
            ended: started.0,
            drain_timeout: self.inner.options.drain_timeout,
            detached: false,
        })
    }

    /// Sends the letters of a dead-letter topic back to the topics they came from (see
    /// [`dead_letter`](crate::dead_letter)), as a subscription of `group` on
    /// `dead_letter_topic`: each letter is acked once its original is republished (with the
    /// same key, payload and headers, a fresh id and
    /// [`REPLAYED_FROM`](crate::dead_letter::header::REPLAYED_FROM) set). A message that is not
    /// a letter fails for good (it is left to the transport's redelivery, never republished).
    /// Close the subscription when the topic's [`lag`](Self::lag) reaches zero.
    pub async fn replay_dead_letters(
        &self,
        dead_letter_topic: &str,
        group: &str,
    ) -> Result<Subscription> {
        // The transport, not the bus: a handler holding the bus would keep it alive.
        let outlet = self.inner.outlet.clone();
        let replay = tower::service_fn(move |d: Delivery| {
            let outlet = outlet.clone();
            async move {
                let original = crate::dead_letter::original_of(d.message()).ok_or_else(|| {
                    crate::Permanent::new(format!(
                        "message {} on {} is not a dead letter (no {} header)",
                        d.message().id(),
                        d.message().topic(),
                        crate::dead_letter::header::TOPIC
                    ))
                })?;
                outlet.publish(original).await.map_err(BoxError::from)
            }
        });
        // A message there that is not a letter is left to the transport, not dead-lettered
        // once more.
        let options = SubscribeOptions::new().dead_letter(DeadLetter::off());
        self.subscribe_with(dead_letter_topic, group, options, replay)
            .await
    }

    /// Messages of `topic` that `group` has not acked yet (its consumer lag), from the broker
    /// (see [`Transport::lag`]: a message acked a moment ago may still count).
    pub async fn lag(&self, topic: &str, group: &str) -> Result<u64> {
        validate_topic(topic)?;
        validate_group(group)?;
        self.inner.transport.lag(topic, group).await
    }

    /// The bus's health: the transport's connection (state, reconnects, last error), every
    /// open subscription (consuming or not, lag, last error) and the dispatcher's counters.
    /// Cheap enough for a readiness probe: no I/O but one lag query per subscription, all at
    /// once, each bounded by one second (a broker that does not answer shows as `lag: None`).
    pub async fn health(&self) -> Health {
        let subscriptions = self
            .inner
            .lags(PROBE_DEADLINE)
            .await
            .into_iter()
            .map(|(subscribed, running, lag)| {
                let route = &subscribed.route;
                let mut retrying = route.retrying();
                let retrying_total = retrying.len();
                retrying.truncate(crate::health::MAX_RETRYING_LISTED);
                SubscriptionHealth {
                    topic: route.topic().to_owned(),
                    group: route.group().to_owned(),
                    running,
                    lag,
                    last_error: subscribed.last_error(),
                    retrying,
                    retrying_total,
                }
            })
            .collect();
        Health {
            transport: self.inner.transport.name(),
            connection: self.inner.transport.connection(),
            closed: self.is_closed(),
            subscriptions,
            dispatcher: self.stats(),
            dead_lettered: self.dead_lettered(),
        }
    }

    /// Samples consumer lag and the publisher's backlog every `options.interval` and yields
    /// each threshold crossing (see [`backlog`]). The monitor ends when the bus closes or the
    /// stream is dropped.
    pub fn monitor_backlog(&self, options: BacklogOptions) -> BacklogMonitor {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Weak: the monitor must not keep a dropped bus alive.
        let inner = Arc::downgrade(&self.inner);
        let closing = self.inner.closing.clone();
        let monitor = async move {
            let mut crossings = backlog::Crossings::default();
            let mut ticks = tokio::time::interval(options.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if tx.is_closed() {
                    return;
                }
                let Some(bus) = inner.upgrade() else { return };
                let sample = bus
                    .sample_backlog(options.interval.max(PROBE_DEADLINE))
                    .await;
                drop(bus);
                for event in crossings.update(&options, sample) {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        };
        self.inner.tracker.spawn(async move {
            tokio::select! {
                () = closing.cancelled() => {}
                () = monitor => {}
            }
        });
        BacklogMonitor { rx }
    }

    /// Whether closing has started.
    pub fn is_closed(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// Closes the bus (see [Closing](Self#closing)). Idempotent: concurrent and later calls
    /// wait for the first to finish and return `Ok`.
    pub async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.close_started.swap(true, Ordering::AcqRel) {
            inner.closed.cancelled().await;
            return Ok(());
        }
        inner.closing.cancel();
        inner.dispatcher.close();
        inner.tracker.close();
        if tokio::time::timeout(inner.options.drain_timeout, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                after = ?inner.options.drain_timeout,
                "handlers still running at the drain deadline are dropped; their messages stay unacked"
            );
            inner.abort.cancel();
            inner.tracker.wait().await;
        }
        inner.dispatcher.shutdown().await;
        let result = inner.transport.close().await;
        inner.closed.cancel();
        result
    }
}

/// A subscription as the bus's reports see it.
struct Registered {
    subscribed: std::sync::Weak<Subscribed>,
    ended: CancellationToken,
}

impl Inner {
    fn register(&self, subscribed: &Arc<Subscribed>, ended: &CancellationToken) {
        let mut subs = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| !s.ended.is_cancelled());
        subs.push(Registered {
            subscribed: Arc::downgrade(subscribed),
            ended: ended.clone(),
        });
    }

    /// Open subscriptions: (subscription, still consuming).
    fn subscriptions(&self) -> Vec<(Arc<Subscribed>, bool)> {
        let mut subs = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| !s.ended.is_cancelled() && s.subscribed.strong_count() > 0);
        subs.iter()
            .filter_map(|s| Some((s.subscribed.upgrade()?, !s.ended.is_cancelled())))
            .collect()
    }

    /// Lag of each open subscription, each query bounded by `deadline` (`None`: no answer).
    async fn lags(&self, deadline: Duration) -> Vec<(Arc<Subscribed>, bool, Option<u64>)> {
        let subs = self.subscriptions();
        let lags = futures::future::join_all(subs.iter().map(|(subscribed, _)| {
            let route = &subscribed.route;
            let lag = self.transport.lag(route.topic(), route.group());
            async move {
                match tokio::time::timeout(deadline, lag).await {
                    Ok(Ok(lag)) => Some(lag),
                    _ => None,
                }
            }
        }))
        .await;
        subs.into_iter()
            .zip(lags)
            .map(|((subscribed, running), lag)| (subscribed, running, lag))
            .collect()
    }

    /// One backlog sample, with the gauges it sets.
    async fn sample_backlog(&self, deadline: Duration) -> backlog::Sample {
        let stats = self.dispatcher.stats();
        metrics::gauge!(telemetry::names::IN_FLIGHT).set(stats.in_flight as f64);
        metrics::gauge!(telemetry::names::BUFFERED_MESSAGES).set(stats.buffered as f64);
        metrics::gauge!(telemetry::names::BUFFERED_BYTES).set(stats.buffered_bytes as f64);
        let publishing = &self.outlet.stats;
        let queued = publishing.queued.load(Ordering::Relaxed);
        let slowest = Duration::from_micros(publishing.slowest_us.swap(0, Ordering::Relaxed));
        metrics::gauge!(telemetry::names::PUBLISH_BACKLOG).set(queued as f64);
        let mut lags = Vec::new();
        for (subscribed, _, lag) in self.lags(deadline).await {
            let Some(lag) = lag else { continue };
            let route = &subscribed.route;
            metrics::gauge!(
                telemetry::names::CONSUMER_LAG,
                "topic" => route.topic().to_owned(),
                "group" => route.group().to_owned()
            )
            .set(lag as f64);
            lags.push((route.topic().to_owned(), route.group().to_owned(), lag));
        }
        backlog::Sample {
            lags,
            queued,
            slowest,
        }
    }
}

/// How long a health probe waits for the broker's answer about one subscription's lag.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
