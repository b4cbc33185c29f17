//! Runs one workload of [`eventbus_bench::cost`] with a counting allocator and prints
//! the allocations (new blocks and reallocations) and bytes allocated inside it:
//! `<workload> <messages> [keys] [subscriptions]`.

use eventbus_testkit::leak::stats_alloc::{INSTRUMENTED_SYSTEM, Stats};

eventbus_testkit::install_heap_counter!();

fn main() {
    let mut marks: Vec<Stats> = Vec::with_capacity(2);
    eventbus_bench::cost::workload_main(|| marks.push(INSTRUMENTED_SYSTEM.stats()));
    let (before, after) = (marks[0], marks[1]);
    println!(
        "allocations={} reallocations={} bytes={}",
        after.allocations - before.allocations,
        after.reallocations - before.reallocations,
        after.bytes_allocated - before.bytes_allocated,
    );
}
