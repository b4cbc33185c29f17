//! Cost per message on a fixed workload, figures that hold on a noisy machine: instructions
//! (callgrind) and heap allocations (a counting allocator).
//!
//! Each workload runs on a current-thread runtime, so it is deterministic enough for
//! callgrind, and only the call of [`measured`] is counted (callgrind's `--toggle-collect`;
//! the allocation counter reads before and after it): the messages are built before it. Each
//! workload runs twice, with `n` and `2n` messages, and the cost per message is the difference
//! over `n`, so setting up and closing the dispatcher or bus cancels out; instructions are the
//! median of [`CALLGRIND_PAIRS`] such pairs (see [`instructions`]).
//!
//! The workloads: `raw` (the mpsc → handler loop), `dispatcher` (the dispatcher alone) and
//! `memory` (the memory bus end to end), all with [`KEYS`] keys and the no-op handler; and
//! the growth table's two ([`SPREAD_WORKLOADS`], [`crate::growth`]), whose messages are
//! spread over several routes or topics; and the broker workloads ([`BROKER_WORKLOADS`]): the
//! NATS bus and raw async-nats against the shared server, counted over the whole process. Three
//! tiny binaries run them, each with the command
//! line of [`WorkloadArgs`]: `cost-workload` (plain, for callgrind), `alloc-workload` (with
//! the counting allocator, which prints the count) and `heap-workload` (with a peak-tracking
//! allocator, for the growth table).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use eventbus_core::{Dispatcher, DispatcherConfig};

use crate::workload;

/// Keys of the fixed workload.
pub const KEYS: usize = 1_000;
/// Messages of the shorter of the two runs.
pub const MESSAGES: usize = 20_000;
/// The workloads, in report order.
pub const WORKLOADS: [&str; 3] = ["raw", "dispatcher", "memory"];
/// The growth table's workloads: the dispatcher over `subscriptions` routes
/// ([`workload::dispatcher_routes`]) and the memory bus over `subscriptions` topics
/// ([`workload::memory_bus_topics`]), messages from [`workload::spread`]. Apart from
/// `dispatcher` and `memory` so that those stay the workloads the targets were measured on.
pub const SPREAD_WORKLOADS: [&str; 2] = ["dispatcher-routes", "memory-topics"];
/// The broker a broker workload runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// The shared NATS server at [`crate::nats::URL`].
    Nats,
    /// The Kafka brokers the workload process gets in `EVENTBUS_KAFKA_BROKERS`.
    Kafka,
}

/// A broker workload: a comparison of a raw client and the bus doing the same work.
#[derive(Debug, Clone, Copy)]
pub struct BrokerWorkload {
    /// The row's name (a throughput row's name starts with it).
    pub name: &'static str,
    /// The raw client's workload.
    pub raw: &'static str,
    /// The bus's workload.
    pub bus: &'static str,
    /// Where both run.
    pub broker: Broker,
}

/// The broker workloads: [`crate::nats`]'s runs (end to end, and publishing only) and
/// [`crate::kafka`]'s (end to end), on the throughput rows' runtime (2 workers). Instructions
/// are counted over the whole process, every thread (async-nats's connection and
/// librdkafka's threads never enter [`measured`]; setup cancels out in the difference all the
/// same), except quanta's clock calibration; allocations too (the counting allocator sees
/// every thread's, but not librdkafka's own `malloc`s, made in C). Work done on a timer
/// (pings, progress acks, heartbeats, librdkafka's polling) is counted too, and weighs more
/// per message than at full speed, as the process runs many times slower under callgrind;
/// three processes of one workload read within about 2 % of each other.
pub const BROKER_WORKLOADS: [BrokerWorkload; 3] = [
    BrokerWorkload {
        name: "NATS bus vs raw async-nats, end to end",
        raw: "nats-raw",
        bus: "nats",
        broker: Broker::Nats,
    },
    BrokerWorkload {
        name: "NATS bus vs raw async-nats, publish only",
        raw: "nats-publish-raw",
        bus: "nats-publish",
        broker: Broker::Nats,
    },
    BrokerWorkload {
        name: "Kafka bus vs raw rdkafka, end to end",
        raw: "kafka-raw",
        bus: "kafka",
        broker: Broker::Kafka,
    },
];
/// Where a Kafka workload's process finds its brokers.
pub const KAFKA_BROKERS_VAR: &str = "EVENTBUS_KAFKA_BROKERS";

