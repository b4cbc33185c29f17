//! Throughput of the memory bus against a raw `tokio::sync::mpsc` → handler loop doing the same
//! work, measured in the same process, interleaved (raw, bus, raw, bus, ...) so machine noise
//! hits both alike; prints medians, spreads and the ratio.
//!
//! No counting allocator here: it would tax every allocation (see `report` for heap figures).
//!
//! `cargo run --release -p eventbus-bench --bin throughput [-- --aggregates N --versions N --rounds N]`

use std::time::Duration;

use eventbus_bench::arg;
use eventbus_bench::scenario::{self, Load, Shape};
use eventbus_core::EventBus;
use eventbus_memory::MemoryTransport;

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let topics = 5;
    let aggregates = arg("--aggregates", 5_000) as usize;
    let versions = arg("--versions", 40);
    let rounds = arg("--rounds", 5).max(1) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "throughput: {topics} topics, {aggregates} aggregates x {versions} versions = {} messages per run, {rounds} interleaved rounds, tokio multi-thread runtime with 2 workers\n",
        aggregates as u64 * versions
    );
    println!(
        "| messages | bus msg/s (median, min-max) | raw mpsc msg/s (median, min-max) | ratio of medians |"
    );
    println!("|---|---|---|---|");
    runtime.block_on(async {
        for shape in [Shape::Envelope, Shape::Raw] {
            let load = Load {
                topics,
                aggregates,
                versions,
                payload: 100,
                shape,
                deadline: Duration::from_secs(120),
                progress: None,
                stall: None,
            };
            let (mut bus, mut raw) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                raw.push(scenario::run_raw_mpsc("raw", load).await.throughput());
                let r = scenario::run_bus("bus", load, || async {
                    EventBus::builder(MemoryTransport::new()).build()
                })
                .await;
                assert!(
                    r.lost == 0 && r.order_violations == 0,
                    "lost {} / order violations {}",
                    r.lost,
                    r.order_violations
                );
                bus.push(r.throughput());
            }
            let range = |xs: &[f64]| {
                let lo = xs.iter().copied().fold(f64::MAX, f64::min);
                let hi = xs.iter().copied().fold(0.0, f64::max);
                format!("{:.0}, {lo:.0}-{hi:.0}", median(xs))
            };
            println!(
                "| {} | {} | {} | {:.2} |",
                match shape {
                    Shape::Envelope => "envelopes (decode + order check)",
                    Shape::Raw => "raw keyed (trivial handler)",
                    Shape::Unkeyed => "raw unkeyed (trivial handler)",
                },
                range(&bus),
                range(&raw),
                median(&bus) / median(&raw)
            );
        }
    });
}
