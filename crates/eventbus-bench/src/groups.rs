//! Kafka's group protocols side by side (the `group-protocols` tool): KIP-848
//! (`group.protocol=consumer`), and the classic protocol with the cooperative-sticky assignor
//! (the transport's classic default) and with the eager `range` assignor.
//!
//! Every member is a bus in a child process of its own (this tool run as `member`), so a
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
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
use eventbus_kafka::{GroupProtocol, KafkaConfig, KafkaTransport, TopicOptions};

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

/// `group-protocols member <brokers> <topic> <partitions> <group> <variant> <work-ms>`: one
/// member, whose handler takes `work-ms` per message. Prints
/// `subscribing`, `joined`, `h <id>` per message handled, and `closed` once stdin ends and it
/// closed.
pub fn member(args: &[String]) -> Result<(), String> {
    let [brokers, topic, partitions, group, variant, work] = args else {
        return Err("member <brokers> <topic> <partitions> <group> <variant> <work-ms>".into());
    };
    let work = Duration::from_millis(work.parse().map_err(|_| "work-ms: a number")?);
    let variant = Variant::parse(variant).ok_or("unknown variant")?;
    let partitions: i32 = partitions.parse().map_err(|_| "partitions: a number")?;
    // Its logs go to stderr (stdout carries what it handled), filtered by `EVENTBUS_LOG`.
    if let Ok(filter) = std::env::var("EVENTBUS_LOG") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
    }
    crate::runtime().block_on(async {
        let transport = KafkaTransport::connect(variant.config(brokers, topic, partitions))
            .await
            .map_err(|e| e.to_string())?;
        let bus = EventBus::new(transport);
        println!("subscribing");
        let sub = bus
            .subscribe(
                topic,
                group,
                handler_fn(move |d: Delivery| async move {
                    // Work, so that handlers are in flight when the group changes.
                    tokio::time::sleep(work).await;
                    println!("h {}", d.message().id());
                    Ok::<_, BoxError>(())
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        println!("joined");
        // Until the parent closes stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        })
        .await;
        sub.close().await;
        bus.close().await.map_err(|e| e.to_string())?;
        println!("closed");
        Ok(())
    })
}

/// What the members reported, as this process received it.
#[derive(Default)]
struct Record {
    /// (when, member, message number) per handled message, in order of arrival.
    handled: Vec<(Instant, usize, u64)>,
    first_subscribing: Option<Instant>,
    first_handled: HashMap<usize, Instant>,
    closed: HashSet<usize>,
}

struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The members of one scenario and what they print; their logs (stderr, at
/// `eventbus_kafka=debug` unless `EVENTBUS_LOG` says otherwise) go to files in `logs`, kept
/// when the scenario fails.
struct Group {
    members: Vec<Member>,
    logs: std::path::PathBuf,
    record: Arc<Mutex<Record>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Group {
    fn start(n: usize, args: [&str; 6]) -> Result<Group, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let logs = std::env::temp_dir().join("eventbus-groups").join(args[1]);
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let filter = std::env::var("EVENTBUS_LOG")
            .unwrap_or_else(|_| "eventbus_kafka=debug,librdkafka=warn".to_owned());
        let record = Arc::new(Mutex::new(Record::default()));
        let mut members = Vec::new();
        let mut readers = Vec::new();
        for i in 0..n {
            let mut child = Command::new(&exe)
                .arg("member")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(
                    std::fs::File::create(logs.join(format!("member-{i}.log")))
                        .map_err(|e| e.to_string())?,
                )
                .env("EVENTBUS_LOG", &filter)
                .spawn()
                .map_err(|e| format!("cannot start a member: {e}"))?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let stdin = child.stdin.take();
            let record = Arc::clone(&record);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let now = Instant::now();
                    let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(id) = line.strip_prefix("h m-") {
                        if let Ok(n) = id.parse() {
                            r.handled.push((now, i, n));
                            r.first_handled.entry(i).or_insert(now);
                        }
                    } else if line == "subscribing" {
                        r.first_subscribing.get_or_insert(now);
                    } else if line == "closed" {
                        r.closed.insert(i);
                    }
                }
            }));
            members.push(Member { child, stdin });
        }
        Ok(Group {
            members,
            logs,
            record,
            readers,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds of the record, or fails after `limit`.
    async fn until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Record) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !done(&self.lock()) {
            if Instant::now() > deadline {
                return Err(format!("{what}: not within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until every published message was handled at least once; on failure, says
    /// which are missing.
    async fn all_handled(&self, published: u64, limit: Duration) -> Result<(), String> {
        let waited = self
            .until("every message handled", limit, |r| {
                missing(r, published).is_empty()
            })
            .await;
        waited.map_err(|e| {
            let missing = missing(&self.lock(), published);
            let first: Vec<String> = missing.iter().take(20).map(|n| format!("m-{n}")).collect();
            format!("{e}; {} missing: {} ...", missing.len(), first.join(" "))
        })
    }

    /// Closes member `i` gracefully (its stdin ends).
    fn leave(&mut self, i: usize) {
        drop(self.members[i].stdin.take());
    }

    /// SIGKILL.
    fn kill(&mut self, i: usize) {
        let _ = self.members[i].child.kill();
    }

    /// Closes every member still running and reaps them all; keeps their logs if `failed`.
    fn stop(mut self, failed: bool) {
        for m in &mut self.members {
            drop(m.stdin.take());
        }
        for m in &mut self.members {
            let _ = m.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if failed {
            eprintln!("the members' logs: {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// Publishes `m-<n>` at about `per_second` until told to stop; returns how many.
struct Load {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl Load {
    fn start(bus: EventBus, topic: String, per_second: u64) -> Load {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            const TICK: Duration = Duration::from_millis(20);
            let per_tick = (per_second * TICK.as_millis() as u64 / 1000).max(1);
            let mut tick = tokio::time::interval(TICK);
            let mut n = 0u64;
            while !token.is_cancelled() {
                tick.tick().await;
                let batch: Vec<Message> = (n..n + per_tick)
                    .map(|i| {
                        Message::new(topic.as_str(), format!("{i}"))
                            .with_id(format!("m-{i}"))
                            .with_key(format!("k-{}", i % KEYS))
                    })
                    .collect();
                bus.publish_batch(batch)
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                n += per_tick;
            }
            Ok(n)
        });
        Load { stop, task }
    }

    async fn stop(self) -> Result<u64, String> {
        self.stop.cancel();
        self.task.await.map_err(|e| e.to_string())?
    }
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
    let mut times: HashMap<u64, u32> = HashMap::new();
    let mut highest: HashMap<u64, u64> = HashMap::new();
    let mut order_violations = 0;
    for &(_, _, n) in &record.handled {
        let count = times.entry(n).or_default();
        *count += 1;
        let key = n % KEYS;
        let top = highest.entry(key).or_insert(n);
        if *count == 1 && n < *top {
            order_violations += 1;
        }
        *top = (*top).max(n);
    }
    let handled_once = (0..published).filter(|n| times.contains_key(n)).count() as u64;
    Figures {
        published,
        lost: published - handled_once,
        duplicated: times.values().map(|&c| u64::from(c) - 1).sum(),
        order_violations,
        ..Figures::default()
    }
}

/// The published messages not handled yet.
fn missing(record: &Record, published: u64) -> Vec<u64> {
    let seen: HashSet<u64> = record.handled.iter().map(|h| h.2).collect();
    (0..published).filter(|n| !seen.contains(n)).collect()
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
    let load = Load::start(bus.clone(), topic.clone(), plan.rate);
    let members = Group::start(
        plan.joining,
        [
            brokers,
            &topic,
            &partitions.to_string(),
            &group,
            variant.name(),
            &plan.work.as_millis().to_string(),
        ],
    )?;
    let limit = Duration::from_secs(120);
    let joining = plan.joining;
    let joined = members
        .until("every member handling messages", limit, |r| {
            r.first_handled.len() == joining
        })
        .await;
    let published = load.stop().await?;
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
    let mut members = Group::start(
        MEMBERS,
        [
            brokers,
            &topic,
            &PARTITIONS.to_string(),
            &group,
            variant.name(),
            &plan.work.as_millis().to_string(),
        ],
    )?;
    let limit = Duration::from_secs(120);
    let load = Load::start(bus.clone(), topic.clone(), plan.rate);
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
        for &(_, member, n) in &members.lock().handled {
            last.insert(n % KEYS, member);
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
                    .take_while(|h| h.0 >= event)
                    .any(|h| h.1 != 0 && departed_keys.contains(&(h.2 % KEYS)))
            },
        )
        .await;
    let moved_at = Instant::now();
    tokio::time::sleep(plan.phase).await;
    let published = load.stop().await?;
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
        for &(at, _, _) in r.handled.iter().filter(|h| h.0 >= event) {
            pause = pause.max(at - last);
            last = at;
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
