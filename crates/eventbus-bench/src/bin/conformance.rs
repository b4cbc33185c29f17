//! The conformance suite (`eventbus_testkit::conformance`, listed in `docs/conformance.md`) as
//! a pass/fail table.
//!
//! `cargo run -p eventbus-bench --bin conformance -- --transport memory [--quick] [--stress N]
//! [--timeout SECS]` (`cargo xtask conformance` runs it in release mode)
//!
//! - Every check runs in a task of its own, on a multi-thread runtime of its own, so a panic is
//!   a FAIL with its message and nothing a check leaves behind reaches the next one.
//! - `--quick` shrinks message counts about tenfold.
//! - `--timeout SECS`: how long a check waits for anything before failing (default 60).
//! - `--stress N` runs the whole suite N times at once (each copy with its own harness, so its
//!   own broker) and reports, per check, how many copies passed. Checks that measure
//!   process-wide figures (`RUN_ALONE`: threads, descriptors, heap) run afterwards, one copy at
//!   a time.
//! - Pending checks (`PENDING`, waiting for a feature not implemented yet) are not run: they
//!   show as PENDING with the reason and do not fail the run.
//!
//! Exits non-zero if any check failed. `--transport nats` runs each check against a private
//! nats-server of its own; `--transport kafka` against a private Apache Kafka of its own; `all`
//! runs every transport, memory first.

use std::any::Any;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use eventbus_testkit::conformance::{CHECKS, Check, Harness, PENDING, RUN_ALONE, Scale};

eventbus_testkit::install_heap_counter!();

/// Marker in the messages of panics the checks cause on purpose (in handlers): not printed.
const DELIBERATE: &str = "conformance: deliberate";

struct Args {
    transport: String,
    quick: bool,
    stress: usize,
    timeout: Duration,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo run -p eventbus-bench --bin conformance -- [--transport memory|nats|kafka|all] [--quick] [--stress N] [--timeout SECS]"
    );
    ExitCode::from(2)
}

fn parse() -> Option<Args> {
    let mut args = Args {
        transport: "memory".into(),
        quick: false,
        stress: 1,
        timeout: Duration::from_secs(60),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--" => {}
            "--transport" => args.transport = it.next()?,
            "--quick" => args.quick = true,
            "--stress" => args.stress = it.next()?.parse().ok().filter(|n| *n > 0)?,
            "--timeout" => {
                args.timeout = Duration::from_secs(it.next()?.parse().ok().filter(|n| *n > 0)?);
            }
            _ => return None,
        }
    }
    Some(args)
}

/// How one run of one check went.
#[derive(Clone)]
struct Run {
    failure: Option<String>,
    took: Duration,
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Runs one check in a spawned task on a fresh runtime.
fn run_check(check: Check, harness: &Harness) -> Run {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Run {
                failure: Some(format!("cannot build a tokio runtime: {e}")),
                took: Duration::ZERO,
            };
        }
    };
    let h = harness.clone();
    let start = Instant::now();
    let joined =
        runtime.block_on(async move { tokio::spawn(async move { check(&h).await }).await });
    let took = start.elapsed();
    // Whatever a failed check left running is dropped with its runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let failure = match joined {
        Ok(()) => None,
        Err(e) if e.is_panic() => Some(panic_message(&*e.into_panic())),
        Err(e) => Some(format!("the check's task was cancelled: {e}")),
    };
    Run { failure, took }
}

/// Runs every check once over `harness`, skipping pending checks, and `RUN_ALONE` checks when
/// `skip_alone`.
fn run_suite(harness: &Harness, skip_alone: bool) -> Vec<Option<Run>> {
    CHECKS
        .iter()
        .map(|&(_, name, check)| {
            if pending_reason(name).is_some() || (skip_alone && RUN_ALONE.contains(&name)) {
                None
            } else {
                Some(run_check(check, harness))
            }
        })
        .collect()
}

