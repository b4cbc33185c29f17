//! The main job on the in-memory default: many aggregates over several topics, versions in
//! order per aggregate, through the bus and through a raw `tokio::sync::mpsc` → handler loop in
//! the same run; prints what the Go SDK's leak report printed, plus the throughput ratio.
//!
//! `cargo run --release -p eventbus --example report [-- --aggregates N --versions N --rounds N]`

use std::time::Duration;

use eventbus::{EventBus, MemoryTransport};
use eventbus_testkit::leak::Bytes;
use eventbus_testkit::scenario::{self, Load, Report, Shape};

eventbus_testkit::install_heap_counter!();

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let topics = 5;
    let aggregates = arg("--aggregates", 5_000) as usize;
    let versions = arg("--versions", 20);
    let rounds = arg("--rounds", 3).max(1) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    runtime.block_on(async {
        println!(
            "eventbus report: memory transport, {topics} topics x {} aggregates x {versions} versions = {} messages per run, {rounds} rounds, 2 runtime workers\n",
            aggregates / topics,
            aggregates as u64 * versions
        );
        let mut main_run: Option<Report> = None;
        for shape in [Shape::Envelope, Shape::Raw] {
            let load = Load {
                topics,
                aggregates,
                versions,
                payload: 100,
                shape,
                deadline: Duration::from_secs(120),
            };
            let (mut bus_tp, mut raw_tp) = (Vec::new(), Vec::new());
            // Interleave raw and bus runs so machine noise hits both alike.
            for _ in 0..rounds {
                let raw = scenario::run_raw_mpsc("raw mpsc", load).await;
                raw_tp.push(raw.throughput());
                let bus = scenario::run_bus("bus", load, || {
                    EventBus::builder(MemoryTransport::new()).build()
                })
                .await;
                check(&bus);
                bus_tp.push(bus.throughput());
                if shape == Shape::Envelope && main_run.is_none() {
                    main_run = Some(bus);
                }
            }
            let (b, r) = (median(bus_tp.clone()), median(raw_tp.clone()));
            println!(
                "{:<9} bus {:>10.0} msg/s  raw mpsc {:>10.0} msg/s  ratio {:.2}  (medians of {rounds}; bus runs {:?})",
                format!("{shape:?}:"),
                b,
                r,
                b / r,
                bus_tp.iter().map(|x| *x as u64).collect::<Vec<_>>()
            );
        }
        if let Some(r) = main_run {
            print_table(&r);
        }
    });
}

fn check(r: &Report) {
    if r.lost != 0 || r.order_violations != 0 || r.usage.leaked_tasks() != 0 {
        eprintln!("FAILED: {r:#?}");
        std::process::exit(1);
    }
}

fn print_table(r: &Report) {
    let u = &r.usage;
    let d = r.dispatcher.unwrap_or_default();
    println!("\nfirst envelope run, as the Go SDK's leak report printed it:\n");
    println!("| figure | eventbus (memory) |");
    println!("|---|---|");
    println!(
        "| messages published / received | {} / {} |",
        r.published, r.received
    );
    println!(
        "| throughput, first publish to last receipt | {:.0} msg/s |",
        r.throughput()
    );
    println!("| order violations | {} |", r.order_violations);
    println!("| lost messages | {} |", r.lost);
    println!(
        "| publish latency p50 / p99 | {:?} / {:?} |",
        r.publish_latency.0, r.publish_latency.1
    );
    println!(
        "| tasks at start / peak / after close | {} / {} / {} |",
        u.start.tasks, u.peak.tasks, u.after_close.tasks
    );
    println!("| leaked tasks after close | {} |", u.leaked_tasks());
    println!(
        "| OS threads at start / peak / after close | {} / {} / {} |",
        u.start.threads, u.peak.threads, u.after_close.threads
    );
    println!(
        "| heap at start / peak / after close | {} / {} / {} |",
        Bytes(u.start.heap_bytes as isize),
        Bytes(u.peak.heap_bytes as isize),
        Bytes(u.after_close.heap_bytes as isize)
    );
    println!(
        "| heap growth (after close minus start) | {} |",
        Bytes(u.heap_growth())
    );
    println!(
        "| dispatcher: peak handler calls in flight / bound | {} / 256 |",
        d.peak_in_flight
    );
    println!(
        "\npeak tasks include the harness's {} publisher tasks and the test's main task; the bus's own\n\
         tasks are its {} subscription pumps plus at most max_in_flight (256) handler workers.",
        5, 5
    );
}
