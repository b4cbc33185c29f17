//! The Go SDK's load test, measured properly: its pressure levels and two scenarios, a table
//! (markdown), its data (JSON) and a chart (SVG).
//!
//! Levels Low / Medium / High / Extreme = 500 / 2,000 / 5,000 / 10,000 messages over 5 topics,
//! plus [`Level::Large`] (1,000,000 messages; 10,000 aggregates in scenario B) to show how cost
//! grows with work. Scenarios (see [`crate::scenario`]):
//! - **A**: raw unkeyed messages, send timestamp + 100 bytes, one sender per topic sending
//!   `count / 5`;
//! - **B**: envelopes of `clamp(count / 10, 50, 1000)` aggregates, versions in order per
//!   aggregate, with the order checker.
//!
//! ```no_run
//! use eventbus_core::EventBus;
//! use eventbus_bench::load::{Level, LoadReport, Scenario};
//! # async fn demo(build: impl AsyncFn() -> EventBus) {
//! let mut report = LoadReport::new("memory", 2);
//! for level in Level::GO {
//!     for scenario in Scenario::BOTH {
//!         let run = eventbus_bench::load::run(level, scenario, || build()).await;
//!         report.push(level, scenario, &run);
//!     }
//! }
//! println!("{}", report.markdown());
//! assert!(report.failures().is_empty());
//! # }
//! ```

use crate::units::{bytes, compact_bytes, thousands};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use eventbus_core::EventBus;
use eventbus_testkit::leak::Snapshot;
use plotters::element::Text;
use plotters::style::RGBColor;
use serde::Serialize;

use crate::charts::{self, Axis, Bar};
use crate::scenario::{self, Latency, Load, Report, STAMP_LEN, Shape, Timeline};

/// Topics of every level (as in the Go SDK).
pub const TOPICS: usize = 5;
/// Payload bytes after the send timestamp (as in the Go SDK's scenario A).
pub const PAYLOAD: usize = 100;

/// A pressure level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// 500 messages.
    Low,
    /// 2,000 messages.
    Medium,
    /// 5,000 messages.
    High,
    /// 10,000 messages.
    Extreme,
    /// 1,000,000 messages (scenario B: 10,000 aggregates of 100 versions): not one of the Go
    /// SDK's levels; shows how cost grows with work.
    Large,
}

impl Level {
    /// The Go SDK's four levels.
    pub const GO: [Level; 4] = [Level::Low, Level::Medium, Level::High, Level::Extreme];
    /// Every level.
    pub const ALL: [Level; 5] = [
        Level::Low,
        Level::Medium,
        Level::High,
        Level::Extreme,
        Level::Large,
    ];

    /// Its name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Extreme => "extreme",
            Level::Large => "large",
        }
    }

    /// The level named `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<Level> {
        Self::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name))
    }

    /// Messages of each scenario at this level.
    pub fn messages(self) -> u64 {
        match self {
            Level::Low => 500,
            Level::Medium => 2_000,
            Level::High => 5_000,
            Level::Extreme => 10_000,
            Level::Large => 1_000_000,
        }
    }

    /// Aggregates of scenario B: `clamp(count / 10, 50, 1000)` for the Go SDK's levels, 10,000
    /// for [`Level::Large`].
    pub fn aggregates(self) -> usize {
        match self {
            Level::Large => 10_000,
            _ => (self.messages() / 10).clamp(50, 1000) as usize,
        }
    }

    /// The load of `scenario` at this level.
    pub fn load(self, scenario: Scenario) -> Load {
        let (aggregates, shape) = match scenario {
            Scenario::A => (TOPICS, Shape::Unkeyed),
            Scenario::B => (self.aggregates(), Shape::Envelope),
        };
        let large = self == Level::Large;
        Load {
            topics: TOPICS,
            aggregates,
            versions: self.messages() / aggregates as u64,
            payload: PAYLOAD,
            shape,
            deadline: Duration::from_secs(if large { 600 } else { 60 }),
            progress: large.then_some(Duration::from_secs(2)),
            stall: None,
        }
    }
}

/// One of the Go SDK's two load scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Scenario {
    /// Raw unkeyed messages with a send timestamp.
    A,
    /// Envelopes, versions in order per aggregate, order checked.
    B,
}

impl Scenario {
    /// Both, A first.
    pub const BOTH: [Scenario; 2] = [Scenario::A, Scenario::B];

    /// A short description.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::A => "A raw",
            Scenario::B => "B envelopes",
        }
    }
}

/// Runs `scenario` at `level` through a bus built by `build`.
pub async fn run<F, Fut>(level: Level, scenario: Scenario, build: F) -> Report
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = EventBus>,
{
    let label = format!("{} {}", level.name(), scenario.describe());
    scenario::run_bus(&label, level.load(scenario), build).await
}

