//! One group of bus instances on a broker transport (NATS or Kafka) losing members and
//! gaining one under load (the `scale-out` tool): what a service scaled out to several
//! instances sees when one is stopped, one crashes and a new one starts.
//!
//! Every instance is a child process ([`crate::members`]): a bus subscribed in one group whose
//! handler works a while per message (a sleep: an I/O-bound handler), so messages are in
//! flight when an instance goes. Only the public API is used (`EventBus`, `subscribe`
//! with a group, `close`), so the figures are what a user of the transport gets.
//!
//! # The scenario ([`scenario`])
//! 3 instances subscribe; the parent publishes 10,000 messages over 1,000 keys at a steady
//! 500 a second, handled in 20 ms each: about 5 messages in flight per instance at any moment.
//! (At 5 ms it is about 1 on average: a kill often found none, and then tested nothing a
//! graceful close does not; a NATS run, which shows order violations only through messages
//! held at a departure, once passed that way.) Once all 3 handle messages and 20% is out, instance 0 **closes**
//! (`close()`); at 40% instance 1 is **killed** (SIGKILL); at 60% a **replacement** starts.
//! The events are placed by messages published, not by waiting for the previous one to
//! settle: on Kafka the killed instance's partitions stay with it until its session times out
//! (6 s in the test settings), and the replacement joins meanwhile, as in a deployment that
//! replaces a crashed pod at once. Checked, from the instances' records:
//!
//! - **lost**: messages never handled: must be 0;
//! - **order violations**: per key, across all instances, a message first handled after a
//!   later message of its key: must be 0. A message handled again after later ones (a
//!   redelivered duplicate) is not one;
//! - **duplicates**: handlings beyond a message's first, counted and reported (at-least-once:
//!   what the killed instance handled and had not acknowledged is handled again).
//!
//! Rebalance times, each defined on the record of handlings (times are when the parent read
//! an instance's line):
//!
//! - **keys back after** (leave, kill): the *affected keys* are those whose last handling
//!   before the event was by the departing instance. For each, its wait is the time from the
//!   event, or from the publish of the message if that was later, until another instance
//!   first handles a message of the key; the figure is the longest wait over the affected
//!   keys, i.e. until the last of them was handled again. Measuring from the publish when it
//!   was later leaves out the time a key simply had no message (a key gets one every 2 s
//!   here). On Kafka it is bounded by the hand-over (leave) or the session timeout (kill).
//! - **replacement handling after** (join): from starting the replacement's process until it
//!   handles its first message: process start, connect, subscribe and the group's
//!   assignment.
//! - **handled/s**: messages over the time from the first handling to the last; with the
//!   load at 500 a second this says whether the group kept up, not how fast it can go.
//!
//! # Throughput ([`drain`])
//! The same keyed load, published before any instance starts (10,000 messages over 1,000
//! keys on one topic), then drained by a group of 1 instance and by a group of 3 instances
//! (each group reads the topic from its start), with handlers that sleep 2 ms per message
//! holding one of 4 slots (a connection pool of 4 per instance: 2,000 messages a second per
//! instance at most). Without such a bound one bus runs thousands of sleeps at once and the
//! number of instances would not matter. Reported: from starting the instances until every
//! message was handled, and from the first handling to the last, and per instance how many
//! it handled and when it began.
//!
//! Measured (release build, shared brokers, 2 cores, `cargo xtask scale-out`): NATS (keyed
//! group) 1 instance about 1,230 messages/s, 3 instances 2.8x as fast; Kafka 1 instance
//! about 1,230 messages/s, 3 instances 1.25x as fast on 10,000 messages (1.9x on 30,000). Of 3
//! Kafka instances started at once the first takes all 12 partitions; the other two handle
//! their first message about 4.6 s later. Likely why (from the Kafka transport's docs, not
//! traced in its logs): a revoke waits for the handlers of the partitions given up, and the
//! first instance's bus already holds thousands of their messages.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventbus_core::EventBus;
use eventbus_kafka::{KafkaTransport, TopicOptions};
use eventbus_nats::{NatsConfig, NatsTransport};
use eventbus_testkit::conformance::unique;

use crate::members::{self, Load, Members, Record, Tally, Work};

/// A broker transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// NATS JetStream.
    Nats,
    /// Kafka.
    Kafka,
}

impl Transport {
    /// Both.
    pub const ALL: [Transport; 2] = [Transport::Nats, Transport::Kafka];

