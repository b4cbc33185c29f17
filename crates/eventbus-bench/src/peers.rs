//! This bus and Go event buses side by side, one machine, one run: the same load scenarios on
//! each transport of this bus and on Go peers built from `peers/go/` (a harness of this
//! repository over Go modules from the module proxy), against the same brokers, each cell run
//! in a fresh process of its own (so RSS after close is the cell's), peers interleaved round
//! by round.
//!
//! The cases ([`Case`]): the Go SDK's scenarios A and B at its four levels (see
//! [`crate::load`]); head-of-line, B at Extreme plus one aggregate whose 2 messages take 1 s
//! each to handle, published first ([`crate::scenario::Stall`]); and a large run, 1,000,000
//! messages over 10,000 aggregates in memory, capped at 100,000 messages or 60 s on a broker.
//!
//! Both sides print the same figures as one JSON line ([`Cell`]): throughput to the last
//! receipt, end-to-end p50 / p99 from a send timestamp in the payload, loss, duplicates,
//! per-aggregate order violations, tasks or goroutines at start / peak / after close, heap and
//! RSS after close.
//!
//! The Go peers ([`Transport::go_peers`]): Watermill v1.5.1's GoChannel (with
//! `BlockPublishUntilSubscriberAck`, the setting its docs give for in-order delivery, and with
//! its defaults), its NATS JetStream pub/sub (`watermill-nats/v2`) and its Kafka pub/sub
//! (`watermill-kafka/v3`). The Go SDK itself is not among them: the module proxy refuses its
//! module (see the README).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::{Level, Scenario};
use crate::scenario::{Load, Stall};
use crate::stats::Samples;

/// Where a case runs: a transport of this bus, and the Go peers of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// In process: the memory bus; Watermill's GoChannel.
    Memory,
    /// The shared nats-server.
    Nats,
    /// The shared Kafka broker.
    Kafka,
}

impl Transport {
    /// Every transport, in the table's order.
    pub const ALL: [Transport; 3] = [Transport::Memory, Transport::Nats, Transport::Kafka];

    /// Its name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Memory => "memory",
            Transport::Nats => "nats",
            Transport::Kafka => "kafka",
        }
    }

    /// The inverse of [`name`](Self::name).
    pub fn parse(name: &str) -> Result<Transport, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| format!("expected memory, nats or kafka, got {name:?}"))
    }

    /// The Go peers measured against this bus on this transport.
    pub fn go_peers(self) -> &'static [&'static str] {
        match self {
            Transport::Memory => &["watermill-gochannel", "watermill-gochannel-async"],
            Transport::Nats => &["watermill-nats"],
            Transport::Kafka => &["watermill-kafka"],
        }
    }
}

/// How this bus is set up for a row: its defaults, or one setting a user can change that
/// the comparison showed matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Every default.
    Defaults,
    /// In memory: the topic's capacity and the dispatcher's `max_buffered` both 64, so a burst
    /// waits in the publishers instead of in buffers.
    SmallBuffers,
    /// On NATS: one partition per topic (`StreamOptions::partitions(1)`), so a keyed group is
    /// one pinned consumer, like the Go peer's one subscriber, instead of 16.
    OnePartition,
}

