//! The thread that runs librdkafka's blocking calls (metadata, watermarks, committed offsets,
//! flush, dropping a client) off the async runtime, and ends with the transport.
//!
//! `spawn_blocking` would leave idle pool threads behind after `close`; one owned thread that
//! is joined leaves nothing.

use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::KafkaError;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct Worker {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<(JoinHandle<()>, oneshot::Receiver<()>)>>,
}

impl Worker {
    pub(crate) fn start() -> std::io::Result<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (stopped_tx, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("eventbus-kafka-worker".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
                let _ = stopped_tx.send(());
            })?;
        Ok(Worker {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some((thread, stopped))),
        })
    }

    /// Runs `f` on the worker thread and waits for its result.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, KafkaError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or(KafkaError::WorkerStopped)?
            .send(job)
            .map_err(|_| KafkaError::WorkerStopped)?;
        rx.await.map_err(|_| KafkaError::WorkerStopped)
    }

    /// Lets the queued jobs finish and ends the thread.
    pub(crate) async fn stop(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((thread, stopped)) = thread {
            let _ = stopped.await;
            // It has sent its last message; joining only waits for it to exit.
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Not closed: closing the queue ends the thread once its jobs are done.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