    /// Its name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Nats => "nats",
            Transport::Kafka => "kafka",
        }
    }

    /// The transports a tool's `--transport` value names: `nats`, `kafka`, or `all` (also
    /// when absent).
    pub fn from_flag(value: Option<&str>) -> Result<Vec<Transport>, String> {
        match value {
            None | Some("all") => Ok(Self::ALL.to_vec()),
            Some(name) => Self::parse(name).map(|t| vec![t]),
        }
    }

    /// The inverse of [`name`](Self::name).
    pub fn parse(s: &str) -> Result<Transport, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("expected nats or kafka, got {s:?}"))
    }
}

/// Partitions of a Kafka topic: room for 4 instances (3 and the replacement) with several
/// partitions each. NATS streams have no partitions to set.
const PARTITIONS: i32 = 12;

/// The members' log filter unless `EVENTBUS_LOG` says otherwise: assignments, revokes and
/// hand-overs, kept when a run fails.
const LOG_FILTER: &str = "eventbus_kafka=debug,eventbus_nats=debug,librdkafka=warn";

/// A bus on `transport` at `address` (a NATS URL or Kafka bootstrap servers), with `topic`
/// set up for this tool: Kafka with the tests' settings (6 s sessions) and the default group
/// protocol, KIP-848; NATS with the defaults.
async fn connect(transport: Transport, address: &str, topic: &str) -> Result<EventBus, String> {
    let bus = match transport {
        Transport::Kafka => {
            let config = eventbus_kafka::testing::config(address)
                .topic(topic, TopicOptions::default().partitions(PARTITIONS));
            EventBus::new(
                KafkaTransport::connect(config)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
        Transport::Nats => EventBus::new(
            NatsTransport::connect(NatsConfig::new(address))
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    Ok(bus)
}

/// `scale-out member <transport> <address> <topic> <group> <work-ms> <slots>`: one instance
/// ([`members::serve`]).
pub fn member(args: &[String]) -> Result<(), String> {
    let [transport, address, topic, group, ms, slots] = args else {
        return Err("member <transport> <address> <topic> <group> <work-ms> <slots>".into());
    };
    let transport = Transport::parse(transport)?;
    let work = Work::parse(ms, slots)?;
    members::init_logs();
    crate::runtime().block_on(async {
        let bus = connect(transport, address, topic).await?;
        members::serve(bus, topic, group, work).await
    })
}

/// The members' arguments.
fn member_args(
    transport: Transport,
    address: &str,
    topic: &str,
    group: &str,
    work: Work,
) -> Vec<String> {
    let [ms, slots] = work.args();
    vec![
        transport.name().to_owned(),
        address.to_owned(),
        topic.to_owned(),
        group.to_owned(),
        ms,
        slots,
    ]
}

/// The members of one run, logging to `$TMPDIR/eventbus-scale-out/<topic>/`.
fn members_for(topic: &str) -> Result<Members, String> {
    let logs = std::env::temp_dir().join("eventbus-scale-out").join(topic);
    Members::new(logs, LOG_FILTER)
}

/// Settings of [`scenario`].
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Messages published.
    pub messages: u64,
    /// Keys they are spread over.
    pub keys: u64,
    /// Messages a second.
    pub rate: u64,
    /// The handlers' work.
    pub work: Work,
    /// How long any one wait may take (instances subscribed, an event's share published,
    /// every message handled) before the run fails. Above NATS's default ack wait (30 s):
    /// what a departed instance held comes back only after it.
    pub limit: Duration,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            messages: 10_000,
            keys: 1_000,
            rate: 500,
            work: Work {
                per_message: Duration::from_millis(20),
                slots: 0,
            },
            limit: Duration::from_secs(90),
        }
    }
}

/// How long until the keys of a departed instance were handled again.
#[derive(Debug, Clone, Copy)]
pub struct KeysBack {
    /// The longest wait over the affected keys (see the module docs).
    pub worst: Duration,
    /// Affected keys handled again by another instance.
    pub back: usize,
    /// Affected keys: the departed instance handled their last message before the event.
    pub affected: usize,
}

/// What [`scenario`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Loss, duplicates, order.
    pub tally: Tally,
    /// After instance 0 closed.
    pub leave: Option<KeysBack>,
    /// After instance 1 was killed.
    pub kill: Option<KeysBack>,
    /// From starting the replacement until it handled a message.
    pub join: Option<Duration>,
    /// Messages over the time from the first handling to the last.
    pub per_second: f64,
}

/// When the events happened.
struct Events {
    leave: Instant,
    kill: Instant,
    join: Instant,
}

/// The scenario of the module docs on `transport` at `address`.
pub async fn scenario(transport: Transport, address: &str, plan: Plan) -> Result<Figures, String> {
    let topic = unique("scale-out");
    let group = unique("g");
    let bus = connect(transport, address, &topic).await?;
    let args = member_args(transport, address, &topic, &group, plan.work);
    let mut members = members_for(&topic)?;
    let result = run_scenario(&mut members, &bus, &topic, &args, plan).await;
    // A broken promise keeps the logs as an error does: they show who held what.
    members.stop(result.as_ref().map_or(true, |f| f.tally.broken()));
    let _ = bus.close().await;
    result
}

