//! Runs one workload of the growth table ([`eventbus_bench::growth`]) with a peak-tracking
//! allocator and prints the live heap just before it and its peak during it above that:
//! `<workload> <messages> [keys] [subscriptions]` (`memory-topics` or `dispatcher-routes`).

use peak_alloc::PeakAlloc;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

fn main() {
    // Room for both marks made up front: pushing into it allocates nothing inside the run.
    let mut marks: Vec<(usize, usize)> = Vec::with_capacity(2);
    eventbus_bench::growth::heap_workload_main(|| {
        marks.push((HEAP.current_usage(), HEAP.peak_usage()));
        HEAP.reset_peak_usage();
    });
    let (before, _) = marks[0];
    let (_, peak) = marks[1];
    println!("before={before} peak={}", peak.saturating_sub(before));
}