/// Start, peak and after-close figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Triple {
    /// Before the bus was built.
    pub start: usize,
    /// Largest seen while it ran.
    pub peak: usize,
    /// After it closed.
    pub after_close: usize,
}

impl Triple {
    fn of(start: Snapshot, peak: Snapshot, after: Snapshot, f: fn(&Snapshot) -> usize) -> Self {
        Triple {
            start: f(&start),
            peak: f(&peak),
            after_close: f(&after),
        }
    }
}

/// A latency summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Micros {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl From<Latency> for Micros {
    fn from(l: Latency) -> Self {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Micros {
            count: l.count,
            mean: us(l.mean),
            p50: us(l.p50),
            p99: us(l.p99),
            max: us(l.max),
        }
    }
}

/// The figures of one level and scenario.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    /// The level.
    pub level: Level,
    /// The scenario.
    pub scenario: Scenario,
    /// Message shape.
    pub shape: Shape,
    /// Topics.
    pub topics: usize,
    /// Aggregates (scenario A: one sequence per sender).
    pub aggregates: usize,
    /// Versions per aggregate.
    pub versions: u64,
    /// Payload bytes, send timestamp included (envelopes also carry headers).
    pub payload_bytes: usize,
    /// Messages of the load.
    pub messages: u64,
    /// Messages published.
    pub sent: u64,
    /// Deliveries received (duplicates included).
    pub received: u64,
    /// Published messages never received.
    pub lost: u64,
    /// Deliveries of a message already received.
    pub duplicates: u64,
    /// Order violations (`None`: unkeyed, no order promised).
    pub order_violations: Option<u64>,
    /// Every message received before the deadline.
    pub completed: bool,
    /// First publish to last receipt, ms.
    pub elapsed_ms: f64,
    /// Received messages per second, first publish to last receipt.
    pub receive_msg_per_s: f64,
    /// Published messages per second, first publish to last publish returned.
    pub send_msg_per_s: f64,
    /// Publish latency, µs.
    pub publish_latency_us: Micros,
    /// End-to-end latency (send timestamp to handler), µs.
    pub e2e_latency_us: Micros,
    /// Alive tokio tasks (the harness's 5 sender tasks included while they run).
    pub tasks: Triple,
    /// OS threads of the process.
    pub threads: Triple,
    /// Live heap bytes (0 without the counting allocator).
    pub heap_bytes: Triple,
    /// Tasks after close minus at start.
    pub leaked_tasks: isize,
    /// Threads after close minus at start.
    pub leaked_threads: isize,
    /// Heap after close minus at start.
    pub heap_growth_bytes: isize,
    /// Most handler calls the dispatcher ran at once.
    pub dispatcher_peak_in_flight: Option<usize>,
    /// Failed publishes.
    pub errors: Vec<String>,
    /// Tasks, threads and heap over the run.
    pub timeline: Timeline,
}

impl LevelResult {
    /// The figures of `report`, a run of `scenario` at `level`.
    pub fn new(level: Level, scenario: Scenario, report: &Report) -> Self {
        let u = &report.usage;
        let load = report.load;
        LevelResult {
            level,
            scenario,
            shape: load.shape,
            topics: load.topics,
            aggregates: load.aggregates,
            versions: load.versions,
            payload_bytes: STAMP_LEN + load.payload,
            messages: load.messages(),
            sent: report.published,
            received: report.received,
            lost: report.lost,
            duplicates: report.duplicates,
            order_violations: report.ordered.then_some(report.order_violations),
            completed: report.completed,
            elapsed_ms: report.elapsed.as_secs_f64() * 1e3,
            receive_msg_per_s: report.throughput(),
            send_msg_per_s: report.send_throughput(),
            publish_latency_us: report.publish_latency.into(),
            e2e_latency_us: report.e2e_latency.into(),
            tasks: Triple::of(u.start, u.peak, u.after_close, |s| s.tasks),
            threads: Triple::of(u.start, u.peak, u.after_close, |s| s.threads),
            heap_bytes: Triple::of(u.start, u.peak, u.after_close, |s| s.heap_bytes),
            leaked_tasks: u.leaked_tasks(),
            leaked_threads: u.leaked_threads(),
            heap_growth_bytes: u.heap_growth(),
            dispatcher_peak_in_flight: report.dispatcher.map(|d| d.peak_in_flight),
            errors: report.errors.clone(),
            timeline: report.timeline.clone(),
        }
    }

    /// What is wrong with this run: loss, order violations, leaked tasks, an incomplete run,
    /// failed publishes.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let what = format!("{} {}", self.level.name(), self.scenario.describe());
        if self.lost != 0 {
            out.push(format!("{what}: {} messages lost", self.lost));
        }
        if let Some(v) = self.order_violations.filter(|v| *v != 0) {
            out.push(format!("{what}: {v} order violations"));
        }
        if self.leaked_tasks != 0 {
            out.push(format!("{what}: {} tasks leaked", self.leaked_tasks));
        }

