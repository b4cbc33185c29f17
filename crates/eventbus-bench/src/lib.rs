//! The project's tools: benchmarks of eventbus against what it is built on, measured in the
//! same run, the conformance runner, the Go SDK's load levels and leak report, and other
//! measurements. Not a user-facing API: the user's examples are those of the `eventbus` crate.
//!
//! - [`workload`]: the dispatcher alone, the memory bus end to end, and the raw
//!   `tokio::sync::mpsc` → handler loop they are compared with;
//! - [`lanes`]: the fixed-lane baseline (256 lanes chosen by hashing the key, the Go SDK's
//!   design) and [`hol`], the head-of-line scenario that compares it with the dispatcher;
//! - [`nats`]: the NATS bus against raw async-nats on the same stream settings;
//! - [`kafka`]: the Kafka bus against raw rdkafka on the same client settings;
//! - [`cpu`]: process CPU time per message, for the broker benchmarks;
//! - [`stats`]: interleaved rounds (A B A B …), medians, spreads and ratios;
//! - [`scenario`]: the load harness (messages over topics, checked for loss, duplicates and
//!   order, timed to the last receipt, tasks and heap sampled) and its raw mpsc baseline;
//! - [`load`]: the Go SDK's load levels and scenarios over it, as a table, JSON and a chart;
//! - [`cost`]: instructions (callgrind) and heap allocations per message on a fixed workload;
//! - [`growth`]: how throughput, peak heap and instructions per message grow with keys and
//!   subscriptions, on the dispatcher and the memory bus;
//! - [`report`]: BENCHMARKS.md and its SVG charts;
//! - [`charts`]: the SVG charts of [`report`] and [`load`], drawn in one place;
//! - [`members`]: bus instances as child processes (killable with SIGKILL), a steady keyed
//!   load and the loss, duplicate and per-key order tally over what they handled, for
//!   [`groups`] and [`scale_out`];
//! - [`groups`]: Kafka's group protocols side by side under joins, leaves and kills;
//! - [`scale_out`]: one group of instances on NATS or Kafka losing one to `close`, one to
//!   SIGKILL and gaining a replacement under load, and 3 instances against 1 draining a
//!   backlog;
//! - [`cluster`]: a 3-node NATS or Kafka cluster losing the node that leads the topic under
//!   keyed load, and getting it back;
//! - [`peers`]: this bus against Go event buses built from `peers/go/` (Watermill's GoChannel,
//!   NATS and Kafka pub/subs), the same load scenarios on each transport, one machine, one
//!   run.
//!
//! The `eventbus-bench` binary runs them (`cargo xtask bench`, `cargo xtask cost`,
//! `eventbus-bench growth`); the criterion benches (`cargo bench -p eventbus-bench`) time the
//! same workloads.
//!
//! The other tools are binaries of this crate too, each built with every transport
//! (`cargo run --release -p eventbus-bench --bin <tool> -- <flags>`):
//!
//! - `conformance`: the testkit's conformance suite as a pass/fail table per transport
//!   (`cargo xtask conformance`, and the last step of `cargo xtask test`);
//! - `load`: the Go SDK's load levels, a table and `target/load/<transport>.json` and `.svg`
//!   (`cargo xtask load`);
//! - `throughput` and `report`: the memory bus against a raw mpsc loop, then the Go SDK's leak
//!   report (`cargo xtask report`);
//! - `slow-key`: one slow key on the memory bus at its defaults, against the same run without
//!   it;
//! - `subscription-cost`: threads and broker connections per Kafka subscription;
//! - `group-protocols`: [`groups`] (`cargo xtask groups`);
//! - `scale-out`: [`scale_out`] (`cargo xtask scale-out`);
//! - `cluster`: [`cluster`] (`cargo xtask cluster`);
//! - `peers`: [`peers`] (`cargo xtask peers`).
#![warn(missing_docs)]

pub mod charts;
pub mod cluster;
pub mod cost;
pub mod cpu;
pub mod groups;
pub mod growth;
pub mod hol;
pub mod kafka;
pub mod lanes;
pub mod load;
pub mod members;
pub mod nats;
pub mod peers;
pub mod report;
pub mod scale_out;
pub mod scenario;
pub mod stats;
pub mod units;
pub mod workload;

/// A tokio multi-thread runtime with 2 workers, like the figures in the project's baselines.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The number after `--name` on the tools' command line, or `default` (absent or not a number).
pub fn arg(name: &str, default: u64) -> u64 {
    flag(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The word after `--name` on the tools' command line, if any.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `target/` of this build (the tools' executables live in `target/<profile>/`), where they
/// write their charts and tables.
pub fn target_dir() -> std::path::PathBuf {
    let from_exe = || {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.parent()?.to_path_buf())
    };
    from_exe().unwrap_or_else(|| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
    })
}

/// A tool's exit: success, or each failure on stderr as `FAILED: …` and failure.
pub fn exit_code(failures: &[String]) -> std::process::ExitCode {
    for f in failures {
        eprintln!("FAILED: {f}");
    }
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
