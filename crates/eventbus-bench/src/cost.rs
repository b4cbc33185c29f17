//! Cost per message on a fixed workload, figures that hold on a noisy machine: instructions
//! (callgrind) and heap allocations (a counting allocator).
//!
//! Each workload runs on a current-thread runtime, so it is deterministic enough for
//! callgrind, and only the call of [`measured`] is counted (callgrind's `--toggle-collect`;
//! the allocation counter reads before and after it): the messages are built before it. Each
//! workload runs twice, with `n` and `2n` messages, and the cost per message is the difference
//! over `n`, so setting up and closing the dispatcher or bus cancels out.
//!
//! The workloads: `raw` (the mpsc → handler loop), `dispatcher` (the dispatcher alone) and
//! `memory` (the memory bus end to end), all with [`KEYS`] keys and the no-op handler.
//! Two tiny binaries run them: `cost-workload` (plain, for callgrind) and `alloc-workload`
//! (with the counting allocator, which prints the count).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::workload;

/// Keys of the fixed workload.
pub const KEYS: usize = 1_000;
/// Messages of the shorter of the two runs.
pub const MESSAGES: usize = 20_000;
/// The workloads, in report order.
pub const WORKLOADS: [&str; 3] = ["raw", "dispatcher", "memory"];
/// Targets of the issue: most allocations and instructions per message in the dispatcher.
pub const TARGET_ALLOCATIONS: f64 = 2.0;
/// See [`TARGET_ALLOCATIONS`].
pub const TARGET_INSTRUCTIONS: f64 = 3_000.0;
/// Allocations per message the measurement itself shows on a loop that makes none (the raw
/// loop reads 0.01: buffers growing inside tokio): within it of the target counts as met.
pub const ALLOCATION_FLOOR: f64 = 0.05;

/// Whether `allocations` per message meet [`TARGET_ALLOCATIONS`] (within [`ALLOCATION_FLOOR`]).
pub fn allocations_met(allocations: f64) -> bool {
    allocations <= TARGET_ALLOCATIONS + ALLOCATION_FLOOR
}

/// The counted region: callgrind counts only inside this call (`--toggle-collect`).
#[inline(never)]
pub fn measured<R>(f: impl FnOnce() -> R) -> R {
    std::hint::black_box(f())
}

/// Runs workload `name` with `messages` messages, counting only the workload itself;
/// `around` is called just before and just after (the allocation counter reads there).
pub fn run_workload(name: &str, messages: usize, mut around: impl FnMut()) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match name {
        "raw" | "dispatcher" => {
            // The pool outlives the region, so freeing the messages is not counted.
            let pool: Vec<Arc<_>> = workload::messages("cost", KEYS, messages)
                .into_iter()
                .map(Arc::new)
                .collect();
            let items = pool.clone();
            around();
            if name == "raw" {
                measured(|| runtime.block_on(workload::raw_mpsc(items)));
            } else {
                measured(|| runtime.block_on(workload::dispatcher(items)));
            }
            around();
            drop(pool);
        }
        "memory" => {
            // The bus takes messages by value; the clones share id and payload with the pool.
            let pool = workload::messages("cost", KEYS, messages);
            let items = pool.clone();
            around();
            measured(|| runtime.block_on(workload::memory_bus(items)));
            around();
            drop(pool);
        }
        other => panic!("unknown workload {other}: one of {WORKLOADS:?}"),
    }
}

/// The `main` of the two workload binaries: `<workload> <messages>`.
pub fn workload_main(mut around: impl FnMut()) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("dispatcher", String::as_str);
    let messages = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(MESSAGES);
    run_workload(name, messages, &mut around);
}

/// Cost per message of one workload.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// Instructions (callgrind `Ir`) per message, if valgrind ran.
    pub instructions: Option<f64>,
    /// Heap allocations (new blocks) per message.
    pub allocations: f64,
    /// Reallocations per message (a growing buffer: amortized, usually near zero).
    pub reallocations: f64,
    /// Heap bytes allocated per message.
    pub bytes: f64,
}

/// Where the workload binaries are: beside the running executable.
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name(name)
}

fn callgrind(exe: &Path, workload: &str, messages: usize, out: &Path) -> Result<u64, String> {
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--toggle-collect=*measured*")
        .arg("--dump-instr=no")
        .arg(exe)
        .arg(workload)
        .arg(messages.to_string())
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "valgrind failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", out.display()))
}

fn allocations(exe: &Path, workload: &str, messages: usize) -> Result<(u64, u64, u64), String> {
    let output = Command::new(exe)
        .arg(workload)
        .arg(messages.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse::<u64>().ok())
    };
    match (
        output.status.success(),
        field("allocations="),
        field("reallocations="),
        field("bytes="),
    ) {
        (true, Some(a), Some(r), Some(b)) => Ok((a, r, b)),
        _ => Err(format!("{} printed {text:?}", exe.display())),
    }
}

/// Measures every workload; `dir` gets the callgrind files (`<workload>.<n>.callgrind`).
pub fn measure(dir: &Path, with_callgrind: bool) -> Result<Vec<(&'static str, Cost)>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (plain, counting) = (sibling("cost-workload"), sibling("alloc-workload"));
    let n = MESSAGES;
    WORKLOADS
        .iter()
        .map(|&w| {
            let (a1, r1, b1) = allocations(&counting, w, n)?;
            let (a2, r2, b2) = allocations(&counting, w, 2 * n)?;
            let instructions = if with_callgrind {
                let i1 = callgrind(&plain, w, n, &dir.join(format!("{w}.{n}.callgrind")))?;
                let i2 = callgrind(
                    &plain,
                    w,
                    2 * n,
                    &dir.join(format!("{w}.{}.callgrind", 2 * n)),
                )?;
                Some((i2 as f64 - i1 as f64) / n as f64)
            } else {
                None
            };
            Ok((
                w,
                Cost {
                    instructions,
                    allocations: (a2 as f64 - a1 as f64) / n as f64,
                    reallocations: (r2 as f64 - r1 as f64) / n as f64,
                    bytes: (b2 as f64 - b1 as f64) / n as f64,
                },
            ))
        })
        .collect()
}

/// The functions with the most instructions of their own in a callgrind file of a
/// `messages`-message run (`callgrind_annotate --inclusive=no`): `top` lines of instructions
/// per message, function and source file (where inlined code came from).
pub fn profile(file: &Path, messages: usize, top: usize) -> Result<String, String> {
    let output = Command::new("callgrind_annotate")
        .arg("--inclusive=no")
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run callgrind_annotate: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<String> = text
        .lines()
        .skip_while(|l| !l.contains("file:function"))
        .filter_map(|l| {
            let (count, rest) = l.trim().split_once(' ')?;
            let count: f64 = count.replace(',', "").parse().ok()?;
            let (_, place) = rest.split_once(")  ")?;
            let place = place.split(" [").next()?;
            let (path, function) = place.split_once(':')?;
            let file = path.rsplit('/').next().unwrap_or(path);
            Some(format!(
                "{:>7.0}  {function}  ({file})",
                count / messages.max(1) as f64
            ))
        })
        .take(top)
        .collect();
    Ok(lines.join("\n"))
}

/// Whether valgrind can be run.
pub fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
