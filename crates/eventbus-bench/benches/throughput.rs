//! Criterion benches of the same workloads as `eventbus-bench run`: the dispatcher alone and
//! the raw mpsc loop at 1, 100, 10,000 and 1,000,000 keys, the memory bus at 1,000 keys, and
//! the head-of-line scenario's other keys (no stall / stall, dispatcher / fixed lanes). Time per
//! message, so criterion's throughput figure is msg/s. The ratios with their spread, from
//! interleaved rounds, come from `cargo xtask bench`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use eventbus_bench::hol::{Design, Hol};
use eventbus_bench::{runtime, workload};
use tokio::runtime::Runtime;

/// Benches `id`: each iteration is one run of `run()`, timed by the run itself.
fn bench_runs<F, Fut>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    id: BenchmarkId,
    run: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Duration>,
{
    group.bench_function(id, |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(run())).sum());
    });
}

fn dispatcher(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("dispatcher_vs_raw_mpsc");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500));
    for keys in [1usize, 100, 10_000, 1_000_000] {
        let n = 100_000.max(keys);
        let pool: Vec<Arc<_>> = workload::messages("bench", keys, n)
            .into_iter()
            .map(Arc::new)
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.measurement_time(Duration::from_secs(if keys >= 1_000_000 { 10 } else { 3 }));
        bench_runs(&mut group, &rt, BenchmarkId::new("raw_mpsc", keys), || {
            workload::raw_mpsc(pool.clone())
        });
        bench_runs(
            &mut group,
            &rt,
            BenchmarkId::new("dispatcher", keys),
            || workload::dispatcher(pool.clone()),
        );
    }
    group.finish();
}

fn memory_bus(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("memory_bus_vs_raw_mpsc");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let n = 100_000;
    let base = workload::messages("bench", 1_000, n);
    group.throughput(Throughput::Elements(n as u64));
    bench_runs(&mut group, &rt, BenchmarkId::new("raw_mpsc", 1_000), || {
        workload::raw_mpsc(base.clone())
    });
    bench_runs(
        &mut group,
        &rt,
        BenchmarkId::new("memory_bus", 1_000),
        || workload::memory_bus(base.clone()),
    );
    group.finish();
}

fn head_of_line(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("head_of_line_other_keys");
    // A stalled fixed-lane run lasts as long as its stall (here 2 × 200 ms): flat sampling, so
    // criterion does not grow the iteration count per sample.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5));
    let hol = Hol {
        per_key: 100,
        stall: Duration::from_millis(200),
        ..Hol::default()
    };
    let others = hol.keys * hol.per_key;
    group.throughput(Throughput::Elements(others as u64));
    for (design, name) in [
        (Design::Dispatcher, "dispatcher"),
        (Design::Lanes, "fixed_lanes"),
    ] {
        for stalled in [false, true] {
            let id = BenchmarkId::new(name, if stalled { "stall" } else { "no_stall" });
            bench_runs(&mut group, &rt, id, || async move {
                let r = hol.run(design, stalled, false).await;
                Duration::from_secs_f64(others as f64 / r.throughput)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dispatcher, memory_bus, head_of_line);
criterion_main!(benches);
