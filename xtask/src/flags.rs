//! The command line of `cargo xtask`: every command and flag, declared once; `--help` is made
//! from the doc comments here.

// xflags writes the structs below as `pub` into this private module.
#![allow(unreachable_pub)]

use std::str::FromStr;

xflags::xflags! {
    src "./src/flags.rs"

    /// Project automation: `cargo xtask <command>`. Cargo runs with this process's environment
    /// (`CARGO_TARGET_DIR` included). `--` is ignored and `--flag=value` means `--flag value`.
    cmd xtask {
        /// Everything CI checks, on a fresh machine: installs the brokers when missing, starts
        /// the shared ones that do not answer (and stops those after), then rustfmt, clippy
        /// (-D warnings), every test (cargo-nextest when installed, else cargo test), doc tests
        /// and the conformance runner over every transport in one process.
        cmd test {}

        /// The tests' brokers (`eventbus-brokers` of eventbus-testkit): install them into a
        /// cache outside the checkout (nats-server with go install, Apache Kafka with Maven),
        /// start the shared nats-server (127.0.0.1:4222) and Kafka (127.0.0.1:9092) in the
        /// background for a working session, stop them, or say whether they answer.
        cmd brokers {
            /// install | up | down | status (default: status).
            optional action: BrokersAction
            /// nats | kafka (default: both).
            repeated kinds: Broker
        }

        /// The README's main job on the in-memory default: the `throughput` tool of
        /// eventbus-bench (bus vs raw mpsc, same run), then its `report` tool (leak report).
        cmd report {
            /// Aggregates per topic.
            optional --aggregates n: u64
            /// Versions per aggregate.
            optional --versions n: u64
            /// Interleaved rounds of the throughput comparison.
            optional --rounds n: u64
        }

        /// The conformance suite per transport (the `conformance` tool of eventbus-bench,
        /// release build) as a pass/fail table; fails when a check fails.
        cmd conformance {
            /// memory | nats | kafka | all (default: memory).
            optional --transport transport: Transport
            /// Message counts about tenfold smaller.
            optional --quick
            /// Runs N copies of the suite at once.
            optional --stress n: usize
            /// How long a check waits for anything before failing (default 60).
            optional --timeout secs: u64
        }

        /// The Go SDK's load scenarios A and B per level (the `load` tool, release build):
        /// a table, `target/load/<transport>.json` and `.svg`; fails on loss, order violations
        /// or leaked tasks. NATS on the shared server (started if down, stopped after), Kafka
        /// on a private broker (or EVENTBUS_KAFKA_BROKERS).
        cmd load {
            /// memory | nats | kafka (default: memory).
            optional --transport transport: Transport
            /// low | medium | high | extreme | large | go | all, or a comma-separated list
            /// (default: go).
            optional --level levels: String
            /// The same as --level.
            optional --levels levels: String
        }

        /// The benchmarks of eventbus-bench (release build): throughput ratios against raw
        /// loops and clients from interleaved rounds, and the head-of-line table. NATS on the
        /// shared server (started if down, stopped after), Kafka on a private broker (or
        /// EVENTBUS_KAFKA_BROKERS).
        cmd bench {
            /// Also the cost per message and how it grows with keys and subscriptions; writes
            /// BENCHMARKS.md and docs/bench/*.svg.
            optional --report
            /// Fewer messages and rounds.
            optional --quick
            /// Interleaved rounds per case against a broker (default 5); the cases that run in
            /// the process alone take three times as many.
            optional --rounds n: usize
            /// Leaves out NATS.
            optional --no-nats
            /// Leaves out Kafka.
            optional --no-kafka
            /// Runs the criterion benches (cargo bench -p eventbus-bench) instead.
            optional --criterion
        }

        /// Kafka's group protocols side by side (the `group-protocols` tool, release build):
        /// 10 members joining one group under load, a member leaving and one killed, under
        /// KIP-848 and the classic protocol (cooperative-sticky and eager), members as child
        /// processes; fails on a lost message, a broken key order or a duplicate where no
        /// member crashed. Kafka on the shared broker (started if down, stopped after).
        cmd groups {
            /// A shorter load per scenario.
            optional --quick
            /// Rounds of every protocol and scenario.
            optional --rounds n: usize
        }

        /// A group of 3 instances on NATS or Kafka under 10,000 keyed messages: one closes,
        /// one is killed (SIGKILL), a replacement joins; then a backlog drained by 3 instances
        /// against 1 (the `scale-out` tool, release build), instances as child processes. Tables
        /// of lost, duplicates, order violations, rebalance times and throughput; fails on a
        /// lost message or a broken key order. On the shared brokers (started if down, stopped
        /// after).
        cmd scale-out {
            /// nats | kafka | all (default: all).
            optional --transport transport: Transport
            /// scenario | throughput (default: both).
            optional --only part: ScaleOutPart
            /// Messages per run (default 10,000).
            optional --messages n: u64
        }

        /// Wire compatibility with the Go SDK this project replaces (jxt-core v1.7.5): the
        /// `go_sdk` tests of every crate (golden vectors of its envelope, its traffic on NATS
        /// and Kafka played by raw clients, in both directions), on the shared brokers
        /// (started if down, stopped after).
        cmd interop {}

        /// This bus against Go event buses, one machine, one run (the `peers` tool, release
        /// build): builds the Go harness of `peers/go/` (Watermill's GoChannel, NATS and Kafka
        /// pub/subs, from the module proxy), then runs the Go SDK's load scenarios A and B at
        /// its four levels, a stalled aggregate among 1,000 and a large run on each transport
        /// of this bus and on the Go peers of the same kind, every cell a fresh process, peers
        /// interleaved; the table goes into BENCHMARKS.md and `target/peers/peers.md`. On the
        /// shared brokers (started if down, stopped after). Needs Go (not run in CI).
        cmd peers {
            /// memory | nats | kafka | all (default: all).
            optional --transport transport: Transport
            /// Rounds per cell (default 3).
            optional --rounds n: usize
        }

        /// A 3-node cluster (NATS JetStream, or Kafka in KRaft) of its own loses the node
        /// leading the topic (SIGKILL) under keyed load and gets it back (the `cluster` tool,
        /// release build). A table of lost, duplicated, order violations, what the topic
        /// stores, failover times and throughput before / during / after, and
        /// `target/cluster/<transport>.svg`; fails on a lost message or a broken key order.
        cmd cluster {
            /// nats | kafka | all (default: all).
            optional --transport transport: Transport
            /// Messages per run (default 10,000).
            optional --messages n: u64
        }

        /// Instructions (callgrind) and heap allocations per message on a fixed workload,
        /// against the dispatcher's targets.
        cmd cost {
            /// Allocations only.
            optional --no-callgrind
            /// Also the functions that cost the most instructions.
            optional --profile
        }

        /// Prints this help.
        cmd help {}
    }
}

