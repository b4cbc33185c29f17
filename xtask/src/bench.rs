//! `cargo xtask bench` and `cargo xtask cost`: build and run the `eventbus-bench` binary (or the
//! criterion benches), with the shared nats-server up for `bench`.

use crate::brokers::with_shared_brokers;
use crate::flags::{self, Broker};
use crate::util::{TOOLS, cargo, workspace_root};

impl flags::Bench {
    pub(crate) fn run(self) -> Result<(), String> {
        // NATS is measured on the shared server; Kafka on a private broker of the benchmark's
        // own (or `EVENTBUS_KAFKA_BROKERS`).
        with_shared_brokers(&[Broker::Nats], || self.bench())
    }

    fn bench(self) -> Result<(), String> {
        if self.criterion {
            return cargo(&["bench", "-p", "eventbus-bench"]);
        }
        let mut args = Vec::new();
        if self.report {
            // eventbus-bench writes the report under the directory it is given.
            let root = workspace_root()?;
            args.extend(["--report".to_owned(), root.to_string_lossy().into_owned()]);
        }
        if self.quick {
            args.push("--quick".to_owned());
        }
        if let Some(n) = self.rounds {
            args.extend(["--rounds".to_owned(), n.to_string()]);
        }
        if self.no_nats {
            args.push("--no-nats".to_owned());
        }
        if self.no_kafka {
            args.push("--no-kafka".to_owned());
        }
        bench_binary("run", &args)
    }
}

impl flags::Cost {
    pub(crate) fn run(self) -> Result<(), String> {
        let mut args = Vec::new();
        if self.no_callgrind {
            args.push("--no-callgrind".to_owned());
        }
        if self.profile {
            args.push("--profile".to_owned());
        }
        bench_binary("cost", &args)
    }
}

/// Builds the `eventbus-bench` binary and the three workload binaries that `cost` and the growth
/// table run under it in release mode, then runs `eventbus-bench <command> <args>`.
fn bench_binary(command: &str, args: &[String]) -> Result<(), String> {
    cargo(&[
        "build",
        "--quiet",
        "--release",
        "-p",
        TOOLS,
        "--bin",
        "eventbus-bench",
        "--bin",
        "cost-workload",
        "--bin",
        "alloc-workload",
        "--bin",
        "heap-workload",
    ])?;
    let mut full = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        TOOLS,
        "--bin",
        "eventbus-bench",
        "--",
        command,
    ];
    full.extend(args.iter().map(String::as_str));
    cargo(&full)
}
