//! A broker cluster losing a node under keyed load: the promise is that no message is lost and
//! no key's order broken when the node leading the topic dies.
//!
//! A cluster of three nodes on loopback ([`eventbus_testkit::brokers::Cluster`]), a topic
//! replicated on all three (NATS: a stream with 3 replicas; Kafka: replication factor 3 with
//! `min.insync.replicas` 2, and the bus's idempotent producer with `acks=all`), one bus
//! publishing a steady keyed load and one bus consuming it in a group. At 30 % of the load the
//! node leading the topic (NATS: the stream's leader; Kafka: the broker leading most of its
//! partitions) is killed with SIGKILL; at 60 % it is started again on its store.
//!
//! The publisher does what a careful user does with a failed publish: it publishes the same
//! messages again (same ids) before anything newer, so a key's order is kept on the broker.
//! NATS drops the copies of messages it already stored (the stream's duplicate window reads the
//! message id); Kafka's idempotent producer retries inside librdkafka and a publish fails only
//! after the delivery timeout. Each failed publish is counted, with its error.
//!
//! Measured: loss, duplicates and per-key order over what the consumer handled, what the
//! topic stores (NATS: exactly one copy of each message), failover (the longest time without a
//! confirmed publish, and without a handled message, between the kill and the restart),
//! throughput before, during and after the node's absence, and both rates over time for a
//! chart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
use eventbus_kafka::{KafkaTransport, TopicOptions};
use eventbus_nats::{NatsConfig, NatsTransport, StreamOptions};
use eventbus_testkit::brokers::Cluster;
use eventbus_testkit::conformance::unique;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::charts;
use crate::members::{self, Handled, Record, Tally};
pub use crate::scale_out::Transport;

/// Partitions of the Kafka topic: more than the nodes, so the node killed leads some and not
/// others.
const PARTITIONS: i32 = 6;

/// Settings of [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Messages published.
    pub messages: u64,
    /// Keys they are spread over.
    pub keys: u64,
    /// Messages a second.
    pub rate: u64,
    /// Share of the load published when the leader is killed.
    pub kill_at: f64,
    /// Share of the load published when it is started again.
    pub restart_at: f64,
    /// How long any one wait may take (a share of the load published, every message
    /// handled) before the run fails.
    pub limit: Duration,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            nodes: 3,
            messages: 10_000,
            keys: 500,
            rate: 500,
            kill_at: 0.3,
            restart_at: 0.6,
            limit: Duration::from_secs(120),
        }
    }
}

/// Messages a second in one phase of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    /// Publishes confirmed by the broker.
    pub published: f64,
    /// Messages handled.
    pub handled: f64,
}

/// One point of the rates over time.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Seconds since the load started.
    pub at: f64,
    /// Publishes confirmed a second around then.
    pub published: f64,
    /// Messages handled a second around then.
    pub handled: f64,
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Loss, duplicates, order, over what the consumer handled.
    pub tally: Tally,
    /// Messages the topic holds at the end (NATS: the stream's count; Kafka: the partitions'
    /// offsets), or why it could not be read.
    pub stored: Result<u64, String>,
    /// Which node was killed, and what it led.
    pub killed: String,
    /// Publish calls that failed (each then made again with the same messages).
    pub failed_publishes: u64,
    /// The distinct errors they failed with.
    pub errors: Vec<String>,
    /// Between the kill and the restart: the longest time without a confirmed publish.
    pub publish_failover: Duration,
    /// Between the kill and the restart: the longest time without a handled message.
    pub handle_failover: Duration,
    /// The longest a message waited from its confirmed publish to its first handling: the
    /// failover as the slowest key saw it (a part of the topic may come back later than the
    /// rest).
    pub longest_wait: Duration,
    /// The message that waited longest (its number: key `k-<n % keys>`).
    pub slowest: Option<u64>,
    /// How long the node took to be back and current after its restart began.
    pub rejoin: Duration,
    /// Before the kill, between the kill and the restart, after the restart.
    pub rates: [Rates; 3],
    /// Both rates over time.
    pub series: Vec<Point>,
    /// Seconds since the load started: the kill, the restart.
    pub marks: (f64, f64),
}

/// The scenario of the module docs on a new cluster of `transport`.
pub async fn run(transport: Transport, plan: Plan) -> Result<Figures, String> {
    let mut cluster = tokio::task::block_in_place(|| match transport {
        Transport::Nats => Cluster::nats(plan.nodes),
        Transport::Kafka => Cluster::kafka(plan.nodes, &[]),
    })
    .map_err(|e| format!("cluster: {e}"))?;
    let result = scenario(transport, &mut cluster, plan).await;
    if result.is_err() || std::env::var_os("EVENTBUS_KEEP_LOGS").is_some() {
        // Its nodes' logs and stores show what the cluster did.
        cluster.keep_on_drop();
    }
    result
}