impl Variant {
    /// The variants measured on `transport`, [`Variant::Defaults`] first (what the ratios are
    /// to).
    pub fn on(transport: Transport) -> &'static [Variant] {
        match transport {
            Transport::Memory => &[Variant::Defaults, Variant::SmallBuffers],
            Transport::Nats => &[Variant::Defaults, Variant::OnePartition],
            Transport::Kafka => &[Variant::Defaults],
        }
    }

    /// Its name on a cell's command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Defaults => "defaults",
            Variant::SmallBuffers => "small-buffers",
            Variant::OnePartition => "one-partition",
        }
    }

    /// The inverse of [`name`](Self::name).
    pub fn parse(name: &str) -> Result<Variant, String> {
        [
            Variant::Defaults,
            Variant::SmallBuffers,
            Variant::OnePartition,
        ]
        .into_iter()
        .find(|v| v.name() == name)
        .ok_or_else(|| format!("unknown variant {name:?}"))
    }

    /// The bus column of its rows.
    pub fn bus(self) -> &'static str {
        match self {
            Variant::Defaults => "eventbus",
            Variant::SmallBuffers => "eventbus, buffers 64",
            Variant::OnePartition => "eventbus, 1 partition",
        }
    }

    /// Its settings, in words.
    pub fn settings(self, transport: Transport) -> &'static str {
        match (self, transport) {
            (Variant::SmallBuffers, _) => "memory bus, topic_capacity 64, max_buffered 64",
            (Variant::OnePartition, _) => {
                "NATS bus, StreamOptions::partitions(1): one pinned consumer per group and topic"
            }
            (Variant::Defaults, Transport::Memory) => {
                "memory bus, defaults (topic_capacity 10,000, max_buffered 4,096)"
            }
            (Variant::Defaults, Transport::Nats) => {
                "NATS bus, defaults: publish awaits the ack (Nats-Msg-Id for dedup); a keyed group is 16 partition subjects, a pinned pull consumer each; ack after handling"
            }
            (Variant::Defaults, Transport::Kafka) => {
                "Kafka bus, defaults: 4 partitions, idempotent producer (acks=all), publish awaits the delivery report; commit after handling"
            }
        }
    }
}

/// A load every peer of a transport runs: a group of rows of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// The Go SDK's scenario at one of its levels.
    Go(Level, Scenario),
    /// Head-of-line: B at Extreme plus [`HOL_STALL`].
    Hol,
    /// 1,000,000 messages over 10,000 aggregates (scenario B); on a broker, the first
    /// [`BROKER_CAP`] of them, or what 60 s bring.
    Large,
}

/// The stalled aggregate of [`Case::Hol`].
pub const HOL_STALL: Stall = Stall {
    messages: 2,
    sleep: Duration::from_secs(1),
};

/// Messages of [`Case::Large`] on a broker.
pub const BROKER_CAP: u64 = 100_000;

impl Case {
    /// Every case, in the table's order.
    pub fn all() -> Vec<Case> {
        Level::GO
            .into_iter()
            .flat_map(|level| Scenario::BOTH.map(|s| Case::Go(level, s)))
            .chain([Case::Hol, Case::Large])
            .collect()
    }

    /// Its name: `low-A` … `extreme-B`, `hol`, `large`.
    pub fn name(self) -> String {
        match self {
            Case::Go(level, scenario) => format!("{}-{}", level.name(), scenario_name(scenario)),
            Case::Hol => "hol".into(),
            Case::Large => "large".into(),
        }
    }

    /// The inverse of [`name`](Self::name).
    pub fn parse(name: &str) -> Result<Case, String> {
        Self::all()
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| format!("unknown case {name:?}"))
    }

    /// Its load on `transport`.
    pub fn load(self, transport: Transport) -> Load {
        match self {
            Case::Go(level, scenario) => level.load(scenario),
            Case::Hol => Load {
                stall: Some(HOL_STALL),
                ..Level::Extreme.load(Scenario::B)
            },
            Case::Large if transport == Transport::Memory => Level::Large.load(Scenario::B),
            Case::Large => {
                let load = Level::Large.load(Scenario::B);
                Load {
                    versions: BROKER_CAP / load.aggregates as u64,
                    deadline: Duration::from_secs(60),
                    ..load
                }
            }
        }
    }

    /// Its scenario letter in the Go harness: `A`, `B`, or `H` (B with a stalled aggregate).
    fn go_scenario(self) -> &'static str {
        match self {
            Case::Go(_, scenario) => scenario_name(scenario),
            Case::Hol => "H",
            Case::Large => "B",
        }
    }
}

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

