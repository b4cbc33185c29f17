//! How cost per message grows with work: the memory bus end to end and the dispatcher alone at
//! 10², 10⁴ and 10⁶ keys (one subscription) and at 1, 4 and 64 subscriptions (10⁴ keys), each
//! cell measured for throughput, peak heap and instructions per message.
//!
//! Cost per message should not depend on how many keys or subscriptions there are; the table
//! and its ratio lines (largest size over smallest, per axis) say whether it does.
//!
//! - **Throughput**: interleaved rounds (every cell once per round) on the multi-thread runtime
//!   of the throughput benchmarks ([`crate::runtime`]), median and min–max.
//! - **Peak heap**: a fresh process per cell (`heap-workload`, a peak-tracking allocator), the
//!   high-water of live heap bytes during the run above the heap in use just before it, on a
//!   current-thread runtime, so that it is the same figure every time. The pre-built messages
//!   are not in it: each is handed to the bus as a clone made when it is published, sharing id,
//!   key and payload with the pre-built one, so a handled message frees nothing that was
//!   counted before the run (had the clones been made in advance, the bus dropping them would
//!   lower the count and could hide what it keeps). What remains is the machinery and the
//!   messages it holds.
//! - **Instructions per message**: callgrind with the method of [`crate::cost`] ((2n − n)/n on
//!   a current-thread runtime, median of its pairs), at 10² and 10⁴ keys only: the 10⁶-key
//!   cell needs 10⁶ and 2×10⁶ messages, over a minute under callgrind, per side.
//!
//! The cells run the workloads [`cost::SPREAD_WORKLOADS`]: a subscription (or route) per
//! topic, key `k` on topic `k mod subscriptions` ([`workload::spread`]).

use crate::units::{bytes, thousands};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus_core::{DispatcherConfig, Message};
use eventbus_memory::MemoryConfig;

use crate::cost::{self, WorkloadArgs};
use crate::stats::{Rate, Samples};
use crate::workload;

/// Key counts of the keys axis (one subscription).
pub const KEY_COUNTS: [usize; 3] = [100, 10_000, 1_000_000];
/// Subscription counts of the subscriptions axis.
pub const SUBSCRIPTION_COUNTS: [usize; 3] = [1, 4, 64];
/// Keys of the subscriptions axis: the middle of the keys axis, so the two axes share a cell,
/// and enough keys that 64 topics get about 156 each.
pub const SUBSCRIPTION_KEYS: usize = 10_000;
/// Most keys of a cell whose instructions callgrind counts.
pub const CALLGRIND_MAX_KEYS: usize = 10_000;
/// Messages per throughput run, before `--quick` divides it and the keys raise it.
pub const MESSAGES: usize = 200_000;
/// A ratio within this much of 1 reads as flat (instructions, peak heap; for throughput the
/// line says instead whether every round agreed).
pub const FLAT: f64 = 0.05;

/// What a cell runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The memory bus end to end, one subscription per topic.
    MemoryBus,
    /// The dispatcher alone, one route per topic.
    Dispatcher,
}

impl Side {
    /// Both, in table order.
    pub const ALL: [Side; 2] = [Side::MemoryBus, Side::Dispatcher];

    /// How the table names it.
    pub fn name(self) -> &'static str {
        match self {
            Side::MemoryBus => "memory bus",
            Side::Dispatcher => "dispatcher alone",
        }
    }

    /// The workload binaries' name for it ([`cost::SPREAD_WORKLOADS`]).
    pub fn workload(self) -> &'static str {
        match self {
            Side::MemoryBus => "memory-topics",
            Side::Dispatcher => "dispatcher-routes",
        }
    }
}

/// The two axes of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// [`KEY_COUNTS`] at one subscription.
    Keys,
    /// [`SUBSCRIPTION_COUNTS`] at [`SUBSCRIPTION_KEYS`] keys.
    Subscriptions,
}

impl Axis {
    /// Both, in table order.
    pub const ALL: [Axis; 2] = [Axis::Keys, Axis::Subscriptions];

