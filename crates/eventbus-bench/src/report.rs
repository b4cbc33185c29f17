//! BENCHMARKS.md and its charts, from one run of the `eventbus-bench` binary.

use std::fmt::Write as _;
use std::path::Path;

use crate::charts::{self, Axis, Bar};
use crate::cost::{
    BrokerCost, Cost, TARGET_ALLOCATIONS, TARGET_INSTRUCTIONS, TARGET_MEMORY_ALLOCATIONS,
};
use crate::hol::{Design, Hol};
use crate::stats::{Comparison, Rate, Ratio, Samples, si};

/// One row of the head-of-line table: a design, with or without the stall.
#[derive(Debug, Clone)]
pub struct HolRow {
    /// The design.
    pub design: Design,
    /// Whether one key stalled.
    pub stalled: bool,
    /// Other keys' msg/s per round.
    pub throughput: Samples,
    /// Their p50 latency per round in the paced run, µs.
    pub p50_us: Samples,
    /// Their p99 latency per round in the paced run, µs.
    pub p99_us: Samples,
    /// Throughput / the same design's no-stall throughput, per round.
    pub vs_no_stall: Samples,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// The command that made them.
    pub command: String,
    /// The machine.
    pub machine: String,
    /// The source measured ([`source`]).
    pub source: String,
    /// Interleaved rounds of the comparisons against a broker.
    pub rounds: usize,
    /// Interleaved rounds of the rows that run in the process alone.
    pub in_process_rounds: usize,
    /// Throughput comparisons with their targets (`None`: no target).
    pub comparisons: Vec<(Comparison, Option<f64>)>,
    /// The head-of-line scenario's size and rows.
    pub hol: Option<(Hol, Vec<HolRow>)>,
    /// Cost per message per workload.
    pub cost: Vec<(&'static str, Cost)>,
    /// Instructions per message of the broker workloads (raw client and bus).
    pub broker_cost: Vec<BrokerCost>,
    /// Profiles of cost workloads (callgrind, self instructions per message).
    pub profiles: Vec<(&'static str, String)>,
    /// How cost grows with keys and subscriptions.
    pub growth: Option<crate::growth::Table>,
    /// Notes: what was not measured and why.
    pub notes: Vec<String>,
    /// Missed targets: by how much, where the time goes, what would close the gap.
    pub gaps: Vec<String>,
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Sections of BENCHMARKS.md that another tool writes, by name: `peers` (`cargo xtask
/// peers`, Go buses side by side, which needs Go and takes long). The report keeps them when
/// it is regenerated, so one file holds every figure.
pub const KEPT_SECTIONS: [&str; 1] = ["peers"];

/// `doc` with the section `name` (the text between the lines `<!-- name -->` and
/// `<!-- /name -->`) replaced by `body`, or `body` appended in those markers if it had none.
pub fn splice(doc: &str, name: &str, body: &str) -> String {
    let (open, close) = (format!("<!-- {name} -->\n"), format!("<!-- /{name} -->\n"));
    let marked = format!("{open}{}\n{close}", body.trim_end());
    match (doc.find(&open), doc.find(&close)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{marked}{}", &doc[..a], &doc[b + close.len()..])
        }
        _ => format!("{}\n\n{marked}", doc.trim_end()),
    }
}

/// The body of section `name` of `doc` (see [`splice`]), if it has one.
pub fn section<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
    let (open, close) = (format!("<!-- {name} -->\n"), format!("<!-- /{name} -->\n"));
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&close)?;
    Some(&doc[start..end])
}

/// What the machine is: CPU model, cores, kernel, rustc.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let run = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "{cpu}, {cores} cores available, Linux {}, {}",
        run("uname", "-r"),
        run("rustc", "-V")
    )
}

/// The source measured: the commit, and the tracked files changed in the working tree.
pub fn source() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]).map(|c| c.trim().to_owned()) else {
        return "unknown source (not a git checkout)".into();
    };
    let changed: Vec<String> = git(&["status", "--porcelain", "--untracked-files=no"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.get(3..).map(str::to_owned))
        .collect();
    if changed.is_empty() {
        format!("commit {commit}, clean tree")
    } else {
        format!(
            "commit {commit} with uncommitted changes to {}",
            changed.join(", ")
        )
    }
}

