use eventbus_core::*;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn scratch() {
    let mut d = Dispatcher::new(DispatcherConfig::default());
    let h = tokio::runtime::Handle::current();
    let handler = handler_fn(|_d: Delivery| async move { Ok::<_, BoxError>(()) });
    // tokio_util CancellationToken not available: use bus instead? Route::new needs tokens.
    let _ = (&mut d, handler);
    let bus = EventBus::new(eventbus_memory::MemoryTransport::new());
    let sub = bus
        .subscribe(
            "t",
            "g",
            handler_fn(|_d: Delivery| async move { Ok::<_, BoxError>(()) }),
        )
        .await
        .unwrap();
    for i in 0..1 {
        bus.publish(Message::new("t", format!("{i}")))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        eprintln!(
            "DBG tasks={} {:?}",
            h.metrics().num_alive_tasks(),
            bus.stats()
        );
    }
    let _ = poll_fn(|_| std::task::Poll::Ready(())).await;
    drop(sub);
    let _ = Arc::new(1);
}