    /// The size of `cell` along this axis, if the cell is on it.
    pub fn size(self, cell: Cell) -> Option<usize> {
        match self {
            Axis::Keys => (cell.subscriptions == 1).then_some(cell.keys),
            Axis::Subscriptions => (cell.keys == SUBSCRIPTION_KEYS).then_some(cell.subscriptions),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Axis::Keys => "keys",
            Axis::Subscriptions => "subscriptions",
        }
    }

    fn fixed(self) -> String {
        match self {
            Axis::Keys => "1 subscription".to_owned(),
            Axis::Subscriptions => format!("{} keys", thousands(SUBSCRIPTION_KEYS as f64)),
        }
    }
}

/// One cell: a side at a number of keys and subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// What runs.
    pub side: Side,
    /// Keys, round robin.
    pub keys: usize,
    /// Subscriptions (memory bus) or routes (dispatcher), one topic each.
    pub subscriptions: usize,
}

/// Every cell once: per side the keys axis, then the subscriptions axis without the cell the
/// two share.
pub fn cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for side in Side::ALL {
        for keys in KEY_COUNTS {
            cells.push(Cell {
                side,
                keys,
                subscriptions: 1,
            });
        }
        for subscriptions in SUBSCRIPTION_COUNTS {
            let cell = Cell {
                side,
                keys: SUBSCRIPTION_KEYS,
                subscriptions,
            };
            if !cells.contains(&cell) {
                cells.push(cell);
            }
        }
    }
    cells
}

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Interleaved throughput rounds.
    pub rounds: usize,
    /// Fewer messages per run.
    pub quick: bool,
    /// Whether callgrind counts instructions.
    pub callgrind: bool,
}

impl Plan {
    /// Messages per run of a cell with `keys` keys: [`MESSAGES`] (a fifth with `quick`), and at
    /// least two per key (one with `quick`), so every key is used, and used again after its
    /// first message has left the dispatcher.
    pub fn messages(&self, keys: usize) -> usize {
        if self.quick {
            (MESSAGES / 5).max(keys)
        } else {
            MESSAGES.max(2 * keys)
        }
    }
}

/// Live heap of one cell's run ([`heap_workload_main`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    /// Bytes in use just before the run: the pre-built messages, the runtime.
    pub before: u64,
    /// The peak during the run above `before`.
    pub peak: u64,
}

/// One cell's figures.
#[derive(Debug, Clone)]
pub struct Row {
    /// The cell.
    pub cell: Cell,
    /// Messages per throughput and heap run.
    pub messages: usize,
    /// msg/s per round.
    pub throughput: Samples,
    /// Peak heap, if measured.
    pub heap: Option<Heap>,
    /// Instructions per message, if callgrind counted them.
    pub instructions: Option<f64>,
}

/// The growth table: every cell's figures and how they were made.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Interleaved throughput rounds.
    pub rounds: usize,
    /// One per [`cells`].
    pub rows: Vec<Row>,
    /// What was not measured and why.
    pub notes: Vec<String>,
    /// How long measuring took.
    pub elapsed: Duration,
}

