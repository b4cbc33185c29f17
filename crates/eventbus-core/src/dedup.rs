//! Idempotency: a [`tower::Layer`] that skips messages its handler already handled.
//!
//! At-least-once delivery means a message can come twice (a redelivery after a crash, a
//! publisher's retry). Handlers that must not see one twice wrap themselves in a
//! [`DedupLayer`]: it remembers the ids of messages handled successfully, per consumer group,
//! in a bounded store whose entries expire, and answers `Ok` at once for an id it remembers
//! (so the duplicate is acked and not handled again).
//!
//! ```
//! use std::time::Duration;
//! use eventbus_core::{dedup::DedupLayer, handler_fn, Delivery, BoxError};
//! use tower::ServiceBuilder;
//!
//! let handler = ServiceBuilder::new()
//!     .layer(DedupLayer::new(100_000, Duration::from_secs(3600)))
//!     .service(handler_fn(|d: Delivery| async move {
//!         println!("{}", d.message().id());
//!         Ok::<_, BoxError>(())
//!     }));
//! # let _ = handler;
//! ```
//!
//! Scope: ids are remembered in this process only (as many as `capacity`, each for `ttl`);
//! for deduplication across restarts or instances, keep the ids in your database in the
//! handler's own transaction. An id is recorded only after the handler succeeded, so a failed
//! attempt is retried; two deliveries of one id running at the same moment (a redelivery while
//! the first is still running) both run.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use moka::sync::Cache;
use tower::{Layer, Service};

use crate::handler::Delivery;
use crate::message::MessageId;

type Seen = Cache<(Arc<str>, MessageId), ()>;

/// The store of handled ids; clones share it.
#[derive(Clone)]
pub struct DedupStore {
    seen: Seen,
    skipped: Arc<AtomicU64>,
}

impl std::fmt::Debug for DedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupStore")
            .field("entries", &self.seen.entry_count())
            .field("skipped", &self.skipped())
            .finish()
    }
}

impl DedupStore {
    /// Remembers up to `capacity` ids, each for `ttl` after it was handled.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        DedupStore {
            seen: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            skipped: Arc::default(),
        }
    }
    /// Whether `group` handled the message `id` (and the store still remembers it).
    pub fn contains(&self, group: &str, id: &MessageId) -> bool {
        self.seen.contains_key(&(Arc::from(group), id.clone()))
    }
    /// Duplicates skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Wraps a handler in [`Dedup`].
#[derive(Clone, Debug)]
pub struct DedupLayer {
    store: DedupStore,
}

impl DedupLayer {
    /// A layer with a store of its own (see [`DedupStore::new`]).
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        DedupLayer {
            store: DedupStore::new(capacity, ttl),
        }
    }
    /// A layer over an existing store (to read its figures, or share it between handlers).
    pub fn with_store(store: DedupStore) -> Self {
        DedupLayer { store }
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;
    fn layer(&self, inner: S) -> Dedup<S> {
        Dedup {
            inner,
            store: self.store.clone(),
        }
    }
}

/// A handler that skips messages already handled (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Dedup<S> {
    inner: S,
    store: DedupStore,
}

impl<S> Service<Delivery> for Dedup<S>
where
    S: Service<Delivery, Response = ()>,
{
    type Response = ();
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let key = (
            Arc::clone(&delivery.scope.group),
            delivery.message().id().clone(),
        );
        if self.store.seen.contains_key(&key) {
            self.store.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(message_id = %key.1, group = %key.0, "duplicate skipped");
            return ResponseFuture { state: State::Seen };
        }
        ResponseFuture {
            state: State::Running {
                inner: self.inner.call(delivery),
                store: self.store.seen.clone(),
                key: Some(key),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Dedup`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Seen,
        Running {
            #[pin]
            inner: F,
            store: Seen,
            key: Option<(Arc<str>, MessageId)>,
        },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dedup::ResponseFuture")
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), E>>,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Seen => Poll::Ready(Ok(())),
            StateProj::Running { inner, store, key } => {
                let result = ready!(inner.poll(cx));
                if result.is_ok()
                    && let Some(key) = key.take()
                {
                    store.insert(key, ());
                }
                Poll::Ready(result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxError, Message, handler_fn};
    use std::sync::atomic::AtomicU32;
    use tower::ServiceExt;

    #[tokio::test]
    async fn skips_what_was_handled_per_group_and_retries_failures() {
        let calls = Arc::new(AtomicU32::new(0));
        let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, f) = (Arc::clone(&calls), Arc::clone(&fail_next));
        let store = DedupStore::new(10, Duration::from_secs(60));
        let handler =
            DedupLayer::with_store(store.clone()).layer(handler_fn(move |_d: Delivery| {
                c.fetch_add(1, Ordering::SeqCst);
                let fail = f.swap(false, Ordering::SeqCst);
                async move {
                    if fail {
                        Err::<(), BoxError>("first attempt fails".into())
                    } else {
                        Ok(())
                    }
                }
            }));
        let m = Message::new("t", "x");
        let id = m.id().clone();
        let d = Delivery::new(m.clone(), "g");
        assert!(handler.clone().oneshot(d.clone()).await.is_err());
        assert!(!store.contains("g", &id), "a failure is not remembered");
        handler.clone().oneshot(d.clone()).await.unwrap();
        assert!(store.contains("g", &id));
        handler.clone().oneshot(d).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the duplicate was skipped");
        assert_eq!(store.skipped(), 1);
        handler
            .oneshot(Delivery::new(m, "other-group"))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "another group handles it");
    }

    #[tokio::test]
    async fn entries_are_bounded_and_expire() {
        let store = DedupStore::new(2, Duration::from_millis(50));
        let handler = DedupLayer::with_store(store.clone())
            .layer(handler_fn(|_d: Delivery| async { Ok::<_, BoxError>(()) }));
        let ms: Vec<_> = (0..50).map(|i| Message::new("t", format!("{i}"))).collect();
        for m in &ms {
            handler
                .clone()
                .oneshot(Delivery::new(m.clone(), "g"))
                .await
                .unwrap();
        }
        store.seen.run_pending_tasks();
        assert!(
            store.seen.entry_count() <= 2,
            "{}",
            store.seen.entry_count()
        );
        let last = ms.last().unwrap().id();
        std::thread::sleep(Duration::from_millis(60));
        assert!(!store.contains("g", last), "expired");
    }
}