        if !self.completed {
            out.push(format!(
                "{what}: not every message arrived before the deadline"
            ));
        }
        out.extend(self.errors.iter().map(|e| format!("{what}: {e}")));
        out
    }

    fn label(&self) -> String {
        format!(
            "{} ({}) {}",
            self.level.name(),
            thousands(self.messages as f64),
            self.scenario.describe()
        )
    }
}

/// Every level and scenario run on one transport.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The transport's name.
    pub transport: String,
    /// Worker threads of the tokio runtime.
    pub runtime_workers: usize,
    /// Whether heap figures are real (the counting allocator was installed).
    pub heap_counted: bool,
    /// The runs, in the order they ran.
    pub results: Vec<LevelResult>,
}

impl LoadReport {
    /// An empty report.
    pub fn new(transport: &str, runtime_workers: usize) -> Self {
        LoadReport {
            transport: transport.to_owned(),
            runtime_workers,
            heap_counted: false,
            results: Vec::new(),
        }
    }

    /// Adds a run.
    pub fn push(&mut self, level: Level, scenario: Scenario, report: &Report) {
        self.heap_counted |= report.usage.start.heap_counted;
        self.results.push(LevelResult::new(level, scenario, report));
    }

    /// What is wrong, over all runs.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .flat_map(LevelResult::failures)
            .collect()
    }

    /// The table, in markdown.
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| level | scenario | sent | received | lost | dup | order violations | msg/s | publish p50 / p99 | e2e p50 / p99 | tasks start / peak / after | threads start / peak / after | heap start / peak / after |"
        );
        let _ = writeln!(t, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in &self.results {
            let heap = |b: usize| bytes(b as f64);
            let _ = writeln!(
                t,
                "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} / {} | {} / {} / {} | {} / {} / {} |",
                r.level.name(),
                thousands(r.messages as f64),
                r.scenario.describe(),
                thousands(r.sent as f64),
                thousands(r.received as f64),
                r.lost,
                r.duplicates,
                r.order_violations
                    .map_or_else(|| "n/a (unkeyed)".to_owned(), |v| v.to_string()),
                thousands(r.receive_msg_per_s),
                micros(r.publish_latency_us.p50),
                micros(r.publish_latency_us.p99),
                micros(r.e2e_latency_us.p50),
                micros(r.e2e_latency_us.p99),
                r.tasks.start,
                r.tasks.peak,
                r.tasks.after_close,
                r.threads.start,
                r.threads.peak,
                r.threads.after_close,
                heap(r.heap_bytes.start),
                heap(r.heap_bytes.peak),
                heap(r.heap_bytes.after_close),
            );
        }
        t
    }

    /// Writes the report as JSON to `path`, creating its directory.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }

    /// Draws the chart to `path` (SVG), creating its directory: throughput, peak tasks and heap
    /// per level; tasks and heap over each run.
    pub fn write_svg(&self, path: &Path) -> Result<(), charts::Error> {
        charts::write(path, self.svg_size(), |root| self.draw(root))
    }

    /// The chart of [`write_svg`](Self::write_svg), as SVG text.
    pub fn svg(&self) -> Result<String, charts::Error> {
        charts::render(self.svg_size(), |root| self.draw(root))
    }

    /// The levels run, in order.
    fn levels(&self) -> Vec<Level> {
        let mut levels: Vec<Level> = self.results.iter().map(|r| r.level).collect();
        levels.sort_unstable();
        levels.dedup();
        levels
    }

    /// The chart's width and height: the title and bar panels, then a row of timelines per
    /// level.
    fn svg_size(&self) -> (u32, u32) {
        let rows = self.levels().len().max(1) as u32;
        (CHART_WIDTH, CHART_TOP + CHART_ROW * rows)
    }

    fn draw(&self, root: &charts::Area<'_>) -> Result<(), charts::Error> {
        let levels = self.levels();
        let mut scenarios: Vec<Scenario> = self.results.iter().map(|r| r.scenario).collect();
        scenarios.sort_unstable();
        scenarios.dedup();
        let root = root.titled(
            &format!(
                "eventbus load: {} transport, {} topics, tokio runtime with {} workers",
                self.transport, TOPICS, self.runtime_workers
            ),
            ("sans-serif", 24),
        )?;
        let (upper, lower) = root.split_vertically(CHART_TOP - 40);
        let panels = upper.split_evenly((1, 3));
        let mut results: Vec<&LevelResult> = self.results.iter().collect();
        results.sort_by_key(|r| (r.level, r.scenario));
        let per_level = |f: fn(&LevelResult) -> f64| -> Vec<Bar> {
            results
                .iter()
                .map(|r| Bar::new(short(r), f(r)).colour(colour(r.scenario)))
                .collect()
        };
        charts::bars(
            &panels[0],
            "received msg/s, first publish to last receipt",
            &per_level(|r| r.receive_msg_per_s),
            Axis::Linear,
            |v| format!("{:.0}k", v / 1e3),
        )?;
        charts::bars(
            &panels[1],
            "tasks at peak (harness's 5 senders included)",
            &per_level(|r| r.tasks.peak as f64),
            Axis::Linear,
            |v| format!("{v:.0}"),
        )?;
        charts::bars(
            &panels[2],
            "heap at peak minus start (log scale)",
            &per_level(|r| r.heap_bytes.peak.saturating_sub(r.heap_bytes.start) as f64),
            Axis::Log,
            compact_bytes,
        )?;

        let (note, lower) = lower.split_vertically(22);
        note.draw(&Text::new(
            "tasks (left axis) and heap (right axis) over each run; dashed: publishing starts, \
             last receipt, closing starts, closed",
            (60, 4),
            ("sans-serif", 14),
        ))?;
        let cells = lower.split_evenly((levels.len().max(1), scenarios.len().max(1)));
        for r in &self.results {
            let (Some(i), Some(j)) = (
                levels.iter().position(|l| *l == r.level),
                scenarios.iter().position(|s| *s == r.scenario),
            ) else {
                continue;
            };
            let caption = format!(
                "{}: {} to last receipt, {} msg/s; tasks {} / {} / {}, heap growth {}",
                r.label(),
                duration_ms(r.elapsed_ms),
                thousands(r.receive_msg_per_s),
                r.tasks.start,
                r.tasks.peak,
                r.tasks.after_close,
                bytes(r.heap_growth_bytes as f64),
            );
            charts::timeline(&cells[i * scenarios.len() + j], &caption, &r.timeline)?;
        }
        Ok(())
    }
}

