//! Project automation: `cargo xtask <command>`.
//!
//! - `test`: everything CI checks, on a fresh machine: installs the brokers when missing
//!   (nats-server with `go install`, Apache Kafka with Maven, into a cache outside the
//!   checkout), starts the shared ones that do not answer yet (and stops those after), then
//!   rustfmt, clippy (`-D warnings`), every test of the workspace (cargo-nextest when
//!   installed, else `cargo test`), doc tests, and the conformance runner over every transport
//!   in one process (`conformance --transport all --quick`, debug build).
//! - `brokers [install|up|down|status] [nats] [kafka]`: the tests' brokers (the
//!   `eventbus-brokers` binary of `eventbus-testkit`): `up` starts the shared nats-server
//!   (127.0.0.1:4222) and Kafka (127.0.0.1:9092) in the background for a working session,
//!   `down` stops them, `status` says whether they answer.
//! - `report [args]`: the main job on the in-memory default (the README's first command): the
//!   `throughput` example (bus vs raw mpsc, same run) then the `report` example (leak report).
//! - `load [--transport memory|nats|kafka] [--level low|medium|high|extreme|large|go|all]`: the
//!   Go SDK's load scenarios A and B per level (the `load` example, release build): prints the
//!   table, writes `target/load/<transport>.json` and `.svg`; fails on loss, order violations
//!   or leaked tasks. NATS runs on the shared server (started if down, stopped after), Kafka
//!   on a private broker (or `EVENTBUS_KAFKA_BROKERS`).
//! - `conformance [--transport memory|nats|kafka|all] [--quick] [--stress N]`: the conformance
//!   suite per transport (the `conformance` example, release build): a pass/fail table; fails
//!   when a check fails.
//!
//! - `bench [--report] [--quick] [--rounds N] [--no-nats] [--no-kafka] [--criterion]`: the benchmarks of
//!   `eventbus-bench` (release build): throughput ratios against raw loops and clients from
//!   interleaved rounds, and the head-of-line table; `--report` adds the cost per message and
//!   writes `BENCHMARKS.md` and `docs/bench/*.svg`; `--criterion` runs the criterion benches
//!   (`cargo bench -p eventbus-bench`) instead. NATS is measured on the shared server (started
//!   if down, stopped after), Kafka on a private broker (or `EVENTBUS_KAFKA_BROKERS`).
//! - `cost [--no-callgrind] [--profile]`: instructions (callgrind) and heap allocations per
//!   message on a fixed workload, against the dispatcher's targets.
//!
//! Cargo runs with this process's environment (`CARGO_TARGET_DIR` included).
//! Arguments after the command go to the example as they are; naming `nats`, `kafka` or `all`
//! as the transport turns on the matching cargo features of `eventbus`.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("brokers") => brokers(&args[1..]).map(drop),
        Some("report") => report(&args[1..]),
        // The load levels and the benchmarks measure NATS on the shared server; Kafka on a
        // private broker of their own (or `EVENTBUS_KAFKA_BROKERS`).
        Some("load") => with_shared_brokers(&["nats"], || example("load", &args[1..])),
        Some("conformance") => example("conformance", &args[1..]),
        Some("bench") => with_shared_brokers(&["nats"], || bench(&args[1..])),
        Some("cost") => bench_binary("cost", &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test | brokers [args] | report [-- args] | load [args] | conformance [args] | bench [args] | cost [args]>\n\
                 \x20 brokers     [install|up|down|status] [nats] [kafka]\n\
                 \x20 load        [--transport memory|nats|kafka] [--level low|medium|high|extreme|large|go|all]\n\
                 \x20 conformance [--transport memory|nats|kafka|all] [--quick] [--stress N]\n\
                 \x20 bench       [--report] [--quick] [--rounds N] [--no-nats] [--no-kafka] [--criterion]\n\
                 \x20 cost        [--no-callgrind] [--profile]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_with_env(args, &[])
}

fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn has_nextest() -> bool {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `eventbus-brokers <args>` (built from `eventbus-testkit`); returns what it printed.
fn brokers(args: &[String]) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = if args.is_empty() {
        vec!["status".to_owned()]
    } else {
        args.to_vec()
    };
    eprintln!("$ eventbus-brokers {}", args.join(" "));
    let out = Command::new(&cargo)
        .args([
            "run",
            "--quiet",
            "-p",
            "eventbus-testkit",
            "--bin",
            "eventbus-brokers",
            "--",
        ])
        .args(&args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`eventbus-brokers {}` failed ({})",
            args.join(" "),
            out.status
        ))
    }
}

