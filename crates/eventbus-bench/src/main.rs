//! Runs the benchmarks of eventbus-bench and prints (or writes) the report.
//!
//! - `eventbus-bench run [--rounds N] [--quick] [--no-nats] [--report ROOT]`: throughput
//!   ratios (dispatcher and memory bus against the raw mpsc loop, NATS bus against raw
//!   async-nats when a server answers on 127.0.0.1:4222), interleaved rounds, and the
//!   head-of-line table; with `--report`, also the cost per message, then
//!   `ROOT/BENCHMARKS.md` and `ROOT/docs/bench/*.svg`.
//! - `eventbus-bench cost [--no-callgrind] [--profile]`: instructions and allocations per
//!   message (needs the `cost-workload` and `alloc-workload` binaries beside this one).
//!
//! `cargo xtask bench [--report]` and `cargo xtask cost` build and run it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use eventbus_bench::cost::{self, TARGET_ALLOCATIONS, TARGET_INSTRUCTIONS};
use eventbus_bench::hol::{Design, Hol};
use eventbus_bench::report::{HolRow, Results};
use eventbus_bench::stats::{Comparison, Rate, Ratio, Samples};
use eventbus_bench::{nats, report, runtime, workload};

struct Args(Vec<String>);

impl Args {
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
    fn value(&self, name: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == name)?;
        self.0.get(i + 1).map(String::as_str)
    }
}

fn main() -> ExitCode {
    let args = Args(std::env::args().skip(1).collect());
    match args.0.first().map(String::as_str) {
        Some("run") => run(&args),
        Some("cost") => match cost_command(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("eventbus-bench cost: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: eventbus-bench run [--rounds N] [--quick] [--no-nats] [--report ROOT]\n\
                 \x20      eventbus-bench cost [--no-callgrind] [--profile]"
            );
            ExitCode::from(2)
        }
    }
}

fn cost_dir() -> PathBuf {
    std::env::temp_dir().join(format!("eventbus-bench-cost-{}", std::process::id()))
}