/// Messages of the shorter run of a broker workload.
pub const BROKER_MESSAGES: usize = 5_000;

fn is_broker_workload(workload: &str) -> bool {
    BROKER_WORKLOADS
        .iter()
        .any(|w| workload == w.raw || workload == w.bus)
}

/// Targets of the performance issue: most allocations and instructions per message in the
/// dispatcher (its one allocation is the oneshot of the tower `call`).
pub const TARGET_ALLOCATIONS: f64 = 1.0;
/// See [`TARGET_ALLOCATIONS`].
pub const TARGET_INSTRUCTIONS: f64 = 1_500.0;
/// Most allocations per message of the memory bus end to end (the message shared by the
/// topic's log).
pub const TARGET_MEMORY_ALLOCATIONS: f64 = 1.0;
/// Allocations per message the measurement itself shows on a loop that makes none (the raw
/// loop reads 0.01: buffers growing inside tokio): within it of the target counts as met.
pub const ALLOCATION_FLOOR: f64 = 0.05;

/// Whether `allocations` per message meet `target` (within [`ALLOCATION_FLOOR`]).
pub fn allocations_met(allocations: f64, target: f64) -> bool {
    allocations <= target + ALLOCATION_FLOOR
}

/// The counted region: callgrind counts only inside this call (`--toggle-collect`).
#[inline(never)]
pub fn measured<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

/// The command line of the workload binaries: `<workload> <messages> [keys] [subscriptions]`
/// (keys default to [`KEYS`], subscriptions to 1; `raw`, `dispatcher` and `memory` have one
/// subscription whatever is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadArgs {
    /// One of [`WORKLOADS`] or [`SPREAD_WORKLOADS`].
    pub workload: String,
    /// Messages of the run.
    pub messages: usize,
    /// Keys, round robin.
    pub keys: usize,
    /// Routes or topics of the spread workloads.
    pub subscriptions: usize,
    /// The brokers of a Kafka workload: not on its command line, but given to its process as
    /// [`KAFKA_BROKERS_VAR`].
    pub kafka_brokers: Option<String>,
}

impl WorkloadArgs {
    /// `workload` with `messages` messages, [`KEYS`] keys and one subscription.
    pub fn new(workload: &str, messages: usize) -> Self {
        WorkloadArgs {
            workload: workload.to_owned(),
            messages,
            keys: KEYS,
            subscriptions: 1,
            kafka_brokers: None,
        }
    }

    /// From the words after the program's name; what is missing or not a number takes its
    /// default (workload `dispatcher`, [`MESSAGES`], [`KEYS`], 1).
    pub fn parse(args: &[String]) -> Self {
        let number =
            |i: usize, default: usize| args.get(i).and_then(|n| n.parse().ok()).unwrap_or(default);
        WorkloadArgs {
            workload: args.first().map_or("dispatcher", String::as_str).to_owned(),
            messages: number(1, MESSAGES),
            keys: number(2, KEYS).max(1),
            subscriptions: number(3, 1).max(1),
            kafka_brokers: None,
        }
    }

    /// This process's command line.
    pub fn from_env() -> Self {
        Self::parse(&std::env::args().skip(1).collect::<Vec<_>>())
    }

