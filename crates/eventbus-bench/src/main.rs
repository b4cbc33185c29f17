//! Runs the benchmarks of eventbus-bench and prints (or writes) the report.
//!
//! - `eventbus-bench run [--rounds N] [--quick] [--no-nats] [--no-kafka] [--report ROOT]`: throughput
//!   ratios (dispatcher and memory bus against the raw mpsc loop, NATS bus against raw
//!   async-nats when a server answers on 127.0.0.1:4222, Kafka bus against raw rdkafka on a
//!   private Apache Kafka or `EVENTBUS_KAFKA_BROKERS`), interleaved rounds, and the
//!   head-of-line table; with `--report`, also the cost per message and the growth table, then
//!   `ROOT/BENCHMARKS.md` and `ROOT/docs/bench/*.svg`.
//! - `eventbus-bench cost [--no-callgrind] [--profile]`: instructions and allocations per
//!   message (needs the `cost-workload` and `alloc-workload` binaries beside this one), and
//!   the broker buses' instructions and allocations against their raw clients: NATS when a
//!   server answers on 127.0.0.1:4222, Kafka at `EVENTBUS_KAFKA_BROKERS` or, if unset, the
//!   shared Kafka (`cargo xtask brokers up`) when it answers.
//! - `eventbus-bench growth [--rounds N] [--quick] [--no-callgrind]`: how throughput, peak heap
//!   and instructions per message grow with keys and subscriptions (needs `cost-workload` and
//!   `heap-workload` beside this one: `cargo build --release -p eventbus-bench`).
//!
//! `cargo xtask bench [--report]` and `cargo xtask cost` build and run it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use eventbus_bench::cost::{
    self, TARGET_ALLOCATIONS, TARGET_INSTRUCTIONS, TARGET_MEMORY_ALLOCATIONS,
};
use eventbus_bench::hol::{Design, Hol};
use eventbus_bench::report::{HolRow, Results};
use eventbus_bench::stats::{Comparison, Rate, Ratio, Samples};
use eventbus_bench::{growth, kafka, nats, report, runtime, workload};
use eventbus_testkit::brokers::{ServerKind, shared};

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
        Some("growth") => {
            let table = growth::measure(&growth_plan(&args));
            println!("{}", table.markdown());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: eventbus-bench run [--rounds N] [--quick] [--no-nats] [--no-kafka] [--report ROOT]\n\
                 \x20      eventbus-bench cost [--no-callgrind] [--profile]\n\
                 \x20      eventbus-bench growth [--rounds N] [--quick] [--no-callgrind]"
            );
            ExitCode::from(2)
        }
    }
}

