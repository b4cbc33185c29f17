//! This bus and Go event buses side by side, one machine, one run: the Go SDK's load scenarios
//! (see [`crate::load`]) on the memory bus and on Go peers built from `peers/go/` (a harness of
//! this repository over Go modules from the module proxy), each cell run in a fresh process of
//! its own (so RSS after close is the cell's), peers interleaved round by round.
//!
//! Both sides print the same figures as one JSON line ([`Cell`]): throughput to the last
//! receipt, end-to-end p50 / p99 from a send timestamp in the payload, loss, duplicates,
//! per-aggregate order violations (scenario B), tasks or goroutines at start / peak / after
//! close, heap and RSS after close.
//!
//! Peers so far: Watermill's GoChannel (v1.5.1) with `BlockPublishUntilSubscriberAck`, the
//! setting its docs give for in-order delivery, and with its defaults. Not yet: the Go SDK
//! itself (its module is refused by the module proxy), Watermill's NATS and Kafka pub/subs,
//! the head-of-line and large scenarios.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::load::{Level, Scenario};
use crate::stats::Samples;

/// One cell's figures, as a peer prints them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Which bus.
    pub peer: String,
    /// Its settings, in words.
    pub settings: String,
    /// `A` or `B`.
    pub scenario: String,
    /// Messages published.
    pub published: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Never received.
    pub lost: u64,
    /// Receipts beyond the first.
    pub duplicated: u64,
    /// An aggregate's version received after a later one (scenario B).
    pub order_violations: u64,
    /// Whether the last message arrived before the deadline.
    pub completed: bool,
    /// Seconds from the first publish to the last receipt.
    pub seconds: f64,
    /// Messages a second over that time.
    pub throughput: f64,
    /// End-to-end latency, median, microseconds.
    pub p50_us: f64,
    /// End-to-end latency, 99th percentile, microseconds.
    pub p99_us: f64,
    /// Tasks (tokio) or goroutines before the bus was built.
    #[serde(alias = "goroutines_start")]
    pub tasks_start: u64,
    /// The most while it ran.
    #[serde(alias = "goroutines_peak")]
    pub tasks_peak: u64,
    /// After close.
    #[serde(alias = "goroutines_after")]
    pub tasks_after: u64,
    /// Heap in use after close, bytes.
    pub heap_after_bytes: u64,
    /// Resident set after close, bytes.
    pub rss_after_bytes: u64,
}

/// The Go peers the harness offers.
pub const GO_PEERS: [&str; 2] = ["watermill-gochannel", "watermill-gochannel-async"];

/// Runs one cell on a Go peer: `peer_binary -peer <peer> -scenario <s> -messages <n>
/// -aggregates <k>`.
pub fn go_cell(
    peer_binary: &Path,
    peer: &str,
    level: Level,
    scenario: Scenario,
) -> Result<Cell, String> {
    let out = Command::new(peer_binary)
        .args(["-peer", peer])
        .args(["-scenario", scenario_name(scenario)])
        .args(["-messages", &level.messages().to_string()])
        .args(["-aggregates", &level.aggregates().to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", peer_binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{peer} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{peer} printed no figures ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `A` or `B`.
pub fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::A => "A",
        Scenario::B => "B",
    }
}

/// The resident set of this process, bytes (`/proc/self/statm`).
pub fn rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // 4 KiB pages: what Linux uses on the machines this runs on.
    pages * 4096
}

/// The rounds of one peer in one cell.
#[derive(Debug, Default)]
pub struct Rounds {
    /// Each round's figures.
    pub cells: Vec<Cell>,
}

impl Rounds {
    fn samples(&self, pick: fn(&Cell) -> f64) -> Samples {
        Samples(self.cells.iter().map(pick).collect())
    }

    /// The median throughput.
    pub fn throughput(&self) -> f64 {
        self.samples(|c| c.throughput).median()
    }

    /// Whether a round lost a message, broke an aggregate's order (when `ordered`) or did not
    /// finish.
    pub fn broken(&self, ordered: bool) -> bool {
        self.cells
            .iter()
            .any(|c| c.lost > 0 || !c.completed || (ordered && c.order_violations > 0))
    }
}

/// The table's head.
pub const HEAD: &str = "| level | scenario | bus | settings | msg/s (median, min–max) | p50 / p99 | order violations | lost | duplicated | tasks or goroutines start / peak / after close | heap after close | RSS after close | eventbus ÷ this |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// A row: `rounds` of one bus in one cell; `ours` is this bus's median throughput there.
pub fn row(level: Level, scenario: Scenario, rounds: &Rounds, ours: f64) -> String {
    let Some(first) = rounds.cells.first() else {
        return String::new();
    };
    let throughput = rounds.samples(|c| c.throughput);
    let max = |pick: fn(&Cell) -> u64| rounds.cells.iter().map(pick).max().unwrap_or(0);
    let median = |pick: fn(&Cell) -> f64| rounds.samples(pick).median();
    format!(
        "| {} | {} | {} | {} | {:.0} ({:.0}–{:.0}) | {:.0} µs / {:.0} µs | {} | {} | {} | {} / {} / {} | {:.1} MB | {:.1} MB | {:.2}× |",
        level.name(),
        scenario_name(scenario),
        first.peer,
        first.settings,
        throughput.median(),
        throughput.min(),
        throughput.max(),
        median(|c| c.p50_us),
        median(|c| c.p99_us),
        max(|c| c.order_violations),
        max(|c| c.lost),
        max(|c| c.duplicated),
        max(|c| c.tasks_start),
        max(|c| c.tasks_peak),
        max(|c| c.tasks_after),
        median(|c| c.heap_after_bytes as f64) / 1e6,
        median(|c| c.rss_after_bytes as f64) / 1e6,
        ours / throughput.median().max(f64::EPSILON),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_peers_line_reads_as_a_cell() {
        let line = r#"{"peer":"watermill-gochannel","settings":"GoChannel","scenario":"B","published":2000,"received":2000,"lost":0,"duplicated":0,"order_violations":3,"completed":true,"seconds":0.02,"throughput":100000.0,"p50_us":2,"p99_us":44,"goroutines_start":1,"goroutines_peak":21,"goroutines_after":1,"heap_after_bytes":255232,"rss_after_bytes":8896512}"#;
        let cell: Cell = serde_json::from_str(line).unwrap();
        assert_eq!((cell.tasks_start, cell.tasks_peak), (1, 21));
        let rounds = Rounds { cells: vec![cell] };
        assert!(rounds.broken(true));
        assert!(!rounds.broken(false));
        let row = row(Level::Medium, Scenario::B, &rounds, 50_000.0);
        assert!(row.contains("| 0.50× |"), "{row}");
    }
}
