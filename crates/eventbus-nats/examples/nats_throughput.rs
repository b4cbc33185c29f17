//! End-to-end throughput over a real NATS server: the bus (publish with JetStream ack →
//! handler → ack) against raw async-nats doing the same work on the same stream settings, in
//! the same run, interleaved (raw, bus, raw, bus, ...); prints medians and the ratio.
//!
//! `cargo run --release -p eventbus-nats --example nats_throughput [-- --messages N --rounds N --url U]`
//!
//! Both sides publish in pipelined chunks of 256 (send all, then await all acks; the bus's
//! `publish_batch` does exactly this), consume from a durable pull consumer in batches of 256,
//! and ack each message after a trivial handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
use eventbus_nats::{NatsConfig, NatsTransport};
use futures::StreamExt;
use tokio::sync::Notify;

const CHUNK: usize = 256;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; 108])
}

async fn raw(url: &str, n: u64, run: u32) -> f64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let topic = format!("bench-raw-{}-{run}", std::process::id());
    let config = NatsConfig::new(url);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: config.stream_name(&topic),
            subjects: vec![topic.clone()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            "bench",
            pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (r, d) = (Arc::clone(&received), Arc::clone(&done));
    let consuming = tokio::spawn(async move {
        // Pulls of CHUNK, like the bus's fetch loop.
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(CHUNK)
            .messages()
            .await
            .expect("pull");
        while let Some(Ok(m)) = messages.next().await {
            // The same trivial handler work as the bus side, then the ack.
            std::hint::black_box(m.payload.len());
            m.ack().await.expect("ack");
            if r.fetch_add(1, Ordering::Relaxed) + 1 == n {
                d.notify_one();
                break;
            }
        }
    });
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let mut acks = Vec::with_capacity(CHUNK);
        for _ in 0..CHUNK.min((n - sent) as usize) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("raw-{run}-{sent}").as_str());
            acks.push(
                js.publish_with_headers(topic.clone(), headers, payload())
                    .await
                    .expect("publish"),
            );
            sent += 1;
        }
        for ack in acks {
            ack.await.expect("ack");
        }
    }
    let published = started.elapsed();
    done.notified().await;
    eprintln!(
        "raw: published in {published:?}, received at {:?}",
        started.elapsed()
    );
    let elapsed = started.elapsed();
    let _ = consuming.await;
    let _ = js.delete_stream(config.stream_name(&topic)).await;
    n as f64 / elapsed.as_secs_f64()
}

async fn bus(url: &str, n: u64, run: u32) -> f64 {
    let transport = NatsTransport::connect(NatsConfig::new(url).fetch_batch(CHUNK))
        .await
        .expect("connect");
    let js = transport.jetstream().clone();
    let config = transport.config().clone();
    let bus = EventBus::new(transport);
    let topic = format!("bench-bus-{}-{run}", std::process::id());
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (r, d) = (Arc::clone(&received), Arc::clone(&done));
    let sub = bus
        .subscribe(
            &topic,
            "bench",
            handler_fn(move |delivery: Delivery| {
                std::hint::black_box(delivery.payload().len());
                if r.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    d.notify_one();
                }
                async { Ok::<_, BoxError>(()) }
            }),
        )
        .await
        .expect("subscribe");
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let chunk: Vec<_> = (0..CHUNK.min((n - sent) as usize))
            .map(|_| Message::new(&topic, payload()))
            .collect();
        sent += chunk.len() as u64;
        bus.publish_batch(chunk).await.expect("publish");
    }
    let published = started.elapsed();
    done.notified().await;
    eprintln!(
        "bus: published in {published:?}, received at {:?}",
        started.elapsed()
    );
    let elapsed = started.elapsed();
    sub.close().await;
    bus.close().await.expect("close");
    let _ = js.delete_stream(config.stream_name(&topic)).await;
    n as f64 / elapsed.as_secs_f64()
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let url = arg("--url", "nats://127.0.0.1:4222");
    let n: u64 = arg("--messages", "50000").parse().unwrap_or(50_000);
    let rounds: u32 = arg("--rounds", "3").parse().unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut r, mut b) = (Vec::new(), Vec::new());
        for run in 0..rounds {
            r.push(raw(&url, n, run).await);
            b.push(bus(&url, n, run).await);
            eprintln!("round {run}: raw {:.0} msg/s, bus {:.0} msg/s", r[r.len() - 1], b[b.len() - 1]);
        }
        println!(
            "NATS end to end, {n} messages x {rounds} interleaved rounds: bus {:.0} msg/s, raw async-nats {:.0} msg/s, ratio of medians {:.2}",
            median(&b),
            median(&r),
            median(&b) / median(&r)
        );
    });
}