// generated start
// The following code is generated by `xflags` macro.
// Run `env UPDATE_XFLAGS=1 cargo build` to regenerate.
#[derive(Debug)]
pub struct Xtask {
    pub subcommand: XtaskCmd,
}

#[derive(Debug)]
pub enum XtaskCmd {
    Test(Test),
    Brokers(Brokers),
    Report(Report),
    Conformance(Conformance),
    Load(Load),
    Bench(Bench),
    Groups(Groups),
    ScaleOut(ScaleOut),
    Interop(Interop),
    Peers(Peers),
    Cluster(Cluster),
    Cost(Cost),
    Help(Help),
}

#[derive(Debug)]
pub struct Test;

#[derive(Debug)]
pub struct Brokers {
    pub action: Option<BrokersAction>,
    pub kinds: Vec<Broker>,
}

#[derive(Debug)]
pub struct Report {
    pub aggregates: Option<u64>,
    pub versions: Option<u64>,
    pub rounds: Option<u64>,
}

#[derive(Debug)]
pub struct Conformance {
    pub transport: Option<Transport>,
    pub quick: bool,
    pub stress: Option<usize>,
    pub timeout: Option<u64>,
}

#[derive(Debug)]
pub struct Load {
    pub transport: Option<Transport>,
    pub level: Option<String>,
    pub levels: Option<String>,
}

