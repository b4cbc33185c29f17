//! The head-of-line scenario: one key's handler stalls (an async sleep, 2 s per message by
//! default) while 1,000 other keys flow. The figures are the other keys' throughput and
//! latency, for the dispatcher and for the fixed-lane baseline ([`crate::lanes`]), each with
//! and without the stall, in the same run.
//!
//! One producer task sends the stalled key's messages first, then the other keys' round
//! robin; a run ends when every other key's message was handled (the stalled key's are then
//! dropped). Both designs buffer the same: the dispatcher's default 4,096 messages, 256
//! lanes × 16.
//!
//! Throughput is measured with the producer sending as fast as it can. Latency is measured in
//! a separate, paced run ([`Hol::rate`]): message `i` is due at `start + i / rate` and its
//! latency runs from that due time to the handler call, so time the producer spends blocked
//! (a full lane) counts too. Timing from the send call instead would hide exactly the
//! head-of-line wait, since a blocked producer sends nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use eventbus_core::{
    BoxError, Delivery, Dispatch, Dispatcher, DispatcherConfig, Key, Message, RetryPolicy, Route,
    handler_fn,
};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::lanes::{LANES, Lanes};
use crate::scenario::{Histogram, Latency};
use crate::workload::{Counter, PAYLOAD_LEN};

/// The stalled key.
pub const STALLED: &str = "stalled";

/// The two designs compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// eventbus's keyed dispatcher (default config).
    Dispatcher,
    /// 256 fixed lanes chosen by hashing the key.
    Lanes,
}

impl Design {
    /// A label for tables.
    pub fn name(self) -> &'static str {
        match self {
            Design::Dispatcher => "eventbus dispatcher",
            Design::Lanes => "fixed lanes (256, hashed key)",
        }
    }
}

/// The size of the scenario.
#[derive(Debug, Clone, Copy)]
pub struct Hol {
    /// Other keys.
    pub keys: usize,
    /// Messages per other key.
    pub per_key: usize,
    /// How long the stalled key's handler sleeps per message.
    pub stall: Duration,
    /// Messages of the stalled key (sent first).
    pub stalled_messages: usize,
    /// Messages per second of the paced (latency) runs.
    pub rate: f64,
}

impl Default for Hol {
    fn default() -> Self {
        Hol {
            keys: 1_000,
            per_key: 200,
            stall: Duration::from_secs(2),
            stalled_messages: 2,
            rate: 50_000.0,
        }
    }
}

/// What one run measured of the other keys.
#[derive(Debug, Clone, Copy)]
pub struct HolRun {
    /// Other keys' messages per second.
    pub throughput: f64,
    /// Their latency, send to handler call.
    pub latency: Latency,
}

struct Observer {
    epoch: Instant,
    latency: Histogram,
    counter: Arc<Counter>,
    stall: Duration,
}

impl Observer {
    /// Records a message of another key, or says how long to stall for the stalled key.
    fn observe(&self, m: &Message) -> Option<Duration> {
        if m.key().is_some_and(|k| k.as_str() == STALLED) {
            return Some(self.stall);
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&m.payload()[..8]);
        let sent = u64::from_le_bytes(stamp);
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.latency.record_ns(now.saturating_sub(sent));
        self.counter.hit();
        None
    }
}

impl Hol {
    /// Other keys' messages in a paced run: one second's worth at [`Hol::rate`] (at most the
    /// saturated run's count).
    pub fn paced_messages(&self) -> usize {
        (self.rate as usize)
            .min(self.keys * self.per_key)
            .max(self.keys)
    }

    /// Runs the scenario once, saturated or, with `paced`, at [`Hol::rate`] with
    /// [`Hol::paced_messages`] other messages.
    pub async fn run(self, design: Design, stalled: bool, paced: bool) -> HolRun {
        let others = if paced {
            self.paced_messages()
        } else {
            self.keys * self.per_key
        };
        let rate = paced.then_some(self.rate);
        let observer = Arc::new(Observer {
            epoch: Instant::now(),
            latency: Histogram::new(),
            counter: Counter::new(others),
            stall: self.stall,
        });
        let keys: Vec<Key> = (0..self.keys)
            .map(|k| Key::from(format!("key-{k}")))
            .collect();
        let stalled_key = Key::from(STALLED);
        let plan = move || {
            let first = if stalled { self.stalled_messages } else { 0 };
            (0..first)
                .map(move |_| stalled_key.clone())
                .chain((0..others).map(move |i| keys[i % keys.len()].clone()))
        };
        let epoch = observer.epoch;
        let started = Instant::now();
        let start_ns = (started - epoch).as_nanos() as u64;
        // The send stamp: now, or the message's due time when paced (after waiting for it).
        let stamp = move |i: usize| async move {
            match rate {
                None => epoch.elapsed().as_nanos() as u64,
                Some(rate) => {
                    let due = start_ns + (i as f64 * 1e9 / rate) as u64;
                    let now = epoch.elapsed().as_nanos() as u64;
                    if due > now + 1_000_000 {
                        tokio::time::sleep(std::time::Duration::from_nanos(due - now)).await;
                    }
                    due
                }
            }
        };
        let message = move |stamp: u64, key: Key| {
            let mut b = BytesMut::with_capacity(PAYLOAD_LEN);
            b.put_u64_le(stamp);
            b.resize(PAYLOAD_LEN, b'x');
            Arc::new(Message::new("hol", b.freeze()).with_key(key))
        };
        let finished = match design {
            Design::Dispatcher => {
                let dispatcher = Dispatcher::new(DispatcherConfig::default());
                let (closing, abort) = (CancellationToken::new(), CancellationToken::new());
                let o = Arc::clone(&observer);
                let handler = handler_fn(move |d: Delivery| {
                    let stall = o.observe(d.message());
                    async move {
                        if let Some(stall) = stall {
                            tokio::time::sleep(stall).await;
                        }
                        Ok::<_, BoxError>(())
                    }
                });
                let route = Arc::new(
                    Route::builder("hol", "hol", handler)
                        .retry(RetryPolicy::default())
                        .closing(closing.clone())
                        .abort(abort.clone())
                        .build(),
                );
                let mut d = dispatcher.clone();
                let producer = tokio::spawn(async move {
                    for (i, key) in plan().enumerate() {
                        let message = message(stamp(i).await, key);
                        let Ok(service) = ServiceExt::<Dispatch>::ready(&mut d).await else {
                            return;
                        };
                        drop(service.call(Dispatch {
                            route: Arc::clone(&route),
                            message,
                        }));
                    }
                });
                let finished = observer.counter.wait().await;
                closing.cancel();
                abort.cancel();
                dispatcher.shutdown().await;
                let _ = producer.await;
                finished
            }
            Design::Lanes => {
                let o = Arc::clone(&observer);
                let lanes = Arc::new(Lanes::spawn(LANES, 16, move |m: Arc<Message>| {
                    let stall = o.observe(&m);
                    async move {
                        if let Some(stall) = stall {
                            tokio::time::sleep(stall).await;
                        }
                    }
                }));
                let l = Arc::clone(&lanes);
                let producer = tokio::spawn(async move {
                    for (i, key) in plan().enumerate() {
                        l.send(message(stamp(i).await, key)).await;
                    }
                });
                let finished = observer.counter.wait().await;
                producer.await.expect("producer");
                Arc::into_inner(lanes)
                    .expect("the producer is done")
                    .abort()
                    .await;
                finished
            }
        };
        HolRun {
            throughput: crate::workload::rate(others, finished - started),
            latency: observer.latency.summary(),
        }
    }
}
