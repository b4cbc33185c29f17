//! This bus and Go event buses side by side (`eventbus_bench::peers`): the Go SDK's load
//! scenarios A and B at its four levels, the head-of-line case and the large run, on each
//! transport of this bus and on the Go peers of the same kind, against the same brokers, every
//! cell in a fresh process, peers interleaved round by round. Prints a markdown table, writes
//! it to `target/peers/peers.md` and, with `--report ROOT`, into `ROOT/BENCHMARKS.md`.
//!
//! `cargo xtask peers [--transport T] [--rounds N]` builds the Go harness (`peers/go/`),
//! brings the shared brokers up and runs this with `--go-peer <its binary>`;
//! `peers cell <transport> <case> [<variant>]` is one cell of this bus (what the table's
//! eventbus rows run; `defaults`, `small-buffers` or `one-partition`, see
//! `eventbus_bench::peers::Variant`).
//!
//! Fails when this bus lost a message, broke an aggregate's order or did not finish (on a
//! broker, the large case's 60 s cap excepted); a Go peer doing so is a figure of the table.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use eventbus_bench::peers::{self, Case, Cell, HEAD, Rounds, Transport, Variant};
use eventbus_bench::{report, scenario};
use eventbus_core::EventBus;
use eventbus_kafka::testing::SharedBroker;
use eventbus_kafka::{KafkaConfig, KafkaTransport};
use eventbus_memory::{MemoryConfig, MemoryTransport};
use eventbus_nats::testing::SharedServer;
use eventbus_nats::{NatsConfig, NatsTransport, StreamOptions};
use eventbus_testkit::brokers::shared;

eventbus_testkit::install_heap_counter!();

const USAGE: &str = "usage: peers --go-peer <binary built from peers/go> [--transport memory|nats|kafka|all] [--rounds N] [--report ROOT]\n       peers cell <memory|nats|kafka> <case> [defaults|small-buffers|one-partition]";

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
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let transports = match eventbus_bench::flag("--transport").as_deref() {
        None | Some("all") => Transport::ALL.to_vec(),
        Some(name) => match Transport::parse(name) {
            Ok(t) => vec![t],
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
    };
    let rounds = eventbus_bench::arg("--rounds", 3).max(1);
    let me = std::env::current_exe().expect("this executable");
    let mut table = format!(
        "{rounds} rounds per cell, interleaved (this bus, then each Go peer, round by round); \
         each cell a fresh process; this bus on a tokio runtime of 2 workers, Go with \
         GOMAXPROCS the machine's (2). `hol`: B at Extreme plus one aggregate whose {} messages \
         take {:?} each to handle, published first: figures are the other aggregates'. \
         `large`: 1,000,000 messages over 10,000 aggregates in memory; {},{:03} over 10,000 or \
         60 s on a broker. Latency runs from a message's send stamp, written just before its \
         publish call: where a publish blocks until the message was handled (GoChannel with \
         BlockPublishUntilSubscriberAck), the wait shows in msg/s, not in latency.\n",
        peers::HOL_STALL.messages,
        peers::HOL_STALL.sleep,
        peers::BROKER_CAP / 1000,
        peers::BROKER_CAP % 1000,
    );
    let mut failures = Vec::new();
    for transport in transports {
        table.push_str(&format!("\n### {}\n\n{HEAD}\n", transport.name()));
        println!("\n{}\n{HEAD}", transport.name());
        let mut legend = String::new();
        for case in Case::all() {
            let variants = Variant::on(transport);
            let mut ours: Vec<Rounds> = variants.iter().map(|_| Rounds::default()).collect();
            let go_peers = transport.go_peers();
            let mut theirs: Vec<Rounds> = go_peers.iter().map(|_| Rounds::default()).collect();
            for _ in 0..rounds {
                for (variant, rounds) in variants.iter().zip(&mut ours) {
                    match our_cell(&me, transport, case, *variant) {
                        Ok(c) => rounds.cells.push(c),
                        Err(e) => failures.push(e),
                    }
                }
                for (peer, rounds) in go_peers.iter().zip(&mut theirs) {
                    match peers::go_cell(&go_peer, peer, transport, case) {
                        Ok(c) => rounds.cells.push(c),
                        Err(e) => failures.push(e),
                    }
                }
            }
            // The large case on a broker is capped at 60 s: not finishing there is a figure.
            let capped = case == Case::Large && transport != Transport::Memory;
            for r in ours
                .iter()
                .filter(|r| r.broken(case.load(transport).shape.keyed(), capped))
            {
                failures.push(format!(
                    "eventbus on {}, {}: {:?}",
                    transport.name(),
                    case.name(),
                    r.cells
                ));
            }
            let median = ours[0].throughput();
            for r in ours.iter().chain(&theirs) {
                let row = peers::row(case, r, median);
                println!("{row}");
                table.push_str(&row);
                table.push('\n');
            }
            peers::add_settings(&mut legend, ours.iter().chain(&theirs));
        }
        table.push_str(&format!("\nSettings:\n{legend}"));
        println!("\n{legend}");
    }
    if let Err(e) = write(&table) {
        failures.push(e);
    }
    eventbus_bench::exit_code(&failures)
}

