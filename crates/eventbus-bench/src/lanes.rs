//! The fixed-lane baseline, the Go SDK's design: a fixed number of lanes, each a bounded
//! channel drained by one task calling the handler in order; a message goes to the lane its
//! key hashes to. Per-key order holds, but every key sharing a lane with a stalled key stalls
//! too, and once that lane's channel is full the sender blocks and every lane starves.

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;

use eventbus_core::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lanes of the Go SDK's design.
pub const LANES: usize = 256;

/// Fixed lanes with their tasks.
#[derive(Debug)]
pub struct Lanes {
    senders: Vec<mpsc::Sender<Arc<Message>>>,
    tasks: Vec<JoinHandle<()>>,
    hasher: foldhash::fast::FixedState,
}

impl Lanes {
    /// `lanes` lanes of `capacity` messages each, running `handler` on the current runtime.
    pub fn spawn<H, F>(lanes: usize, capacity: usize, handler: H) -> Self
    where
        H: Fn(Arc<Message>) -> F + Clone + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let (senders, tasks) = (0..lanes.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Arc<Message>>(capacity.max(1));
                let handler = handler.clone();
                let task = tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        handler(m).await;
                    }
                });
                (tx, task)
            })
            .unzip();
        Lanes {
            senders,
            tasks,
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    /// The lane of `message`: its key's hash modulo the lane count (lane 0 without a key).
    pub fn lane(&self, message: &Message) -> usize {
        message.key().map_or(0, |k| {
            (self.hasher.hash_one(k.as_str()) % self.senders.len() as u64) as usize
        })
    }

    /// Sends `message` to its lane, waiting while that lane is full.
    pub async fn send(&self, message: Arc<Message>) {
        let lane = self.lane(&message);
        if self.senders[lane].send(message).await.is_err() {
            panic!("lane {lane} is gone");
        }
    }

    /// Stops every lane, dropping what they hold (a stalled handler included).
    pub async fn abort(self) {
        drop(self.senders);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}
