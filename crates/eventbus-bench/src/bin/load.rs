//! The Go SDK's load test on eventbus: levels Low / Medium / High / Extreme (500 / 2,000 /
//! 5,000 / 10,000 messages over 5 topics) and, on request, Large (1,000,000 messages; 10,000
//! aggregates in scenario B), each in scenario A (raw unkeyed messages with a send timestamp)
//! and B (envelopes, versions in order per aggregate, order checked). Timed to the last
//! receipt. Prints a markdown table and writes `target/load/<transport>.json` and `.svg`.
//!
//! Exits non-zero when a level lost messages, broke order or leaked tasks.
//!
//! Heap is counted by a counting global allocator, which taxes every allocation: throughput
//! here is lower than in the `throughput` tool.
//!
//! `cargo run --release -p eventbus-bench --bin load [-- --transport memory] [--level LEVELS]`
//! (what `cargo xtask load` runs)
//! where LEVELS is `low`, `medium`, `high`, `extreme`, `large`, a comma-separated list of
//! them, `go` (the four Go levels, the default) or `all` (the four and `large`).

use std::process::ExitCode;

use eventbus_bench::load::{Level, LevelResult, LoadReport, Scenario};
use eventbus_core::EventBus;
use eventbus_kafka::{KafkaConfig, KafkaTransport};
use eventbus_memory::MemoryTransport;
use eventbus_nats::{NatsConfig, NatsTransport};

eventbus_testkit::install_heap_counter!();

const WORKERS: usize = 2;
const USAGE: &str = "usage: load [--transport memory|nats|kafka] [--level low|medium|high|extreme|large|go|all[,...]]";

struct Args {
    transport: String,
    levels: Vec<Level>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        transport: "memory".into(),
        levels: Level::GO.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match name.as_str() {
            "--transport" => args.transport = value()?,
            "--level" | "--levels" => args.levels = levels(&value()?)?,
            "--" => {}
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn levels(spec: &str) -> Result<Vec<Level>, String> {
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "go" => out.extend(Level::GO),
            "all" => out.extend(Level::ALL),
            _ => out
                .push(Level::parse(name).ok_or_else(|| format!("unknown level {name}\n{USAGE}"))?),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(format!("no level given\n{USAGE}"));
    }
    Ok(out)
}

/// Kafka brokers for `--transport kafka`: `EVENTBUS_KAFKA_BROKERS`, or else a private Kafka
/// started for the run (and stopped after it).
static KAFKA_BROKERS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

async fn build(transport: &str) -> EventBus {
    match transport {
        "kafka" => {
            let brokers = KAFKA_BROKERS.get().expect("brokers chosen in main");
            let t = KafkaTransport::connect(KafkaConfig::new(brokers.clone()))
                .await
                .unwrap_or_else(|e| panic!("cannot connect to Kafka at {brokers}: {e}"));
            EventBus::builder(t).build()
        }
        "nats" => {
            let t = NatsTransport::connect(NatsConfig::new(
                eventbus_testkit::brokers::shared::nats_url(),
            ))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to NATS at {}: {e}",
                    eventbus_testkit::brokers::shared::nats_url()
                )
            });
            EventBus::builder(t).build()
        }
        _ => EventBus::builder(MemoryTransport::new()).build(),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match args.transport.as_str() {
        "memory" | "nats" | "kafka" => {}
        other => {
            eprintln!("load: unknown transport {other:?} (memory, nats, kafka)");
            return ExitCode::from(2);
        }
    }
    // A private broker lives as long as this guard.
    let _private_kafka =
        (args.transport == "kafka").then(|| match std::env::var("EVENTBUS_KAFKA_BROKERS") {
            Ok(brokers) => {
                let _ = KAFKA_BROKERS.set(brokers);
                None
            }
            Err(_) => {
                let broker =
                    eventbus_testkit::brokers::ServerProcess::kafka().unwrap_or_else(|e| {
                        panic!("cannot start a private Kafka (see DEVELOPERS.md): {e}")
                    });
                let _ = KAFKA_BROKERS.set(format!("127.0.0.1:{}", broker.port()));
                Some(broker)
            }
        });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut report = LoadReport::new(&args.transport, WORKERS);
    runtime.block_on(async {
        for &level in &args.levels {
            for scenario in Scenario::BOTH {
                let load = level.load(scenario);
                eprintln!(
                    "load: {} {}: {} messages, {} topics, {} {} x {} ...",
                    level.name(),
                    scenario.describe(),
                    load.messages(),
                    load.topics,
                    load.aggregates,
                    if scenario == Scenario::A {
                        "senders"
                    } else {
                        "aggregates"
                    },
                    load.versions,
                );
                let run =
                    eventbus_bench::load::run(level, scenario, || build(&args.transport)).await;
                let result = LevelResult::new(level, scenario, &run);
                eprintln!(
                    "load: {} {}: received {} in {:.1} ms ({:.0} msg/s), lost {}, leaked tasks {}",
                    level.name(),
                    scenario.describe(),
                    result.received,
                    result.elapsed_ms,
                    result.receive_msg_per_s,
                    result.lost,
                    result.leaked_tasks,
                );
                report.push(level, scenario, &run);
            }
        }
        if args.transport == "nats" {
            // The shared server's guard deletes the streams this process made when dropped.
            drop(eventbus_nats::testing::SharedServer::get());
        }
    });

    println!(
        "load: {} transport, {} topics, tokio multi-thread runtime with {WORKERS} workers, heap counted: {}\n",
        report.transport,
        eventbus_bench::load::TOPICS,
        report.heap_counted
    );
    print!("{}", report.markdown());
    println!(
        "\nmsg/s: deliveries received from first publish to last receipt. Latencies: publish = call to\n\
         return; e2e = send timestamp (taken as the message is built) to the handler reading it.\n\
         Tasks: alive tokio tasks, sampled every millisecond by a thread of the harness; the peak\n\
         includes the harness's 5 sender tasks; the bus's own are one consuming task per\n\
         subscription plus one worker per handler call running at once. Heap: live bytes of the\n\
         process (counting allocator); the harness allocates what it records into before the start\n\
         snapshot. Scenario A is unkeyed (no order promised); B checks order per aggregate."
    );

    let dir = eventbus_bench::target_dir().join("load");
    let json = dir.join(format!("{}.json", report.transport));
    let svg = dir.join(format!("{}.svg", report.transport));
    let mut failed = false;
    match report.write_json(&json) {
        Ok(()) => println!("\njson: {}", json.display()),
        Err(e) => {
            eprintln!("load: cannot write {}: {e}", json.display());
            failed = true;
        }
    }
    match report.write_svg(&svg) {
        Ok(()) => println!("svg:  {}", svg.display()),
        Err(e) => {
            eprintln!("load: cannot draw {}: {e}", svg.display());
            failed = true;
        }
    }

    let mut failures = report.failures();
    // Threads are process-wide, so they are judged here, where the load has the process alone.
    failures.extend(
        report
            .results
            .iter()
            .filter(|r| r.leaked_threads > 0)
            .map(|r| {
                format!(
                    "{} {}: {} threads leaked",
                    r.level.name(),
                    r.scenario.describe(),
                    r.leaked_threads
                )
            }),
    );
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    if failures.is_empty() && !failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
