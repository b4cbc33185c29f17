//! This bus and Go event buses side by side (`eventbus_bench::peers`): the Go SDK's load
//! scenarios A and B at Low / Medium / High / Extreme on the memory bus and on the Go peers,
//! every cell in a fresh process, peers interleaved round by round. Prints a markdown table and
//! writes it to `target/peers/peers.md`.
//!
//! `cargo xtask peers [--rounds N]` builds the Go harness (`peers/go/`) and runs this with
//! `--go-peer <its binary>`; `peers cell <level> <A|B>` is one cell of this bus (what the
//! table's eventbus rows run).
//!
//! Fails when this bus lost a message, broke an aggregate's order or did not finish; a Go
//! peer doing so is a figure of the table.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use eventbus_bench::load::{self, Level, Scenario};
use eventbus_bench::peers::{self, Cell, GO_PEERS, HEAD, Rounds};
use eventbus_core::EventBus;
use eventbus_memory::MemoryTransport;

eventbus_testkit::install_heap_counter!();

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("cell") {
        return match cell(&args[1..]) {
            Ok(cell) => {
                println!(
                    "{}",
                    serde_json::to_string(&cell).expect("figures serialize")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cell: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(go_peer) = eventbus_bench::flag("--go-peer").map(PathBuf::from) else {
        eprintln!("usage: peers --go-peer <binary built from peers/go> [--rounds N]");
        return ExitCode::from(2);
    };
    let rounds = eventbus_bench::arg("--rounds", 3).max(1);
    let me = std::env::current_exe().expect("this executable");
    let mut table = format!(
        "Memory bus against Go peers, {rounds} rounds per cell interleaved, each cell a fresh process (2 tokio workers; Go with GOMAXPROCS the machine's)\n\n{HEAD}\n"
    );
    let mut failures = Vec::new();
    for level in Level::GO {
        for scenario in Scenario::BOTH {
            let mut ours = Rounds::default();
            let mut theirs: Vec<Rounds> = GO_PEERS.iter().map(|_| Rounds::default()).collect();
            for _ in 0..rounds {
                match our_cell(&me, level, scenario) {
                    Ok(c) => ours.cells.push(c),
                    Err(e) => failures.push(e),
                }
                for (i, peer) in GO_PEERS.iter().enumerate() {
                    match peers::go_cell(&go_peer, peer, level, scenario) {
                        Ok(c) => theirs[i].cells.push(c),
                        Err(e) => failures.push(e),
                    }
                }
            }
            let ordered = scenario == Scenario::B;
            if ours.broken(ordered) {
                failures.push(format!(
                    "eventbus, {} {}: {:?}",
                    level.name(),
                    peers::scenario_name(scenario),
                    ours.cells
                ));
            }
            let median = ours.throughput();
            for r in std::iter::once(&ours).chain(&theirs) {
                let row = peers::row(level, scenario, r, median);
                println!("{row}");
                table.push_str(&row);
                table.push('\n');
            }
        }
    }
    let path = eventbus_bench::target_dir().join("peers").join("peers.md");
    if let Err(e) = std::fs::create_dir_all(path.parent().expect("a directory"))
        .and_then(|()| std::fs::write(&path, &table))
    {
        eprintln!("cannot write {}: {e}", path.display());
    } else {
        println!("\n{}", path.display());
    }
    eventbus_bench::exit_code(&failures)
}

/// One cell of this bus, in a process of its own.
fn our_cell(me: &PathBuf, level: Level, scenario: Scenario) -> Result<Cell, String> {
    let out = Command::new(me)
        .args(["cell", level.name(), peers::scenario_name(scenario)])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "eventbus cell {} {} failed: {}",
            level.name(),
            peers::scenario_name(scenario),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `cell <level> <A|B>`: the scenario on the memory bus, its figures as a [`Cell`].
fn cell(args: &[String]) -> Result<Cell, String> {
    let [level, scenario] = args else {
        return Err("cell <level> <A|B>".into());
    };
    let level = Level::parse(level).ok_or_else(|| format!("unknown level {level:?}"))?;
    let scenario = match scenario.as_str() {
        "A" => Scenario::A,
        "B" => Scenario::B,
        other => return Err(format!("unknown scenario {other:?}")),
    };
    let report = eventbus_bench::runtime().block_on(load::run(level, scenario, || async {
        EventBus::builder(MemoryTransport::new()).build()
    }));
    let usage = report.usage;
    Ok(Cell {
        peer: "eventbus".into(),
        settings: "memory bus, defaults".into(),
        scenario: peers::scenario_name(scenario).into(),
        published: report.published,
        received: report.received,
        lost: report.lost,
        duplicated: report.duplicates,
        order_violations: report.order_violations,
        completed: report.completed,
        seconds: report.elapsed.as_secs_f64(),
        throughput: report.throughput(),
        p50_us: report.e2e_latency.p50.as_secs_f64() * 1e6,
        p99_us: report.e2e_latency.p99.as_secs_f64() * 1e6,
        tasks_start: usage.start.tasks as u64,
        tasks_peak: usage.peak.tasks as u64,
        tasks_after: usage.after_close.tasks as u64,
        heap_after_bytes: usage.after_close.heap_bytes as u64,
        rss_after_bytes: peers::rss(),
    })
}
