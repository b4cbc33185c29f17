//! `cargo xtask test`: everything CI checks, with the shared brokers up.

use std::process::Command;

use crate::brokers::with_shared_brokers;
use crate::flags::{self, Broker};
use crate::util::{TOOLS, cargo, cargo_program, cargo_with_env};

impl flags::Test {
    /// Installs the brokers if missing and starts the shared ones that do not answer yet; the
    /// tests run; then it stops what it started.
    pub(crate) fn run(self) -> Result<(), String> {
        with_shared_brokers(&[Broker::Nats, Broker::Kafka], run_tests)
    }
}

/// Whether `cargo <name>` is installed.
fn has_subcommand(name: &str) -> bool {
    Command::new(cargo_program())
        .args([name, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
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
    // Licenses, duplicate or banned crates, sources (not advisories: their database is a
    // download; deny.toml says why). `.ci/run` installs cargo-deny; a machine without it
    // says so and goes on.
    if has_subcommand("deny") {
        cargo(&["deny", "check", "licenses", "bans", "sources"])?;
    } else {
        eprintln!("cargo-deny not installed: skipping `cargo deny check` (CI runs it)");
    }
    // The docs users read: a broken intra-doc link is an error, as a clippy warning is.
    cargo_with_env(
        &["doc", "--workspace", "--all-features", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    if has_subcommand("nextest") {
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
    // The examples a user copies must run, not only compile (the memory ones need no broker;
    // the NATS and Kafka ones use the shared brokers started above).
    for (example, features) in [
        ("quickstart", "memory"),
        ("typed_events", "memory"),
        ("health", "memory"),
        ("nats", "nats"),
        ("kafka", "kafka"),
    ] {
        cargo(&[
            "run",
            "--quiet",
            "-p",
            "eventbus",
            "--features",
            features,
            "--example",
            example,
        ])?;
    }
    // The suite's own runner, as users run it: every transport in one process, so a check
    // that leaks process-wide state into the next one fails here (nextest runs each test in a
    // process of its own and cannot see it).
    cargo(&[
        "run",
        "--quiet",
        "-p",
        TOOLS,
        "--bin",
        "conformance",
        "--",
        "--transport",
        "all",
        "--quick",
    ])
}