    /// The command line that [`parse`](Self::parse) reads back.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.workload.clone(),
            self.messages.to_string(),
            self.keys.to_string(),
            self.subscriptions.to_string(),
        ]
    }

    /// Gives a Kafka workload's process its brokers.
    fn set_env(&self, command: &mut Command) {
        if let Some(brokers) = &self.kafka_brokers {
            command.env(KAFKA_BROKERS_VAR, brokers);
        }
    }

    /// The same workload with `messages` messages.
    pub fn with_messages(&self, messages: usize) -> Self {
        WorkloadArgs {
            messages,
            ..self.clone()
        }
    }
}

/// Runs the workload `args` names, counting only the workload itself; `around` is called just
/// before and just after (the allocation counter reads there).
pub fn run_workload(args: &WorkloadArgs, mut around: impl FnMut()) {
    if is_broker_workload(&args.workload) {
        return run_broker_workload(args, around);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // What a process pays once is not a per-message cost: a dispatcher made and dropped here
    // calibrates the clock that times handler calls and publishes, outside the counted region
    // (the calibration runs until it converges, so its instructions vary from run to run).
    runtime.block_on(async { drop(Dispatcher::new(DispatcherConfig::default())) });
    let (messages, keys, subscriptions) = (args.messages, args.keys, args.subscriptions);
    match args.workload.as_str() {
        "raw" | "dispatcher" => {
            // The pool outlives the region, so freeing the messages is not counted.
            let pool: Vec<Arc<_>> = workload::messages("cost", keys, messages)
                .into_iter()
                .map(Arc::new)
                .collect();
            let items = pool.clone();
            around();
            if args.workload == "raw" {
                measured(|| runtime.block_on(workload::raw_mpsc(items)));
            } else {
                measured(|| runtime.block_on(workload::dispatcher(items)));
            }
            around();
            drop(pool);
        }
        "memory" => {
            // The bus takes messages by value; the clones share id and payload with the pool.
            let pool = workload::messages("cost", keys, messages);
            let items = pool.clone();
            around();
            measured(|| runtime.block_on(workload::memory_bus(items)));
            around();
            drop(pool);
        }
        "dispatcher-routes" => {
            let pool = workload::spread(keys, subscriptions, messages);
            let items = pool.clone();
            around();
            measured(|| {
                runtime.block_on(workload::dispatcher_routes(items, messages, subscriptions))
            });
            around();
            drop(pool);
        }
        "memory-topics" => {
            let pool = workload::spread(keys, subscriptions, messages);
            let items: Vec<_> = pool.iter().map(|(_, m)| (**m).clone()).collect();
            let topics: Vec<String> = (0..subscriptions).map(workload::spread_topic).collect();
            around();
            measured(|| runtime.block_on(workload::memory_bus_topics(items, messages, &topics)));
            around();
            drop(pool);
        }
        other => panic!("unknown workload {other}: one of {WORKLOADS:?} or {SPREAD_WORKLOADS:?}"),
    }
}

/// A broker workload (see [`BROKER_WORKLOADS`]).
fn run_broker_workload(args: &WorkloadArgs, mut around: impl FnMut()) {
    use crate::{kafka, nats};
    let runtime = crate::runtime();
    let n = args.messages;
    let kafka_brokers = || {
        std::env::var(KAFKA_BROKERS_VAR)
            .unwrap_or_else(|_| panic!("{} runs against {KAFKA_BROKERS_VAR}", args.workload))
    };
    around();
    measured(|| {
        runtime.block_on(async {
            match args.workload.as_str() {
                "nats-raw" => nats::raw(nats::URL, n, 0).await,
                "nats" => nats::bus(nats::URL, n, 0).await,
                "nats-publish-raw" => nats::raw_publish(nats::URL, n, 0).await,
                "nats-publish" => nats::bus_publish(nats::URL, n, 0).await,
                "kafka-raw" => kafka::raw(&kafka_brokers(), n, 0).await,
                "kafka" => kafka::bus(&kafka_brokers(), n, 0).await,
                other => unreachable!("not a broker workload: {other}"),
            }
        })
    });
    around();
}

/// The `main` of `cost-workload` and `alloc-workload`: the workload of [`WorkloadArgs`].
pub fn workload_main(around: impl FnMut()) {
    run_workload(&WorkloadArgs::from_env(), around);
}

/// Cost per message of one workload.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// Instructions (callgrind `Ir`) per message, if valgrind ran.
    pub instructions: Option<f64>,
    /// Heap allocations (new blocks) per message.
    pub allocations: f64,
    /// Reallocations per message (a growing buffer: amortized, usually near zero).
    pub reallocations: f64,
    /// Heap bytes allocated per message.
    pub bytes: f64,
}

