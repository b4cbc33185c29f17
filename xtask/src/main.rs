//! Project automation: `cargo xtask <command>`.
//!
//! - `test`: everything CI checks, on a fresh machine: rustfmt, clippy (`-D warnings`), every
//!   test of the workspace (cargo-nextest when installed, else `cargo test`), and doc tests.
//! - `report [args]`: the main job on the in-memory default (the README's first command): the
//!   `throughput` example (bus vs raw mpsc, same run) then the `report` example (leak report).

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("report") => report(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <test | report [-- args]>");
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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
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

fn test() -> Result<(), String> {
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
        cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ])?;
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
            "run", "--quiet", "--release", "-p", "eventbus", "--example", example, "--",
        ];
        full.extend(args.iter().map(String::as_str).filter(|a| *a != "--"));
        cargo(&full)?;
        println!();
    }
    Ok(())
}