/// Writes the table to `target/peers/peers.md` and, with `--report ROOT`, into
/// `ROOT/BENCHMARKS.md`'s section of it.
fn write(table: &str) -> Result<(), String> {
    let path = eventbus_bench::target_dir().join("peers").join("peers.md");
    std::fs::create_dir_all(path.parent().expect("a directory"))
        .and_then(|()| std::fs::write(&path, table))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("\n{}", path.display());
    if let Some(root) = eventbus_bench::flag("--report") {
        let path = Path::new(&root).join("BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let section = format!(
            "## Against Go event buses\n\nGenerated by `{}` on {}, from {}.\n\n{table}",
            command(),
            report::machine(),
            report::source(),
        );
        std::fs::write(&path, report::splice(&doc, "peers", &section))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// The command that made the table, as a user would type it.
fn command() -> String {
    let mut c = "cargo xtask peers".to_owned();
    for flag in ["--transport", "--rounds"] {
        if let Some(v) = eventbus_bench::flag(flag) {
            c.push_str(&format!(" {flag} {v}"));
        }
    }
    c
}

/// One cell of this bus, in a process of its own.
fn our_cell(me: &Path, transport: Transport, case: Case, variant: Variant) -> Result<Cell, String> {
    let out = Command::new(me)
        .args(["cell", transport.name(), &case.name(), variant.name()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "eventbus cell {} {} failed: {}",
            transport.name(),
            case.name(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `cell <transport> <case>`: the case on this bus, its figures as a [`Cell`].
fn cell(args: &[String]) -> Result<Cell, String> {
    let (transport, case, variant) = match args {
        [transport, case] => (transport, case, Variant::Defaults),
        [transport, case, variant] => (transport, case, Variant::parse(variant)?),
        _ => return Err("cell <memory|nats|kafka> <case> [<variant>]".into()),
    };
    let (transport, case) = (Transport::parse(transport)?, Case::parse(case)?);
    let (label, load) = (case.name(), case.load(transport));
    // What the cell makes on a shared broker (names holding this process's id) is deleted when
    // these guards drop, after the figures are taken.
    let _nats = (transport == Transport::Nats).then(SharedServer::get);
    let _kafka = (transport == Transport::Kafka).then(SharedBroker::get);
    let report = eventbus_bench::runtime().block_on(scenario::run_bus(&label, load, || async {
        bus(transport, variant).await
    }));
    let usage = report.usage;
    Ok(Cell {
        peer: variant.bus().into(),
        settings: variant.settings(transport).into(),
        scenario: label,
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

/// This bus on `transport` set up as `variant`, on the shared brokers.
async fn bus(transport: Transport, variant: Variant) -> EventBus {
    match (transport, variant) {
        (Transport::Memory, Variant::SmallBuffers) => EventBus::builder(
            MemoryTransport::with_config(MemoryConfig::default().topic_capacity(64)),
        )
        .max_buffered(64)
        .build(),
        (Transport::Memory, _) => EventBus::builder(MemoryTransport::new()).build(),
        (Transport::Nats, _) => {
            let url = shared::nats_url();
            let mut config = NatsConfig::new(url.clone());
            if variant == Variant::OnePartition {
                config = config.stream(StreamOptions::default().partitions(1));
            }
            let t = NatsTransport::connect(config)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to NATS at {url}: {e}"));
            EventBus::builder(t).build()
        }
        (Transport::Kafka, _) => {
            let brokers = shared::kafka_brokers();
            let t = KafkaTransport::connect(KafkaConfig::new(brokers.clone()))
                .await
                .unwrap_or_else(|e| panic!("cannot connect to Kafka at {brokers}: {e}"));
            EventBus::builder(t).build()
        }
    }
}