/// Where the workload binaries are: beside the running executable.
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name(name)
}

fn callgrind(exe: &Path, args: &WorkloadArgs, out: &Path) -> Result<u64, String> {
    let mut valgrind = Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()));
    if is_broker_workload(&args.workload) {
        // Everything but quanta's clock calibration (the bus's first dispatcher calibrates the
        // clock that times handler calls): it runs until its reading settles, so its
        // instructions vary from process to process by millions. (A toggle makes collection
        // start off; `--collect-atstart` after it turns it back on.)
        valgrind
            .arg("--toggle-collect=quanta::Clock::new")
            .arg("--collect-atstart=yes");
    } else {
        valgrind.arg("--toggle-collect=*measured*");
    }
    args.set_env(&mut valgrind);
    let output = valgrind
        .arg("--dump-instr=no")
        .arg(exe)
        .args(args.to_args())
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "valgrind failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", out.display()))
}

/// Pairs of callgrind runs per figure (see [`instructions`]).
pub const CALLGRIND_PAIRS: usize = 3;

/// Instructions per message of the workload `args` (`args.messages` = n): callgrind over n and
/// 2n messages, (2n − n) / n, the median of [`CALLGRIND_PAIRS`] such pairs, each pair in fresh
/// processes. One pair alone moves by up to ±40 instructions per message from process to
/// process on the same binary: glibc's malloc merges freed chunks (`malloc_consolidate`) when
/// the heap's layout in that process makes it, 0 to ~45 instructions per message here. The
/// files of the last pair go into `dir` as `<stem>.<n>.callgrind` and `<stem>.<2n>.callgrind`.
pub fn instructions(args: &WorkloadArgs, dir: &Path, stem: &str) -> Result<f64, String> {
    let exe = sibling("cost-workload");
    let n = args.messages;
    let mut per_message = Vec::with_capacity(CALLGRIND_PAIRS);
    for _ in 0..CALLGRIND_PAIRS {
        let i1 = callgrind(&exe, args, &dir.join(format!("{stem}.{n}.callgrind")))?;
        let i2 = callgrind(
            &exe,
            &args.with_messages(2 * n),
            &dir.join(format!("{stem}.{}.callgrind", 2 * n)),
        )?;
        per_message.push((i2 as f64 - i1 as f64) / n as f64);
    }
    per_message.sort_by(f64::total_cmp);
    Ok(per_message[per_message.len() / 2])
}

fn allocations(exe: &Path, args: &WorkloadArgs) -> Result<(u64, u64, u64), String> {
    let mut command = Command::new(exe);
    args.set_env(&mut command);
    let output = command
        .args(args.to_args())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse::<u64>().ok())
    };
    match (
        output.status.success(),
        field("allocations="),
        field("reallocations="),
        field("bytes="),
    ) {
        (true, Some(a), Some(r), Some(b)) => Ok((a, r, b)),
        _ => Err(format!("{} printed {text:?}", exe.display())),
    }
}