/// Measures every cell; progress goes to stderr.
pub fn measure(plan: &Plan) -> Table {
    let started = Instant::now();
    let rounds = plan.rounds.max(1);
    let mut notes = Vec::new();
    let mut rows: Vec<Row> = cells()
        .into_iter()
        .map(|cell| Row {
            cell,
            messages: plan.messages(cell.keys),
            throughput: Samples::default(),
            heap: None,
            instructions: None,
        })
        .collect();

    throughput(&mut rows, rounds);

    for row in rows.iter_mut() {
        match heap(&row.cell, row.messages) {
            Ok(h) => row.heap = Some(h),
            Err(e) => {
                notes.push(format!("peak heap not measured: {e}"));
                break;
            }
        }
    }
    eprintln!("growth: peak heap done ({:.0?})", started.elapsed());

    if plan.callgrind {
        let dir = std::env::temp_dir().join(format!("eventbus-growth-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            notes.push(format!("instructions not measured: {}: {e}", dir.display()));
        } else {
            for row in rows
                .iter_mut()
                .filter(|r| r.cell.keys <= CALLGRIND_MAX_KEYS)
            {
                match instructions(&row.cell, &dir) {
                    Ok(i) => row.instructions = Some(i),
                    Err(e) => {
                        notes.push(format!("instructions not measured: {e}"));
                        break;
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        eprintln!("growth: callgrind done ({:.0?})", started.elapsed());
    } else {
        notes.push("instructions not measured: callgrind off or valgrind missing.".to_owned());
    }

    Table {
        rounds,
        rows,
        notes,
        elapsed: started.elapsed(),
    }
}

/// Messages of a spread workload, each with its topic's index ([`workload::spread`]).
type Pool = Vec<(usize, Arc<Message>)>;

/// Throughput of every row, `rounds` interleaved rounds. Each cell's messages are built once
/// (the cells of one key and subscription count share them) and cloned before each run.
fn throughput(rows: &mut [Row], rounds: usize) {
    let runtime = crate::runtime();
    // Which messages a row runs: its keys, subscriptions and count.
    let id = |row: &Row| (row.cell.keys, row.cell.subscriptions, row.messages);
    let mut pools: HashMap<(usize, usize, usize), Pool> = HashMap::new();
    for row in rows.iter() {
        let (keys, subscriptions, n) = id(row);
        pools
            .entry(id(row))
            .or_insert_with(|| workload::spread(keys, subscriptions, n));
    }
    for round in 0..rounds {
        let started = Instant::now();
        for row in rows.iter_mut() {
            let pool = &pools[&id(row)];
            let (n, subscriptions) = (row.messages, row.cell.subscriptions);
            let elapsed = match row.cell.side {
                Side::Dispatcher => {
                    let items = pool.clone();
                    runtime.block_on(workload::dispatcher_routes(items, n, subscriptions))
                }
                Side::MemoryBus => {
                    let items: Vec<Message> = pool.iter().map(|(_, m)| (**m).clone()).collect();
                    let topics: Vec<String> =
                        (0..subscriptions).map(workload::spread_topic).collect();
                    runtime.block_on(workload::memory_bus_topics(items, n, &topics))
                }
            };
            row.throughput.push(workload::rate(n, elapsed));
        }
        eprintln!(
            "growth: throughput round {round} done ({:.1?})",
            started.elapsed()
        );
    }
}

/// The peak heap of `cell`, from a fresh `heap-workload` process.
fn heap(cell: &Cell, messages: usize) -> Result<Heap, String> {
    let exe = cost::sibling("heap-workload");
    let args = workload_args(cell, messages);
    let output = Command::new(&exe)
        .args(args.to_args())
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}; `cargo build --release -p eventbus-bench` builds it)",
                exe.display()
            )
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    match (output.status.success(), parse_heap(&text)) {
        (true, Some(h)) => Ok(h),
        _ => Err(format!(
            "{} {} printed {text:?}, stderr {:?}",
            exe.display(),
            args.to_args().join(" "),
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

/// Reads `heap-workload`'s line: `before=<bytes> peak=<bytes>`.
pub fn parse_heap(text: &str) -> Option<Heap> {
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse::<u64>().ok())
    };
    Some(Heap {
        before: field("before=")?,
        peak: field("peak=")?,
    })
}

fn instructions(cell: &Cell, dir: &Path) -> Result<f64, String> {
    let args = workload_args(cell, cost::MESSAGES);
    let stem = format!(
        "{}.{}k.{}s",
        cell.side.workload(),
        cell.keys,
        cell.subscriptions
    );
    cost::instructions(&args, dir, &stem)
}

fn workload_args(cell: &Cell, messages: usize) -> WorkloadArgs {
    WorkloadArgs {
        workload: cell.side.workload().to_owned(),
        messages,
        keys: cell.keys,
        subscriptions: cell.subscriptions,
        kafka_brokers: None,
    }
}

/// The `main` of `heap-workload`: the spread workload of [`WorkloadArgs::from_env`] on a
/// current-thread runtime; `mark` is called just before and just after it (the binary reads
/// its allocator there). The messages are built first and handed over as they are published
/// (see the module's note on peak heap).
pub fn heap_workload_main(mut mark: impl FnMut()) {
    let args = WorkloadArgs::from_env();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (n, subscriptions) = (args.messages, args.subscriptions);
    let pool = Arc::new(workload::spread(args.keys, subscriptions, n));
    let handed = Arc::clone(&pool);
    match args.workload.as_str() {
        "dispatcher-routes" => {
            // An `Arc` clone allocates nothing: the dispatcher's messages are all in `before`.
            let items = (0..n).map(move |i| handed[i].clone());
            mark();
            runtime.block_on(workload::dispatcher_routes(items, n, subscriptions));
            mark();
        }
        "memory-topics" => {
            let items = (0..n).map(move |i| (*handed[i].1).clone());
            let topics: Vec<String> = (0..subscriptions).map(workload::spread_topic).collect();
            mark();
            runtime.block_on(workload::memory_bus_topics(items, n, &topics));
            mark();
        }
        other => panic!(
            "heap-workload runs {:?}, not {other}",
            cost::SPREAD_WORKLOADS
        ),
    }
    drop(pool);
}

impl Table {
    /// The rows of `side` on `axis`, smallest size first.
    pub fn axis(&self, side: Side, axis: Axis) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.cell.side == side && axis.size(r.cell).is_some())
            .collect();
        rows.sort_by_key(|r| axis.size(r.cell));
        rows
    }

    /// The markdown: what was measured how, a table per axis, each followed by its ratio
    /// lines, then the notes. Headings are `###`, for a section of BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let dispatcher = DispatcherConfig::default();
        let memory = MemoryConfig::default();
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Can cost per message grow with the work? Each cell is the memory bus end to end (that \
             many subscriptions, each on its own topic, one group) or the dispatcher alone (that \
             many routes); keys round robin, key k on topic k mod subscriptions, so the messages \
             go round robin over the topics; no-op handler, {}-byte payloads.\n",
            workload::PAYLOAD_LEN
        );
        let _ = writeln!(
            md,
            "- **msg/s**: tokio multi-thread runtime with 2 workers, {} interleaved rounds (every \
             cell once per round), median (min–max); messages built before the clock starts.\n\
             - **peak heap**: a fresh process per cell, current-thread runtime, the same \
             messages; the high-water of live heap bytes during the run above the bytes in use \
             just before it (allocator `peak_alloc`). The pre-built messages are not in it: each \
             is handed to the bus as a clone made when it is published (sharing id, key and \
             payload), so it counts the machinery and the messages it holds. The bounds on what \
             it holds: the dispatcher admits {} messages (`max_buffered`), a memory topic holds \
             {} not yet acked (`topic_capacity`), so S topics can hold S times as many.\n\
             - **instructions/msg**: callgrind as in the cost table (current-thread runtime, \
             (2n − n)/n with n = {}, the median of {} pairs), up to {} keys (10⁶ keys take \
             over a minute per cell under callgrind). On one thread, so what only two workers bring (contention, wake-ups \
             across threads, tasks moving between workers) shows in msg/s alone.\n",
            self.rounds,
            thousands(dispatcher.max_buffered as f64),
            thousands(memory.topic_capacity as f64),
            thousands(cost::MESSAGES as f64),
            cost::CALLGRIND_PAIRS,
            thousands(CALLGRIND_MAX_KEYS as f64),
        );
        for axis in Axis::ALL {
            let _ = writeln!(md, "### By {} ({})\n", axis.noun(), axis.fixed());
            let _ = writeln!(
                md,
                "| workload | {} | messages/run | msg/s | peak heap | instructions/msg |\n|---|---|---|---|---|---|",
                axis.noun()
            );
            for side in Side::ALL {
                for r in self.axis(side, axis) {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {} |",
                        side.name(),
                        thousands(axis.size(r.cell).unwrap_or(0) as f64),
                        thousands(r.messages as f64),
                        Rate(&r.throughput),
                        r.heap
                            .map_or_else(|| "—".to_owned(), |h| bytes(h.peak as f64)),
                        r.instructions
                            .map_or_else(|| "—".to_owned(), |i| format!("{i:.0}")),
                    );
                }
            }
            let _ = writeln!(md);
            for side in Side::ALL {
                if let Some(line) = ratio_line(side, axis, &self.axis(side, axis)) {
                    let _ = writeln!(md, "- {line}");
                }
            }
            let _ = writeln!(md);
        }
        for n in &self.notes {
            let _ = writeln!(md, "Note: {n}\n");
        }
        let _ = writeln!(
            md,
            "Measured in {:.0} s.",
            self.elapsed.as_secs_f64().round()
        );
        md
    }
}

