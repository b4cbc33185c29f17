//! Runs one workload of [`eventbus_bench::cost`] (for callgrind):
//! `<workload> <messages> [keys] [subscriptions]`.

fn main() {
    eventbus_bench::cost::workload_main(|| {});
}