/// Measures every workload; `dir` gets the callgrind files (`<workload>.<n>.callgrind`).
pub fn measure(dir: &Path, with_callgrind: bool) -> Result<Vec<(&'static str, Cost)>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let counting = sibling("alloc-workload");
    let n = MESSAGES;
    WORKLOADS
        .iter()
        .map(|&w| {
            let args = WorkloadArgs::new(w, n);
            let (a1, r1, b1) = allocations(&counting, &args)?;
            let (a2, r2, b2) = allocations(&counting, &args.with_messages(2 * n))?;
            let instructions = if with_callgrind {
                Some(instructions(&args, dir, w)?)
            } else {
                None
            };
            Ok((
                w,
                Cost {
                    instructions,
                    allocations: (a2 as f64 - a1 as f64) / n as f64,
                    reallocations: (r2 as f64 - r1 as f64) / n as f64,
                    bytes: (b2 as f64 - b1 as f64) / n as f64,
                },
            ))
        })
        .collect()
}

/// The functions with the most instructions of their own in a callgrind file of a
/// `messages`-message run (`callgrind_annotate --inclusive=no`): `top` lines of instructions
/// per message, function and source file (where inlined code came from).
pub fn profile(file: &Path, messages: usize, top: usize) -> Result<String, String> {
    let output = Command::new("callgrind_annotate")
        .arg("--inclusive=no")
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run callgrind_annotate: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<String> = text
        .lines()
        .skip_while(|l| !l.contains("file:function"))
        .filter_map(|l| {
            let (count, rest) = l.trim().split_once(' ')?;
            let count: f64 = count.replace(',', "").parse().ok()?;
            let (_, place) = rest.split_once(")  ")?;
            let place = place.split(" [").next()?;
            let (path, function) = place.split_once(':')?;
            let file = path.rsplit('/').next().unwrap_or(path);
            Some(format!(
                "{:>7.0}  {function}  ({file})",
                count / messages.max(1) as f64
            ))
        })
        .take(top)
        .collect();
    Ok(lines.join("\n"))
}

/// Instructions and allocations per message of a broker workload's raw client and bus.
#[derive(Debug, Clone, Copy)]
pub struct BrokerCost {
    /// The row ([`BrokerWorkload::name`]).
    pub name: &'static str,
    /// The raw client's instructions per message.
    pub raw: f64,
    /// The bus's.
    pub bus: f64,
    /// The raw client's allocations per message (Rust's, every thread).
    pub raw_allocations: f64,
    /// The bus's.
    pub bus_allocations: f64,
}

/// Where the broker workloads can run: whether the shared NATS server answers, and the Kafka
/// brokers, if any.
#[derive(Debug, Clone, Default)]
pub struct Brokers {
    /// A NATS server answers at [`crate::nats::URL`].
    pub nats: bool,
    /// `bootstrap.servers` of a Kafka the workloads may create topics on.
    pub kafka: Option<String>,
}

/// Measures every broker workload whose broker is there: instructions with callgrind,
/// allocations with the counting allocator, each as (2n − n) / n; `dir` gets the callgrind
/// files.
pub fn measure_brokers(dir: &Path, brokers: &Brokers) -> Result<Vec<BrokerCost>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let counting = sibling("alloc-workload");
    let n = BROKER_MESSAGES;
    BROKER_WORKLOADS
        .iter()
        .filter(|w| match w.broker {
            Broker::Nats => brokers.nats,
            Broker::Kafka => brokers.kafka.is_some(),
        })
        .map(|w| {
            let args = |workload: &str| WorkloadArgs {
                kafka_brokers: brokers.kafka.clone(),
                ..WorkloadArgs::new(workload, n)
            };
            let per_message = |workload: &str| -> Result<(f64, f64), String> {
                let args = args(workload);
                let (a1, _, _) = allocations(&counting, &args)?;
                let (a2, _, _) = allocations(&counting, &args.with_messages(2 * n))?;
                let instructions = instructions(&args, dir, workload)?;
                Ok((instructions, (a2 as f64 - a1 as f64) / n as f64))
            };
            let (raw, raw_allocations) = per_message(w.raw)?;
            let (bus, bus_allocations) = per_message(w.bus)?;
            Ok(BrokerCost {
                name: w.name,
                raw,
                bus,
                raw_allocations,
                bus_allocations,
            })
        })
        .collect()
}

/// Whether valgrind can be run.
pub fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