/// Rounds of `run` and `growth`: `--rounds N`, else 5 (3 with `--quick`). In `run`, the rows
/// that run in this process alone (dispatcher, memory bus, head-of-line throughput) take
/// [`IN_PROCESS_ROUNDS`] times as many.
fn rounds(args: &Args) -> usize {
    args.value("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if args.flag("--quick") { 3 } else { 5 })
        .max(1)
}

/// The memory bus row, and the rows of its two halves, each run alone (`gaps` reads them).
const MEMORY_BUS: &str = "memory bus, 1,000 keys vs raw mpsc";
const MEMORY_CONSUMING: &str =
    "memory bus, consuming only (published beforehand), 1,000 keys vs raw mpsc";
const MEMORY_PUBLISHING: &str =
    "memory bus, publishing only (nothing consumed), 1,000 keys vs raw mpsc";

/// How many times the rounds the in-process rows take. Their runs last a fraction of a second,
/// and with five rounds the verdicts of rows near their targets flipped from run to run with
/// the code unchanged (the dispatcher at 10,000 keys read 0.50× in one report and 0.35× in
/// the next, head-of-line 0.89× to 1.08×): one slow round moved the median. Three times the
/// rounds cost about two minutes more, most of it the fixed lanes' stalled runs.
const IN_PROCESS_ROUNDS: usize = 3;

fn growth_plan(args: &Args) -> growth::Plan {
    let callgrind = !args.flag("--no-callgrind") && cost::valgrind_available();
    growth::Plan {
        rounds: rounds(args),
        quick: args.flag("--quick"),
        callgrind,
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
        "cost per message: {} keys, (2n - n) / n with n = {} messages, current-thread runtime; \
         instructions: the median of {} such pairs of callgrind runs\n",
        cost::KEYS,
        cost::MESSAGES,
        cost::CALLGRIND_PAIRS,
    );
    println!("{}", report::cost_table(&costs));
    if let Some((_, c)) = costs.iter().find(|(w, _)| *w == "dispatcher") {
        let line = |what: &str, v: f64, target: f64, met: bool| {
            println!(
                "dispatcher {what} per message: {v:.2} (target ≤ {target}): {}",
                if met { "ok" } else { "OVER" }
            );
        };
        // The same verdict as the report: allocations within the measurement floor count as met.
        line(
            "allocations",
            c.allocations,
            TARGET_ALLOCATIONS,
            cost::allocations_met(c.allocations, TARGET_ALLOCATIONS),
        );
        if let Some(i) = c.instructions {
            line(
                "instructions",
                i,
                TARGET_INSTRUCTIONS,
                i <= TARGET_INSTRUCTIONS,
            );
        }
    }
    // The shared brokers (`cargo xtask brokers up`): NATS if it answers, Kafka at
    // `EVENTBUS_KAFKA_BROKERS` if set, else if the shared one answers.
    let brokers = cost::Brokers {
        nats: nats::reachable(),
        kafka: std::env::var(cost::KAFKA_BROKERS_VAR)
            .ok()
            .or_else(|| shared::answers(ServerKind::Kafka).then(shared::kafka_brokers)),
    };
    if callgrind && (brokers.nats || brokers.kafka.is_some()) {
        let costs = cost::measure_brokers(&dir, &brokers)?;
        println!(
            "\nbroker workloads (NATS at {}: {}; Kafka: {}): instructions and allocations per \
             message over the whole process, (2n - n) / n with n = {} messages, instructions the \
             median of {} pairs\n\n{}",
            nats::URL,
            if brokers.nats {
                "answers"
            } else {
                "not measured, no answer"
            },
            brokers.kafka.as_deref().unwrap_or(
                "not measured, EVENTBUS_KAFKA_BROKERS unset and no shared Kafka answers"
            ),
            cost::BROKER_MESSAGES,
            cost::CALLGRIND_PAIRS,
            report::broker_cost_table(&costs)
        );
    }
    if args.flag("--profile") && callgrind {
        for w in ["dispatcher", "memory"] {
            let file = dir.join(format!("{w}.{}.callgrind", 2 * cost::MESSAGES));
            println!(
                "\nself instructions per message, {w} workload:\n{}",
                cost::profile(&file, 2 * cost::MESSAGES, 25)?
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn run(args: &Args) -> ExitCode {
    let quick = args.flag("--quick");
    let rounds = rounds(args);
    let in_process_rounds = IN_PROCESS_ROUNDS * rounds;
    let scale = if quick { 5 } else { 1 };
    let runtime = runtime();
    let mut results = Results {
        command: command(args),
        machine: report::machine(),
        source: report::source(),
        rounds,
        in_process_rounds,
        ..Default::default()
    };
    println!(
        "machine: {}\nsource: {}\n{rounds} interleaved rounds per broker case, \
         {in_process_rounds} per in-process case\n",
        results.machine, results.source
    );

    // The dispatcher alone, by key count.
    for keys in [1, 100, 10_000, 1_000_000] {
        let n = (200_000 / scale).max(keys);
        let pool: Vec<Arc<_>> = workload::messages("bench", keys, n)
            .into_iter()
            .map(Arc::new)
            .collect();
        let mut c = Comparison::new(
            format!("dispatcher alone, {keys} keys vs raw mpsc"),
            format!("dispatcher {}", short_count(keys)),
            n,
        );
        for _ in 0..in_process_rounds {
            let raw = runtime.block_on(workload::raw_mpsc(pool.clone()));
            let bus = runtime.block_on(workload::dispatcher(pool.clone()));
            c.round(workload::rate(n, raw), workload::rate(n, bus));
        }
        print_comparison(&c);
        // The target: at least 0.35× the raw loop with one key and with many.
        let target = matches!(keys, 1 | 10_000).then_some(0.35);
        results.comparisons.push((c, target));
    }

    // The memory bus end to end, and each of its halves alone in the same rounds (against the
    // same raw run): what the pipeline's rate is made of (see `gaps`).
    {
        let n = 200_000 / scale;
        let base = workload::messages("bench", 1_000, n);
        let mut c = Comparison::new(MEMORY_BUS, "memory bus 1k", n);
        let mut consuming = Comparison::new(MEMORY_CONSUMING, "consuming only 1k", n);
        let mut publishing = Comparison::new(MEMORY_PUBLISHING, "publishing only 1k", n);
        for _ in 0..in_process_rounds {
            let raw = workload::rate(n, runtime.block_on(workload::raw_mpsc(base.clone())));
            let bus = runtime.block_on(workload::memory_bus(base.clone()));
            c.round(raw, workload::rate(n, bus));
            let consumed = runtime.block_on(workload::memory_bus_consuming(base.clone()));
            consuming.round(raw, workload::rate(n, consumed));
            let published = runtime.block_on(workload::memory_bus_publishing(base.clone()));
            publishing.round(raw, workload::rate(n, published));
        }
        for c in [&c, &consuming, &publishing] {
            print_comparison(c);
        }
        results.comparisons.push((c, Some(0.5)));
        results.comparisons.push((consuming, None));
        results.comparisons.push((publishing, None));
    }

    // NATS.
    if args.flag("--no-nats") {
        results
            .notes
            .push("NATS not measured (`--no-nats`).".into());
    } else if nats::reachable() {
        let n = 30_000 / scale;
        let mut c = Comparison::new("NATS bus vs raw async-nats, end to end", "NATS", n);
        for run in 0..rounds as u32 {
            let raw = runtime.block_on(nats::raw(nats::URL, n, run));
            let bus = runtime.block_on(nats::bus(nats::URL, n, run));
            record_round(&mut c, run, raw, bus);
        }
        print_comparison(&c);
        results.comparisons.push((c, Some(0.95)));
        let mut c = Comparison::new(
            "NATS bus vs raw async-nats, publish only (pipelined, every ack awaited)",
            "NATS publish",
            n,
        );
        for run in 0..rounds as u32 {
            let raw = runtime.block_on(nats::raw_publish(nats::URL, n, run));
            let bus = runtime.block_on(nats::bus_publish(nats::URL, n, run));
            record_round(&mut c, run, raw, bus);
        }
        print_comparison(&c);
        results.comparisons.push((c, Some(0.95)));
    } else {
        results
            .notes
            .push("NATS not measured: no server answered on 127.0.0.1:4222.".into());
    }
    // Kafka.
    if args.flag("--no-kafka") {
        results
            .notes
            .push("Kafka not measured (`--no-kafka`).".into());
    } else {
        match kafka::Broker::start() {
            Ok(broker) => {
                let n = 30_000 / scale;
                let mut c = Comparison::new("Kafka bus vs raw rdkafka, end to end", "Kafka", n);
                // The broker is a JVM that compiles its hot paths as they run: a round of each
                // side first, unmeasured, so the first measured round does not pay for it.
                let warm_up = rounds as u32;
                runtime.block_on(kafka::raw(broker.brokers(), n, warm_up));
                runtime.block_on(kafka::bus(broker.brokers(), n, warm_up));
                for run in 0..rounds as u32 {
                    // Alternate which side goes first, so neither always meets the broker
                    // right after the other's load.
                    let (raw, bus) = if run % 2 == 0 {
                        let raw = runtime.block_on(kafka::raw(broker.brokers(), n, run));
                        (raw, runtime.block_on(kafka::bus(broker.brokers(), n, run)))
                    } else {
                        let bus = runtime.block_on(kafka::bus(broker.brokers(), n, run));
                        (runtime.block_on(kafka::raw(broker.brokers(), n, run)), bus)
                    };
                    record_round(&mut c, run, raw, bus);
                }
                print_comparison(&c);
                results.comparisons.push((c, Some(0.95)));
            }
            Err(e) => results.notes.push(format!(
                "Kafka not measured: no broker ({e}; set EVENTBUS_KAFKA_BROKERS or run \
                 `cargo xtask brokers install`, see DEVELOPERS.md)."
            )),
        }
    }

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
    // Throughput in every in-process round; latency, whose paced runs take seconds each, in
    // the first `rounds`.
    for round in 0..in_process_rounds {
        for row in rows.iter_mut() {
            let saturated = runtime.block_on(hol.run(row.design, row.stalled, false));
            row.throughput.push(saturated.throughput);
            if round < rounds {
                let paced = runtime.block_on(hol.run(row.design, row.stalled, true));
                row.p50_us.push(paced.latency.p50.as_secs_f64() * 1e6);
                row.p99_us.push(paced.latency.p99.as_secs_f64() * 1e6);
            }
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
            "  {:32} stall {:3}: {} msg/s, {} of no stall, paced p50 {:.0} µs p99 {:.0} µs",
            r.design.name(),
            if r.stalled { "yes" } else { "no" },
            Rate(&r.throughput),
            Ratio(&r.vs_no_stall),
            r.p50_us.median(),
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
            for w in ["dispatcher", "memory"] {
                let file = dir.join(format!("{w}.{}.callgrind", 2 * cost::MESSAGES));
                if let Ok(p) = cost::profile(&file, 2 * cost::MESSAGES, 20) {
                    results.profiles.push((w, p));
                }
            }
        }
        if callgrind {
            // Kafka as for its throughput row: the given brokers, else a private Kafka, started
            // again here so that it did not run beside the head-of-line rounds.
            let kafka = if args.flag("--no-kafka") {
                None
            } else {
                match kafka::Broker::start() {
                    Ok(broker) => Some(broker),
                    Err(e) => {
                        results
                            .notes
                            .push(format!("Kafka instructions not measured: {e}"));
                        None
                    }
                }
            };
            let brokers = cost::Brokers {
                nats: !args.flag("--no-nats") && nats::reachable(),
                kafka: kafka.as_ref().map(|b| b.brokers().to_owned()),
            };
            match cost::measure_brokers(&dir, &brokers) {
                Ok(c) => results.broker_cost = c,
                Err(e) => results
                    .notes
                    .push(format!("broker instructions not measured: {e}")),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        println!("\n{}", report::cost_table(&results.cost));
        if !results.broker_cost.is_empty() {
            println!("\n{}", report::broker_cost_table(&results.broker_cost));
        }
        let table = growth::measure(&growth_plan(args));
        println!("\n{}", table.markdown());
        results.growth = Some(table);
        results.gaps = gaps(&results);
        for g in &results.gaps {
            println!("- {g}");
        }
        if let Err(e) = write_report(Path::new(root), &results) {
            eprintln!("eventbus-bench: writing the report failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Each missed target: by how much (from this run), where the time goes (the callgrind
/// profiles of the cost workloads, read for this report) and what change in core would close
/// it.
fn gaps(results: &Results) -> Vec<String> {
    let mut gaps = Vec::new();
    let cost = |w: &str| results.cost.iter().find(|(n, _)| *n == w).map(|(_, c)| *c);
    for (c, target) in &results.comparisons {
        let Some(target) = *target else { continue };
        let ratio = c.ratios.median();
        if ratio >= target {
            continue;
        }
        let by = format!(
            "{}: {ratio:.2}× against a target of {target:.2}× (short by {:.2}, the bus would need {:.1}× its speed)",
            c.name,
            target - ratio,
            target / ratio
        );
        let detail = if c.name == MEMORY_BUS {
            let per = |w: &str| {
                cost(w).map_or_else(String::new, |c| {
                    format!(
                        "{:.0} instructions and {:.2} allocations",
                        c.instructions.unwrap_or(f64::NAN),
                        c.allocations
                    )
                })
            };
            let halves = match (
                median(results, MEMORY_CONSUMING),
                median(results, MEMORY_PUBLISHING),
            ) {
                (Some(consuming), Some(publishing)) => {
                    let both = together(consuming, publishing);
                    let alone = if consuming < target {
                        "; the consuming half alone is below the target already, so cheaper \
                         publishing alone cannot close it"
                            .to_owned()
                    } else {
                        String::new()
                    };
                    let reading = if (ratio / both - 1.0).abs() <= AGREE {
                        format!(
                            "close to the {ratio:.2}× measured: the pipeline is bound by the CPU \
                             both halves spend per message, not by one waiting for the other"
                        )
                    } else if ratio < both {
                        format!(
                            "and {ratio:.2}× was measured, less: besides the CPU both halves \
                             spend, the pipeline waits (hand-offs between the publisher and the \
                             consuming loop)"
                        )
                    } else {
                        format!(
                            "and {ratio:.2}× was measured, more: a half alone leaves part of \
                             the machine idle"
                        )
                    };
                    format!(
                        ". Its two halves, each run alone in the same rounds: consuming \
                         {consuming:.2}× (every message published beforehand), publishing \
                         {publishing:.2}× (nothing consumed). Sharing the two cores, they allow \
                         1 / (1/{consuming:.2} + 1/{publishing:.2}) = {both:.2}× together, \
                         {reading}. {target:.2}× would need {:.0} % less CPU per message over \
                         both halves{alone}",
                        (1.0 - both / target) * 100.0
                    )
                }
                _ => String::new(),
            };
            format!(
                ". Per message the memory bus costs {} against the raw loop's {} (cost table); \
                 its profile above splits it between the publish path (`publish.rs`: the span, \
                 the clock reads of the publish metrics, the memory transport's topic lookup and \
                 append), the consuming loop (`consume.rs`), the dispatcher \
                 (`dispatch/queue.rs`) and the ack (`MemoryAck::finish_in`, settled in \
                 batches), plus malloc/free: the one allocation left (the message's `Arc` in \
                 the topic's log; the published messages are clones that share their \
                 topic, id and key with messages made before the counted region){halves}",
                per("memory"),
                per("raw")
            )
        } else if c.name.starts_with("dispatcher") {
            ". Where its instructions go: the dispatcher profile above and the note on its \
             instructions; what only two threads show (the dispatcher's state lock shared by \
             the producer and the workers, wake-ups across threads) is not in an instruction \
             count"
                .to_owned()
        } else if let Some(b) = results
            .broker_cost
            .iter()
            .find(|b| c.name.starts_with(b.name))
        {
            let rest = if c.name.starts_with("Kafka") {
                "the transport polls librdkafka on a thread of its own, so that librdkafka's \
                 liveness rule holds whatever the handlers do, and hands each message to the \
                 runtime's workers through a channel; the raw loop handles each message on the \
                 polling thread"
            } else {
                "the bus hands each delivery from task to task (a partition's pull, the \
                 consuming loop, a worker, back to the loop for the ack), each a wake-up that \
                 may cross threads, where the raw loop handles a message in the task that \
                 pulled it (with 30,000 messages, scratch runs counted 7,100–10,900 context \
                 switches for the bus against 4,800–6,600 for the raw client); and the \
                 transport runs async-nats's connection on a thread of its own (so that \
                 `close` ends its tasks for certain, also while it reconnects to a dead \
                 server), worth about 5 % of the bus's CPU in a scratch build that ran it on \
                 the runtime's workers instead"
            };
            format!(
                ". Instructions per message of the same work (callgrind, whole process): {:.0} \
                 against the raw client's {:.0}, {:.2}×; allocations {:.1} against {:.1}. The \
                 rest of the gap is what an instruction count does not show: {rest}",
                b.bus,
                b.raw,
                b.bus / b.raw,
                b.bus_allocations,
                b.raw_allocations,
            )
        } else {
            ". Not profiled in this run; the spread says whether the gap is real: compare \
             the min–max of the ratio with the target"
                .to_owned()
        };
        gaps.push(format!("{by}{detail}."));
    }
    if let Some(c) = cost("memory")
        && !cost::allocations_met(c.allocations, TARGET_MEMORY_ALLOCATIONS)
    {
        gaps.push(format!(
            "Memory bus allocations: {:.2} per message against ≤ {TARGET_MEMORY_ALLOCATIONS}. \
             The path makes one: the `Arc` of the message in the topic's log. Anything above \
             that is new: find it among the callers of `__rust_alloc` in the memory workload's \
             callgrind file (`callgrind_annotate --tree=caller`)",
            c.allocations
        ));
    }
    if let Some(c) = cost("dispatcher") {
        if !cost::allocations_met(c.allocations, TARGET_ALLOCATIONS) {
            gaps.push(format!(
                "Dispatcher allocations: {:.2} per message against ≤ {TARGET_ALLOCATIONS} (over by \
                 {:.2}). The path makes one: the oneshot of the tower `call` \
                 (`Dispatcher::call`; the bus's consuming loops use the completion queue \
                 instead). Anything above that is new: find it among the callers of \
                 `__rust_alloc` in the dispatcher workload's callgrind file \
                 (`callgrind_annotate --tree=caller`)",
                c.allocations,
                c.allocations - TARGET_ALLOCATIONS
            ));
        }
        if let Some(i) = c.instructions.filter(|i| *i > TARGET_INSTRUCTIONS) {
            gaps.push(format!(
                "Dispatcher instructions: {i:.0} per message against ≤ {TARGET_INSTRUCTIONS:.0} \
                 (over by {:.0}, {:.0} %). See the dispatcher profile above: the worker loop \
                 (`Shared::work`, inlined into `TrackedFuture::poll`), the oneshot of the \
                 tower `call` (its allocation, and its send and free in `Reply::send`), the \
                 key map entry (on submit and on completion), the handler call's boxed future \
                 (`ReusableBoxFuture::set`), the clock read per call for the handler-duration \
                 histogram, and the span around each call (`Instrumented::poll`)",
                i - TARGET_INSTRUCTIONS,
                (i / TARGET_INSTRUCTIONS - 1.0) * 100.0
            ));
        }
    }
    gaps
}

/// How far apart (relative) a measured rate and the rate its stages' CPU allows may be and
/// still be read as the same.
const AGREE: f64 = 0.15;

/// The median ratio of the comparison named `name`, if it ran.
fn median(results: &Results, name: &str) -> Option<f64> {
    results
        .comparisons
        .iter()
        .find(|(c, _)| c.name == name)
        .map(|(c, _)| c.ratios.median())
}

/// The rate two stages reach together when they share the machine and neither waits for the
/// other, each given as its rate alone: the time each spends per message adds up.
fn together(a: f64, b: f64) -> f64 {
    1.0 / (1.0 / a + 1.0 / b)
}

/// `10000` → `10k`.
fn short_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The xtask command that makes these results (what the report says made it).
fn command(args: &Args) -> String {
    let mut c = String::from("cargo xtask bench");
    if args.value("--report").is_some() {
        c.push_str(" --report");
    }
    for flag in ["--quick", "--no-nats", "--no-kafka"] {
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

/// Records a round of a comparison that measured CPU, and says so on stderr.
fn record_round(
    c: &mut Comparison,
    run: u32,
    raw: eventbus_bench::cpu::Run,
    bus: eventbus_bench::cpu::Run,
) {
    c.round_with_cpu(raw, bus);
    eprintln!(
        "{} round {run}: raw {:.0} msg/s, {:?} CPU/msg; bus {:.0} msg/s, {:?} CPU/msg",
        c.label, raw.rate, raw.cpu_per_message, bus.rate, bus.cpu_per_message
    );
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
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut doc = results.markdown("docs/bench");
    for name in report::KEPT_SECTIONS {
        if let Some(body) = report::section(&old, name) {
            doc = report::splice(&doc, name, body);
        }
    }
    std::fs::write(&path, doc)?;
    println!("wrote {} and docs/bench/*.svg", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two stages sharing the machine go at the rate their times per message allow together.
    #[test]
    fn stages_sharing_the_machine_add_their_times_per_message() {
        assert!((together(0.5, 0.5) - 0.25).abs() < 1e-12);
        assert!((together(0.48, 0.82) - 0.3028).abs() < 1e-4);
        assert!(
            together(0.48, 1e9) < 0.48,
            "never faster than its slower stage"
        );
    }

    /// The memory bus's gap is explained from its halves' rows, measured in the same rounds.
    #[test]
    fn the_memory_gap_is_explained_by_its_halves() {
        let row = |name: &str, ratio: f64| {
            let mut c = Comparison::new(name, "row", 1);
            c.round(1.0, ratio);
            c
        };
        let results = Results {
            comparisons: vec![
                (row(MEMORY_BUS, 0.30), Some(0.5)),
                (row(MEMORY_CONSUMING, 0.48), None),
                (row(MEMORY_PUBLISHING, 0.82), None),
            ],
            ..Default::default()
        };
        let gaps = gaps(&results);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        for part in [
            "0.30× against a target of 0.50×",
            "consuming 0.48×",
            "publishing 0.82×",
            "= 0.30× together, close to the 0.30× measured",
            "39 % less CPU per message",
            "below the target already",
        ] {
            assert!(gaps[0].contains(part), "{part:?} not in {}", gaps[0]);
        }
    }
}
