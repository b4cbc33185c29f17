//! `cargo xtask brokers`: runs the testkit's `eventbus-brokers`, and keeps the shared brokers up
//! around the commands that need them.

use std::process::{Command, Stdio};

use crate::flags::{self, Broker, BrokersAction};
use crate::util::cargo_program;

impl flags::Brokers {
    pub(crate) fn run(self) -> Result<(), String> {
        let mut args = vec![self.action.unwrap_or(BrokersAction::Status).name()];
        args.extend(self.kinds.iter().map(|k| k.name()));
        brokers(&args).map(drop)
    }
}

/// Runs `eventbus-brokers <args>` (built from `eventbus-testkit`); returns what it printed,
/// which for `up` is the kinds it started.
fn brokers(args: &[&str]) -> Result<String, String> {
    eprintln!("$ eventbus-brokers {}", args.join(" "));
    let out = Command::new(cargo_program())
        .args([
            "run",
            "--quiet",
            "-p",
            "eventbus-testkit",
            "--bin",
            "eventbus-brokers",
            "--",
        ])
        .args(args)
        .stderr(Stdio::inherit())
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

/// Installs the brokers where they are missing (for commands that start brokers of their own).
pub(crate) fn install() -> Result<(), String> {
    brokers(&["install"]).map(drop)
}

/// Runs `f` with the shared brokers `kinds` up: installs and starts those that do not answer,
/// and stops only those afterwards, so a session's `cargo xtask brokers up` stays up.
pub(crate) fn with_shared_brokers(
    kinds: &[Broker],
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let mut up = vec!["up"];
    up.extend(kinds.iter().map(|k| k.name()));
    let started = brokers(&up)?;
    let result = f();
    let mut down = vec!["down"];
    down.extend(started.lines());
    if down.len() > 1 {
        brokers(&down)?;
    }
    result
}