/// Width of the load chart.
const CHART_WIDTH: u32 = 1500;
/// Height of its title and bar panels.
const CHART_TOP: u32 = 490;
/// Height of each level's row of timelines.
const CHART_ROW: u32 = 250;

/// `level scenario` in a few characters, for an axis.
fn short(r: &LevelResult) -> String {
    let level = match r.level {
        Level::Low => "low",
        Level::Medium => "med",
        Level::High => "high",
        Level::Extreme => "ext",
        Level::Large => "1M",
    };
    format!("{level} {:?}", r.scenario)
}

/// Scenario A's bars in the first colour, B's in the second.
fn colour(s: Scenario) -> RGBColor {
    match s {
        Scenario::A => charts::BLUE,
        Scenario::B => charts::ORANGE,
    }
}

/// Microseconds as µs, ms or s.
fn micros(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.1} µs")
    } else {
        duration_ms(us / 1e3)
    }
}

/// Milliseconds as ms or s.
fn duration_ms(ms: f64) -> String {
    if ms < 1e3 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_match_the_go_sdk() {
        let b: Vec<_> = Level::GO
            .iter()
            .map(|l| {
                let load = l.load(Scenario::B);
                (load.aggregates, load.versions, load.messages())
            })
            .collect();
        assert_eq!(
            b,
            [
                (50, 10, 500),
                (200, 10, 2_000),
                (500, 10, 5_000),
                (1000, 10, 10_000)
            ]
        );
        for l in Level::ALL {
            let a = l.load(Scenario::A);
            assert_eq!((a.topics, a.aggregates, a.messages()), (5, 5, l.messages()));
            assert_eq!(a.shape, Shape::Unkeyed);
            assert_eq!(l.load(Scenario::B).messages(), l.messages());
            assert_eq!(Level::parse(&l.name().to_uppercase()), Some(l));
        }
        assert_eq!(Level::Large.load(Scenario::B).aggregates, 10_000);
    }

    #[test]
    fn formats() {
        assert_eq!(micros(12.34), "12.3 µs");
        assert_eq!(micros(4_560.0), "4.56 ms");
        assert_eq!(duration_ms(2_500.0), "2.50 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn report_renders_as_table_json_and_svg() {
        let mut report = LoadReport::new("raw-mpsc", 2);
        for scenario in Scenario::BOTH {
            let run = scenario::run_raw_mpsc("raw", Level::Low.load(scenario)).await;
            report.push(Level::Low, scenario, &run);
        }
        assert!(report.failures().is_empty(), "{:?}", report.failures());
        let table = report.markdown();
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.contains("n/a (unkeyed)"));
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(json["results"][1]["order_violations"], 0);
        assert_eq!(json["results"][0]["level"], "low");
        let svg = report.svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
