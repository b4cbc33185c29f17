//! What every command needs: running cargo and failing on a non-zero exit, the workspace root,
//! and running an example of `eventbus`.

use std::path::PathBuf;
use std::process::Command;

use crate::flags::Transport;

/// The cargo that runs this xtask (`CARGO`), so a pinned toolchain stays pinned.
pub(crate) fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub(crate) fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_with_env(args, &[])
}

/// Runs `cargo <args>` with `env` added to this process's environment; echoes the command
/// first so a failure in a long run shows which step it was.
pub(crate) fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo_program())
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

/// The workspace root, canonical: it is written into reports and handed to other programs,
/// which may run from another directory.
pub(crate) fn workspace_root() -> Result<PathBuf, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))
}

/// Runs `example` of `eventbus` in release mode with `args`, turning on the cargo features
/// that `transport` needs (the examples build without NATS and Kafka by default).
pub(crate) fn example(
    example: &str,
    transport: Option<Transport>,
    args: &[String],
) -> Result<(), String> {
    let mut full = vec!["run", "--release", "-p", "eventbus", "--example", example];
    if let Some(features) = transport.and_then(Transport::features) {
        full.extend(["--features", features]);
    }
    full.push("--");
    full.extend(args.iter().map(String::as_str));
    cargo(&full)
}
