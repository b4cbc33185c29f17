//! The NATS bus against raw async-nats, end to end on a real server: JetStream publish with
//! ack → pull consume → handler → ack, on the same stream settings (the raw side's stream is
//! provisioned by the transport itself, with `ensure_stream`, then used through a plain
//! async-nats client).
//!
//! Both sides publish in pipelined chunks of [`CHUNK`] (send all, then await every ack: what
//! the bus's `publish_batch` does) with a `Nats-Msg-Id` header, consume through a durable pull
//! consumer in batches of [`CHUNK`] with the transport's consumer settings, and ack each
//! message after the no-op handler. Timed from the first publish to the last handler call.
//!
//! [`raw_publish`] and [`bus_publish`] are the publishing half alone, timed to the last ack.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use eventbus_core::{EventBus, Message};
use eventbus_nats::{NatsConfig, NatsTransport};
use futures::StreamExt;

use crate::cpu::{Run, Start};
use crate::workload::{Counter, Noop, PAYLOAD_LEN};

/// Publish chunk and pull batch of both sides.
pub const CHUNK: usize = 256;

/// The default server.
pub const URL: &str = "nats://127.0.0.1:4222";

/// Whether a NATS server answers at `127.0.0.1:4222`.
pub fn reachable() -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4222));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn payload() -> Bytes {
    Bytes::from_static(&[b'x'; PAYLOAD_LEN])
}

fn topic(side: &str, run: u32) -> String {
    format!("bench-{side}-{}-{run}", std::process::id())
}

fn transport_config(url: &str) -> NatsConfig {
    NatsConfig::new(url).fetch_batch(CHUNK)
}

/// Raw async-nats: `n` messages, run number `run` (names are unique per run): its rate and process CPU per message.
pub async fn raw(url: &str, n: usize, run: u32) -> Run {
    let topic = topic("raw", run);
    let provisioner = NatsTransport::connect(transport_config(url))
        .await
        .expect("connect");
    provisioner.ensure_stream(&topic).await.expect("stream");
    let config = provisioner.config().clone();
    let consumer_options = config.consumer.clone();
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let stream = js
        .get_stream(config.stream_name(&topic))
        .await
        .expect("stream");
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            "bench",
            pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_wait: consumer_options.ack_wait,
                max_ack_pending: consumer_options.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let counter = Counter::new(n);
    let c = Arc::clone(&counter);
    let consuming = tokio::spawn(async move {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(CHUNK)
            .messages()
            .await
            .expect("pull");
        let mut seen = 0;
        while let Some(Ok(m)) = messages.next().await {
            std::hint::black_box(m.payload.len());
            c.hit();
            m.ack().await.expect("ack");
            seen += 1;
            if seen == n {
                break;
            }
        }
    });
    let started = Start::now();
    publish_raw(&js, &config, &topic, n).await;
    let figures = started.finish(n, counter.wait().await);
    let _ = consuming.await;
    let _ = js.delete_stream(config.stream_name(&topic)).await;
    figures
}

/// Publishes `n` messages to `topic`'s stream through `js`, in pipelined chunks of [`CHUNK`],
/// each with a `Nats-Msg-Id`, every ack awaited.
async fn publish_raw(js: &jetstream::Context, config: &NatsConfig, topic: &str, n: usize) {
    // The stream's subjects are its partitions' (`<subject>.<n>`); spread over them as the
    // bus spreads keyless messages.
    let partitions = usize::from(config.stream.partitions);
    let subjects: Vec<String> = (0..partitions)
        .map(|p| format!("{}.{p}", config.subject(topic)))
        .collect();
    let mut sent = 0;
    while sent < n {
        let mut acks = Vec::with_capacity(CHUNK);
        for _ in 0..CHUNK.min(n - sent) {
            let mut headers = async_nats::HeaderMap::new();
            let id = eventbus_core::MessageId::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            acks.push(
                js.publish_with_headers(subjects[sent % partitions].clone(), headers, payload())
                    .await
                    .expect("publish"),
            );
            sent += 1;
        }
        for ack in acks {
            ack.await.expect("publish ack");
        }
    }
}

/// Publishes `n` messages to `topic` through `bus`, in `publish_batch` chunks of [`CHUNK`].
async fn publish_bus(bus: &EventBus, topic: &str, n: usize) {
    let mut sent = 0;
    while sent < n {
        let chunk: Vec<_> = (0..CHUNK.min(n - sent))
            .map(|_| Message::new(topic, payload()))
            .collect();
        sent += chunk.len();
        bus.publish_batch(chunk).await.expect("publish");
    }
}

/// Raw async-nats publishing only (no consumer): its rate and process CPU per message.
pub async fn raw_publish(url: &str, n: usize, run: u32) -> Run {
    let topic = topic("raw-pub", run);
    let provisioner = NatsTransport::connect(transport_config(url))
        .await
        .expect("connect");
    provisioner.ensure_stream(&topic).await.expect("stream");
    let config = provisioner.config().clone();
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let started = Start::now();
    publish_raw(&js, &config, &topic, n).await;
    let figures = started.finish(n, std::time::Instant::now());
    let _ = js.delete_stream(config.stream_name(&topic)).await;
    figures
}

/// The NATS bus publishing only (no subscription; the stream made before the clock starts, as
/// the raw side's): its rate and process CPU per message.
pub async fn bus_publish(url: &str, n: usize, run: u32) -> Run {
    let topic = topic("bus-pub", run);
    let transport = NatsTransport::connect(transport_config(url))
        .await
        .expect("connect");
    transport.ensure_stream(&topic).await.expect("stream");
    let js = transport.jetstream().clone();
    let stream = transport.config().stream_name(&topic);
    let bus = EventBus::new(transport);
    let started = Start::now();
    publish_bus(&bus, &topic, n).await;
    let figures = started.finish(n, std::time::Instant::now());
    bus.close().await.expect("close");
    let _ = js.delete_stream(stream).await;
    figures
}

/// The NATS bus: `n` messages through `publish_batch` and one subscription: its rate and process CPU per message.
pub async fn bus(url: &str, n: usize, run: u32) -> Run {
    let topic = topic("bus", run);
    let transport = NatsTransport::connect(transport_config(url))
        .await
        .expect("connect");
    let js = transport.jetstream().clone();
    let stream = transport.config().stream_name(&topic);
    let bus = EventBus::new(transport);
    let counter = Counter::new(n);
    let sub = bus
        .subscribe(&topic, "bench", Noop(Arc::clone(&counter)))
        .await
        .expect("subscribe");
    let started = Start::now();
    publish_bus(&bus, &topic, n).await;
    let figures = started.finish(n, counter.wait().await);
    sub.close().await;
    bus.close().await.expect("close");
    let _ = js.delete_stream(stream).await;
    figures
}
