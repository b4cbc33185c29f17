//! Project automation: `cargo xtask <command>`.
//!
//! - `test`: everything CI checks, on a fresh machine: installs tansu (the Kafka tests' broker)
//!   when missing, starts a nats-server if none runs on 127.0.0.1:4222 (and stops it after),
//!   then rustfmt, clippy (`-D warnings`), every test of
//!   the workspace (cargo-nextest when installed, else `cargo test`), and doc tests.
//! - `report [args]`: the main job on the in-memory default (the README's first command): the
//!   `throughput` example (bus vs raw mpsc, same run) then the `report` example (leak report).
//! - `load [--transport memory|nats|kafka] [--level low|medium|high|extreme|large|go|all]`: the
//!   Go SDK's load scenarios A and B per level (the `load` example, release build): prints the
//!   table, writes `target/load/<transport>.json` and `.svg`; fails on loss, order violations
//!   or leaked tasks.
//! - `conformance [--transport memory|nats|kafka|all] [--quick] [--stress N]`: the conformance
//!   suite per transport (the `conformance` example, release build): a pass/fail table; fails
//!   when a check fails.
//!
//! - `bench [--report] [--quick] [--rounds N] [--no-nats] [--no-kafka] [--criterion]`: the benchmarks of
//!   `eventbus-bench` (release build): throughput ratios against raw loops and clients from
//!   interleaved rounds, and the head-of-line table; `--report` adds the cost per message and
//!   writes `BENCHMARKS.md` and `docs/bench/*.svg`; `--criterion` runs the criterion benches
//!   (`cargo bench -p eventbus-bench`) instead.
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
        Some("report") => report(&args[1..]),
        Some("load") => example("load", &args[1..]),
        Some("conformance") => example("conformance", &args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("cost") => bench_binary("cost", &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test | report [-- args] | load [args] | conformance [args] | bench [args] | cost [args]>\n\
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

/// Tests need a nats-server with JetStream on 127.0.0.1:4222. If none answers, start one (with
/// its store under `target/`) and return it, to be stopped when the tests are done.
/// The Kafka tests start private tansu brokers (a Kafka-protocol broker from crates.io): build
/// it when it is missing (about 11 minutes, once per machine).
fn ensure_tansu() -> Result<(), String> {
    let program = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
    let found = Command::new(&program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if found {
        return Ok(());
    }
    eprintln!("tansu not found: installing it for the Kafka tests (about 11 minutes)");
    cargo(&[
        "install",
        "--locked",
        "tansu",
        "--version",
        "0.6.0",
        "--features",
        "libsql",
    ])
}

fn ensure_nats() -> Result<Option<std::process::Child>, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4222));
    let up = || {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok()
    };
    if up() {
        return Ok(None);
    }
    eprintln!("no nats-server on 127.0.0.1:4222: starting one");
    let store = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nats-store");
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "4222", "-js", "-sd"])
        .arg(&store)
        .spawn()
        .map_err(|e| {
            format!("cannot start nats-server (install it: apt-get install nats-server): {e}")
        })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !up() {
        if std::time::Instant::now() > deadline {
            return Err("nats-server did not start listening on 127.0.0.1:4222".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(Some(child))
}

fn test() -> Result<(), String> {
    ensure_tansu()?;
    let mut nats = ensure_nats()?;
    let result = run_tests();
    if let Some(child) = nats.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
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
    cargo(&["test", "--workspace", "--all-features", "--doc"])
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