async fn run_scenario(
    members: &mut Members,
    bus: &EventBus,
    topic: &str,
    args: &[String],
    plan: Plan,
) -> Result<Figures, String> {
    for _ in 0..3 {
        members.spawn(args)?;
    }
    members
        .until("3 instances subscribed", plan.limit, |r| {
            r.joined.len() == 3
        })
        .await?;
    let load = Load::start(
        bus.clone(),
        topic.to_owned(),
        plan.keys,
        plan.rate,
        Some(plan.messages),
    );
    let events = match events(members, &load, args, plan).await {
        Ok(events) => events,
        Err(e) => {
            let _ = load.stop().await;
            return Err(e);
        }
    };
    let sent_at = load.finish().await?;
    members.all_handled(plan.messages, plan.limit).await?;
    let r = members.lock();
    let first = r.handled.iter().map(|h| h.at).min();
    let last = r.handled.iter().map(|h| h.at).max();
    let span = first.zip(last).map_or(Duration::ZERO, |(f, l)| l - f);
    Ok(Figures {
        tally: members::tally(&r, plan.messages, plan.keys),
        leave: keys_back(&r, events.leave, 0, &sent_at, plan.keys),
        kill: keys_back(&r, events.kill, 1, &sent_at, plan.keys),
        join: r.first_handled.get(&3).map(|&at| at - events.join),
        per_second: plan.messages as f64 / span.as_secs_f64().max(f64::EPSILON),
    })
}

/// Instance 0 closes, instance 1 is killed, a replacement starts, each at its share of the
/// load published.
async fn events(
    members: &mut Members,
    load: &Load,
    args: &[String],
    plan: Plan,
) -> Result<Events, String> {
    let share = |tenths: u64| plan.messages * tenths / 10;
    members
        .until(
            "3 instances handling messages and 20% published",
            plan.limit,
            |r| r.first_handled.len() == 3 && load.published() >= share(2),
        )
        .await?;
    members.leave(0);
    let leave = Instant::now();
    members
        .until("40% published", plan.limit, |_| {
            load.published() >= share(4)
        })
        .await?;
    members.kill(1);
    let kill = Instant::now();
    members
        .until("60% published", plan.limit, |_| {
            load.published() >= share(6)
        })
        .await?;
    let join = Instant::now();
    let replacement = members.spawn(args)?;
    members
        .until("the replacement handling messages", plan.limit, |r| {
            r.first_handled.contains_key(&replacement)
        })
        .await?;
    Ok(Events { leave, kill, join })
}

/// The keys `departed` handled last before `event`, and how long until others handled them
/// (see the module docs); `None` if it had none.
fn keys_back(
    r: &Record,
    event: Instant,
    departed: usize,
    sent_at: &[Instant],
    keys: u64,
) -> Option<KeysBack> {
    let mut last = HashMap::new();
    for h in r.handled.iter().filter(|h| h.at < event) {
        last.insert(h.n % keys, h.member);
    }
    let affected: HashSet<u64> = last
        .into_iter()
        .filter(|&(_, member)| member == departed)
        .map(|(key, _)| key)
        .collect();
    let mut back: HashMap<u64, Duration> = HashMap::new();
    for h in r
        .handled
        .iter()
        .filter(|h| h.at >= event && h.member != departed)
    {
        let key = h.n % keys;
        if affected.contains(&key) && !back.contains_key(&key) {
            let from = sent_at.get(h.n as usize).map_or(event, |&s| s.max(event));
            back.insert(key, h.at.saturating_duration_since(from));
        }
    }
    Some(KeysBack {
        worst: back.values().copied().max()?,
        back: back.len(),
        affected: affected.len(),
    })
}

/// The scenario table's head.
pub const SCENARIO_HEAD: &str = "| transport | messages | lost | duplicates | order violations | leave: keys back after | kill: keys back after | join: replacement handling after | handled/s |\n|---|---|---|---|---|---|---|---|---|";

/// A row of the scenario table.
pub fn scenario_row(transport: Transport, f: &Figures) -> String {
    let back = |k: Option<KeysBack>| {
        k.map_or("-".to_owned(), |k| {
            format!(
                "{} ms ({}/{} keys)",
                k.worst.as_millis(),
                k.back,
                k.affected
            )
        })
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
        transport.name(),
        f.tally.published,
        f.tally.lost,
        f.tally.duplicated,
        f.tally.order_violations,
        back(f.leave),
        back(f.kill),
        f.join
            .map_or("-".to_owned(), |d| format!("{} ms", d.as_millis())),
        f.per_second,
    )
}