impl Results {
    /// The markdown of BENCHMARKS.md; charts are linked under `charts` (relative path).
    pub fn markdown(&self, charts: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Generated by `{}` on {}, from {}. Every figure is from that one run: medians over \
             interleaved rounds (baseline, candidate, baseline, candidate, …) with the min–max \
             spread in brackets; a ratio is the candidate's msg/s over its baseline's in the same \
             round. Rows against a broker take {} rounds; rows that run in the process alone, \
             which last a fraction of a second each, take {} (the tables say which). These \
             machines are noisy: compare ratios, not absolute rates, and rerun rather than trust \
             a digit.\n",
            self.command, self.machine, self.source, self.rounds, self.in_process_rounds
        );
        let _ = writeln!(md, "## Throughput against raw loops and clients\n");
        let _ = writeln!(
            md,
            "Tokio multi-thread runtime with 2 workers, {}-byte payloads, no-op handler. The raw \
             loop is one bounded `tokio::sync::mpsc` (1,024) drained by one task awaiting the \
             handler; the dispatcher is driven as a tower service (`ready`, `call`); the memory \
             bus publishes one message at a time into one subscription; its two halves also \
             run alone, in the same rounds and against the same raw runs: consuming only (every \
             message published beforehand, into a topic that holds them all) and publishing \
             only (into such a topic, nothing consumed). Messages are built before the clock \
             starts.\n",
            crate::workload::PAYLOAD_LEN
        );
        let _ = writeln!(
            md,
            "| case | messages/run | rounds | baseline msg/s | eventbus msg/s | ratio | target |\n|---|---|---|---|---|---|---|"
        );
        for (c, target) in &self.comparisons {
            let t = target.map_or_else(
                || "—".to_owned(),
                |t| format!("≥ {t:.2}×: {}", verdict(c.ratios.median() >= t)),
            );
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {t} |",
                c.name,
                c.messages,
                c.ratios.0.len(),
                Rate(&c.baseline),
                Rate(&c.candidate),
                Ratio(&c.ratios)
            );
        }
        let _ = writeln!(md, "\n![ratios]({charts}/ratios.svg)\n");
        let with_cpu: Vec<_> = self
            .comparisons
            .iter()
            .map(|(c, _)| c)
            .filter(|c| !c.cpu_ratios.0.is_empty())
            .collect();
        if !with_cpu.is_empty() || !self.broker_cost.is_empty() {
            let _ = writeln!(md, "## CPU per message against raw clients\n");
        }
        if !with_cpu.is_empty() {
            let _ = writeln!(
                md,
                "Process CPU time (user + system, every thread of the process: \
                 `getrusage(RUSAGE_SELF)`) from the first publish to the last receipt (publish \
                 only: to the last ack), divided by the messages, in the same runs as the rows \
                 above. The broker's own CPU is not counted.\n"
            );
            let _ = writeln!(
                md,
                "| case | raw client µs/msg | eventbus µs/msg | eventbus ÷ raw | target |\n|---|---|---|---|---|"
            );
            let spread = |x: &Samples| format!("{:.1} ({:.1}–{:.1})", x.median(), x.min(), x.max());
            for c in with_cpu {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | ≤ 1.10×: {} |",
                    c.name,
                    spread(&c.baseline_cpu_us),
                    spread(&c.candidate_cpu_us),
                    Ratio(&c.cpu_ratios),
                    verdict(c.cpu_ratios.median() <= 1.10)
                );
            }
            let _ = writeln!(md);
        }
        if !self.broker_cost.is_empty() {
            let _ = writeln!(
                md,
                "Instructions per message, the same work counted by callgrind over the whole \
                 process (every thread; runs of {n} and {} messages, difference / {n}, the median \
                 of {} such pairs): not moved by the machine's noise, unlike CPU time, but blind \
                 to what an instruction count does not show (system calls, wake-ups across \
                 threads, cache misses). Allocations per message: Rust's, every thread, counted \
                 the same way (librdkafka's own, made in C, are not seen). `cargo xtask cost` \
                 prints this table too, for the brokers `cargo xtask brokers up` starts.\n",
                2 * crate::cost::BROKER_MESSAGES,
                crate::cost::CALLGRIND_PAIRS,
                n = crate::cost::BROKER_MESSAGES,
            );
            let _ = writeln!(md, "{}", broker_cost_table(&self.broker_cost));
        }
        if let Some((hol, rows)) = &self.hol {
            let _ = writeln!(
                md,
                "## Head-of-line: one stalled key among {} others\n",
                hol.keys
            );
            let _ = writeln!(
                md,
                "The stalled key's handler sleeps {:?} per message ({} messages, sent first); {} \
                 other keys get {} messages each, round robin, from one producer sending as fast \
                 as it can (throughput). Latency comes from a second run paced at {} msg/s \
                 ({} messages): from each message's due time to its handler call, so time the \
                 producer spends blocked on a full lane counts. Figures are the other keys' \
                 only, against the same design's run without the stall in the same round \
                 ({} rounds of throughput, the first {} of them with latency). Both designs \
                 buffer 4,096 messages (the dispatcher's default; 256 lanes × 16).\n",
                hol.stall,
                hol.stalled_messages,
                hol.keys,
                hol.per_key,
                si(hol.rate),
                hol.paced_messages(),
                rows.first().map_or(0, |r| r.throughput.0.len()),
                rows.first().map_or(0, |r| r.p50_us.0.len()),
            );
            let _ = writeln!(
                md,
                "| design | stall | other keys msg/s (saturated) | vs no stall | p50 (paced) | p99 (paced) |\n|---|---|---|---|---|---|"
            );
            for r in rows {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    r.design.name(),
                    if r.stalled { "yes" } else { "no" },
                    Rate(&r.throughput),
                    Ratio(&r.vs_no_stall),
                    micros(r.p50_us.median()),
                    micros(r.p99_us.median()),
                );
            }
            if let Some(r) = rows
                .iter()
                .find(|r| r.stalled && r.design == Design::Dispatcher)
            {
                let _ = writeln!(
                    md,
                    "\nTarget: other keys under a stalled key ≥ 0.95× the no-stall run, while the fixed lanes visibly stall: {} ({:.2}×).",
                    verdict(r.vs_no_stall.median() >= 0.95),
                    r.vs_no_stall.median()
                );
            }
            let _ = writeln!(md, "\n![head-of-line]({charts}/hol.svg)\n");
        }
        if !self.cost.is_empty() {
            let _ = writeln!(md, "## Cost per message\n");
            let _ = writeln!(
                md,
                "Fixed workloads on a current-thread runtime, {} keys, run with {n} and {} \
                 messages; cost per message = difference / {n}, so setup and close cancel out. \
                 Instructions: callgrind (`Ir`, only inside the workload), the median of {} such \
                 pairs of runs, as glibc's merging of freed chunks moves one pair by up to ±40 per \
                 message from process to process; allocations: a counting allocator. \
                 `cargo xtask cost` prints this table.\n",
                crate::cost::KEYS,
                2 * crate::cost::MESSAGES,
                crate::cost::CALLGRIND_PAIRS,
                n = crate::cost::MESSAGES,
            );
            let _ = writeln!(md, "{}", cost_table(&self.cost));
            if let Some((_, c)) = self.cost.iter().find(|(w, _)| *w == "dispatcher") {
                let _ = writeln!(
                    md,
                    "Targets (dispatcher): ≤ {TARGET_ALLOCATIONS} allocations per message: {} ({:.2}; within {} of the target counts, the raw loop's own reading is 0.01); ≤ {TARGET_INSTRUCTIONS} instructions per message: {}.\n",
                    verdict(crate::cost::allocations_met(
                        c.allocations,
                        TARGET_ALLOCATIONS
                    )),
                    c.allocations,
                    crate::cost::ALLOCATION_FLOOR,
                    c.instructions.map_or_else(
                        || "not measured (no valgrind)".to_owned(),
                        |i| format!("{} ({i:.0})", verdict(i <= TARGET_INSTRUCTIONS))
                    )
                );
            }
            if let Some((_, c)) = self.cost.iter().find(|(w, _)| *w == "memory") {
                let _ = writeln!(
                    md,
                    "Target (memory bus end to end): ≤ {TARGET_MEMORY_ALLOCATIONS} allocations per message: {} ({:.2}).\n",
                    verdict(crate::cost::allocations_met(
                        c.allocations,
                        TARGET_MEMORY_ALLOCATIONS
                    )),
                    c.allocations,
                );
            }
        }
        for (w, p) in &self.profiles {
            let _ = writeln!(
                md,
                "### Where the {w} workload's instructions go\n\nInstructions per message of \
                 the functions with the most of their own (callgrind, `callgrind_annotate \
                 --inclusive=no`, the {}-message run, setup included; the file is where inlined \
                 code came from):\n\n```text\n{p}\n```\n",
                2 * crate::cost::MESSAGES
            );
        }
        if let Some(growth) = &self.growth {
            let _ = writeln!(md, "## How cost grows with keys and subscriptions\n");
            let _ = writeln!(
                md,
                "`eventbus-bench growth` prints this section.\n\n{}",
                growth.markdown()
            );
        }
        if !self.gaps.is_empty() {
            let _ = writeln!(
                md,
                "## Missed targets: where the time goes, what would close it\n"
            );
            for g in &self.gaps {
                let _ = writeln!(md, "- {g}");
            }
            let _ = writeln!(md);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    /// Writes `ratios.svg` and `hol.svg` into `dir`.
    pub fn write_svgs(&self, dir: &Path) -> Result<(), charts::Error> {
        let ratios: Vec<_> = self
            .comparisons
            .iter()
            .map(|(c, _)| {
                Bar::new(c.label.clone(), c.ratios.median()).spread(c.ratios.min(), c.ratios.max())
            })
            .collect();
        bars(
            &dir.join("ratios.svg"),
            "eventbus / baseline, same run (median, min–max)",
            &ratios,
            |v| format!("{v:.2}×"),
        )?;
        if let Some((_, rows)) = &self.hol {
            let data: Vec<_> = rows
                .iter()
                .map(|r| {
                    let label = format!(
                        "{}{}",
                        match r.design {
                            Design::Dispatcher => "dispatcher",
                            Design::Lanes => "256 lanes",
                        },
                        if r.stalled { ", stall" } else { "" }
                    );
                    Bar::new(label, r.throughput.median())
                        .spread(r.throughput.min(), r.throughput.max())
                })
                .collect();
            bars(
                &dir.join("hol.svg"),
                "other keys' msg/s, one key stalled or not (median, min–max)",
                &data,
                si,
            )?;
        }
        Ok(())
    }
}

