//! What a bus and its subscriptions can be told: bounds, retries, dead letters, limits and
//! deadlines.

use std::collections::HashMap;
use std::time::Duration;

use crate::dead_letter::DeadLetter;
use crate::dispatch::DispatcherConfig;
use crate::envelope::Codec;
use crate::retry::RetryPolicy;
use crate::validate::Limits;

/// Options of an [`EventBus`](crate::EventBus).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BusOptions {
    /// Bounds of the shared dispatcher.
    pub dispatcher: DispatcherConfig,
    /// Default retry policy of subscriptions.
    pub retry: RetryPolicy,
    /// Where subscriptions send messages that failed for good (default: `<topic>.dlq`).
    pub dead_letter: DeadLetter,
    /// How long a message that failed for good and was handed back to the transport (no
    /// dead-letter topic) waits before it is delivered again (default 1 s).
    pub redelivery_delay: Duration,
    /// Size limits checked before publishing.
    pub limits: Limits,
    /// How long closing waits for running handlers before dropping them (default 30 s).
    pub drain_timeout: Duration,
    /// How long a publish may wait for the transport (default 30 s).
    pub publish_timeout: Duration,
    /// How envelopes travel on topics without their own codec (default [`Codec::Headers`]).
    pub codec: Codec,
    /// Codecs of single topics (a topic shared with services on the Go SDK:
    /// [`Codec::GoSdk`]).
    pub topic_codecs: HashMap<String, Codec>,
}

impl BusOptions {
    /// The codec of `topic`: its own, else the bus's.
    pub fn codec_for(&self, topic: &str) -> Codec {
        self.topic_codecs.get(topic).copied().unwrap_or(self.codec)
    }
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            dispatcher: DispatcherConfig::default(),
            retry: RetryPolicy::default(),
            dead_letter: DeadLetter::default(),
            redelivery_delay: Duration::from_secs(1),
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(30),
            codec: Codec::default(),
            topic_codecs: HashMap::new(),
        }
    }
}

/// Options of one subscription; what is not set comes from the bus's [`BusOptions`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Retry policy (default: the bus's).
    pub retry: Option<RetryPolicy>,
    /// Where messages go after their last attempt (default: the bus's, `<topic>.dlq` unless
    /// set otherwise; [`DeadLetter::off`] leaves them to the transport's redelivery).
    pub dead_letter: Option<DeadLetter>,
    /// Delay before a message handed back as failed is delivered again (default: the bus's).
    pub redelivery_delay: Option<Duration>,
}

impl SubscribeOptions {
    /// Everything from the bus.
    pub fn new() -> Self {
        Self::default()
    }
    /// Retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }
    /// Dead-letter messages that fail for good (see [`dead_letter`](crate::dead_letter)).
    pub fn dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = Some(dead_letter);
        self
    }
    /// Delay before a message handed back as failed is delivered again.
    pub fn redelivery_delay(mut self, d: Duration) -> Self {
        self.redelivery_delay = Some(d);
        self
    }
}