#[derive(Debug)]
pub struct Bench {
    pub report: bool,
    pub quick: bool,
    pub rounds: Option<usize>,
    pub no_nats: bool,
    pub no_kafka: bool,
    pub criterion: bool,
}

#[derive(Debug)]
pub struct Groups {
    pub quick: bool,
    pub rounds: Option<usize>,
}

#[derive(Debug)]
pub struct ScaleOut {
    pub transport: Option<Transport>,
    pub only: Option<ScaleOutPart>,
    pub messages: Option<u64>,
}

#[derive(Debug)]
pub struct Interop;

#[derive(Debug)]
pub struct Peers {
    pub transport: Option<Transport>,
    pub rounds: Option<usize>,
}

#[derive(Debug)]
pub struct Cluster {
    pub transport: Option<Transport>,
    pub messages: Option<u64>,
}

#[derive(Debug)]
pub struct Cost {
    pub no_callgrind: bool,
    pub profile: bool,
}

#[derive(Debug)]
pub struct Help;

impl Xtask {
    #[allow(dead_code)]
    pub fn from_env_or_exit() -> Self {
        Self::from_env_or_exit_()
    }

    #[allow(dead_code)]
    pub fn from_env() -> xflags::Result<Self> {
        Self::from_env_()
    }

    #[allow(dead_code)]
    pub fn from_vec(args: Vec<std::ffi::OsString>) -> xflags::Result<Self> {
        Self::from_vec_(args)
    }
}
// generated end

impl Xtask {
    pub(crate) const HELP: &str = Self::HELP_;

    /// The part of the help about `command` and its flags, if it names one: a usage error or
    /// `--help` after a command shows that rather than every command's.
    pub(crate) fn help_for(command: &str) -> Option<&'static str> {
        let start = Self::HELP.find(&format!("\nxtask {command}\n"))? + 1;
        let section = &Self::HELP[start..];
        let end = section.find("\n\n\nxtask ").unwrap_or(section.len());
        Some(section[..end].trim_end())
    }

    /// One line naming every command, for a command line that names none.
    pub(crate) fn usage() -> String {
        let commands: Vec<&str> = Self::HELP
            .lines()
            .filter_map(|l| l.strip_prefix("xtask "))
            .collect();
        format!(
            "usage: cargo xtask <{}> [flags]\n`cargo xtask help` describes every command and flag",
            commands.join(" | ")
        )
    }
}

/// What `cargo xtask brokers` asks `eventbus-brokers` to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BrokersAction {
    Install,
    Up,
    Down,
    Status,
}

impl BrokersAction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BrokersAction::Install => "install",
            BrokersAction::Up => "up",
            BrokersAction::Down => "down",
            BrokersAction::Status => "status",
        }
    }
}

impl FromStr for BrokersAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Install, Self::Up, Self::Down, Self::Status]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("expected install, up, down or status, got {s:?}"))
    }
}

/// A shared broker `eventbus-brokers` manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broker {
    Nats,
    Kafka,
}

impl Broker {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::Kafka => "kafka",
        }
    }
}

impl FromStr for Broker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Nats, Self::Kafka]
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("expected nats or kafka, got {s:?}"))
    }
}

/// The part of `cargo xtask scale-out` to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScaleOutPart {
    Scenario,
    Throughput,
}

impl ScaleOutPart {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ScaleOutPart::Scenario => "scenario",
            ScaleOutPart::Throughput => "throughput",
        }
    }
}

impl FromStr for ScaleOutPart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Scenario, Self::Throughput]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("expected scenario or throughput, got {s:?}"))
    }
}

/// The transport a tool runs on (`all`: every one, where the tool takes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Memory,
    Nats,
    Kafka,
    All,
}

impl Transport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Memory => "memory",
            Transport::Nats => "nats",
            Transport::Kafka => "kafka",
            Transport::All => "all",
        }
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Memory, Self::Nats, Self::Kafka, Self::All]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("expected memory, nats, kafka or all, got {s:?}"))
    }
}