fn pending_reason(name: &str) -> Option<&'static str> {
    PENDING
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn millis(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A harness of `transport`, as the transport's own tests build it (its `testing` module):
/// for NATS and Kafka, the one on a private broker that it can kill and restart, so every check
/// (and every copy under `--stress`) has a broker of its own.
fn harness(transport: &str, scale: Scale, timeout: Duration) -> Harness {
    let harness = match transport {
        "nats" => eventbus_nats::testing::private_harness(),
        "kafka" => eventbus_kafka::testing::private_harness(),
        _ => eventbus_memory::testing::harness(),
    };
    harness.with_scale(scale).with_timeout(timeout)
}

/// Runs the suite `copies` times over `transport`; `results[check][copy]`.
fn run_transport(transport: &str, scale: Scale, timeout: Duration, copies: usize) -> Vec<Vec<Run>> {
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); CHECKS.len()];
    if copies == 1 {
        for (i, &(_, name, check)) in CHECKS.iter().enumerate() {
            if pending_reason(name).is_none() {
                results[i].push(run_check(check, &harness(transport, scale, timeout)));
            }
        }
        return results;
    }
    let suites: Vec<Vec<Option<Run>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..copies)
            .map(|_| s.spawn(move || run_suite(&harness(transport, scale, timeout), true)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a suite copy's thread panicked"))
            .collect()
    });
    for suite in suites {
        for (i, run) in suite.into_iter().enumerate() {
            results[i].extend(run);
        }
    }
    // Process-wide measurements, one copy at a time with nothing else running.
    for (i, &(_, name, check)) in CHECKS.iter().enumerate() {
        if RUN_ALONE.contains(&name) && pending_reason(name).is_none() {
            for _ in 0..copies {
                results[i].push(run_check(check, &harness(transport, scale, timeout)));
            }
        }
    }
    results
}

fn main() -> ExitCode {
    let Some(args) = parse() else {
        return usage();
    };
    let transports: Vec<&str> = match args.transport.as_str() {
        "all" => vec!["memory", "nats", "kafka"],
        t @ ("memory" | "nats" | "kafka") => vec![t],
        other => {
            eprintln!("conformance: unknown transport {other:?}");
            return usage();
        }
    };

    // Panics the checks cause on purpose are expected; everything else is printed as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !panic_message(info.payload()).starts_with(DELIBERATE) {
            default_hook(info);
        }
    }));

    let scale = if args.quick {
        Scale::Quick
    } else {
        Scale::Full
    };
    let copies = args.stress;
    println!(
        "conformance: {}, {} size, {copies} cop{} at once\n",
        transports.join(" and "),
        if args.quick { "quick" } else { "full" },
        if copies == 1 { "y" } else { "ies" }
    );
    let started = Instant::now();
    let all: Vec<Vec<Vec<Run>>> = transports
        .iter()
        .map(|t| run_transport(t, scale, args.timeout, copies))
        .collect();

    let (mut passed, mut failed, mut pending) = (0, 0, 0);
    let mut details = Vec::new();
    let header: Vec<String> = transports
        .iter()
        .map(|t| {
            if copies == 1 {
                format!("{t} | time")
            } else {
                format!("{t} ({copies} copies) | slowest")
            }
        })
        .collect();
    println!("| # | check | {} |", header.join(" | "));
    println!("|---|---|{}", "---|---|".repeat(transports.len()));
    for (c, &(n, name, _)) in CHECKS.iter().enumerate() {
        let mut cells = Vec::new();
        for (t, results) in transports.iter().zip(&all) {
            let runs = &results[c];
            let ok = runs.iter().filter(|r| r.failure.is_none()).count();
            let slowest = runs.iter().map(|r| r.took).max().unwrap_or_default();
            let cell = match (
                pending_reason(name),
                runs.iter().find_map(|r| r.failure.as_deref()),
            ) {
                (Some(why), _) => {
                    pending += 1;
                    format!("PENDING: {why}")
                }
                (None, None) => {
                    passed += 1;
                    if copies == 1 {
                        "PASS".to_owned()
                    } else {
                        format!("PASS {ok}/{copies}")
                    }
                }
                (None, Some(msg)) => {
                    failed += 1;
                    details.push(format!("{n}. {name} ({t}): {msg}"));
                    if copies == 1 {
                        format!("FAIL: {}", first_line(msg))
                    } else {
                        format!("FAIL {ok}/{copies} passed: {}", first_line(msg))
                    }
                }
            };
            let time = if runs.is_empty() {
                "-".to_owned()
            } else {
                millis(slowest)
            };
            cells.push(format!("{} | {time}", cell.replace('|', "\\|")));
        }
        println!("| {n} | {name} | {} |", cells.join(" | "));
    }
    println!(
        "\n{} checks x {} transport(s): {passed} passed, {failed} failed, {pending} pending ({})",
        CHECKS.len(),
        transports.len(),
        millis(started.elapsed())
    );
    if !details.is_empty() {
        println!("\nfailures:");
        for d in &details {
            println!("\n{d}");
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
