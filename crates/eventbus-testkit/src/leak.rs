//! Snapshots of what a process holds: tokio tasks, OS threads, file descriptors, heap bytes.
//!
//! Heap figures need the counting allocator installed in the binary:
//! `eventbus_testkit::install_heap_counter!();` at the crate root. Without it they read 0 and
//! [`Snapshot::heap_counted`] is false.

use std::alloc::System;
use std::fmt;

pub use stats_alloc;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Installs a counting global allocator (`stats_alloc`) so snapshots can read heap bytes.
#[macro_export]
macro_rules! install_heap_counter {
    () => {
        #[global_allocator]
        static EVENTBUS_TESTKIT_HEAP: &$crate::leak::stats_alloc::StatsAlloc<::std::alloc::System> =
            &$crate::leak::stats_alloc::INSTRUMENTED_SYSTEM;
    };
}

fn counter() -> &'static StatsAlloc<System> {
    &INSTRUMENTED_SYSTEM
}

/// What the process holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Alive tasks of the current tokio runtime (0 outside one).
    pub tasks: usize,
    /// OS threads of the process (`/proc/self/task`).
    pub threads: usize,
    /// Open file descriptors (`/proc/self/fd`).
    pub fds: usize,
    /// Live heap bytes, if the counting allocator is installed.
    pub heap_bytes: usize,
    /// Allocations made so far, if the counting allocator is installed.
    pub allocations: usize,
    /// Whether heap figures are real.
    pub heap_counted: bool,
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, Iterator::count)
}

impl Snapshot {
    /// Takes a snapshot now.
    pub fn take() -> Self {
        let tasks =
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        let stats = counter().stats();
        // stats_alloc already books a realloc's growth or shrinkage in these two.
        let heap = stats
            .bytes_allocated
            .saturating_sub(stats.bytes_deallocated);
        Snapshot {
            tasks,
            threads: count_dir("/proc/self/task"),
            // read_dir holds one descriptor of its own while counting.
            fds: count_dir("/proc/self/fd").saturating_sub(1),
            heap_bytes: heap,
            allocations: stats.allocations,
            heap_counted: stats.allocations > 0,
        }
    }

    /// The larger of each figure.
    pub fn max(self, other: Snapshot) -> Snapshot {
        Snapshot {
            tasks: self.tasks.max(other.tasks),
            threads: self.threads.max(other.threads),
            fds: self.fds.max(other.fds),
            heap_bytes: self.heap_bytes.max(other.heap_bytes),
            allocations: self.allocations.max(other.allocations),
            heap_counted: self.heap_counted || other.heap_counted,
        }
    }
}

/// Start, peak and after-close snapshots of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Before the bus was built.
    pub start: Snapshot,
    /// Largest figures seen while it ran.
    pub peak: Snapshot,
    /// After `close()` returned.
    pub after_close: Snapshot,
}

impl Usage {
    /// Starts measuring.
    pub fn begin() -> Self {
        let start = Snapshot::take();
        Usage {
            start,
            peak: start,
            after_close: start,
        }
    }
    /// Records a sample toward the peak.
    pub fn sample(&mut self) {
        self.peak = self.peak.max(Snapshot::take());
    }
    /// Records the after-close snapshot.
    ///
    /// Tokio wakes whoever waits for a task (a `JoinHandle`, a `TaskTracker`) just *before* it
    /// removes the finished task from its alive count, on whichever worker thread ran it. So the
    /// count may lag a finished `close()` by a moment: this waits up to one second for the task
    /// count to settle back to the start. A task still there after that is a leak.
    pub async fn finish(&mut self) {
        let grace = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            self.after_close = Snapshot::take();
            if self.after_close.tasks <= self.start.tasks || std::time::Instant::now() > grace {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.peak = self.peak.max(self.after_close);
    }
    /// Tasks left after close that were not there at the start.
    pub fn leaked_tasks(&self) -> isize {
        self.after_close.tasks as isize - self.start.tasks as isize
    }
    /// Threads left after close that were not there at the start.
    pub fn leaked_threads(&self) -> isize {
        self.after_close.threads as isize - self.start.threads as isize
    }
    /// File descriptors left after close that were not there at the start.
    pub fn leaked_fds(&self) -> isize {
        self.after_close.fds as isize - self.start.fds as isize
    }
    /// Heap growth from start to after close, in bytes.
    pub fn heap_growth(&self) -> isize {
        self.after_close.heap_bytes as isize - self.start.heap_bytes as isize
    }
}

/// Bytes as KB/MB.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub isize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0.unsigned_abs() >= 1 << 20 {
            write!(f, "{:.2} MB", b / 1e6)
        } else {
            write!(f, "{:.1} KB", b / 1e3)
        }
    }
}
