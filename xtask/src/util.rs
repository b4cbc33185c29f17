//! What every command needs: running cargo and failing on a non-zero exit, the workspace root,
//! and running a tool (a binary of `eventbus-bench`).

use std::path::PathBuf;
use std::process::Command;

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

/// The package whose binaries are the project's tools: the benchmarks, the conformance runner,
/// the load levels, the leak report and the other measurements.
pub(crate) const TOOLS: &str = "eventbus-bench";

/// Runs the tool `bin` (a binary of [`TOOLS`], every transport built in) in release mode with
/// `args`.
pub(crate) fn tool(bin: &str, args: &[String]) -> Result<(), String> {
    let mut full = vec!["run", "--release", "-p", TOOLS, "--bin", bin, "--"];
    full.extend(args.iter().map(String::as_str));
    cargo(&full)
}
