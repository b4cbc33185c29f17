//! Backlog monitoring: consumer lag per subscription and the publisher's backlog, sampled at an
//! interval and reported when they cross their thresholds.
//!
//! Each sample also sets the `eventbus_consumer_lag`, `eventbus_in_flight`,
//! `eventbus_buffered_*` and `eventbus_publish_backlog` gauges (see
//! [`telemetry`](crate::telemetry)).
//!
//! ```
//! use std::time::Duration;
//! use eventbus_core::backlog::{BacklogOptions, BacklogEvent};
//! use futures::StreamExt;
//!
//! # async fn demo(bus: eventbus_core::EventBus) {
//! let options = BacklogOptions::default()
//!     .interval(Duration::from_secs(5))
//!     .lag_threshold(10_000);
//! let mut changes = bus.monitor_backlog(options.clone());
//! while let Some(change) = changes.next().await {
//!     if let BacklogEvent::ConsumerLag { topic, group, lag, above: true } = change {
//!         eprintln!("{group} is {lag} messages behind on {topic}");
//!     }
//! }
//! // A callback is a task over the stream:
//! tokio::spawn(bus.monitor_backlog(options).for_each(|change| async move {
//!     eprintln!("{change:?}");
//! }));
//! # }
//! ```
//!
//! The monitor runs as one task of the bus; it ends when the bus closes, or when its stream is
//! dropped.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

/// When and against what the backlog is sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BacklogOptions {
    /// Time between samples (default 5 s).
    pub interval: Duration,
    /// A subscription whose lag is above this is reported (default 1,000).
    pub lag_threshold: u64,
    /// Publishes waiting for the broker above this are reported (default 1,000).
    pub publish_backlog_threshold: usize,
    /// A publish slower than this within an interval is reported (default 1 s).
    pub publish_latency_threshold: Duration,
}

impl Default for BacklogOptions {
    fn default() -> Self {
        BacklogOptions {
            interval: Duration::from_secs(5),
            lag_threshold: 1_000,
            publish_backlog_threshold: 1_000,
            publish_latency_threshold: Duration::from_secs(1),
        }
    }
}

impl BacklogOptions {
    /// Time between samples.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d.max(Duration::from_millis(1));
        self
    }
    /// Consumer lag threshold.
    pub fn lag_threshold(mut self, n: u64) -> Self {
        self.lag_threshold = n;
        self
    }
    /// Publisher backlog threshold.
    pub fn publish_backlog_threshold(mut self, n: usize) -> Self {
        self.publish_backlog_threshold = n;
        self
    }
    /// Publish latency threshold.
    pub fn publish_latency_threshold(mut self, d: Duration) -> Self {
        self.publish_latency_threshold = d;
        self
    }
}

/// A backlog crossing its threshold, up (`above: true`) or back down.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BacklogEvent {
    /// A subscription's consumer lag.
    ConsumerLag {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The lag sampled.
        lag: u64,
        /// Whether it is above the threshold now.
        above: bool,
    },
    /// The publisher's backlog: publishes waiting for the broker, and the slowest publish
    /// since the last sample.
    PublisherBacklog {
        /// Publishes waiting now.
        queued: usize,
        /// The slowest publish in the interval.
        slowest: Duration,
        /// Whether either is above its threshold now.
        above: bool,
    },
}

/// A stream of [`BacklogEvent`]s, from [`EventBus::monitor_backlog`](crate::EventBus::monitor_backlog).
#[derive(Debug)]
pub struct BacklogMonitor {
    pub(crate) rx: mpsc::Receiver<BacklogEvent>,
}

impl Stream for BacklogMonitor {
    type Item = BacklogEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BacklogEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// What a sample saw.
pub(crate) struct Sample {
    pub(crate) lags: Vec<(String, String, u64)>,
    pub(crate) queued: usize,
    pub(crate) slowest: Duration,
}

/// Turns samples into threshold crossings.
#[derive(Default)]
pub(crate) struct Crossings {
    above: HashMap<(String, String), bool>,
    publisher_above: bool,
}

impl Crossings {
    pub(crate) fn update(&mut self, options: &BacklogOptions, sample: Sample) -> Vec<BacklogEvent> {
        let mut events = Vec::new();
        let mut seen = HashMap::with_capacity(sample.lags.len());
        for (topic, group, lag) in sample.lags {
            let above = lag > options.lag_threshold;
            let key = (topic, group);
            let was = self.above.get(&key).copied().unwrap_or(false);
            if above != was {
                events.push(BacklogEvent::ConsumerLag {
                    topic: key.0.clone(),
                    group: key.1.clone(),
                    lag,
                    above,
                });
            }
            seen.insert(key, above);
        }
        // Subscriptions that went away are forgotten.
        self.above = seen;
        let above = sample.queued > options.publish_backlog_threshold
            || sample.slowest > options.publish_latency_threshold;
        if above != self.publisher_above {
            self.publisher_above = above;
            events.push(BacklogEvent::PublisherBacklog {
                queued: sample.queued,
                slowest: sample.slowest,
                above,
            });
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lag: u64, queued: usize) -> Sample {
        Sample {
            lags: vec![("t".into(), "g".into(), lag)],
            queued,
            slowest: Duration::ZERO,
        }
    }

    #[test]
    fn reports_crossings_only() {
        let o = BacklogOptions::default()
            .lag_threshold(10)
            .publish_backlog_threshold(5);
        let mut c = Crossings::default();
        assert!(c.update(&o, sample(3, 0)).is_empty());
        let up = c.update(&o, sample(11, 0));
        assert_eq!(
            up,
            [BacklogEvent::ConsumerLag {
                topic: "t".into(),
                group: "g".into(),
                lag: 11,
                above: true
            }]
        );
        assert!(
            c.update(&o, sample(50, 0)).is_empty(),
            "still above: no event"
        );
        let down = c.update(&o, sample(10, 6));
        assert_eq!(down.len(), 2, "{down:?}");
        assert!(matches!(
            down[0],
            BacklogEvent::ConsumerLag { above: false, .. }
        ));
        assert!(matches!(
            down[1],
            BacklogEvent::PublisherBacklog {
                queued: 6,
                above: true,
                ..
            }
        ));
    }
}
