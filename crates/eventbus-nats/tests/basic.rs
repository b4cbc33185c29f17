use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};
use eventbus_nats::{NatsConfig, NatsTransport};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let t = NatsTransport::connect(NatsConfig::new("nats://127.0.0.1:4222"))
        .await
        .unwrap();
    let bus = EventBus::new(t);
    let topic = format!("smoke-{}", std::process::id());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            &topic,
            "g",
            handler_fn(move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    tx.send(d.message().clone())?;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..1000 {
        bus.publish(Message::new(&topic, format!("m{i}")).with_key(format!("k{}", i % 10)))
            .await
            .unwrap();
    }
    println!("published 1000 in {:?}", t0.elapsed());
    for _ in 0..1000 {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    println!("received 1000 in {:?}", t0.elapsed());
    println!("lag {:?}", bus.lag(&topic, "g").await);
    sub.close().await;
    bus.close().await.unwrap();
    let mut after = 0;
    for _ in 0..100 {
        after = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if after <= before {
            break;
        }
        tokio::task::yield_now().await;
    }
    println!(
        "tasks before {before} after {after}; threads {}",
        std::fs::read_dir("/proc/self/task").unwrap().count()
    );
    assert_eq!(after, before);
}