/// Runs one cell on a Go peer: the harness binary with the case's load as flags, and the
/// shared brokers' addresses.
pub fn go_cell(
    peer_binary: &Path,
    peer: &str,
    transport: Transport,
    case: Case,
) -> Result<Cell, String> {
    let load = case.load(transport);
    let mut command = Command::new(peer_binary);
    command
        .args(["-peer", peer])
        .args(["-scenario", case.go_scenario()])
        .args(["-messages", &load.messages().to_string()])
        .args(["-aggregates", &load.aggregates.to_string()])
        .args(["-deadline", &format!("{}ms", load.deadline.as_millis())])
        .args(["-nats-url", &eventbus_testkit::brokers::shared::nats_url()])
        .args([
            "-kafka-brokers",
            &eventbus_testkit::brokers::shared::kafka_brokers(),
        ]);
    if let Some(stall) = load.stall {
        command
            .args(["-stall-messages", &stall.messages.to_string()])
            .args(["-stall", &format!("{}ms", stall.sleep.as_millis())]);
    }
    let out = command
        .output()
        .map_err(|e| format!("{}: {e}", peer_binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{peer} {} failed ({}): {}",
            case.name(),
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

/// Adds to `legend` (the list under a transport's table) the settings of each bus of
/// `buses` it does not list yet.
pub fn add_settings<'a>(legend: &mut String, buses: impl IntoIterator<Item = &'a Rounds>) {
    for cell in buses.into_iter().filter_map(|r| r.cells.first()) {
        let entry = format!("- {}: {}\n", cell.peer, cell.settings);
        if !legend.contains(&entry) {
            legend.push_str(&entry);
        }
    }
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
    /// finish; with `capped` (a case cut at its deadline), an unfinished round is judged by
    /// its order alone.
    pub fn broken(&self, ordered: bool, capped: bool) -> bool {
        self.cells.iter().any(|c| {
            let short = if c.completed { c.lost > 0 } else { !capped };
            short || (ordered && c.order_violations > 0)
        })
    }
}

/// The table's head.
pub const HEAD: &str = "| case | bus | msg/s (median, min–max) | p50 / p99 | order violations | lost | duplicated | tasks or goroutines start / peak / after close | heap after close | RSS after close | eventbus ÷ this |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// A row: `rounds` of one bus in one case; `ours` is this bus's median throughput there.
pub fn row(case: Case, rounds: &Rounds, ours: f64) -> String {
    let Some(first) = rounds.cells.first() else {
        return String::new();
    };
    let throughput = rounds.samples(|c| c.throughput);
    let max = |pick: fn(&Cell) -> u64| rounds.cells.iter().map(pick).max().unwrap_or(0);
    let median = |pick: fn(&Cell) -> f64| rounds.samples(pick).median();
    format!(
        "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.0} µs / {:.0} µs | {} | {} | {} | {} / {} / {} | {:.1} MB | {:.1} MB | {:.2}× |",
        case.name(),
        first.peer,
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
        assert!(rounds.broken(true, false));
        assert!(!rounds.broken(false, false));
        let row = row(Case::Go(Level::Medium, Scenario::B), &rounds, 50_000.0);
        assert!(row.contains("| 0.50× |"), "{row}");
        assert!(
            row.starts_with("| medium-B | watermill-gochannel |"),
            "{row}"
        );
        let mut legend = String::new();
        add_settings(&mut legend, [&rounds, &rounds]);
        assert_eq!(legend, "- watermill-gochannel: GoChannel\n");
    }

    #[test]
    fn cases_are_named_and_parsed_back() {
        let all = Case::all();
        assert_eq!(all.len(), 10);
        for case in all {
            assert_eq!(Case::parse(&case.name()), Ok(case));
        }
        for transport in Transport::ALL {
            let variants = Variant::on(transport);
            assert_eq!(variants[0], Variant::Defaults, "ratios are to the defaults");
            for v in variants {
                assert_eq!(Variant::parse(v.name()), Ok(*v));
            }
        }
    }

    #[test]
    fn the_large_case_is_capped_on_brokers_only() {
        assert_eq!(Case::Large.load(Transport::Memory).messages(), 1_000_000);
        let capped = Case::Large.load(Transport::Kafka);
        assert_eq!((capped.messages(), capped.aggregates), (BROKER_CAP, 10_000));
        assert_eq!(capped.deadline, Duration::from_secs(60));
        assert_eq!(Case::Hol.load(Transport::Nats).stall, Some(HOL_STALL));
    }
}