/// Installs the brokers if missing and starts the shared ones that do not answer yet; the
/// tests run; then it stops what it started (a session's `cargo xtask brokers up` stays up).
fn test() -> Result<(), String> {
    with_shared_brokers(&["nats", "kafka"], run_tests)
}

/// Runs `f` with the shared brokers `kinds` up: installs and starts those that do not answer,
/// and stops those afterwards.
fn with_shared_brokers(
    kinds: &[&str],
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let mut up = vec!["up".to_owned()];
    up.extend(kinds.iter().map(|k| (*k).to_owned()));
    let started = brokers(&up)?;
    let result = f();
    let started: Vec<String> = started.lines().map(str::to_owned).collect();
    if !started.is_empty() {
        let mut down = vec!["down".to_owned()];
        down.extend(started);
        brokers(&down)?;
    }
    result
}

fn run_tests() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    if has_nextest() {
        // A failed conformance test then shows the Kafka consumer's assignments, revokes and
        // hand-overs (DEVELOPERS.md: logs of a failing test); passing tests print nothing.
        let log = std::env::var("EVENTBUS_LOG").unwrap_or_else(|_| "eventbus_kafka=debug".into());
        cargo_with_env(
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ],
            &[("EVENTBUS_LOG", &log)],
        )?;
    } else {
        eprintln!("cargo-nextest not installed: running cargo test");
        cargo(&[
            "test",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
            "--examples",
        ])?;
    }
    cargo(&["test", "--workspace", "--all-features", "--doc"])?;
    // The suite's own runner, as users run it: every transport in one process, so a check
    // that leaks process-wide state into the next one fails here (nextest runs each test in a
    // process of its own and cannot see it).
    cargo(&[
        "run",
        "--quiet",
        "-p",
        "eventbus",
        "--example",
        "conformance",
        "--features",
        "nats,kafka",
        "--",
        "--transport",
        "all",
        "--quick",
    ])
}

/// The throughput comparison (no heap counter), then the leak report (with one).
fn report(args: &[String]) -> Result<(), String> {
    for example in ["throughput", "report"] {
        let mut full = vec![
            "run",
            "--quiet",
            "--release",
            "-p",
            "eventbus",
            "--example",
            example,
            "--",
        ];
        full.extend(args.iter().map(String::as_str).filter(|a| *a != "--"));
        cargo(&full)?;
        println!();
    }
    Ok(())
}

/// The transport named by `--transport X` or `--transport=X`, if any.
fn transport<'a>(args: &[&'a str]) -> Option<&'a str> {
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--transport") {
            Some("") => args.get(i + 1).copied(),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        })
}

/// Cargo features of `eventbus` that `transport` needs.
fn features(transport: Option<&str>) -> Option<&'static str> {
    match transport? {
        "nats" => Some("nats"),
        "kafka" => Some("kafka"),
        "all" => Some("nats,kafka"),
        _ => None,
    }
}

/// Runs `example` of `eventbus` in release mode, passing `args` through.
fn example(example: &str, args: &[String]) -> Result<(), String> {
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    let mut full = vec!["run", "--release", "-p", "eventbus", "--example", example];
    if let Some(features) = features(transport(&args)) {
        full.extend(["--features", features]);
    }
    full.push("--");
    full.extend(args);
    cargo(&full)
}

/// The benchmarks: `eventbus-bench run` (or the criterion benches with `--criterion`). With
/// `--report`, the report goes to the workspace root.
fn bench(args: &[String]) -> Result<(), String> {
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    if args.contains(&"--criterion") {
        return cargo(&["bench", "-p", "eventbus-bench"]);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let root = root.to_string_lossy().into_owned();
    let mut full: Vec<String> = Vec::new();
    for a in &args {
        full.push((*a).to_owned());
        if *a == "--report" {
            full.push(root.clone());
        }
    }
    bench_binary("run", &full)
}

/// Builds every binary of `eventbus-bench` (the cost command runs two of them under the
/// first) in release mode, then runs `eventbus-bench <command> <args>`.
fn bench_binary(command: &str, args: &[String]) -> Result<(), String> {
    cargo(&[
        "build",
        "--quiet",
        "--release",
        "-p",
        "eventbus-bench",
        "--bins",
    ])?;
    let mut full = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "eventbus-bench",
        "--bin",
        "eventbus-bench",
        "--",
        command,
    ];
    full.extend(args.iter().map(String::as_str).filter(|a| *a != "--"));
    cargo(&full)
}
