//! The thread the NATS client's own tasks run on.
//!
//! async-nats spawns its connection handler and event tasks on the runtime that connects, and a
//! handler that is reconnecting to a dead server never ends by itself. Running them on a
//! runtime the transport owns lets `close` end them for certain, broker up or down: dropping
//! the runtime drops its tasks, and the thread is joined.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub(crate) struct Io {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Io {
    pub(crate) async fn start() -> std::io::Result<Io> {
        let (handle_tx, handle_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("eventbus-nats-io".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
                // Dropping the runtime drops every task still on it.
                drop(runtime);
                let _ = stopped_tx.send(());
            })?;
        let handle = handle_rx
            .await
            .map_err(|_| std::io::Error::other("the NATS I/O thread died at start"))??;
        Ok(Io {
            handle,
            stop: Some(stop),
            stopped: Some(stopped),
            thread: Some(thread),
        })
    }

    /// The I/O runtime, for tasks that must end with the transport.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `fut` on the I/O runtime (so whatever it spawns lives there) and awaits it here.
    pub(crate) async fn run<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await.ok()
    }

    /// Ends every task on the I/O runtime and the thread.
    pub(crate) async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
        if let Some(thread) = self.thread.take() {
            // It has sent its last message; joining only waits for the thread to exit.
            let _ = thread.join();
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Not closed: stop the thread anyway (without waiting), so nothing runs on forever.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
