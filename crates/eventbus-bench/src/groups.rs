//! Kafka's group protocols side by side (the `group-protocols` tool): KIP-848
//! (`group.protocol=consumer`), and the classic protocol with the cooperative-sticky assignor
//! (the transport's classic default) and with the eager `range` assignor.
//!
//! Every member is a bus in a child process of its own ([`crate::members`]), so a
//! member can be killed with SIGKILL as a crash would kill it. Members print one line per
//! message their handler ran; this process publishes a steady keyed load and reads those
//! lines. Per protocol, three scenarios:
//!
//! - **join**: 10 members subscribe at once to a topic of 10 partitions under load: the time
//!   from the first `subscribe` call until all 10 handle messages;
//! - **leave**: 3 members on 6 partitions, one closes (`close`) mid-load;
//! - **kill**: the same, one is killed with SIGKILL.
//!
//! Each reports messages published, lost (never handled: must be 0), duplicated (handled more
//! than once: 0 but after a kill, where what the killed member handled and had not committed
//! is handled again), per-key order violations (a key's message first handled after a later
//! one of the key: must be 0), the longest time no member handled anything after the event, and
//! how long until the departed member's keys were handled elsewhere.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventbus_core::EventBus;
use eventbus_kafka::{GroupProtocol, KafkaConfig, KafkaTransport, TopicOptions};

use crate::members::{self, Load, Members, Record, Work};

/// A group protocol with its assignor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// KIP-848: the broker assigns, incrementally.
    Consumer,
    /// Classic with `cooperative-sticky` (incremental).
    Cooperative,
    /// Classic with `range` (eager: every rebalance revokes everything).
    Eager,
}

impl Variant {
    /// Every variant, the transport's default first.
    pub const ALL: [Variant; 3] = [Variant::Consumer, Variant::Cooperative, Variant::Eager];

    /// Its name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Consumer => "consumer",
            Variant::Cooperative => "classic-cooperative",
            Variant::Eager => "classic-eager",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }

    /// The test settings (6 s sessions, 500 ms heartbeats: the test brokers set the same for
    /// KIP-848 groups) under this variant.
    fn config(self, brokers: &str, topic: &str, partitions: i32) -> KafkaConfig {
        let protocol = match self {
            Variant::Consumer => GroupProtocol::Consumer,
            Variant::Cooperative | Variant::Eager => GroupProtocol::Classic,
        };
        let config = eventbus_kafka::testing::config_with(brokers, protocol)
            .topic(topic, TopicOptions::default().partitions(partitions));
        match self {
            Variant::Eager => config.set_consumer("partition.assignment.strategy", "range"),
            _ => config,
        }
    }
}

/// Keys of the load; message `m-<n>` has key `k-<n % KEYS>`, so `n` orders a key's messages.
const KEYS: u64 = 500;

/// `group-protocols member <brokers> <topic> <partitions> <group> <variant> <work-ms> <slots>`:
/// one member ([`members::serve`]), whose handler takes `work-ms` per message.
pub fn member(args: &[String]) -> Result<(), String> {
    let [brokers, topic, partitions, group, variant, ms, slots] = args else {
        return Err(
            "member <brokers> <topic> <partitions> <group> <variant> <work-ms> <slots>".into(),
        );
    };
    let work = Work::parse(ms, slots)?;
    let variant = Variant::parse(variant).ok_or("unknown variant")?;
    let partitions: i32 = partitions.parse().map_err(|_| "partitions: a number")?;
    members::init_logs();
    crate::runtime().block_on(async {
        let transport = KafkaTransport::connect(variant.config(brokers, topic, partitions))
            .await
            .map_err(|e| e.to_string())?;
        members::serve(EventBus::new(transport), topic, group, work).await
    })
}

/// The members of one scenario: `n` of them, logging to
/// `$TMPDIR/eventbus-groups/<topic>/`, at `eventbus_kafka=debug` unless `EVENTBUS_LOG` says
/// otherwise.
fn start(n: usize, args: [&str; 7]) -> Result<Members, String> {
    let logs = std::env::temp_dir().join("eventbus-groups").join(args[1]);
    let mut members = Members::new(logs, "eventbus_kafka=debug,librdkafka=warn")?;
    for _ in 0..n {
        members.spawn(&args)?;
    }
    Ok(members)
}

/// One scenario's figures.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Messages published.
    pub published: u64,
    /// Never handled.
    pub lost: u64,
    /// Handled more than once (extra handlings).
    pub duplicated: u64,
    /// A key's message first handled after a later one of the key.
    pub order_violations: u64,
    /// join: first `subscribe` call until all members handle messages.
    pub join: Option<Duration>,
    /// leave/kill: until the departed member's keys were handled by another member.
    pub moved_after: Option<Duration>,
    /// leave/kill: the longest time no member handled a message, after the event.
    pub longest_pause: Option<Duration>,
}

fn figures(record: &Record, published: u64) -> Figures {
    let t = members::tally(record, published, KEYS);
    Figures {
        published,
        lost: t.lost,
        duplicated: t.duplicated,
        order_violations: t.order_violations,
        ..Figures::default()
    }
}

/// Settings of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Members joining at once in `join`.
    pub joining: usize,
    /// Messages per second of the load.
    pub rate: u64,
    /// Load before and after the leave or kill.
    pub phase: Duration,
    /// How long a handler works on a message: a revoke waits for the handlers of the
    /// partitions it takes away (every partition, under an eager assignor).
    pub work: Duration,
}

