//! Building an [`EventBus`]: its transport and options.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::publish::Outlet;
use super::{BusOptions, EventBus, Inner};
use crate::dead_letter::DeadLetter;
use crate::dispatch::Dispatcher;
use crate::retry::RetryPolicy;
use crate::transport::Transport;
use crate::validate::Limits;

/// Builds an [`EventBus`].
#[derive(Debug)]
#[must_use]
pub struct EventBusBuilder<T> {
    pub(super) transport: T,
    pub(super) options: BusOptions,
}

impl<T: Transport> EventBusBuilder<T> {
    /// Most handler calls running at once, over all subscriptions.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.options.dispatcher.max_in_flight = n;
        self
    }
    /// Most messages admitted to the dispatcher and not finished.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.options.dispatcher.max_buffered = n;
        self
    }
    /// Most messages one subscription may hold at once (see
    /// [`DispatcherConfig::max_buffered_per_subscription`](crate::DispatcherConfig::max_buffered_per_subscription)).
    pub fn max_buffered_per_subscription(mut self, n: usize) -> Self {
        self.options.dispatcher.max_buffered_per_subscription = Some(n);
        self
    }
    /// Admission stops while admitted messages hold this many bytes.
    pub fn max_buffered_bytes(mut self, n: usize) -> Self {
        self.options.dispatcher.max_buffered_bytes = n;
        self
    }
    /// Default retry policy of subscriptions.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.options.retry = retry;
        self
    }
    /// Where subscriptions send messages that failed for good, unless they say otherwise
    /// (default: `<topic>.dlq`; [`DeadLetter::off`] for none).
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.options.dead_letter = dead_letter;
        self
    }
    /// How long a message handed back to the transport as failed waits before it is
    /// delivered again (default 1 s).
    pub fn redelivery_delay(mut self, d: Duration) -> Self {
        self.options.redelivery_delay = d;
        self
    }
    /// Size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.options.limits = limits;
        self
    }
    /// How long closing waits for running handlers.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.options.drain_timeout = d;
        self
    }
    /// How long a publish may wait.
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.options.publish_timeout = d;
        self
    }
    /// How envelopes travel on topics without a codec of their own (default
    /// [`Codec::Headers`](crate::Codec::Headers)).
    pub fn codec(mut self, codec: crate::Codec) -> Self {
        self.options.codec = codec;
        self
    }
    /// How envelopes travel on `topic` ([`Codec::GoSdk`](crate::Codec::GoSdk) for a topic
    /// shared with services on the Go SDK).
    pub fn topic_codec(mut self, topic: impl Into<String>, codec: crate::Codec) -> Self {
        self.options.topic_codecs.insert(topic.into(), codec);
        self
    }
    /// All options at once.
    pub fn options(mut self, options: BusOptions) -> Self {
        self.options = options;
        self
    }

    /// Builds the bus. Call inside a tokio runtime: its tasks run there.
    pub fn build(self) -> EventBus {
        let closing = CancellationToken::new();
        let transport: Arc<dyn Transport> = Arc::new(self.transport);
        EventBus {
            inner: Arc::new(Inner {
                dispatcher: Dispatcher::new(self.options.dispatcher),
                outlet: Outlet {
                    transport: Arc::clone(&transport) as Arc<dyn crate::transport::Publisher>,
                    transport_name: transport.name(),
                    limits: self.options.limits,
                    timeout: self.options.publish_timeout,
                    stats: Arc::default(),
                },
                transport,
                subscriptions: Mutex::default(),
                options: self.options,
                tracker: TaskTracker::new(),
                abort: CancellationToken::new(),
                closing,
                close_started: AtomicBool::new(false),
                closed: CancellationToken::new(),
            }),
        }
    }
}
