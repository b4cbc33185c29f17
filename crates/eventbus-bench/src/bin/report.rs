//! The Go SDK's leak report, for eventbus on the in-memory default: many aggregates over several
//! topics, versions in order per aggregate; messages, throughput, order violations, loss, and
//! tasks, threads and heap at start / peak / after close.
//!
//! Heap is counted by a counting global allocator, which taxes every allocation: throughput
//! here is lower than in the `throughput` tool, which compares against a raw loop.
//!
//! `cargo run --release -p eventbus-bench --bin report [-- --aggregates N --versions N]`
//! (`cargo xtask report` runs `throughput`, then this)

use std::time::Duration;

use eventbus_bench::arg;
use eventbus_bench::scenario::{self, Load, Report, Shape};
use eventbus_core::EventBus;
use eventbus_memory::MemoryTransport;
use eventbus_testkit::leak::Bytes;

eventbus_testkit::install_heap_counter!();

fn main() {
    let topics = 5;
    let aggregates = arg("--aggregates", 5_000) as usize;
    let versions = arg("--versions", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    runtime.block_on(async {
        let load = Load {
            topics,
            aggregates,
            versions,
            payload: 100,
            shape: Shape::Envelope,
            deadline: Duration::from_secs(120),
            progress: None,
            stall: None,
        };
        println!(
            "report: memory transport, {topics} topics x {} aggregates x {versions} versions = {} envelopes, 2 runtime workers\n",
            aggregates / topics,
            load.messages()
        );
        let r = scenario::run_bus("bus", load, || async { EventBus::builder(MemoryTransport::new()).build() })
        .await;
        print_table(&r);
        check(&r);
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
    println!("| duplicated deliveries | {} |", r.duplicates);
    println!(
        "| publish latency p50 / p99 | {:?} / {:?} |",
        r.publish_latency.p50, r.publish_latency.p99
    );
    println!(
        "| end-to-end latency p50 / p99 / mean | {:?} / {:?} / {:?} |",
        r.e2e_latency.p50, r.e2e_latency.p99, r.e2e_latency.mean
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
        "\nTasks are sampled every millisecond by a thread of the harness (counted in the threads'\n\
         peak); the tasks' peak includes the harness's 5 publisher tasks. The bus's own tasks are\n\
         one consuming task per subscription (5) plus one worker per handler call running at once\n\
         (at most max_in_flight = 256), none of which survive close()."
    );
}
