//! Runs one fixed workload of [`eventbus_bench::cost`] (for callgrind): `<workload> <messages>`.

fn main() {
    eventbus_bench::cost::workload_main(|| {});
}