/// The cost table (markdown).
pub fn cost_table(cost: &[(&'static str, Cost)]) -> String {
    let mut md = String::from(
        "| workload | instructions/msg | allocations/msg | reallocations/msg | bytes allocated/msg |\n|---|---|---|---|---|\n",
    );
    for (w, c) in cost {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.0} |",
            match *w {
                "raw" => "raw mpsc → handler loop",
                "dispatcher" => "dispatcher alone",
                "memory" => "memory bus end to end",
                other => other,
            },
            c.instructions
                .map_or_else(|| "—".into(), |i| format!("{i:.0}")),
            c.allocations,
            c.reallocations,
            c.bytes
        );
    }
    md
}

/// The broker workloads' instructions per message, raw client against bus.
pub fn broker_cost_table(cost: &[BrokerCost]) -> String {
    let mut md = String::from(
        "| case | raw client instructions/msg | eventbus instructions/msg | eventbus ÷ raw | raw client allocations/msg | eventbus allocations/msg |\n|---|---|---|---|---|---|\n",
    );
    for c in cost {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2}× | {:.1} | {:.1} |",
            c.name,
            c.raw,
            c.bus,
            c.bus / c.raw,
            c.raw_allocations,
            c.bus_allocations,
        );
    }
    md
}

fn micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// A chart of `data` (a bar per median, a whisker per min–max) at `path`, 120 pixels a bar.
fn bars(
    path: &Path,
    title: &str,
    data: &[Bar],
    fmt: fn(f64) -> String,
) -> Result<(), charts::Error> {
    let width = (120 * data.len() as u32).max(480);
    charts::write(path, (width, 360), |root| {
        charts::bars(root, title, data, Axis::Linear, fmt)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_section_is_replaced_in_place_or_appended() {
        let doc = "# Benchmarks\n\n## Throughput\n";
        let once = splice(doc, "peers", "## Peers\n\nfirst\n");
        assert_eq!(
            once,
            "# Benchmarks\n\n## Throughput\n\n<!-- peers -->\n## Peers\n\nfirst\n<!-- /peers -->\n"
        );
        assert_eq!(section(&once, "peers"), Some("## Peers\n\nfirst\n"));
        let twice = splice(&once, "peers", "## Peers\n\nsecond");
        assert_eq!(twice.matches("<!-- peers -->").count(), 1);
        assert_eq!(section(&twice, "peers"), Some("## Peers\n\nsecond\n"));
        assert!(twice.starts_with(doc));
        assert_eq!(section(doc, "peers"), None);
    }

    #[test]
    fn the_growth_table_gets_its_section_before_the_kept_ones() {
        let results = Results {
            growth: Some(crate::growth::Table {
                rounds: 1,
                ..Default::default()
            }),
            ..Results::default()
        };
        let md = results.markdown("docs/bench");
        assert!(
            md.contains("## How cost grows with keys and subscriptions\n"),
            "{md}"
        );
        let doc = splice(&md, "peers", "## Peers\n");
        assert!(
            doc.find("## How cost grows").expect("growth")
                < doc.find("<!-- peers -->").expect("peers"),
            "{doc}"
        );
        assert!(
            !Results::default()
                .markdown("docs/bench")
                .contains("How cost grows")
        );
    }

    #[test]
    fn cpu_per_message_gets_its_table_where_it_was_measured() {
        use crate::cpu::Run;
        use std::time::Duration;
        let run = |rate: f64, us: u64| Run {
            rate,
            cpu_per_message: Duration::from_micros(us),
        };
        let mut nats = Comparison::new("NATS bus vs raw async-nats", "NATS", 10);
        nats.round_with_cpu(run(1000.0, 40), run(950.0, 50));
        let mut memory = Comparison::new("memory bus vs raw loop", "memory", 10);
        memory.round(1000.0, 500.0);
        let results = Results {
            comparisons: vec![(nats, Some(0.95)), (memory, Some(0.5))],
            ..Results::default()
        };
        let md = results.markdown("docs/bench");
        let cpu = &md[md.find("## CPU per message").expect("a CPU table")..];
        assert!(
            cpu.contains("| NATS bus vs raw async-nats | 40.0 (40.0–40.0) | 50.0 (50.0–50.0) | 1.25× (1.25–1.25) | ≤ 1.10×: "),
            "{cpu}"
        );
        assert!(!cpu.contains("memory bus vs raw loop |"), "{cpu}");
        assert!(!md.contains("instructions/msg | eventbus"), "{md}");
    }

    #[test]
    fn broker_instructions_get_their_table_with_the_ratio() {
        let results = Results {
            broker_cost: vec![BrokerCost {
                name: "NATS bus vs raw async-nats, end to end",
                raw: 30_000.0,
                bus: 42_000.0,
                raw_allocations: 28.0,
                bus_allocations: 32.5,
            }],
            ..Results::default()
        };
        let md = results.markdown("docs/bench");
        assert!(
            md.contains(
                "| NATS bus vs raw async-nats, end to end | 30000 | 42000 | 1.40× | 28.0 | 32.5 |"
            ),
            "{md}"
        );
    }
}