/// The growth of `side` along `axis` from its rows (smallest size first): throughput, peak
/// heap and instructions at the largest size over the smallest (instructions: the largest size
/// callgrind measured), each with a word saying which way it went.
///
/// Throughput is compared round by round, as the benchmarks' ratios are: both cells ran in the
/// same round, so a slow phase of a noisy machine slows both. The median ratio comes with its
/// min–max, and the word says whether every round agreed.
pub fn ratio_line(side: Side, axis: Axis, rows: &[&Row]) -> Option<String> {
    let (first, last) = (rows.first()?, rows.last()?);
    let size = |r: &Row| thousands(axis.size(r.cell).unwrap_or(0) as f64);
    let mut parts = Vec::new();
    let ratios = Samples(
        first
            .throughput
            .0
            .iter()
            .zip(&last.throughput.0)
            .map(|(a, b)| b / a)
            .collect(),
    );
    if !ratios.0.is_empty() {
        let word = if ratios.max() < 1.0 {
            "slower in every round"
        } else if ratios.min() > 1.0 {
            "faster in every round"
        } else {
            "rounds disagree: noise"
        };
        parts.push(format!(
            "msg/s {:.2}× ({:.2}–{:.2}, {word})",
            ratios.median(),
            ratios.min(),
            ratios.max()
        ));
    }
    if let (Some(a), Some(b)) = (first.heap, last.heap) {
        let ratio = b.peak as f64 / (a.peak as f64).max(1.0);
        parts.push(format!(
            "peak heap {ratio:.2}× ({} → {}, {})",
            bytes(a.peak as f64),
            bytes(b.peak as f64),
            trend(ratio)
        ));
    }
    let measured: Vec<&&Row> = rows.iter().filter(|r| r.instructions.is_some()).collect();
    if let (Some(a), Some(b)) = (measured.first(), measured.last())
        && a.cell != b.cell
    {
        let (ia, ib) = (
            a.instructions.unwrap_or(f64::NAN),
            b.instructions.unwrap_or(f64::NAN),
        );
        let ratio = ib / ia;
        let span = if b.cell == last.cell {
            String::new()
        } else {
            format!(", {} → {} {}", size(a), size(b), axis.noun())
        };
        parts.push(format!(
            "instructions/msg {ratio:.2}× ({ia:.0} → {ib:.0}{span}, {})",
            trend(ratio)
        ));
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "{}, {} {} → {}: {}.",
        side.name(),
        axis.noun(),
        size(first),
        size(last),
        parts.join("; ")
    ))
}

