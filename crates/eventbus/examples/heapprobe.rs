use eventbus::{EventBus, MemoryTransport};
use eventbus_testkit::scenario::{self, Load, Shape};
use std::time::Duration;
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for shape in [Shape::Raw] {
            let load = Load {
                topics: 5,
                aggregates: 5000,
                versions: 100,
                payload: 100,
                shape,
                deadline: Duration::from_secs(60),
            };
            let r0 = scenario::run_raw_mpsc("raw", load).await;
            for _ in 0..5 {
                let raw = r0.clone();
                let r = scenario::run_bus("bus", load, || {
                    EventBus::builder(MemoryTransport::new()).build()
                })
                .await;
                println!(
                    "{shape:?} bus {:.0} raw {:.0} ratio {:.2}",
                    r.throughput(),
                    raw.throughput(),
                    r.throughput() / raw.throughput()
                );
            }
        }
    });
}