fn cost_command(args: &Args) -> Result<(), String> {
    let callgrind = !args.flag("--no-callgrind") && cost::valgrind_available();
    if !callgrind {
        eprintln!("valgrind not run: instructions are not measured");
    }
    let dir = cost_dir();
    let costs = cost::measure(&dir, callgrind)?;
    println!(
        "cost per message: {} keys, ({}n - n) / n with n = {} messages, current-thread runtime\n",
        cost::KEYS,
        2,
        cost::MESSAGES
    );
    println!("{}", report::cost_table(&costs));
    if let Some((_, c)) = costs.iter().find(|(w, _)| *w == "dispatcher") {
        let line = |what: &str, v: f64, target: f64| {
            println!(
                "dispatcher {what} per message: {v:.2} (target ≤ {target}): {}",
                if v <= target { "ok" } else { "OVER" }
            );
        };
        line("allocations", c.allocations, TARGET_ALLOCATIONS);
        if let Some(i) = c.instructions {
            line("instructions", i, TARGET_INSTRUCTIONS);
        }
    }
    if args.flag("--profile") && callgrind {
        let file = dir.join(format!("dispatcher.{}.callgrind", 2 * cost::MESSAGES));
        println!(
            "\nself instructions, dispatcher workload:\n{}",
            cost::profile(&file, 25)?
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn run(args: &Args) -> ExitCode {
    let quick = args.flag("--quick");
    let rounds: usize = args
        .value("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 3 } else { 5 })
        .max(1);
    let scale = if quick { 5 } else { 1 };
    let runtime = runtime();
    let mut results = Results {
        command: command(args),
        machine: report::machine(),
        rounds,
        ..Default::default()
    };
    println!(
        "machine: {}\n{rounds} interleaved rounds per case\n",
        results.machine
    );

    // The dispatcher alone, by key count.
    for keys in [1, 100, 10_000, 1_000_000] {
        let n = (200_000 / scale).max(keys);
        let pool: Vec<Arc<_>> = workload::messages("bench", keys, n)
            .into_iter()
            .map(Arc::new)
            .collect();
        let mut c = Comparison::new(format!("dispatcher alone, {keys} keys vs raw mpsc"), n);
        for _ in 0..rounds {
            let raw = runtime.block_on(workload::raw_mpsc(pool.clone()));
            let bus = runtime.block_on(workload::dispatcher(pool.clone()));
            c.round(workload::rate(n, raw), workload::rate(n, bus));
        }
        print_comparison(&c);
        results.comparisons.push((c, None));
    }

    // The memory bus end to end.
    {
        let n = 200_000 / scale;
        let base = workload::messages("bench", 1_000, n);
        let mut c = Comparison::new("memory bus, 1,000 keys vs raw mpsc", n);
        for _ in 0..rounds {
            let raw = runtime.block_on(workload::raw_mpsc(base.clone()));
            let bus = runtime.block_on(workload::memory_bus(base.clone()));
            c.round(workload::rate(n, raw), workload::rate(n, bus));
        }
        print_comparison(&c);
        results.comparisons.push((c, Some(0.5)));
    }

    // NATS.
    if args.flag("--no-nats") {
        results
            .notes
            .push("NATS not measured (`--no-nats`).".into());
    } else if nats::reachable() {
        let n = 30_000 / scale;
        let mut c = Comparison::new("NATS bus vs raw async-nats, end to end", n);
        for run in 0..rounds.min(3) as u32 {
            let raw = runtime.block_on(nats::raw(nats::URL, n, run));
            let bus = runtime.block_on(nats::bus(nats::URL, n, run));
            c.round(raw, bus);
            eprintln!("NATS round {run}: raw {raw:.0} msg/s, bus {bus:.0} msg/s");
        }
        print_comparison(&c);
        results.comparisons.push((c, Some(0.95)));
    } else {
        results
            .notes
            .push("NATS not measured: no server answered on 127.0.0.1:4222.".into());
    }
    results.notes.push(
        "Kafka bus vs raw rdkafka: not measured yet (TODO): the Kafka transport is still in \
         progress; the comparison is to be added to eventbus-bench once `eventbus_kafka` is \
         finished and its tests pass."
            .into(),
    );

    // Head-of-line.
    let hol = Hol {
        per_key: Hol::default().per_key / scale,
        ..Hol::default()
    };
    let mut rows: Vec<HolRow> = [Design::Dispatcher, Design::Lanes]
        .into_iter()
        .flat_map(|design| {
            [false, true].map(|stalled| HolRow {
                design,
                stalled,
                throughput: Samples::default(),
                p50_us: Samples::default(),
                p99_us: Samples::default(),
                vs_no_stall: Samples::default(),
            })
        })
        .collect();
    for round in 0..rounds.min(3) {
        for row in rows.iter_mut() {
            let r = runtime.block_on(hol.run(row.design, row.stalled));
            row.throughput.push(r.throughput);
            row.p50_us.push(r.latency.p50.as_secs_f64() * 1e6);
            row.p99_us.push(r.latency.p99.as_secs_f64() * 1e6);
        }
        for pair in rows.chunks_mut(2) {
            let base = pair[0].throughput.0[round];
            for row in pair.iter_mut() {
                let x = row.throughput.0[round] / base;
                row.vs_no_stall.push(x);
            }
        }
        eprintln!("head-of-line round {round} done");
    }
    println!(
        "\nhead-of-line ({} other keys, one stalled {:?}/message):",
        hol.keys, hol.stall
    );
    for r in &rows {
        println!(
            "  {:32} stall {:3}: {} msg/s, {} of no stall, p99 {:.0} µs",
            r.design.name(),
            if r.stalled { "yes" } else { "no" },
            Rate(&r.throughput),
            Ratio(&r.vs_no_stall),
            r.p99_us.median()
        );
    }
    results.hol = Some((hol, rows));
    drop(runtime);

    if let Some(root) = args.value("--report") {
        let callgrind = cost::valgrind_available();
        let dir = cost_dir();
        match cost::measure(&dir, callgrind) {
            Ok(c) => results.cost = c,
            Err(e) => results.notes.push(format!("cost not measured: {e}")),
        }
        if callgrind {
            let file = dir.join(format!("dispatcher.{}.callgrind", 2 * cost::MESSAGES));
            results.profile = cost::profile(&file, 20).ok();
        }
        let _ = std::fs::remove_dir_all(&dir);
        println!("\n{}", report::cost_table(&results.cost));
        if let Err(e) = write_report(Path::new(root), &results) {
            eprintln!("eventbus-bench: writing the report failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The xtask command that makes these results (what the report says made it).
fn command(args: &Args) -> String {
    let mut c = String::from("cargo xtask bench");
    if args.value("--report").is_some() {
        c.push_str(" --report");
    }
    for flag in ["--quick", "--no-nats"] {
        if args.flag(flag) {
            c.push(' ');
            c.push_str(flag);
        }
    }
    if let Some(r) = args.value("--rounds") {
        c.push_str(&format!(" --rounds {r}"));
    }
    c
}

fn print_comparison(c: &Comparison) {
    println!(
        "{}: {} msg/s vs baseline {} msg/s, ratio {}",
        c.name,
        Rate(&c.candidate),
        Rate(&c.baseline),
        Ratio(&c.ratios)
    );
}

fn write_report(root: &Path, results: &Results) -> Result<(), Box<dyn std::error::Error>> {
    results.write_svgs(&root.join("docs/bench"))?;
    let path = root.join("BENCHMARKS.md");
    std::fs::write(&path, results.markdown("docs/bench"))?;
    println!("wrote {} and docs/bench/*.svg", path.display());
    Ok(())
}