async fn publisher(
    brokers: &str,
    variant: Variant,
    topic: &str,
    partitions: i32,
) -> Result<EventBus, String> {
    let transport = KafkaTransport::connect(variant.config(brokers, topic, partitions))
        .await
        .map_err(|e| e.to_string())?;
    Ok(EventBus::new(transport))
}

/// `joining` members subscribe at once under load.
pub async fn join(brokers: &str, variant: Variant, plan: Plan) -> Result<Figures, String> {
    let partitions = plan.joining as i32;
    let topic = eventbus_testkit::conformance::unique("groups-join");
    let group = eventbus_testkit::conformance::unique("g");
    let bus = publisher(brokers, variant, &topic, partitions).await?;
    let load = Load::start(bus.clone(), topic.clone(), KEYS, plan.rate, None);
    let members = start(
        plan.joining,
        [
            brokers,
            &topic,
            &partitions.to_string(),
            &group,
            variant.name(),
            &plan.work.as_millis().to_string(),
            "0",
        ],
    )?;
    let limit = Duration::from_secs(120);
    let joining = plan.joining;
    let joined = members
        .until("every member handling messages", limit, |r| {
            r.first_handled.len() == joining
        })
        .await;
    let published = load.stop().await?.len() as u64;
    let result = match joined {
        Ok(()) => members.all_handled(published, limit).await,
        Err(e) => Err(e),
    };
    let figures = {
        let r = members.lock();
        let mut f = figures(&r, published);
        if let (Some(first), Some(last)) = (r.first_subscribing, r.first_handled.values().max()) {
            f.join = Some(last.saturating_duration_since(first));
        }
        f
    };
    members.stop(result.is_err());
    let _ = bus.close().await;
    result.map(|()| figures)
}

/// How a member departs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// `close()`.
    Leave,
    /// SIGKILL.
    Kill,
}

/// 3 members on 6 partitions under load; member 0 departs mid-run.
pub async fn depart(
    brokers: &str,
    variant: Variant,
    departure: Departure,
    plan: Plan,
) -> Result<Figures, String> {
    const MEMBERS: usize = 3;
    const PARTITIONS: i32 = 6;
    let topic = eventbus_testkit::conformance::unique("groups-depart");
    let group = eventbus_testkit::conformance::unique("g");
    let bus = publisher(brokers, variant, &topic, PARTITIONS).await?;
    let mut members = start(
        MEMBERS,
        [
            brokers,
            &topic,
            &PARTITIONS.to_string(),
            &group,
            variant.name(),
            &plan.work.as_millis().to_string(),
            "0",
        ],
    )?;
    let limit = Duration::from_secs(120);
    let load = Load::start(bus.clone(), topic.clone(), KEYS, plan.rate, None);
    let steady = members
        .until("every member handling messages", limit, |r| {
            r.first_handled.len() == MEMBERS
        })
        .await;
    if let Err(e) = steady {
        let _ = load.stop().await;
        members.stop(true);
        return Err(e);
    }
    tokio::time::sleep(plan.phase).await;
    let event = Instant::now();
    match departure {
        Departure::Leave => members.leave(0),
        Departure::Kill => members.kill(0),
    }
    // The keys member 0 owned (it handled their last message before the event): moved once
    // another member handles one of them.
    let departed_keys: HashSet<u64> = {
        let mut last = HashMap::new();
        for h in &members.lock().handled {
            last.insert(h.n % KEYS, h.member);
        }
        last.into_iter()
            .filter(|&(_, member)| member == 0)
            .map(|(key, _)| key)
            .collect()
    };
    let moved = members
        .until(
            "the departed member's keys handled by another",
            limit,
            |r| {
                r.handled
                    .iter()
                    .rev()
                    .take_while(|h| h.at >= event)
                    .any(|h| h.member != 0 && departed_keys.contains(&(h.n % KEYS)))
            },
        )
        .await;
    let moved_at = Instant::now();
    tokio::time::sleep(plan.phase).await;
    let published = load.stop().await?.len() as u64;
    let result = match moved {
        Ok(()) => members.all_handled(published, limit).await,
        Err(e) => Err(e),
    };
    let figures = {
        let r = members.lock();
        let mut f = figures(&r, published);
        f.moved_after = Some(moved_at - event);
        let mut last = event;
        let mut pause = Duration::ZERO;
        for h in r.handled.iter().filter(|h| h.at >= event) {
            pause = pause.max(h.at - last);
            last = h.at;
        }
        f.longest_pause = Some(pause);
        f
    };
    members.stop(result.is_err());
    let _ = bus.close().await;
    result.map(|()| figures)
}

/// Prints a table row.
pub fn row(variant: Variant, scenario: &str, f: &Figures) -> String {
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    format!(
        "| {} | {scenario} | {} | {} | {} | {} | {} | {} | {} |",
        variant.name(),
        f.published,
        f.lost,
        f.duplicated,
        f.order_violations,
        ms(f.join),
        ms(f.moved_after),
        ms(f.longest_pause),
    )
}

/// The table's head.
pub const HEAD: &str = "| protocol | scenario | published | lost | duplicated | order violations | all 10 consuming after | keys moved after | longest pause |\n|---|---|---|---|---|---|---|---|---|";