async fn connect(
    transport: Transport,
    cluster: &Cluster,
    topic: &str,
    replicas: usize,
) -> Result<EventBus, String> {
    let addresses = cluster.addresses();
    Ok(match transport {
        Transport::Nats => EventBus::new(
            NatsTransport::connect(
                NatsConfig::new(addresses).stream(StreamOptions::default().replicas(replicas)),
            )
            .await
            .map_err(|e| e.to_string())?,
        ),
        Transport::Kafka => {
            let config = eventbus_kafka::testing::config(&addresses).topic(
                topic,
                TopicOptions::default()
                    .partitions(PARTITIONS)
                    .replication(replicas as i32),
            );
            EventBus::new(
                KafkaTransport::connect(config)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
    })
}

async fn scenario(
    transport: Transport,
    cluster: &mut Cluster,
    plan: Plan,
) -> Result<Figures, String> {
    let topic = unique("cluster");
    let group = unique("g");
    let replicas = plan.nodes.min(3);
    let publisher = connect(transport, cluster, &topic, replicas).await?;
    let consumer = connect(transport, cluster, &topic, replicas).await?;
    let record = Arc::new(Mutex::new(Record::default()));
    let seen = Arc::clone(&record);
    let subscription = consumer
        .subscribe(
            &topic,
            &group,
            handler_fn(move |d: Delivery| {
                let seen = Arc::clone(&seen);
                async move {
                    let n = d.message().id().as_str()[2..].parse::<u64>()?;
                    seen.lock().expect("record").handled.push(Handled {
                        at: Instant::now(),
                        member: 0,
                        n,
                    });
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let start = Instant::now();
    let load = Publisher::start(publisher.clone(), topic.clone(), plan);
    let at_share = |share: f64| (plan.messages as f64 * share) as u64;
    load.until(at_share(plan.kill_at), plan.limit).await?;
    let (node, killed) = leader(transport, cluster, &topic).await?;
    tokio::task::block_in_place(|| cluster.kill(node));
    let kill = Instant::now();
    load.until(at_share(plan.restart_at), plan.limit).await?;
    let restart = Instant::now();
    tokio::task::block_in_place(|| cluster.restart(node))
        .map_err(|e| format!("restart node {}: {e}", node + 1))?;
    let rejoin = restart.elapsed();
    let published = load.finish(plan.limit).await?;
    let deadline = Instant::now() + plan.limit;
    loop {
        let handled = members::tally(&record.lock().expect("record"), plan.messages, plan.keys);
        if handled.lost == 0 {
            break;
        }
        if Instant::now() > deadline {
            let missing = members::missing(&record.lock().expect("record"), plan.messages);
            return Err(format!(
                "{} of {} messages not handled within {:?}, e.g. {:?}",
                missing.len(),
                plan.messages,
                plan.limit,
                &missing[..missing.len().min(10)]
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    subscription.close().await;
    let stored = stored(transport, cluster, &topic).await;
    let _ = publisher.close().await;
    let _ = consumer.close().await;
    let record = record.lock().expect("record");
    let handled: Vec<Instant> = record.handled.iter().map(|h| h.at).collect();
    let end = published
        .confirmed
        .iter()
        .chain(&handled)
        .copied()
        .max()
        .unwrap_or(restart);
    let phase = |from: Instant, to: Instant| {
        let secs = (to - from).as_secs_f64().max(f64::EPSILON);
        let count = |times: &[Instant]| {
            times.iter().filter(|&&t| t >= from && t < to).count() as f64 / secs
        };
        Rates {
            published: count(&published.confirmed),
            handled: count(&handled),
        }
    };
    let (slowest, longest_wait) = longest_wait(&published.confirmed, &record.handled);
    Ok(Figures {
        tally: members::tally(&record, plan.messages, plan.keys),
        stored,
        killed,
        failed_publishes: published.failures,
        errors: published.errors,
        publish_failover: longest_gap(&published.confirmed, kill, restart),
        handle_failover: longest_gap(&handled, kill, restart),
        longest_wait,
        slowest,
        rejoin,
        rates: [
            phase(start, kill),
            phase(kill, restart),
            phase(restart, end + Duration::from_millis(1)),
        ],
        series: series(start, end, &published.confirmed, &handled),
        marks: (
            (kill - start).as_secs_f64(),
            (restart - start).as_secs_f64(),
        ),
    })
}

/// The node leading `topic`, and what it leads, in words.
async fn leader(
    transport: Transport,
    cluster: &Cluster,
    topic: &str,
) -> Result<(usize, String), String> {
    match transport {
        Transport::Nats => {
            let js = jetstream(cluster).await?;
            let stream = NatsConfig::new("").stream_name(topic);
            let info = js
                .get_stream(&stream)
                .await
                .map_err(|e| e.to_string())?
                .info()
                .await
                .map_err(|e| e.to_string())?
                .clone();
            let name = info
                .cluster
                .and_then(|c| c.leader)
                .ok_or("the stream has no leader")?;
            let node = cluster
                .node_named(&name)
                .ok_or_else(|| format!("no node named {name}"))?;
            Ok((node, format!("{name}, the stream's leader")))
        }
        Transport::Kafka => {
            let leaders = partition_leaders(cluster, topic)?;
            let mut counts = vec![0usize; cluster.nodes().len()];
            for &l in &leaders {
                if let Some(i) = cluster.node_named(&l.to_string()) {
                    counts[i] += 1;
                }
            }
            let (node, led) = counts
                .iter()
                .enumerate()
                .max_by_key(|&(_, c)| *c)
                .map(|(i, &c)| (i, c))
                .ok_or("no partition leaders")?;
            Ok((
                node,
                format!(
                    "broker {}, leading {led} of {} partitions",
                    node + 1,
                    leaders.len()
                ),
            ))
        }
    }
}

/// A raw JetStream client of the cluster, for what the bus does not tell.
async fn jetstream(cluster: &Cluster) -> Result<async_nats::jetstream::Context, String> {
    let addresses: Vec<String> = cluster
        .addresses()
        .split(',')
        .map(ToOwned::to_owned)
        .collect();
    let client = async_nats::connect(addresses.as_slice())
        .await
        .map_err(|e| e.to_string())?;
    Ok(async_nats::jetstream::new(client))
}

/// Each partition's leader (a Kafka node id).
fn partition_leaders(cluster: &Cluster, topic: &str) -> Result<Vec<i32>, String> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.addresses())
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })
    .map_err(|e| e.to_string())?;
    let topic = metadata
        .topics()
        .first()
        .ok_or("no metadata for the topic")?;
    Ok(topic.partitions().iter().map(|p| p.leader()).collect())
}

/// How many messages the topic holds.
async fn stored(transport: Transport, cluster: &Cluster, topic: &str) -> Result<u64, String> {
    match transport {
        Transport::Nats => {
            let js = jetstream(cluster).await?;
            let mut stream = js
                .get_stream(NatsConfig::new("").stream_name(topic))
                .await
                .map_err(|e| e.to_string())?;
            Ok(stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .messages)
        }
        Transport::Kafka => {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", cluster.addresses())
                .create()
                .map_err(|e| e.to_string())?;
            tokio::task::block_in_place(|| {
                (0..PARTITIONS).try_fold(0u64, |sum, p| {
                    let (low, high) = consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .map_err(|e| e.to_string())?;
                    Ok(sum + (high - low) as u64)
                })
            })
        }
    }
}

/// The longest time in `from..to` without an instant of `times` (sorted or not).
fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut inside: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|&t| t > from && t < to)
        .collect();
    inside.sort_unstable();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in inside.into_iter().chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

/// The message that waited longest from its confirmed publish (`confirmed[n]`) to its first
/// handling, and how long.
fn longest_wait(confirmed: &[Instant], handled: &[Handled]) -> (Option<u64>, Duration) {
    let mut first = vec![None; confirmed.len()];
    for h in handled {
        if let Some(slot @ None) = first.get_mut(h.n as usize) {
            *slot = Some(h.at);
        }
    }
    confirmed
        .iter()
        .zip(first)
        .enumerate()
        .filter_map(|(n, (&sent, at))| Some((n as u64, at?.saturating_duration_since(sent))))
        .max_by_key(|&(_, wait)| wait)
        .map_or((None, Duration::ZERO), |(n, wait)| (Some(n), wait))
}

/// Both rates in 250 ms buckets from `start` to `end`.
fn series(start: Instant, end: Instant, published: &[Instant], handled: &[Instant]) -> Vec<Point> {
    const BUCKET: f64 = 0.25;
    let buckets = ((end - start).as_secs_f64() / BUCKET).ceil() as usize + 1;
    let mut counts = vec![(0u32, 0u32); buckets];
    let bucket = |t: &Instant| ((*t - start).as_secs_f64() / BUCKET) as usize;
    for t in published.iter().filter(|&&t| t >= start) {
        counts[bucket(t).min(buckets - 1)].0 += 1;
    }
    for t in handled.iter().filter(|&&t| t >= start) {
        counts[bucket(t).min(buckets - 1)].1 += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, (p, h))| Point {
            at: i as f64 * BUCKET,
            published: f64::from(p) / BUCKET,
            handled: f64::from(h) / BUCKET,
        })
        .collect()
}

/// What the publisher did.
struct Published {
    /// When each message's publish was confirmed.
    confirmed: Vec<Instant>,
    failures: u64,
    errors: Vec<String>,
}

/// The steady keyed load of [`members::message`]: a batch every 20 ms, a failed batch published
/// again, same messages, until it goes through.
struct Publisher {
    published: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<Published, String>>,
}

impl Publisher {
    fn start(bus: EventBus, topic: String, plan: Plan) -> Publisher {
        let published = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&published);
        let task = tokio::spawn(async move {
            const TICK: Duration = Duration::from_millis(20);
            let per_tick = (plan.rate * TICK.as_millis() as u64 / 1000).max(1);
            let mut tick = tokio::time::interval(TICK);
            let mut out = Published {
                confirmed: Vec::with_capacity(plan.messages as usize),
                failures: 0,
                errors: Vec::new(),
            };
            let mut n = 0;
            while n < plan.messages {
                tick.tick().await;
                let end = plan.messages.min(n + per_tick);
                let batch: Vec<Message> = (n..end)
                    .map(|i| members::message(&topic, i, plan.keys))
                    .collect();
                let deadline = Instant::now() + plan.limit;
                while let Err(e) = bus.publish_batch(batch.clone()).await {
                    out.failures += 1;
                    let e = e.to_string();
                    if !out.errors.contains(&e) {
                        out.errors.push(e.clone());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("publish failed for {:?}: {e}", plan.limit));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let now = Instant::now();
                out.confirmed.extend((n..end).map(|_| now));
                n = end;
                count.store(n, Ordering::Release);
            }
            Ok(out)
        });
        Publisher { published, task }
    }

    /// Waits until `n` are published.
    async fn until(&self, n: u64, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while self.published.load(Ordering::Acquire) < n {
            if self.task.is_finished() || Instant::now() > deadline {
                return Err(format!(
                    "{} of {n} messages published within {limit:?}",
                    self.published.load(Ordering::Acquire)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn finish(self, limit: Duration) -> Result<Published, String> {
        tokio::time::timeout(limit, self.task)
            .await
            .map_err(|_| format!("the load did not finish within {limit:?}"))?
            .map_err(|e| e.to_string())?
    }
}

/// The table's head.
pub const HEAD: &str = "| transport | messages | lost | duplicated | order violations | stored | killed | failover: publishes | failover: handling | longest wait, publish to handling | failed publishes | msg/s before / during / after (published) | msg/s before / during / after (handled) | node back after |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// A row of the table.
pub fn row(transport: Transport, f: &Figures) -> String {
    let rates = |pick: fn(&Rates) -> f64| {
        f.rates
            .iter()
            .map(|r| format!("{:.0}", pick(r)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} ms | {} ms | {} ms | {} | {} | {} | {:.1} s |",
        transport.name(),
        f.tally.published,
        f.tally.lost,
        f.tally.duplicated,
        f.tally.order_violations,
        f.stored.as_ref().map_or_else(Clone::clone, u64::to_string),
        f.killed,
        f.publish_failover.as_millis(),
        f.handle_failover.as_millis(),
        f.longest_wait.as_millis(),
        f.failed_publishes,
        rates(|r| r.published),
        rates(|r| r.handled),
        f.rejoin.as_secs_f64(),
    )
}

/// Both rates over time, the kill and the restart marked.
pub fn svg(transport: Transport, f: &Figures) -> Result<String, charts::Error> {
    let points: Vec<(f64, f64, f64)> = f
        .series
        .iter()
        .map(|p| (p.at, p.published, p.handled))
        .collect();
    charts::render((800, 400), |root| {
        charts::rates(
            root,
            &format!("{}: a 3-node cluster loses {}", transport.name(), f.killed),
            &points,
            &[(f.marks.0, "kill"), (f.marks.1, "restart")],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_from_the_start_and_to_the_end_of_the_window() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let times = [at(5), at(40), at(50), at(300)];
        assert_eq!(
            longest_gap(&times, at(10), at(100)),
            Duration::from_millis(50)
        );
        assert_eq!(longest_gap(&[], at(0), at(70)), Duration::from_millis(70));
        assert_eq!(
            longest_gap(&times, at(45), at(400)),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn the_longest_wait_is_from_a_confirmation_to_the_first_handling() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let handled = |n, ms| Handled {
            at: at(ms),
            member: 0,
            n,
        };
        // Message 1 is handled twice, the second time late; message 2 before its publish
        // returned.
        let waits = [
            handled(0, 30),
            handled(1, 50),
            handled(1, 900),
            handled(2, 5),
        ];
        assert_eq!(
            longest_wait(&[at(0), at(10), at(20)], &waits),
            (Some(1), Duration::from_millis(40))
        );
    }

    #[test]
    fn series_counts_per_second_in_quarter_seconds() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let s = series(t0, at(600), &[at(0), at(10), at(300)], &[at(260)]);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].published, s[0].handled), (8.0, 0.0));
        assert_eq!((s[1].published, s[1].handled), (4.0, 4.0));
    }
}
