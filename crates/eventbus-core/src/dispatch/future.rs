use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use sync_wrapper::SyncWrapper;

use crate::error::Error;
use crate::outcome::Outcome;

/// Resolves with the message's final [`Outcome`].
#[derive(Debug)]
pub struct ResponseFuture {
    /// The `oneshot` crate's channel: one allocation and one atomic swap per side, which is
    /// less than tokio's (a reference count and two waker cells) on a path taken per message.
    /// Its receiver is not `Sync`; the wrapper makes the future `Sync` again, soundly, as a
    /// shared reference to it gives no access to the receiver.
    pub(super) rx: SyncWrapper<oneshot::AsyncReceiver<Outcome>>,
}

impl Future for ResponseFuture {
    type Output = Result<Outcome, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every job answers, even one dropped unrun (`Job::drop` replies `Cancelled`); a closed
        // channel is read the same way, as a message not handled, to be redelivered.
        let rx = Pin::new(self.rx.get_mut());
        Poll::Ready(Ok(ready!(rx.poll(cx)).unwrap_or(Outcome::Cancelled)))
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseFuture;

    #[test]
    fn a_response_future_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync + Unpin>() {}
        send_sync::<ResponseFuture>();
    }
}