/// Settings of [`drain`].
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    /// Messages published before the instances start.
    pub messages: u64,
    /// Keys they are spread over.
    pub keys: u64,
    /// The handlers' work.
    pub work: Work,
    /// How long draining may take before the run fails.
    pub limit: Duration,
}

impl Default for DrainPlan {
    fn default() -> Self {
        DrainPlan {
            messages: 10_000,
            keys: 1_000,
            work: Work {
                per_message: Duration::from_millis(2),
                slots: 4,
            },
            limit: Duration::from_secs(120),
        }
    }
}

/// One group draining the backlog.
#[derive(Debug, Clone)]
pub struct Drained {
    /// Instances in the group.
    pub instances: usize,
    /// Loss, duplicates, order.
    pub tally: Tally,
    /// From starting the instances until every message was handled once.
    pub all: Duration,
    /// From the first handling to the last first handling.
    pub handling: Duration,
    /// Handlings per instance, and when each instance first handled one (from the start).
    pub per_instance: Vec<(u64, Duration)>,
}

/// Publishes the backlog once, then drains it with a group of each size in `groups`, one
/// after the other.
pub async fn drain(
    transport: Transport,
    address: &str,
    plan: DrainPlan,
    groups: &[usize],
) -> Result<Vec<Drained>, String> {
    let topic = unique("scale-out-drain");
    let bus = connect(transport, address, &topic).await?;
    let published = members::publish_all(&bus, &topic, plan.keys, plan.messages).await;
    let mut out = Vec::new();
    let mut result = published;
    for &instances in groups {
        if result.is_err() {
            break;
        }
        result = drain_once(transport, address, &topic, instances, plan)
            .await
            .map(|d| out.push(d));
    }
    let _ = bus.close().await;
    result.map(|()| out)
}

async fn drain_once(
    transport: Transport,
    address: &str,
    topic: &str,
    instances: usize,
    plan: DrainPlan,
) -> Result<Drained, String> {
    let args = member_args(transport, address, topic, &unique("g"), plan.work);
    let mut members = members_for(topic)?;
    let start = Instant::now();
    let mut result = Ok(());
    for _ in 0..instances {
        if let Err(e) = members.spawn(&args) {
            result = Err(e);
        }
    }
    if result.is_ok() {
        result = members.all_handled(plan.messages, plan.limit).await;
    }
    let drained = {
        let r = members.lock();
        // The last message to be handled for the first time: duplicates after it do not
        // delay anyone.
        let mut first_of: HashMap<u64, Instant> = HashMap::new();
        for h in &r.handled {
            first_of.entry(h.n).or_insert(h.at);
        }
        let first = first_of.values().min().copied().unwrap_or(start);
        let last = first_of.values().max().copied().unwrap_or(start);
        let per_instance = (0..instances)
            .map(|i| {
                let n = r.handled.iter().filter(|h| h.member == i).count() as u64;
                let first = r
                    .first_handled
                    .get(&i)
                    .map_or(Duration::ZERO, |&at| at - start);
                (n, first)
            })
            .collect();
        Drained {
            instances,
            per_instance,
            tally: members::tally(&r, plan.messages, plan.keys),
            all: last - start,
            handling: last - first,
        }
    };
    members.stop(result.is_err() || drained.tally.broken());
    result.map(|()| drained)
}

/// The throughput table's head.
pub const DRAIN_HEAD: &str = "| transport | instances | messages | start → all handled | msgs/s | first → last handled | msgs/s | lost | duplicates | order violations | per instance: handled (first after) |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// A row of the throughput table.
pub fn drain_row(transport: Transport, d: &Drained) -> String {
    let rate = |t: Duration| d.tally.published as f64 / t.as_secs_f64().max(f64::EPSILON);
    let per_instance: Vec<String> = d
        .per_instance
        .iter()
        .map(|(n, first)| format!("{n} ({} ms)", first.as_millis()))
        .collect();
    format!(
        "| {} | {} | {} | {} ms | {:.0} | {} ms | {:.0} | {} | {} | {} | {} |",
        transport.name(),
        d.instances,
        d.tally.published,
        d.all.as_millis(),
        rate(d.all),
        d.handling.as_millis(),
        rate(d.handling),
        d.tally.lost,
        d.tally.duplicated,
        d.tally.order_violations,
        per_instance.join(", "),
    )
}

/// How many times faster `many` drained than `one`: from start, and from the first handling.
pub fn speedup(one: &Drained, many: &Drained) -> (f64, f64) {
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::EPSILON);
    (ratio(one.all, many.all), ratio(one.handling, many.handling))
}