fn trend(ratio: f64) -> &'static str {
    if (ratio - 1.0).abs() <= FLAT {
        "flat"
    } else if ratio > 1.0 {
        "grows"
    } else {
        "falls"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(side: Side, keys: usize, subscriptions: usize, rates: &[f64]) -> Row {
        Row {
            cell: Cell {
                side,
                keys,
                subscriptions,
            },
            messages: 1_000,
            throughput: Samples(rates.to_vec()),
            heap: None,
            instructions: None,
        }
    }

    #[test]
    fn every_cell_once_and_the_axes_share_one() {
        let cells = cells();
        assert_eq!(cells.len(), 10);
        for side in Side::ALL {
            let on = |axis: Axis| {
                cells
                    .iter()
                    .filter(|c| c.side == side)
                    .filter_map(|c| axis.size(*c))
                    .collect::<Vec<_>>()
            };
            assert_eq!(on(Axis::Keys), KEY_COUNTS);
            let mut subscriptions = on(Axis::Subscriptions);
            subscriptions.sort_unstable();
            assert_eq!(subscriptions, SUBSCRIPTION_COUNTS);
        }
    }

    #[test]
    fn every_key_gets_a_message() {
        for quick in [false, true] {
            let plan = Plan {
                rounds: 1,
                quick,
                callgrind: false,
            };
            for keys in KEY_COUNTS {
                assert!(plan.messages(keys) >= keys, "{keys} keys, quick {quick}");
            }
        }
        let full = Plan {
            rounds: 1,
            quick: false,
            callgrind: false,
        };
        assert_eq!(full.messages(1_000_000), 2_000_000);
        assert_eq!(full.messages(100), MESSAGES);
    }

    #[test]
    fn heap_line_parses() {
        assert_eq!(
            parse_heap("before=1234 peak=56\n"),
            Some(Heap {
                before: 1234,
                peak: 56
            })
        );
        assert_eq!(parse_heap("before=1234\n"), None);
    }

    #[test]
    fn ratio_line_says_which_way_each_figure_went() {
        let mut small = row(Side::Dispatcher, 100, 1, &[1.0e6, 1.1e6, 0.9e6]);
        small.heap = Some(Heap {
            before: 0,
            peak: 1024 * 1024,
        });
        small.instructions = Some(2000.0);
        let mut middle = row(Side::Dispatcher, 10_000, 1, &[1.0e6]);
        middle.instructions = Some(2500.0);
        let mut large = row(Side::Dispatcher, 1_000_000, 1, &[0.5e6, 0.55e6, 0.45e6]);
        large.heap = Some(Heap {
            before: 0,
            peak: 1024 * 1024,
        });
        let line =
            ratio_line(Side::Dispatcher, Axis::Keys, &[&small, &middle, &large]).expect("a line");
        assert_eq!(
            line,
            "dispatcher alone, keys 100 → 1,000,000: msg/s 0.50× (0.50–0.50, slower in every \
             round); peak heap 1.00× (1.05 MB → 1.05 MB, flat); instructions/msg 1.25× (2000 → \
             2500, 100 → 10,000 keys, grows)."
        );
    }

    #[test]
    fn rounds_that_disagree_are_not_called_growth() {
        let a = row(Side::MemoryBus, 10_000, 1, &[1.0e6, 1.0e6, 1.0e6]);
        let b = row(Side::MemoryBus, 10_000, 64, &[1.05e6, 0.95e6, 1.1e6]);
        let line = ratio_line(Side::MemoryBus, Axis::Subscriptions, &[&a, &b]).expect("a line");
        assert_eq!(
            line,
            "memory bus, subscriptions 1 → 64: msg/s 1.05× (0.95–1.10, rounds disagree: noise)."
        );
        assert_eq!(ratio_line(Side::MemoryBus, Axis::Keys, &[]), None);
    }

    #[test]
    fn markdown_has_a_table_per_axis_and_dashes_for_what_was_not_measured() {
        let rows = cells()
            .into_iter()
            .map(|c| row(c.side, c.keys, c.subscriptions, &[1.0e6]))
            .collect();
        let table = Table {
            rounds: 3,
            rows,
            notes: vec!["instructions not measured: test.".to_owned()],
            elapsed: Duration::from_secs(90),
        };
        let md = table.markdown();
        assert!(md.contains("### By keys (1 subscription)"), "{md}");
        assert!(md.contains("### By subscriptions (10,000 keys)"), "{md}");
        assert!(
            md.contains("| memory bus | 1,000,000 | 1,000 | 1.00 M (1.00 M–1.00 M) | — | — |"),
            "{md}"
        );
        assert!(
            md.contains("| dispatcher alone | 64 | 1,000 | 1.00 M (1.00 M–1.00 M) | — | — |"),
            "{md}"
        );
        // The shared cell is in both tables.
        assert_eq!(md.matches("| memory bus | ").count(), 6, "{md}");
        assert!(
            md.contains("Note: instructions not measured: test."),
            "{md}"
        );
        assert!(md.contains("Measured in 90 s."), "{md}");
    }
}
