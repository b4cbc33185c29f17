//! Benchmarks of eventbus against what it is built on, measured in the same run.
//!
//! - [`workload`]: the dispatcher alone, the memory bus end to end, and the raw
//!   `tokio::sync::mpsc` → handler loop they are compared with;
//! - [`lanes`]: the fixed-lane baseline (256 lanes chosen by hashing the key, the Go SDK's
//!   design) and [`hol`], the head-of-line scenario that compares it with the dispatcher;
//! - [`nats`]: the NATS bus against raw async-nats on the same stream settings;
//! - [`kafka`]: the Kafka bus against raw rdkafka on the same client settings;
//! - [`stats`]: interleaved rounds (A B A B …), medians, spreads and ratios;
//! - [`cost`]: instructions (callgrind) and heap allocations per message on a fixed workload;
//! - [`report`]: BENCHMARKS.md and its SVG charts.
//!
//! The `eventbus-bench` binary runs them (`cargo xtask bench`, `cargo xtask cost`); the
//! criterion benches (`cargo bench -p eventbus-bench`) time the same workloads.
#![warn(missing_docs)]

pub mod cost;
pub mod hol;
pub mod kafka;
pub mod lanes;
pub mod nats;
pub mod report;
pub mod stats;
pub mod workload;

/// A tokio multi-thread runtime with 2 workers, like the figures in the project's baselines.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
